# The one seam between runtimes: a board's MicroPython, the MicroPython unix port and CPython.
#
# Nothing else in firmware/ looks at sys.implementation. Everything that differs -- clock, sleeping,
# non-blocking socket calls, waiting for readiness, the fast byte loops, printing -- is decided here
# once, at import time, so the hot paths elsewhere pay nothing for it. CPython's side of each of these
# lives in _cpython.py, which no board loads or ships.
import sys
import errno

MICROPYTHON = sys.implementation.name == "micropython"
# "esp32", "rp2", "linux"...: which MicroPython port, for the start event; "cpython" on the host.
RUNTIME = ("micropython-" + sys.platform) if MICROPYTHON else "cpython"

import asyncio  # noqa: E402  (after the runtime test, on purpose)
import socket  # noqa: E402

CancelledError = asyncio.CancelledError
TimeoutError = asyncio.TimeoutError  # its own class on MicroPython; the builtin on CPython 3.11+
Event = asyncio.Event
create_task = asyncio.create_task
run = asyncio.run

if MICROPYTHON:
    try:
        from .fastbuf import upcase, copy_bytes  # viper: ports built with the native emitter
    except (ImportError, SyntaxError):

        def upcase(buf, start, end):
            # Plain Python, a-z only: exactly C toupper() in the C locale.
            i = start
            while i < end:
                c = buf[i]
                if 97 <= c <= 122:
                    buf[i] = c - 32
                i += 1

        def copy_bytes(dst, doff, src, soff, n):
            memoryview(dst)[doff : doff + n] = memoryview(src)[soff : soff + n]

    import time
    import gc

    ticks_ms = time.ticks_ms
    ticks_diff = time.ticks_diff
    ticks_add = time.ticks_add
    sleep_ms = asyncio.sleep_ms  # returns a reusable singleton: sleeping allocates nothing
    wait_for_ms = asyncio.wait_for_ms

    def write_line(s):
        print(s)

    def block_ms(ms):
        time.sleep_ms(ms)

    def forget_module(name):
        # Drop a module of the package once it has done its work (the config validator), so that its
        # code leaves the heap; its interned names stay, as all qstrs do.
        pkg = sys.modules[__name__.rpartition(".")[0]]
        if hasattr(pkg, name):
            delattr(pkg, name)
        sys.modules.pop(pkg.__name__ + "." + name, None)

    def new_loop():
        # After an exception escaped asyncio.run, the old loop's tasks are still queued: start afresh.
        asyncio.new_event_loop()

    def mem_alloc():
        return gc.mem_alloc()

    def mem_free():
        return gc.mem_free()

    def collect():
        gc.collect()

    # asyncio's poller. Private, but stable since MicroPython 1.13 and exactly what its own Stream
    # methods wait on; the public Stream API would allocate a generator per read.
    _ioq = asyncio.core._io_queue  # type: ignore[attr-defined]

    # Plain generators: on MicroPython a coroutine is a generator, and yielding after queueing the
    # socket on asyncio's poller parks the task until the socket is ready (what Stream.read does).
    def wait_readable(sock):
        yield _ioq.queue_read(sock)

    def wait_writable(sock):
        yield _ioq.queue_write(sock)

    def try_read(sock, buf):
        # > 0 bytes read, 0 at EOF, -1 when nothing is there yet. A reset raises OSError.
        n = sock.readinto(buf)
        return -1 if n is None else n

    def try_write(sock, buf, off, n):
        # Bytes written (0 when the send buffer is full). The 4-argument write takes an offset, so
        # no memoryview slice is allocated per frame.
        k = sock.write(buf, off, n)
        return 0 if k is None else k

    # MicroPython's errno module lacks EISCONN; its own error numbers follow Linux (py/mperrno.h).
    _EISCONN = getattr(errno, "EISCONN", 106)

    def _connect_done(sock, addr):
        # MicroPython has no getsockopt(SO_ERROR); a second connect() reports the outcome instead:
        # success (or EISCONN) once connected, the pending error (e.g. ECONNREFUSED) otherwise.
        try:
            sock.connect(addr[3])
        except OSError as e:
            if e.errno != _EISCONN:
                raise

    try:
        import random

        def rand_below(n):
            return random.getrandbits(30) % n if n > 0 else 0

    except ImportError:  # a port built without random: jitter degrades to none

        def rand_below(n):
            return n - 1 if n > 0 else 0

else:
    # CPython (host tools and tests): its side lives in a module no board ships, so none of it is
    # compiled into a board's .mpy files.
    from ._cpython import (  # noqa: F401
        upcase, copy_bytes, ticks_ms, ticks_diff, ticks_add, sleep_ms, wait_for_ms, write_line,
        mem_alloc, mem_free, collect, block_ms, forget_module, new_loop, wait_readable, wait_writable, try_read, try_write, rand_below,
        connect_done as _connect_done,
    )


def machine_has(name):
    """True when this runtime's `machine` module has `name` (Pin, WDT, Timer): a board's does; CPython has
    no `machine`, and the unix port's has neither pins nor a watchdog. Lets a board's table run on the host."""
    try:
        import machine
    except ImportError:
        return False
    return hasattr(machine, name)


def load_json(path):
    import json

    with open(path) as f:
        return json.load(f)


def errno_name(e):
    # "ECONNREFUSED" rather than 111: the numbers differ between lwIP and Linux.
    n = e.args[0] if e.args else 0
    if isinstance(n, int):
        return errno.errorcode.get(n, "E%d" % n)
    return str(n)


class Net:
    """Real sockets. Tests pass a scripted stand-in with the same methods (host_tests/shim)."""

    def resolve(self, host, port):
        # Blocking on every port (PORT_FACTS): the client calls this once and caches the result.
        ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
        return (ai[0], ai[1], ai[2], ai[-1])

    def open(self, addr):
        s = socket.socket(addr[0], addr[1], addr[2])
        s.setblocking(False)
        return s

    def link_up(self):
        # Replaced on boards by the Wi-Fi module's check: resolving or connecting while the station
        # has no IP only blocks (PORT_FACTS: DNS busy-polls on rp2).
        return True

    def addr_str(self, addr):
        sa = addr[3]
        if isinstance(sa, tuple):
            return "%s:%d" % (sa[0], sa[1])
        if len(sa) >= 8 and sa[0] == 2:
            # MicroPython unix: a raw struct sockaddr_in (family, port big-endian, IPv4 address).
            return "%d.%d.%d.%d:%d" % (sa[4], sa[5], sa[6], sa[7], (sa[2] << 8) | sa[3])
        return str(sa)

    def setsockopt(self, sock, level, opt, value):
        sock.setsockopt(level, opt, value)

    def connect_start(self, sock, addr):
        try:
            sock.connect(addr[3])
        except OSError as e:
            if e.args[0] not in (errno.EINPROGRESS, errno.EAGAIN):
                raise

    async def connect_finish(self, sock, addr):
        await wait_writable(sock)
        _connect_done(sock, addr)

    def close(self, sock):
        try:
            sock.close()
        except OSError:
            pass

    try_read = staticmethod(try_read)
    try_write = staticmethod(try_write)
    wait_readable = staticmethod(wait_readable)
    wait_writable = staticmethod(wait_writable)
