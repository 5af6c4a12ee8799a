"""Make the MicroPython unix port look like a board on a serial port.

    python3 -m tools.simboard --flash DIR [--link PATH] [--hold-pin N[=LEVEL]] [--flash-size BYTES]

It prints `port=/dev/pts/N` on its first line of standard output: give that to mpremote
(`mpremote connect /dev/pts/N repl`) or to `python3 -m tools.deploy --board unix --port /dev/pts/N`.
DIR is the board's filesystem (created if missing); at power-on the board runs DIR/boot.py and
DIR/main.py, then its REPL.

While it runs, lines on its standard input control it (so do signals):
  power            power-cycle the board (also: SIGUSR1)
  hold PIN[=LEVEL] hold a pin at LEVEL (default 0, a button to ground) from the next boot on
  release PIN      let go of it
  quit             stop (also: Ctrl-C, SIGTERM, or --timeout)
Notes about what happens (power on, soft reset, watchdog expiry) go to standard error.
"""
import argparse
import os
import signal
import sys
import time

from tools.build.mpbin import MpbinError, micropython_argv
from tools.simboard.board import SimBoard, parse_pin


def _pin(text):
    try:
        return parse_pin(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def _size(text):
    units = {"k": 1024, "m": 1024 * 1024}
    mult = units.get(text[-1:].lower(), 1)
    digits = text[:-1] if mult != 1 else text
    if not digits.isdigit() or int(digits) <= 0:
        raise argparse.ArgumentTypeError("expected a size in bytes (e.g. 65536, 64k, 2m), got %r" % text)
    return int(digits) * mult


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m tools.simboard", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flash", required=True, metavar="DIR", help="the board's filesystem: a directory")
    ap.add_argument("--link", metavar="PATH", help="also make PATH a symlink to the port (removed at exit)")
    ap.add_argument("--hold-pin", type=_pin, action="append", default=[], metavar="PIN[=LEVEL]",
                    help="a pin held at LEVEL (default 0) while the board boots, e.g. the stop-auto-start button")
    ap.add_argument("--flash-size", type=_size, metavar="BYTES",
                    help="the flash size os.statvfs() reports (default: the host disk's)")
    ap.add_argument("--heap", type=_size, metavar="BYTES", help="the VM's heap (default: the unix port's)")
    ap.add_argument("--uid", metavar="HEX", help="machine.unique_id() as hex (default: from DIR's path)")
    ap.add_argument("--echo", action="store_true", help="also copy the board's output to standard output")
    ap.add_argument("--timeout", type=float, metavar="SECONDS", help="stop by itself after this long")
    args = ap.parse_args(argv)
    if args.uid is not None:
        try:
            bytes.fromhex(args.uid)
        except ValueError:
            ap.error("--uid: expected hex digits, got %r" % args.uid)
    try:
        mp = micropython_argv()
    except MpbinError as e:
        print("simboard: error: %s" % e, file=sys.stderr)
        return 1

    # Signals become bytes on a pipe that the relay loop watches: the loop is never interrupted mid-way.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)

    def on_signal(signum, _frame):
        try:
            os.write(wake_w, b"p" if signum == signal.SIGUSR1 else b"q")
        except BlockingIOError:
            pass

    for signum in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    # Run in the background of a shell (`... &`), reading the terminal would stop the process (SIGTTIN)
    # and with it the board; ignored, the read fails instead and commands are read no more.
    signal.signal(signal.SIGTTIN, signal.SIG_IGN)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)

    board = SimBoard(args.flash, mp, hold_pins=dict(args.hold_pin), uid=args.uid, flash_size=args.flash_size,
                     heap=args.heap, link=args.link, echo=sys.stdout.buffer if args.echo else None)
    try:
        print("port=%s" % board.port, flush=True)
        print("simboard: %s is the board's serial port; flash: %s" % (board.port, board.flash), file=sys.stderr,
              flush=True)
        deadline = time.monotonic() + args.timeout if args.timeout else None
        stdin = sys.stdin.fileno() if sys.stdin is not None and not sys.stdin.closed else None
        board.run(deadline=deadline, commands_fd=stdin, wake_fd=wake_r)
    finally:
        board.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
