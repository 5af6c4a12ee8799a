# The asyncio driver: what the seed's vTcpKeepaliveTask does (connect, retry every retry_ms, keepalive
# options, read and write back upper-cased) plus application-level beats and peer-silence detection.
#
# The decisions live in link.Link and the framing in protocol.Decoder; this file only moves bytes and
# time between them and the sockets. Per connection it runs two tasks: the receiver (read, upper-case,
# echo; one loop for raw mode, one for framed) and the supervisor (asks Link.decide() what now, does it,
# sleeps as long as Link says). The receiver's hot path allocates nothing on MicroPython: non-blocking
# reads into one buffer, echoes written from where the bytes lie, and waiting on the poller only when
# a read finds nothing.
from . import compat
from .compat import const, ticks_ms, sleep_ms, upcase
from .protocol import DATA, HEADER_SIZE, FRAME_IN_PLACE, FRAME_ASSEMBLED, NEED_MORE, ERROR
from .link import BEAT, SILENT, STALLED

TYPE_CHECKING = const(False)  # const: MicroPython compiles the block below away, names and all
if TYPE_CHECKING:  # for mypy only: at run time the validator's module leaves the heap after start
    from typing import Any
    from .config import Config
    from .events import Events, Stats
    from .link import Link
    from .protocol import Decoder
    from .repeats import FailureRun
    from .servers import Rotation

VERSION = "0.1.0"

# Disconnect reasons (the `reason=` of `disconnected` events)
R_EOF = "eof"  # the server closed the connection
R_RESET = "reset"  # a socket error; detail names the errno
R_PROTOCOL = "protocol"  # the server broke the wire format
R_SILENCE = "silence"  # nothing received for peer_miss x beat_ms
R_STALL = "write_stall"  # the server stopped reading for peer_miss x beat_ms
R_STOP = "stop"  # the client was stopped
R_ERROR = "error"  # an exception nobody foresaw (a bug, a MemoryError); detail names its type
R_AUTH = "auth"  # authentication failed: wrong proof, an unexpected frame, closed or timed out


