"""Shared pieces of the fault-matrix tests (issue 4): processes that print event lines, the firmware
harness (host_tests/fwharness.py) as a process, a scripted server on any listening socket.

Reuses fwproc.FwProc (event parsing, bounded waits, stopping) and scripted_server.Conn unchanged."""
import collections
import os
import queue
import select
import subprocess
import tempfile
import threading
import time

from fwproc import FwProc
from scripted_server import ScriptedServer
from tools import hostrun

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.path.join(HERE, "fwharness.py")

# Scheduling and pipe latency allowed on top of a behavioural bound (a loaded 2-core machine, the
# firmware's event line crossing a pipe to a reader thread). Stated in every table row that uses it.
TOL_MS = 250


class LineProc(FwProc):
    """Any process printing event lines (the firmware harness, tools.hbserver), with FwProc's waits.

    `argv` is run as given (prefix it with `ip netns exec NS` to run it in a namespace)."""

    def __init__(self, argv, label, cwd=None, workdir=None, keep=300):
        self.runtime = label
        self.cfg = None
        self.events = []
        self._q = queue.Queue()
        self._tail = collections.deque(maxlen=keep)
        self._stopped = False
        self.workdir = workdir or tempfile.mkdtemp(prefix="faults-")
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            preexec_fn=hostrun.default_sigint,  # stoppable with SIGINT even if we inherited it ignored
        )
        self._reader = threading.Thread(target=self._read, name="lineproc-reader", daemon=True)
        self._reader.start()

    def fd_count(self):
        """Open descriptors of the process, read from outside (-1 once it is gone)."""
        try:
            return len(os.listdir("/proc/%d/fd" % self.proc.pid))
        except OSError:
            return -1

    def raw_lines(self):
        """Output lines that are not events: a traceback, a MemoryError, a warning."""
        return [e.line for e in list(self.events) if e.name == "_raw" and e.line.strip()]


class HarnessProc(LineProc):
    """The real firmware Client inside fwharness.py, reporting heap and descriptors at `watch` events."""

    def __init__(self, runtime, cfg, watch=(), every=1, prefix=(), board="unix", heapsize=None):
        workdir = tempfile.mkdtemp(prefix="faults-")
        argv = list(prefix) + hostrun.runtime_argv(runtime)
        if heapsize and runtime == "micropython":
            argv += ["-X", "heapsize=%s" % heapsize]
        argv += [HARNESS, hostrun.FIRMWARE_DIR, hostrun.prepare(cfg, workdir), hostrun.board_path(board),
                 ",".join(watch) or "-", str(every)]
        super().__init__(argv, runtime, cwd=hostrun.FIRMWARE_DIR, workdir=workdir)
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
