"""Shared pieces of the fault-matrix tests: the firmware instrumented from inside
(support/fw_instrumented.py) as a process, a scripted server on any listening socket, a server that
closes every connection at once.

Processes are tools.eventlines.EventProc (event parsing, bounded waits, stopping); the scripted server is
support/scripted_server.py's, unchanged."""
import os
import select
import tempfile
import threading
import time

from support.scripted_server import ScriptedServer
from tools import hostrun
from tools.eventlines import EventProc

HERE = os.path.dirname(os.path.abspath(__file__))
INSTRUMENTED = os.path.join(HERE, "fw_instrumented.py")

# Scheduling and pipe latency allowed on top of a behavioural bound (a loaded 2-core machine, the
# firmware's event line crossing a pipe to a reader thread). Stated in every table row that uses it.
TOL_MS = 250


def ms(seconds):
    """Seconds (host clock differences) to whole milliseconds, for the table."""
    return int(round(seconds * 1000))


class InstrumentedFwProc(EventProc):
    """The real firmware Client inside fw_instrumented.py, reporting heap and descriptors at `watch`
    events. `prefix` goes before the command (e.g. `ip netns exec NS`)."""

    def __init__(self, runtime, cfg, watch=(), every=1, prefix=(), board="unix", heapsize=None):
        workdir = tempfile.mkdtemp(prefix="faults-")
        argv = list(prefix) + hostrun.runtime_argv(runtime)
        if heapsize and runtime == "micropython":
            argv += ["-X", "heapsize=%s" % heapsize]
        argv += [INSTRUMENTED, hostrun.FIRMWARE_DIR, hostrun.prepare(cfg, workdir), hostrun.board_path(board),
                 ",".join(watch) or "-", str(every)]
        super().__init__(argv, runtime, cwd=hostrun.FIRMWARE_DIR, workdir=workdir, keep=300)
        self.runtime = runtime
        self.cfg = cfg

    def probes(self, after=None):
        return [e for e in list(self.events) if e.name == "probe" and (after is None or e.fields.get("after") == after)]


class SocketServer(ScriptedServer):
    """ScriptedServer's accept thread and Conn objects on a listening socket made elsewhere (e.g. inside
    a network namespace by netns.NetnsPair.server_socket). `make_socket()` returns a listening socket."""

    def __init__(self, make_socket):
        self._make = make_socket
        super().__init__(port=0, listen=True)

    def listen(self):
        assert self.lsock is None, "already listening"
        s = self._make()
        t = time.monotonic()
        self.listen_times.append(t)
        self.port = s.getsockname()[1]
        self.lsock = s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, args=(s, self._stop), name="srv-accept",
                                        daemon=True)
        self._thread.start()
        return t


class CloseAtOnceServer:
    """Accepts and closes each connection at once, as fast as it can: the other side of 10,000
    connect/disconnect cycles. Counts accepts. Listens on 127.0.0.1 unless given a socket."""

    def __init__(self, lsock=None):
        import socket

        if lsock is None:
            lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind(("127.0.0.1", 0))
            lsock.listen(128)
        self.lsock = lsock
        self.port = lsock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="close-at-once", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            r, _, _ = select.select([self.lsock], [], [], 0.05)
            if not r:
                continue
            try:
                s, _ = self.lsock.accept()
            except OSError:
                continue
            s.close()
            self.accepted += 1

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.lsock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
