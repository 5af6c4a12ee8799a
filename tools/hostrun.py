"""Run the firmware's main entry on this machine, on the MicroPython unix port or on CPython.

    python3 -m tools.hostrun --runtime micropython --config my.json --set beat_ms=1000

Runtimes: `micropython` (the unix port, tools/build/mpbin.py), `micropython32` (the unix port built for
i386, tools/build/mpbin32.py: a board's 31-bit small ints and 2^30 ms tick), `cpython`.

The config is validated here first (with the firmware's own validator), so a bad key or value is reported
before anything starts; --set KEY=VALUE overrides one key (VALUE is read as JSON, else as a string;
`keepalive.idle=1` reaches into the keepalive object). The firmware's event lines go to stdout unchanged.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile

from tools.paths import BOARDS_DIR, FIRMWARE_DIR
from firmware.hbkeep import config as fw_config  # the firmware's validator, importable thanks to tools.paths

RUNTIMES = ("micropython", "micropython32", "cpython")


def parse_set(item):
    key, sep, raw = item.partition("=")
    if not sep or not key:
        # The argument itself is not echoed: a mistyped "wifi.password:..." would print the secret.
        raise ValueError("--set expects KEY=VALUE (an argument of %d characters has no KEY= part)" % len(item))
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw  # bare words are strings: --set host=example.local
    return key, value


def merge(cfg, sets):
    cfg = json.loads(json.dumps(cfg))  # deep copy
    for item in sets:
        key, value = parse_set(item)
        if "." in key:
            outer, inner = key.split(".", 1)
            sub = cfg.get(outer)
            if not isinstance(sub, dict):
                sub = {}
            sub[inner] = value
            cfg[outer] = sub
        else:
            cfg[key] = value
    return cfg


def runtime_argv(runtime):
    if runtime == "cpython":
        return [sys.executable, "-u"]
    if runtime == "micropython":
        from tools.build.mpbin import micropython_argv

        return micropython_argv()
    if runtime == "micropython32":
        from tools.build.mpbin32 import micropython32_argv

        return micropython32_argv()
    raise ValueError("unknown runtime %r (expected one of: %s)" % (runtime, ", ".join(RUNTIMES)))


def board_path(board):
    path = os.path.join(BOARDS_DIR, board, "board.json")
    if not os.path.exists(path):
        known = sorted(d for d in os.listdir(BOARDS_DIR) if os.path.isdir(os.path.join(BOARDS_DIR, d)))
        raise ValueError("unknown board %r (known: %s)" % (board, ", ".join(known)))
    return path


def prepare(cfg, workdir):
    """Validate cfg with the firmware's rules and write it where the firmware will read it."""
    fw_config.Config(cfg)  # raises ConfigError naming the key
    path = os.path.join(workdir, "config.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def command(runtime, config_path, board="unix"):
    return runtime_argv(runtime) + [os.path.join(FIRMWARE_DIR, "main.py"), config_path, board_path(board)]


def default_sigint():
    """preexec_fn for children that are stopped with SIGINT.

    A shell without job control starts background commands with SIGINT ignored, and children inherit
    that; CPython then never raises KeyboardInterrupt, so the firmware could not be stopped cleanly (no
    final stats). Restoring the default before exec makes SIGINT work however the caller was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(runtime, cfg, board="unix", workdir=None, **popen):
    """Start the firmware as a child process (for tests and tools); returns (Popen, workdir)."""
    workdir = workdir or tempfile.mkdtemp(prefix="hostrun-")
    argv = command(runtime, prepare(cfg, workdir), board)
    popen.setdefault("preexec_fn", default_sigint)
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("text", True)
    popen.setdefault("bufsize", 1)
    return subprocess.Popen(argv, cwd=FIRMWARE_DIR, **popen), workdir


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python3 -m tools.hostrun",
        description="Run the heartbeat firmware on this machine (MicroPython unix port or CPython).",
        epilog="Event lines are described in docs/EVENTS.md, config keys in docs/CONFIG.md.",
    )
    ap.add_argument("--runtime", choices=RUNTIMES, default="micropython", help="interpreter: %s (default: micropython)" % ", ".join(RUNTIMES))
    ap.add_argument("--config", help="JSON config file (default: all defaults)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key; repeatable")
    ap.add_argument("--board", default="unix", help="board table from boards/ (default: unix)")
    args = ap.parse_args(argv)

    cfg = {}
    if args.config:
        # The firmware's own reader: a file hostrun accepts is one the board accepts, and the other way round.
        try:
            cfg = fw_config.read(args.config)
            if not isinstance(cfg, dict):
                raise fw_config.ConfigError("%s: expected a JSON object at the top level" % args.config)
        except fw_config.ConfigError as e:
            print("hostrun: config_error %s" % e, file=sys.stderr)
            return 2
        tls = cfg.get("tls")
        if isinstance(tls, dict) and isinstance(tls.get("ca"), str) and not os.path.isabs(tls["ca"]):
            # The config runs from a temporary copy: a CA path relative to the file must stay so.
            tls["ca"] = os.path.join(os.path.dirname(os.path.abspath(args.config)), tls["ca"])
    with tempfile.TemporaryDirectory(prefix="hostrun-") as workdir:
        try:
            cfg = merge(cfg, args.set)
            tls = cfg.get("tls")
            if isinstance(tls, dict) and isinstance(tls.get("ca"), str):
                tls["ca"] = os.path.abspath(tls["ca"])  # given by --set: relative to where we were started
            argv_ = command(args.runtime, prepare(cfg, workdir), args.board)
        except fw_config.ConfigError as e:
            # Named as the firmware names it: which file (and whether --set took part), then which key.
            where = args.config if args.config else None
            if where and args.set:
                where += " with --set"
            print("hostrun: config_error %s" % ("%s: %s" % (where, e) if where else e), file=sys.stderr)
            return 2
        except ValueError as e:
            print("hostrun: error: %s" % e, file=sys.stderr)
            return 2
        except RuntimeError as e:  # mpbin could not provide the binary
            print("hostrun: error: %s" % e, file=sys.stderr)
            return 3
        return _run_child(argv_)


def _run_child(argv_):
    # The child gets a process group of its own, so a Ctrl-C at the terminal reaches hostrun alone and
    # the firmware gets exactly one SIGINT, the forwarded one. In the terminal's group it would get two,
    # racing: a second one while the first is pending makes the MicroPython unix port exit(1) at once,
    # and one arriving while the final stats print cuts them off with a traceback.
    child = subprocess.Popen(argv_, cwd=FIRMWARE_DIR, preexec_fn=default_sigint, process_group=0)

    def forward(signum, frame):
        # Every stop request becomes SIGINT, which the firmware turns into `stopped` and its final stats
        # on both runtimes (the MicroPython unix port has no SIGTERM handler of its own).
        try:
            child.send_signal(signal.SIGINT)
        except OSError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    rc = child.wait()
    return 0 if rc in (0, -signal.SIGINT, -signal.SIGTERM) else rc


if __name__ == "__main__":
    sys.exit(main())
