"""`make run`: a heartbeat server and the firmware on this machine, talking over loopback.

    python3 -m tools.demo [--runtime micropython|cpython] [--seconds N] [--beat-ms MS] [--probe-ms MS]

Starts tools.hbserver on 127.0.0.1 (an ephemeral port unless --port), then the firmware on the MicroPython
unix port (or CPython) pointed at it, with beats and echoes printed one by one. Every line is prefixed with
who said it. Runs until Ctrl-C, or for --seconds.
"""
import argparse
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from tools import hostrun
from tools.eventlines import HbServerProc, WaitFailed, follow


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m tools.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runtime", choices=hostrun.RUNTIMES, default="micropython")
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (default: until Ctrl-C)")
    ap.add_argument("--port", type=int, default=0, help="server port (default: any free one)")
    ap.add_argument("--beat-ms", type=int, default=1000, help="firmware beat interval (default 1000)")
    ap.add_argument("--probe-ms", type=int, default=2000, help="server echo probe interval (default 2000)")
    args = ap.parse_args(argv)
    if args.seconds < 0:
        ap.error("--seconds must be >= 0, got %s" % args.seconds)

    q = queue.Queue()  # (who, line) from both processes, in arrival order; (who, None) at an end
    try:
        server = HbServerProc("--tick-ms", args.beat_ms, "--probe-ms", args.probe_ms, "--summary-ms", 5000,
                              port=args.port, tee=(q, "server"), listen_timeout=15,
                              process_group=0)  # see below: the children hear a stop from the demo only, once
    except WaitFailed as e:
        print("demo: the server did not start (no 'listening' line): %s" % e, file=sys.stderr)
        return 1
    server.record = False  # from here on its lines are read from q only
    port = server.port

    cfg = {"host": "127.0.0.1", "port": port, "beat_ms": args.beat_ms, "verbose": True, "stats_ms": 10000}
    try:
        # Own process groups: a Ctrl-C at the terminal reaches the demo alone, which then sends each child
        # one SIGINT. Left in the terminal's group they would get two, racing (a traceback instead of the
        # final stats, or the MicroPython unix port's immediate exit on a second pending SIGINT).
        device, workdir = hostrun.start(args.runtime, cfg, workdir=tempfile.mkdtemp(prefix="demo-"), process_group=0)
    except RuntimeError as e:
        server.stop()
        print("demo: %s" % e, file=sys.stderr)
        return 3
    follow("device", device.stdout, q)

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    end = time.monotonic() + args.seconds if args.seconds else None
    ended = set()
    while not stop.is_set() and len(ended) < 2:
        if end is not None and time.monotonic() >= end:
            break
        try:
            who, line = q.get(timeout=0.2)  # bounded so Ctrl-C and --seconds are noticed
        except queue.Empty:
            continue
        if line is None:
            ended.add(who)
            continue
        print("[%s] %s" % (who, line), flush=True)
    for p in (device, server.proc):
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in (device, server.proc):
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
    server.stop()  # gone already: this only collects its reader
    shutil.rmtree(workdir, ignore_errors=True)
    while True:  # the last words: final stats and the server's shutdown line
        try:
            who, line = q.get(timeout=0.5)
        except queue.Empty:
            break
        if line is not None:
            print("[%s] %s" % (who, line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
