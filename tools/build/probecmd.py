"""What the finders of tools/build share (mpbin: the 64-bit MicroPython, mpbin32: the 32-bit one, and
debroot's apt steps): running a command with a bounded wait, an executable named by an environment
variable, and the small command line that prints how to run the binary found (or checks it once).

    rc, out, err = run(argv)                      # never raises: rc 127 when it cannot start, 124 on timeout
    argv = env_override("MICROPYTHON", MpbinError)   # None when the variable is unset
"""
import argparse
import os
import shlex
import shutil
import subprocess
import sys


def run(argv, timeout=30, cwd=None):
    """Run argv; return (returncode, stdout, stderr). A command that cannot be started reports rc 127."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except OSError as e:
        return 127, "", str(e)
    except subprocess.TimeoutExpired:
        return 124, "", "timed out after %d s" % timeout
    return p.returncode, p.stdout, p.stderr


def env_override(var, error):
    """[path] of the executable the environment variable `var` names (a path, or a name looked up on
    PATH), used as given; None when it is unset. A value naming no executable file raises `error`."""
    value = os.environ.get(var)
    if not value:
        return None
    path = value if os.sep in value else shutil.which(value)
    if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise error("%s=%s is not an executable file" % (var, value))
    return [os.path.abspath(path)]


def main(name, doc, resolve, version_code, error, log, argv=None, can_fetch=False):
    """`python3 -m tools.build.<name> [--check]`: print the shell-quoted command `resolve()` finds, or with
    --check run `version_code` in it once and print what it says. With `can_fetch`, --no-fetch is offered
    and passed to resolve as fetch=False. `error` (the finder's exception) is reported, exit code 1."""
    ap = argparse.ArgumentParser(prog="python3 -m tools.build." + name, description=doc.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="run the binary once and print its version")
    if can_fetch:
        ap.add_argument("--no-fetch", action="store_true", help="fail instead of downloading when it is missing")
    args = ap.parse_args(argv)
    try:
        cmd = resolve(fetch=not args.no_fetch) if can_fetch else resolve()
    except error as e:
        print("%s: error: %s" % (name, e), file=sys.stderr)
        return 1
    if args.check:
        rc, out, err = run(cmd + ["-c", version_code])
        if rc != 0 or not out.strip():
            print("%s: error: %s failed its check (rc=%d): %s" % (
                name, shlex.join(cmd), rc, (err or out).strip()[-500:]), file=sys.stderr)
            return 1
        print(out.strip())
        log("command: %s" % shlex.join(cmd))
    else:
        print(shlex.join(cmd))
    return 0
