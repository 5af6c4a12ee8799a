"""A scripted network with the interface of compat.Net, for driving every branch of the client.

Each connect attempt takes the next plan from FakeNet.plans:
  REFUSE        the connect fails with ECONNREFUSED once the socket becomes writable
  REFUSE_NOW    connect() itself raises ECONNREFUSED
  HANG          the connect never completes (the path drops SYNs)
  a FakeConn    the connect succeeds; the test plays the server through the FakeConn
With no plans left, attempts are refused.

A FakeConn can deliver bytes in pieces of at most `read_max`, accept writes of at most `write_max` bytes
per call, block writes entirely, end with EOF or a reset at any point, and records every byte the client
wrote. Everything is futures and events, so it runs on the virtual clock of vloop.VirtualTimeLoop.
"""
import asyncio
import errno
from collections import deque

REFUSE = "refuse"
REFUSE_NOW = "refuse_now"
HANG = "hang"

_EOF = object()


class FakeSock:
    def __init__(self, n):
        self.n = n
        self.opts = {}
        self.closed = False
        self.conn = None
        self.plan = None

    def __repr__(self):
        return "<FakeSock %d%s>" % (self.n, " closed" if self.closed else "")


class FakeConn:
    def __init__(self, read_max=1 << 20, write_max=1 << 20):
        self.read_max = read_max
        self.write_max = write_max
        self.rx = deque()  # what the client will read: bytes, _EOF or an OSError instance
        self.tx = bytearray()  # everything the client wrote
        self.write_blocked = False
        self.write_error = None  # an OSError every write raises, once set
        self.sock = None
        self.readable = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.tx_grew = asyncio.Event()
        self.closed = asyncio.Event()
        self.writes = 0  # write calls that moved bytes

    # -- the test plays the server ---------------------------------------------------------------
    def send(self, data):
        self.rx.append(bytes(data))
        self.readable.set()

    def eof(self):
        self.rx.append(_EOF)
        self.readable.set()

    def reset(self, code=errno.ECONNRESET):
        self.rx.append(OSError(code, errno.errorcode[code]))
        self.readable.set()

    def block_writes(self):
        self.write_blocked = True
        self.writable.clear()

    def unblock_writes(self):
        self.write_blocked = False
        self.writable.set()

    def fail_writes(self, code=errno.EPIPE):
        """Every write from now on raises, as on a connection the peer has reset."""
        self.write_error = OSError(code, errno.errorcode[code])
        self.writable.set()  # a blocked writer wakes up and meets the error

    async def wait_tx(self, nbytes):
        """Until the client has written at least nbytes in all (virtual time passes meanwhile)."""
        while len(self.tx) < nbytes:
            self.tx_grew.clear()
            await self.tx_grew.wait()

    def take_tx(self, nbytes):
        out = bytes(self.tx[:nbytes])
        del self.tx[:nbytes]
        return out


class FakeNet:
    def __init__(self, plans=(), resolve_errors=0, bad_opts=()):
        self.plans = deque(plans)
        self.resolve_errors = resolve_errors
        self.bad_opts = set(bad_opts)  # (level, opt) pairs whose setsockopt raises
        self.up = True
        self.resolves = 0
        self.sockets = []
        self.attempt_times = []

    def link_up(self):
        return self.up

    def resolve(self, host, port):
        self.resolves += 1
        if self.resolve_errors:
            self.resolve_errors -= 1
            raise OSError(errno.EHOSTUNREACH, "no route")
        return (2, 1, 6, (host, port))

    def addr_str(self, addr):
        return "%s:%d" % addr[3]

    def open(self, addr):
        s = FakeSock(len(self.sockets))
        self.sockets.append(s)
        return s

    def setsockopt(self, sock, level, opt, value):
        if (level, opt) in self.bad_opts:
            raise OSError(errno.ENOPROTOOPT, "bad option")
        sock.opts[(level, opt)] = value

    def connect_start(self, sock, addr):
        self.attempt_times.append(asyncio.get_running_loop().time())
        sock.plan = self.plans.popleft() if self.plans else REFUSE
        if sock.plan == REFUSE_NOW:
            raise OSError(errno.ECONNREFUSED, "refused")

    async def connect_finish(self, sock, addr):
        plan = sock.plan
        if plan == REFUSE:
            raise OSError(errno.ECONNREFUSED, "refused")
        if plan == HANG:
            await asyncio.get_running_loop().create_future()  # never resolves
        sock.conn = plan
        plan.sock = sock

    def close(self, sock):
        sock.closed = True
        if sock.conn is not None:
            sock.conn.closed.set()

    def open_sockets(self):
        return [s for s in self.sockets if not s.closed]

    # -- the data path, as compat's --------------------------------------------------------------
    @staticmethod
    def try_read(sock, buf):
        if sock.closed:
            raise OSError(errno.EBADF, "closed")
        conn = sock.conn
        if not conn.rx:
            conn.readable.clear()
            return -1
        item = conn.rx[0]
        if item is _EOF:
            return 0
        if isinstance(item, OSError):
            raise item
        n = min(len(item), len(buf), conn.read_max)
        buf[:n] = item[:n]
        if n == len(item):
            conn.rx.popleft()
        else:
            conn.rx[0] = item[n:]
        return n

    @staticmethod
    def try_write(sock, buf, off, n):
        if sock.closed:
            raise OSError(errno.EBADF, "closed")
        conn = sock.conn
        if conn.write_error is not None:
            raise conn.write_error
        if conn.write_blocked:
            return 0
        k = min(n, conn.write_max)
        conn.tx += bytes(memoryview(buf)[off : off + k])
        conn.writes += 1
        conn.tx_grew.set()
        return k

    @staticmethod
    async def wait_readable(sock):
        await sock.conn.readable.wait()

    @staticmethod
    async def wait_writable(sock):
        await sock.conn.writable.wait()
