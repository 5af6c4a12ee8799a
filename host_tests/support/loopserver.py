"""A loopback socket served by one thread of its own: the skeleton of the small scripted servers of the
TLS, authentication and SNTP tests. A subclass says what one step is (accept a connection and script it,
answer one datagram) in `step()`; the thread repeats it until close(), the socket's 0.2 s timeout
letting it see the stop, and ends quietly once the socket is closed under it.

    class Silent(LoopbackServer):
        def step(self):
            self.conns.append(self.sock.accept()[0])   # accepted connections are closed by close()
"""
import socket
import threading


class LoopbackServer:
    """`udp` for a datagram socket, else a TCP one listening with `backlog`. A subclass sets the
    attributes its step() uses before calling this __init__, which starts the thread."""

    def __init__(self, udp=False, backlog=8):
        if udp:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
        else:
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", 0))
            self.sock.listen(backlog)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._thread.start()

    def step(self):
        raise NotImplementedError

    def _run(self):
        while not self._stop.is_set():
            try:
                self.step()
            except socket.timeout:
                continue
            except OSError:
                return

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        for c in self.conns:
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
