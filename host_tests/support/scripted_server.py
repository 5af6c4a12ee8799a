"""A small threaded loopback TCP server that tests drive step by step.

    srv = ScriptedServer()             # 127.0.0.1, ephemeral port, listening
    conn = srv.accept(timeout=10)      # the next connection (accepted by a background thread)
    conn.send(b"...")
    data = conn.recv_exact(8, timeout=5)
    conn.close() / conn.reset()        # FIN, or RST via SO_LINGER 0
    srv.stop_listening(); srv.listen() # same port again (SO_REUSEADDR), for restart tests

Accepting runs in a thread that waits with select(), so a connection is accepted (and its time taken
with time.monotonic()) as soon as it is there; `accept_times` keeps every one, `listen_times` every
moment listening (re)started. All waits take a timeout; none is unbounded.
"""
import queue
import select
import socket
import struct
import threading
import time

from support.frames import HEADER_SIZE, frame, read_header


class Closed(Exception):
    """The peer closed the connection (EOF) while bytes were still expected."""


class Conn:
    def __init__(self, sock, accepted_at):
        self.sock = sock
        self.accepted_at = accepted_at
        self.peer = sock.getpeername()
        self._rx = bytearray()  # read but not yet handed out
        self._drain = None
        self._drain_stop = threading.Event()
        self.drained = bytearray()  # what the discard thread read
        self.drain_times = []  # (time.monotonic(), nbytes) per read of the discard thread
        self.eof_at = None  # time.monotonic() when EOF or a reset was seen
        self.closed = False

    def nodelay(self, on=True):
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if on else 0)

    def send(self, data):
        self.sock.sendall(data)

    def send_frame(self, ftype, payload=b"", length=None):
        self.send(frame(ftype, payload, length))

    def send_bytewise(self, data, gap=0.0005):
        """One byte per write (set nodelay() first so that each is its own segment); `gap` only paces."""
        for i in range(len(data)):
            self.sock.sendall(data[i : i + 1])
            if gap:
                time.sleep(gap)

    def _fill(self, deadline):
        # One read into self._rx, waiting at most until deadline. False at the deadline; raises Closed.
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        r, _, _ = select.select([self.sock], [], [], left)
        if not r:
            return False
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            if self.eof_at is None:
                self.eof_at = time.monotonic()
            raise Closed("connection closed by the client with %d bytes pending" % len(self._rx))
        self._rx += chunk
        return True

    def recv_exact(self, n, timeout=5.0):
        """Exactly n bytes, or AssertionError at the deadline (Closed at EOF)."""
        deadline = time.monotonic() + timeout
        while len(self._rx) < n:
            if not self._fill(deadline):
                raise AssertionError("wanted %d bytes within %.1fs, got %d: %r" % (
                    n, timeout, len(self._rx), bytes(self._rx[:64])))
        out = bytes(self._rx[:n])
        del self._rx[:n]
        return out

    def recv_some(self, timeout=5.0):
        """Whatever arrives first (at least one byte), b"" if nothing within timeout; Closed at EOF."""
        if not self._rx:
            self._fill(time.monotonic() + timeout)
        out = bytes(self._rx)
        self._rx.clear()
        return out

    def recv_frame(self, timeout=5.0):
        """(type, payload) of the next whole frame."""
        deadline = time.monotonic() + timeout
        ftype, length = read_header(self.recv_exact(HEADER_SIZE, timeout))
        payload = self.recv_exact(length, max(0.0, deadline - time.monotonic())) if length else b""
        return ftype, payload

    def wait_eof(self, timeout=5.0):
        """Read (and discard) until the client closes; returns what was read. AssertionError at timeout."""
        deadline = time.monotonic() + timeout
        got = bytearray()
        while True:
            try:
                if not self._fill(deadline):
                    raise AssertionError("no EOF within %.1fs (read %d bytes)" % (timeout, len(got)))
            except Closed:
                got += self._rx
                self._rx.clear()
                return bytes(got)
            got += self._rx
            self._rx.clear()

    def start_discard(self):
        """Keep reading and throwing away in a thread (so the client's writes never block), counting."""
        def run():
            while not self._drain_stop.is_set():
                try:
                    r, _, _ = select.select([self.sock], [], [], 0.05)
                    if not r:
                        continue
                    chunk = self.sock.recv(65536)
                except (OSError, ValueError):
                    chunk = b""
                if not chunk:
                    self.eof_at = time.monotonic()
                    return
                self.drain_times.append((time.monotonic(), len(chunk)))
                self.drained += chunk

        self._drain = threading.Thread(target=run, name="conn-discard", daemon=True)
        self._drain.start()

    def stop_discard(self):
        if self._drain is not None:
            self._drain_stop.set()
            self._drain.join(timeout=5)
            self._drain = None

    def close(self, wait_eof=False, timeout=5.0):
        """A clean close. With wait_eof: send FIN first (shutdown), read and discard until the client
        closes too, then close -- closing with unread bytes pending would send RST instead of FIN."""
        self.stop_discard()
        if self.closed:
            return
        if wait_eof:
            try:
                self.sock.shutdown(socket.SHUT_WR)
                self.wait_eof(timeout)
            except (Closed, OSError):
                pass
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def reset(self):
        """An abortive close: SO_LINGER {on, 0} makes close() send RST."""
        self.stop_discard()
        if not self.closed:
            self.closed = True
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # struct linger {on, 0}
            self.sock.close()


class ScriptedServer:
    def __init__(self, port=0, listen=True):
        self.port = port
        self.lsock = None
        self.accept_times = []  # time.monotonic() of every accept
        self.listen_times = []  # time.monotonic() right after every listen()
        self.conns = []
        self._q = queue.Queue()
        self._thread = None
        self._stop = threading.Event()
        if listen:
            self.listen()

    def listen(self):
        """Start (or restart) listening, on the same port as before if there was one. Returns the
        monotonic time taken right after listen()."""
        assert self.lsock is None, "already listening"
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(16)
        t = time.monotonic()
        self.listen_times.append(t)
        self.port = s.getsockname()[1]
        self.lsock = s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, args=(s, self._stop), name="srv-accept", daemon=True)
        self._thread.start()
        return t

    def _accept_loop(self, lsock, stop):
        while not stop.is_set():
            try:
                r, _, _ = select.select([lsock], [], [], 0.05)
                if not r:
                    continue
                sock, _ = lsock.accept()
            except (OSError, ValueError):
                return
            t = time.monotonic()
            self.accept_times.append(t)
            conn = Conn(sock, t)
            self.conns.append(conn)
            self._q.put(conn)

    def accept(self, timeout=10.0):
        """The next accepted connection, or AssertionError naming the wait."""
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no connection accepted on port %d within %.1fs" % (self.port, timeout))

    def stop_listening(self):
        """Close the listening socket (connections in the backlog are reset); accepted ones stay."""
        if self.lsock is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None
        self.lsock.close()
        self.lsock = None

    def close(self):
        self.stop_listening()
        for c in self.conns:
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
