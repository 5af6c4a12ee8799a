# CPython's side of the runtime seam (compat.py): host tools and tests run the firmware on CPython
# through these. Only compat imports this module, and only when not on MicroPython; no board loads
# it, and tools/paths.py lists it as host-only, so it is neither compiled to .mpy nor deployed.
import asyncio
import errno
import random
import socket
import ssl
import sys
import time


def const(value):
    return value  # MicroPython's compile-time constant: a plain value here


def upcase(buf, start, end):
    # bytes.upper() maps a-z only, exactly C toupper() in the C locale.
    mv = memoryview(buf)
    mv[start:end] = bytes(mv[start:end]).upper()


def copy_bytes(dst, doff, src, soff, n):
    memoryview(dst)[doff : doff + n] = memoryview(src)[soff : soff + n]


def ticks_ms():
    # Read from the running loop's clock so that a test loop with virtual time drives the
    # firmware's time too; loop.time() is time.monotonic() by default.
    try:
        t = asyncio.get_running_loop().time()
    except RuntimeError:
        t = time.monotonic()
    # Rounded, not truncated: a timer firing exactly at its deadline must read as that
    # millisecond, not the one before (float seconds rarely hold a whole millisecond exactly).
    return int(t * 1000 + 0.5)


def ticks_diff(a, b):
    return a - b


def ticks_add(a, b):
    return a + b


async def sleep_ms(ms):
    await asyncio.sleep(ms / 1000)


if hasattr(asyncio, "timeout"):

    async def wait_for_ms(aw, ms):
        # Not asyncio.wait_for: on 3.11 it swallows a cancellation that arrives just as the
        # awaited thing finishes, and a client that cannot be stopped is a hung test or tool.
        async with asyncio.timeout(ms / 1000):
            return await aw

else:

    async def wait_for_ms(aw, ms):
        return await asyncio.wait_for(aw, ms / 1000)


def write_line(s):
    sys.stdout.write(s + "\n")
    sys.stdout.flush()


def block_ms(ms):
    time.sleep(ms / 1000)


def forget_module(name):
    pass  # CPython's heap is not a board's; and tests keep using the module


def new_loop():
    pass  # asyncio.run makes a new loop every time


def mem_alloc():
    return 0  # CPython's heap is not the board's; figures come from MicroPython only


def collect():
    pass


def _wake(fut):
    if not fut.done():
        fut.set_result(None)


async def wait_readable(sock):
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, _wake, fut)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def wait_writable(sock):
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    fd = sock.fileno()
    loop.add_writer(fd, _wake, fut)
    try:
        await fut
    finally:
        loop.remove_writer(fd)


# "Nothing now" from a plain socket, or from a TLS one (whose record layer can want either direction; on
# the client it is in practice always the one asked for).
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def try_read(sock, buf):
    try:
        return sock.recv_into(buf)
    except _WOULD_BLOCK:
        return -1


def try_write(sock, buf, off, n):
    try:
        return sock.send(memoryview(buf)[off : off + n])
    except _WOULD_BLOCK:
        return 0


def connect_done(sock, addr):
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, errno.errorcode.get(err, str(err)))


def rand_below(n):
    return random.randrange(n) if n > 0 else 0


def net_class(base):
    """compat.Net on CPython: compat.LwipNet with the host's ways to finish a connect and move bytes."""

    class Net(base):
        async def connect_finish(self, sock, addr):
            await wait_writable(sock)
            connect_done(sock, addr)

        try_read = staticmethod(try_read)
        try_write = staticmethod(try_write)

    return Net


def mem_free():
    return -1  # unknown: CPython's heap grows on demand


def on_terminate(record):
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, after record() notes why."""
    import signal

    def stop(signum, frame):
        record()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def ignore_interrupts():
    # While the last lines are written: a second Ctrl-C or SIGTERM must not cut them short.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
