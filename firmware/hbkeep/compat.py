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
# Whose socket layer this is: a board table's "socket" answers apply only where its "port" runs (a board
# table tried on the host still meets the host's sockets).
PORT = sys.platform

import asyncio  # noqa: E402  (after the runtime test, on purpose)

CancelledError = asyncio.CancelledError
TimeoutError = asyncio.TimeoutError  # its own class on MicroPython; the builtin on CPython 3.11+
Event = asyncio.Event
create_task = asyncio.create_task
run = asyncio.run

def stream_try_read(sock, buf):
    # MicroPython's socket streams (every port): > 0 bytes read, 0 at EOF, -1 when nothing is there yet
    # (readinto answers None on a non-blocking socket with no data). A reset raises OSError.
    n = sock.readinto(buf)
    return -1 if n is None else n


def stream_try_write(sock, buf, off, n):
    # Bytes written (0 when the send buffer is full: write answers None). The 4-argument write takes an
    # offset, so no memoryview slice is allocated per frame.
    k = sock.write(buf, off, n)
    return 0 if k is None else k


if MICROPYTHON:
    # `_NAME = const(n)` in a module: the compiler puts the number where the name is used, and neither the
    # name nor a global is left in the heap.
    from micropython import const
    try:
        from .fastbuf import upcase, copy_bytes  # viper: ports built with the native emitter
    except (ImportError, SyntaxError, ValueError):
        # ValueError: a fastbuf.mpy built for another architecture, or a newer .mpy version than this
        # firmware loads ("incompatible .mpy file"); the plain loop is slower but always right.

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

    _out = sys.stdout

    def write_line(s):
        # One write per line, newline included: print(s) writes the text and the newline separately,
        # and a Ctrl-C landing between the two glued the next line (`stopped`) onto this one.
        _out.write(s + "\n")

    # The runtime's own functions where nothing needs adding: a wrapper of ours would be one more
    # function object and its code, in the heap for the life of the firmware.
    block_ms = time.sleep_ms
    mem_alloc = gc.mem_alloc
    mem_free = gc.mem_free
    collect = gc.collect
    # After an exception escaped asyncio.run, the old loop's tasks are still queued: start afresh.
    new_loop = asyncio.new_event_loop

    def forget_module(name):
        # Drop a module of the package once it has done its work (the config validator), so that its
        # code leaves the heap; its interned names stay, as all qstrs do.
        pkg = sys.modules[__name__.rpartition(".")[0]]
        if hasattr(pkg, name):
            delattr(pkg, name)
        sys.modules.pop(pkg.__name__ + "." + name, None)

    def on_terminate():
        pass  # no signal module: on a board nothing sends SIGTERM; on the unix port hostrun turns it into SIGINT

    # The unix port's handler cannot be swapped from Python; Firmware.interrupted retries instead.
    ignore_interrupts = on_terminate

    # asyncio's poller. Private, but stable since MicroPython 1.13 and exactly what its own Stream
    # methods wait on; the public Stream API would allocate a generator per read.
    _ioq = asyncio.core._io_queue  # type: ignore[attr-defined]

    # Plain generators: on MicroPython a coroutine is a generator, and yielding after queueing the
    # socket on asyncio's poller parks the task until the socket is ready (what Stream.read does).
    def wait_readable(sock):
        yield _ioq.queue_read(sock)

    def wait_writable(sock):
        yield _ioq.queue_write(sock)

    try_read = stream_try_read
    try_write = stream_try_write

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
        const, upcase, copy_bytes, ticks_ms, ticks_diff, ticks_add, sleep_ms, wait_for_ms, write_line,
        mem_alloc, mem_free, collect, block_ms, forget_module, new_loop, wait_readable, wait_writable,
        try_read, try_write, rand_below, ignore_interrupts, on_terminate as _on_terminate,
    )

    def on_terminate():
        # SIGTERM stops the firmware like Ctrl-C does: `stopped` and the final stats, exit code 0.
        _on_terminate(_terminated)


# The `reason=` of the `stopped` line.
STOP_INTERRUPT = "interrupt"
STOP_TERMINATE = "terminate"
_stop = [STOP_INTERRUPT]


def stop_reason():
    return _stop[0]


def _terminated():
    _stop[0] = STOP_TERMINATE


def exc_text(e):
    # "MemoryError: memory allocation failed", one line: for events about exceptions nobody foresaw.
    text = str(e)
    return type(e).__name__ + (": " + text if text else "")


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