class Client:
    # Every attribute, declared for the type checker (MicroPython generates no code for a bare annotation):
    # they are set by clientsetup.init_client, so that the constructor's code is not in the heap after it.
    cfg: "Config"  # mypy then knows every cfg.<name> read here, and a misspelt one fails `make typecheck`
    board: dict
    net: "Any"  # compat.Net, or a stand-in with its methods
    ev: "Events"
    stats: "Stats"
    framed: bool
    link: "Link"
    rxbuf: bytearray
    dec: "Decoder | None"
    beat: bytearray  # the HEART frame, encoded once
    addr: "Any"  # the server's address: resolved once, then cached
    rot: "Rotation | None"  # with a "servers" list: which one is next (servers.py, loaded only then)
    sock: "Any"
    connected: "Any"  # an Event, set while a connection is up: lets tests and tools wait
    _tx_busy: bool
    _tx_idle: "Any"  # an Event, set while nobody is mid-write
    _reason: "str | None"
    _detail: "str | None"
    _rx_task: "Any"
    _beat_task: "Any"  # finishes a beat the socket took only part of
    failing: "FailureRun | None"  # a run of failures (repeats.py): kept through a session only on probation
    on_data: "Any"
    _app_hdr: "bytearray | None"
    _app_task: "Any"  # finishes an application frame the socket took only part of
    progress: int
    pulse_ms: int
    tls: "tuple | None"  # tls.settings(): (context, server hostname, handshake timeout ms)

    def __init__(self, config, board, net=None, events=None):
        from . import clientsetup  # run once, then forgotten

        clientsetup.init_client(self, config, board, net, events)
        compat.forget_module("clientsetup")

    # -- the forever loop ----------------------------------------------------------------------
    async def run(self):
        from . import clientsetup  # the start line, once

        clientsetup.announce(self)
        compat.forget_module("clientsetup")
        del clientsetup
        stats_task = compat.create_task(self._stats_loop()) if self.cfg.stats_ms else None
        link = self.link
        try:
            while True:
                self._bump()
                # Nothing raised in one attempt ends the client: it becomes an event and a retry.
                try:
                    await self._attempt()
                except Exception as e:
                    self.error("attempt", e)
                    link.connect_failed()
                await self.pause(link.retry_delay(compat.rand_below))
        finally:
            if stats_task:
                stats_task.cancel()

    def _bump(self):
        # Masked below 2**30: a board's small ints end there, and a bigger counter would allocate.
        self.progress = (self.progress + 1) & 0x3FFFFFFF

    async def pause(self, ms):
        """Sleep ms, in slices of pulse_ms that count as progress: a long backoff (or a restart's
        pause) is a deliberate wait, not a hang, for the watchdog feeder."""
        pulse = self.pulse_ms
        while pulse and ms > pulse:
            await sleep_ms(pulse)
            self._bump()
            ms -= pulse
        await sleep_ms(ms)

    async def _attempt(self):
        if not self.net.link_up():
            return
        from . import dial  # the connect path: forgotten by the time it returns a socket (dial.py)

        sock = await dial.attempt(self)
        del dial  # nor does this frame hold it through the session
        if sock is not None:
            try:
                await self._session(sock)
            finally:
                # The session's end is told to the link and printed by probation.py: a session lost within
                # its first beat period is one more failure of a run (repeats.py). Here, not in _session,
                # so that the session's tasks and frame are garbage by the time the module loads (stopped:
                # the end is still printed). Forgotten at once: an outage that follows needs none of it.
                from .probation import ended

                ended(self)
                compat.forget_module("probation")
        if self.rot:  # a failed attempt or an ended session: on to the next server
            self.addr = self.rot.next(self.addr)

    def error(self, where, e):
        # Where an exception nobody foresaw was caught, and what it was. Never the end of the firmware.
        self.ev.emit("client_error", "where", where, "error", compat.exc_text(e))

    # -- one connection ------------------------------------------------------------------------
    async def _session(self, sock):
        self.sock = sock
        self.link.up(ticks_ms())
        if self.dec:
            self.dec.reset()
        self._tx_busy = False
        self._tx_idle.set()
        self._reason = None
        self._detail = None
        self.connected.set()
        if self.on_data is not None:
            from . import appio  # the application takes the payloads: nothing is echoed

            rx = compat.create_task(appio.receive(self, sock))
        else:
            rx = compat.create_task(self._receive_framed(sock) if self.framed else self._receive_raw(sock))
        self._rx_task = rx
        sup = compat.create_task(self._guarded(self._supervise(sock), "supervisor"))
        try:
            try:
                self._reason = await rx
            except compat.CancelledError:
                if self._reason is None:  # not cancelled by the supervisor: we are being stopped
                    self._reason = R_STOP
                    raise
            except OSError as e:
                self._reason = R_RESET
                self._detail = compat.errno_name(e)
            except Exception as e:
                self.error("receiver", e)
                self._reason = R_ERROR
                self._detail = type(e).__name__
        finally:
            self.connected.clear()
            sup.cancel()
            rx.cancel()
            if self._beat_task is not None:
                self._beat_task.cancel()
                self._beat_task = None
            if self._app_task is not None:
                self._app_task.cancel()  # its sender wakes up and returns False
            # A writer cancelled before it ever ran never released the write side: do it for all.
            self._tx_busy = False
            self._tx_idle.set()
            self.net.close(sock)
            self.sock = None

    async def _guarded(self, coro, where):
        # A task that dies of an exception would leave the session half-alive (no beats, no silence
        # checks); instead the session ends with reason=error and the client reconnects.
        try:
            await coro
        except Exception as e:
            self.error(where, e)
            self._abort(R_ERROR, type(e).__name__)

    def _abort(self, reason, detail):
        # Called by the supervisor: end the receiver, and so the session, with this reason.
        self._reason = reason
        self._detail = detail
        if self._rx_task is not None:
            self._rx_task.cancel()

    async def _supervise(self, sock):
        link = self.link
        while True:
            self._bump()
            now = ticks_ms()
            act = link.decide(now)
            if act == SILENT:
                silent_ms = link.silent_for(now)
                self.ev.emit("peer_silent", "silent_ms", silent_ms, "limit_ms", link.limit_ms)
                self._abort(R_SILENCE, "%dms" % silent_ms)
                return
            if act == STALLED:
                self._abort(R_STALL, "%dms" % link.stalled_for(now))
                return
            if act == BEAT and not self._beat(sock):
                return
            wait = link.wait
            if self.pulse_ms and wait > self.pulse_ms:
                wait = self.pulse_ms
            await sleep_ms(wait)

    def _beat(self, sock):
        """Send one HEART; False when that found the connection broken (the session is then ending)."""
        # The supervisor itself never waits on a blocked write, or it would stop supervising exactly
        # when the link is stuck: what the socket does not take now is finished by a task of its own.
        if self._tx_busy or self.link.beats_held():
            # Mid-frame or backed up: a beat now would land inside a frame or only queue. Or the port's
            # budget of writes the peer has not answered is spent (rp2: docs/PORTS.md).
            self.stats.beats_skipped += 1
            return True
        try:
            k = self.net.try_write(sock, self.beat, 0, HEADER_SIZE)
        except OSError as e:  # the beat found the connection broken before a read did
            self._abort(R_RESET, compat.errno_name(e))
            return False
        self.link.beat_written()
        if k < HEADER_SIZE:
            self._hold_tx()  # before anything else can write: the beat must finish first
            self._beat_task = compat.create_task(self._finish_beat(sock, k))
        self.stats.beats_sent += 1
        if self.ev.verbose:
            self.ev.emit("beat", "n", self.stats.beats_sent)
        return True

    async def _finish_beat(self, sock, sent):
        try:
            await self._send_rest(sock, self.beat, sent, HEADER_SIZE - sent, True)
        except OSError as e:
            self._abort(R_RESET, compat.errno_name(e))
        except Exception as e:
            self.error("beat", e)
            self._abort(R_ERROR, type(e).__name__)

    # -- writing: both tasks write, never interleaving two frames ------------------------------
    def _send(self, sock, buf, off, n):
        """Write buf[off:off + n]: what the socket takes now is written here and now. Returns None when
        that was all of it, else the coroutine that writes the rest, which the caller awaits at once:

            rest = self._send(sock, buf, off, n)
            if rest is not None:
                await rest

        Not an `async def` itself, though every caller awaits the rest: on MicroPython each call of an
        async def allocates a generator, and this runs for every echo. Only the slow path (send
        buffer full, or the other task mid-frame) allocates one, in _send_rest."""
        if not self._tx_busy:
            k = self.net.try_write(sock, buf, off, n)
            if k == n:
                return None
            off += k
            n -= k
        return self._send_rest(sock, buf, off, n)

    def _hold_tx(self):
        self._tx_busy = True
        self._tx_idle.clear()
        self.link.tx_blocked(ticks_ms())

    async def _send_rest(self, sock, buf, off, n, held=False):
        # Slow path, taken only when the send buffer is full or the other writer is mid-frame.
        # Nothing can slip in between _send's partial write and this point: no await between.
        link = self.link
        if not held:
            # Only the receiver comes here unheld: from now on it is not reading.
            link.reading_paused(ticks_ms())
            while self._tx_busy:
                await self._tx_idle.wait()
            self._hold_tx()
        net = self.net
        try:
            while n > 0:
                k = net.try_write(sock, buf, off, n)
                if k == 0:
                    await net.wait_writable(sock)
                else:
                    off += k
                    n -= k
                    link.tx_blocked(ticks_ms())  # progress: the peer is reading, slowly
        finally:
            link.tx_unblocked()
            if not held:
                link.reading_resumed(ticks_ms())
            self._tx_busy = False
            self._tx_idle.set()

    # -- reading: the hot loops ----------------------------------------------------------------
    # One loop per mode, each with its own copy of the read-or-wait and yield lines: a shared
    # `async def` step would allocate a generator per read on MicroPython, and the framed loop must
    # allocate nothing per frame. Both return a disconnect reason and raise OSError on socket errors.
    async def _receive_raw(self, sock):
        # The seed's loop exactly: upper-case every byte read and write it all back.
        net = self.net
        buf = self.rxbuf
        link = self.link
        st = self.stats
        verbose = self.ev.verbose
        try_read = net.try_read
        last_yield = ticks_ms()
        while True:
            n = try_read(sock, buf)
            if n < 0:
                await net.wait_readable(sock)
                continue
            if n == 0:
                return R_EOF
            now = ticks_ms()
            link.received(now)
            upcase(buf, 0, n)
            rest = self._send(sock, buf, 0, n)
            if rest is not None:
                await rest
            st.echoed(n)
            if verbose:
                self.ev.emit("echo", "bytes", n)
            # While data never stops, reads never wait, so yield to the supervisor and other tasks --
            # once per millisecond tick rather than per read: each pass of the scheduler polls.
            if now != last_yield:
                last_yield = now
                await sleep_ms(0)

    async def _receive_framed(self, sock):
        # Runs of whole DATA frames are upper-cased where they lie in the read buffer and written back
        # with one write; a frame split across reads is assembled by the decoder and written from
        # there; a HEART is counted, not answered.
        net = self.net
        buf = self.rxbuf
        link = self.link
        st = self.stats
        dec = self.dec
        assert dec is not None  # made with the client in framed mode
        verbose = self.ev.verbose
        try_read = net.try_read
        last_yield = ticks_ms()
        while True:
            n = try_read(sock, buf)
            if n < 0:
                await net.wait_readable(sock)
                continue
            if n == 0:
                return R_EOF
            now = ticks_ms()
            link.received(now)
            pos = 0
            run = 0  # start of the bytes in buf still to be echoed: buf[run:pos] is ready to go
            while pos < n:
                nxt = dec.feed(buf, pos, n)
                ev = dec.event
                if ev == FRAME_IN_PLACE and dec.type == DATA:
                    s = dec.start + HEADER_SIZE  # == pos + HEADER_SIZE: in place means at pos
                    upcase(buf, s, s + dec.length)
                    st.echoed(dec.length)
                    if verbose:
                        self.ev.emit("echo", "bytes", dec.length)
                    pos = nxt  # joins the run
                    continue
                # Anything else ends the run at pos (a HEART, the start of a split frame, an error):
                # write the run out first, so the echoes keep their order.
                if pos > run:
                    rest = self._send(sock, buf, run, pos - run)
                    if rest is not None:
                        await rest
                if ev == ERROR:
                    # Whole frames before the error were echoed just above: they were valid.
                    self._protocol_error(dec)
                    return R_PROTOCOL
                if ev == FRAME_ASSEMBLED and dec.type == DATA:
                    # Completed from an earlier read, so it is the first thing in this one.
                    total = HEADER_SIZE + dec.length
                    upcase(dec.frame, HEADER_SIZE, total)
                    rest = self._send(sock, dec.frame, 0, total)
                    if rest is not None:
                        await rest
                    st.echoed(dec.length)
                    if verbose:
                        self.ev.emit("echo", "bytes", dec.length)
                elif ev != NEED_MORE:
                    st.hearts_received += 1  # in place or assembled
                # NEED_MORE: buf[pos:n] is the start of a split frame, now held by the decoder (nxt == n).
                pos = run = nxt
            if run < n:
                rest = self._send(sock, buf, run, n - run)
                if rest is not None:
                    await rest
            # Yield once per millisecond tick while reads never wait (see _receive_raw).
            if now != last_yield:
                last_yield = now
                await sleep_ms(0)

    def _protocol_error(self, dec):
        # The `protocol_error` line comes with the session's end (dial.report_end), from what dec keeps.
        self.stats.protocol_errors += 1
        self._detail = "%s=%d" % (dec.error_field, dec.error_value)

    # -- the application's side (docs/APP.md): in appio.py, loaded only by an application that uses it
    def is_connected(self):
        return self.sock is not None

    async def wait_connected(self):
        await self.connected.wait()

    async def send(self, payload):
        """Send payload as one DATA frame (raw mode: as plain bytes), whole and never inside another
        frame. True once written; False, with nothing queued, while the link is down or when the
        connection ends before the frame is out. The caller keeps payload unchanged until it returns."""
        from . import appio

        return await appio.send(self, payload)

    async def _stats_loop(self):
        while True:
            await sleep_ms(self.cfg.stats_ms)
            try:
                self.emit_stats()
            except Exception as e:
                self.error("stats", e)

    def emit_stats(self):
        # On MicroPython the line also carries the heap: bytes in use and free (gc.mem_alloc/mem_free).
        if compat.MICROPYTHON:
            self.ev.emit("stats", *(self.stats.fields() + ("heap_used", compat.mem_alloc(), "heap_free", compat.mem_free())))
        else:
            self.ev.emit("stats", *self.stats.fields())
