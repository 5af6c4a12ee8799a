"""What TLS costs the firmware: handshake time and heap, on MicroPython (or CPython).

    python3 -m tools.tlsbench [--runtime micropython32|micropython|cpython] [--rounds 20]

Makes a throw-away CA and server certificate (EC P-256, tools.certs), serves TLS on a loopback port from
this process, and runs tools/tlsbench_child.py under the chosen runtime (found as for the tests). Prints `key=value` lines:

- handshake_ms_median / _max: from wrap to the first beat written (the firmware's own handshake driver);
- heap_context_bytes: the SSL context with its parsed CA, made once per client;
- heap_peak_during_handshake_bytes: the most MicroPython heap in use at any step of a handshake, above
  what was in use before it (live objects and garbage not yet collected);
- heap_held_by_open_tls_socket_bytes: after a collection, with the TLS socket open;
- heap_growth_per_round_bytes: heap still held once a connection is closed, per round (0: no leak);
- rss_growth_open_kib_max: process memory growth with a TLS socket open. The unix port's mbedTLS
  allocates its buffers with malloc, outside the heap the figures above count; on an rp2 board mbedTLS
  allocates from the MicroPython heap, so there that part adds to the heap figures.
"""
import argparse
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading

from tools import certs, hostrun
from tools.hbserver.gate import server_context
from tools.paths import FIRMWARE_DIR, REPO


def serve(sock, ctx, stop):
    while not stop.is_set():
        try:
            c, _ = sock.accept()
        except socket.timeout:
            continue
        except OSError:
            return
        c.settimeout(10)
        try:
            with ctx.wrap_socket(c, server_side=True) as t:
                t.recv(8)
        except (OSError, ssl.SSLError):
            c.close()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m tools.tlsbench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runtime", choices=("micropython32", "micropython", "cpython"), default="micropython32",
                    help="micropython32: the 32-bit unix port, a board's int and pointer width (default); "
                         "micropython: the 64-bit one")
    ap.add_argument("--rounds", type=int, default=20, help="handshakes to measure (default %(default)s)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1, got %d" % args.rounds)
    tmp = tempfile.mkdtemp(prefix="tlsbench-")
    stop = threading.Event()
    sock = socket.socket()
    try:
        certs.make_ca(tmp)
        cert, key = certs.make_server(tmp, ["localhost", "127.0.0.1"], tmp)
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.settimeout(0.2)
        t = threading.Thread(target=serve, args=(sock, server_context(cert, key), stop), daemon=True)
        t.start()
        try:
            argv_ = hostrun.runtime_argv(args.runtime)
        except RuntimeError as e:
            print("tlsbench: %s" % e, file=sys.stderr)
            return 3
        print("tlsbench: %d handshakes on %s ..." % (args.rounds, args.runtime), file=sys.stderr, flush=True)
        p = subprocess.run(argv_ + [os.path.join(REPO, "tools", "tlsbench_child.py"), FIRMWARE_DIR,
                                    os.path.join(tmp, "ca.der"), str(sock.getsockname()[1]), str(args.rounds)],
                           capture_output=True, text=True, timeout=60 + args.rounds * 10)
        sys.stdout.write(p.stdout)
        if p.returncode:
            print("tlsbench: the child failed (rc=%d): %s" % (p.returncode, p.stderr.strip()[-2000:]), file=sys.stderr)
            return 1
        return 0
    finally:
        stop.set()
        sock.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