def exit_status(rc):
    """Hand main()'s result to whoever started us. A host tool (tools.hostrun passes the config and board
    paths as arguments) gets it as the exit status. A board starts main.py with no arguments, and there a
    SystemExit counts as a forced exit: the soft reset runs main.py again, so a config error would loop
    forever. There we return: the error is already printed and the REPL is free."""
    if rc and len(sys.argv) > 1:
        sys.exit(rc)


# -- errno names --------------------------------------------------------------------------------------
# A port's errno module names only a short list (EISCONN is not in it on any port), and the numbers differ
# between newlib (esp32), MicroPython's own table (rp2) and Linux (unix, CPython). The board table's
# "errno_names" ({"number": "NAME"}) gives the names for the numbers its socket layer raises; Net(board)
# puts them here.
port_errno_names = {}  # type: dict[int, str]


def errno_name(e):
    # "ECONNREFUSED" rather than 111: the numbers differ between lwIP and Linux.
    n = e.args[0] if e.args else 0
    if isinstance(n, int):
        name = port_errno_names.get(n)
        if name is None:
            name = errno.errorcode.get(n, None) if hasattr(errno, "errorcode") else None
        return name or "E%d" % n
    return str(n)


def capped_write(raw, cap):
    # A try_write that hands at most cap bytes to one write() call (the board table's write_max). Here, not
    # in dial.py, because the net keeps it for the life of the firmware.
    def capped(sock, buf, off, n):
        return raw(sock, buf, off, n if n <= cap else cap)

    return capped


class LwipNet:
    """Sockets as MicroPython's ports present them (lwIP on boards, the unix port's own): non-blocking
    stream calls, and a non-blocking connect finished by a second connect() whose answer, per port, is in
    the board table's "socket" section (used where its "port", a sys.platform name, is the one running):

      pending  errnos of the first connect() that mean "started" (EINPROGRESS, EAGAIN)
      isconn   errnos of the second connect() that mean "connected": EISCONN, 127 on esp32 (newlib), 106 on
               rp2 and Linux. (The unix port, like Linux, may also return normally once.)
      already  errnos that mean "still connecting" (EALREADY): wait and ask again. rp2 before 1.25 polls a
               connecting socket writable at once, so this is met on every attempt there.
      refused  errnos a failed attempt reads as: esp32 ENOTCONN (lwIP's ERR_CLSD), rp2 EBADF (the error
               callback freed the pcb), unix ECONNREFUSED. Reported as ECONNREFUSED with the port's errno.
      write_max  bytes handed to one write() call (null: no cap). See docs/PORTS.md for why rp2 has one.
      errno_names  {"number": "NAME"} for the numbers the port's socket layer raises.

    The connect side (lookup, connect) runs only between sessions: its bodies are in dial.py, which the
    client forgets while a session runs, so here each is a call into it. The set-up runs once, from
    clientsetup.py. What a session uses (reads, writes, waits, close) is here in full.

    On the host, tests pass a scripted stand-in with the same methods (host_tests/support/fake_sockets.py,
    host_tests/support/portmodel.py)."""

    def __init__(self, board=None, port=PORT):
        from . import clientsetup  # forgotten once the client is made (Client.__init__)

        clientsetup.init_net(self, board, port)

    def resolve(self, host, port):
        from . import dial

        return dial.resolve_addr(host, port)

    def open(self, addr):
        from . import dial

        return dial.open_socket(addr)

    def link_up(self):
        # Replaced on boards by the Wi-Fi station's check: resolving or connecting while the station has no
        # IP only blocks.
        return True

    def addr_str(self, addr):
        from . import dial

        return dial.addr_str(addr)

    def setsockopt(self, sock, level, opt, value):
        sock.setsockopt(level, opt, value)

    def connect_start(self, sock, addr):
        from . import dial

        dial.connect_start(self, sock, addr)

    def connect_finish(self, sock, addr):
        # The coroutine that finishes the connect: awaited by the caller, which bounds the whole wait.
        from . import dial

        return dial.connect_finish(self, sock, addr)

    def close(self, sock):
        try:
            sock.close()
        except OSError:
            pass

    try_read = staticmethod(stream_try_read)
    try_write = staticmethod(stream_try_write)
    wait_readable = staticmethod(wait_readable)
    wait_writable = staticmethod(wait_writable)


if MICROPYTHON:
    Net = LwipNet
else:
    # CPython finishes a connect with getsockopt(SO_ERROR) and moves bytes with send/recv_into; that
    # subclass lives in _cpython.py, so a board's compat.mpy carries none of it.
    from ._cpython import net_class

    Net = net_class(LwipNet)  # type: ignore[misc]
