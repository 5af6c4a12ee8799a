"""One client connection of tools.hbserver: its state, and what its bytes mean.

A connection is an asyncio BufferedProtocol rather than a stream: no task, no StreamReader buffer and no
per-read bytes object per client. Every connection reads into the server's one shared buffer (the loop
runs one callback at a time, and each read is fully handled before the next one starts), so an idle
client costs this object, its decoder (an 8-byte header buffer) and the transport -- a few KiB in all,
whatever --max-payload allows: a frame buffer exists only while a frame is split across reads.

Framing is decoded by the firmware's own sans-IO decoder (firmware/hbkeep/protocol.py); no second decoder.
Timing (ticks, offline, probe sweeps) is driven by the server's few global tasks, never per client; what
counts as a sign of life and how long a partial frame may be held is the server's `offline_rule`
(offline.py). A connection uses its server only through what core.py lists under "what a connection
calls".
"""
import asyncio

from firmware.hbkeep import protocol
from firmware.hbkeep.protocol_host import encode
from firmware.hbkeep.protocol import DATA, ERROR, FRAME_ASSEMBLED, FRAME_IN_PLACE, HEADER_SIZE, HEART

from tools.hbserver.probe import Probe, check_framed, make_payload, match_raw

HEART_FRAME = encode(HEART)
KEEP_FRAME_BYTES = 264  # a split-frame buffer up to this size stays for the next split frame


class LazyDecoder(protocol.Decoder):
    """The firmware's decoder with its frame buffer allocated only while a frame is split across reads,
    grown with the bytes that actually arrive (never to the length a header merely claims), and given
    back once the frame is done: an idle connection's cost does not grow with max_payload (16 MiB allowed
    must not mean 16 MiB per idle client), and a peer that announces 16 MiB and sends 9 bytes costs 9."""

    def _buffer(self, max_payload):
        return bytearray(HEADER_SIZE)

    def _room(self, total, need):
        frame = self.frame
        if len(frame) < need:
            # Doubling keeps the copies of a frame arriving in many reads to O(its size) in all.
            size = 2 * len(frame)
            if size < need:
                size = need
            if size > total:
                size = total
            bigger = bytearray(size)
            bigger[: self.have] = frame[: self.have]
            self.frame = frame = bigger
        return frame

    def release(self):
        """Called between reads: drop a large assembly buffer no frame is using any more."""
        if self.have == 0 and len(self.frame) > KEEP_FRAME_BYTES:
            self.frame = bytearray(HEADER_SIZE)

    def cut(self):
        """(where, bytes held) of a frame cut short: ("header"|"payload", n), or ("-", 0) if none."""
        if not self.have:
            return "-", 0
        return ("header" if self.have < HEADER_SIZE else "payload"), self.have

# Connection states. A connection is reported online once and offline at most once.
NEW = 0  # transport made, not yet admitted
ONLINE = 1
GONE = 2  # reported offline (or refused); waiting for the transport to finish closing


def peer_name(addr):
    """ip:port for the event lines; IPv6 addresses in brackets so the port stays unambiguous."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
    return str(addr)


class Conn(asyncio.BufferedProtocol):
    # __slots__ keeps the per-client cost down (no __dict__): at 10,000 clients every field counts.
    __slots__ = (
        "srv", "transport", "name", "state", "since", "last_heard", "last_frame", "missed", "beats",
        "frames_in", "bytes_in", "frames_out", "bytes_out", "decoder", "partial_since", "probes",
        "paused", "strays", "addr", "gate", "abort_timer", "draining",
    )

    def __init__(self, srv):
        self.srv = srv
        self.transport = None
        self.name = "?"
        self.state = NEW
        self.since = 0.0  # loop time of the connection
        self.last_heard = 0.0  # loop time `missed` was last reset (connection, HEART, or raw bytes)
        self.last_frame = None  # loop time of the last complete frame (any type)
        self.missed = 0  # ticks since last_heard; the seed's per-client counter
        self.beats = 0
        self.frames_in = 0
        self.bytes_in = 0
        self.frames_out = 0
        self.bytes_out = 0
        self.decoder = None  # made on admission: a refused client never costs a frame buffer
        self.partial_since = None  # loop time a partial frame started to be held, None when none is
        self.probes = None  # probes in flight, oldest first (a list, made on the first probe)
        self.paused = False  # the transport's write buffer is above its high-water mark
        self.strays = 0  # raw mode: bytes received with no probe in flight
        self.abort_timer = None  # after close(): aborts the transport if the peer never takes its FIN
        self.draining = False  # closed by us, transport not yet lost: counted in srv.closing
        self.addr = None  # the peer's address; `name` becomes the device id once authenticated
        self.gate = None  # gate.Pending while in TLS handshake or authentication (gate.py)

    # -- asyncio callbacks -------------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.addr = transport.get_extra_info("peername")
        self.name = peer_name(self.addr)
        now = self.srv.loop.time()
        self.since = now
        self.srv.offline_rule.start(self, now)
        self.srv.admit(self)

    def get_buffer(self, sizehint):
        return self.srv.rview  # a view of the shared buffer (see HeartbeatServer.rview)

    def buffer_updated(self, nbytes):
        if self.state != ONLINE:
            if self.gate is not None:  # still passing the gate: only an AUTH frame is expected
                self.srv.gate.feed(self, self.srv.rbuf[:nbytes])
            return  # else dropped during this loop iteration; the rest of its bytes mean nothing
        srv = self.srv
        now = srv.loop.time()
        self.bytes_in += nbytes
        srv.bytes_in += nbytes
        if srv.raw:
            self._raw(nbytes, now)
        else:
            self._framed(nbytes, now)

    def eof_received(self):
        if self.gate is not None:
            self.srv.gate.lost(self)
        self.srv.offline(self, "closed")
        return False  # let the transport close our side too

    def connection_lost(self, exc):
        if self.abort_timer is not None:
            self.abort_timer.cancel()
            self.abort_timer = None
        if self.draining:
            self.draining = False
            self.srv.closing -= 1
        if self.gate is not None:
            self.srv.gate.lost(self)
        if self.state == ONLINE:
            self.srv.offline(self, "reset" if exc is not None else "closed")
        self.state = GONE
        self.srv.forget(self)

    def pause_writing(self):
        self.paused = True

    def resume_writing(self):
        self.paused = False

    # -- writing -----------------------------------------------------------------------------------

    def send(self, data):
        """Write one whole frame (or raw probe). Returns False, writing nothing, while the client is
        not reading fast enough: a backlog beyond the high-water mark would only grow memory."""
        if self.paused or self.state != ONLINE:
            return False
        self.transport.write(data)
        n = len(data)
        self.frames_out += 1
        self.bytes_out += n
        srv = self.srv
        srv.frames_out += 1
        srv.bytes_out += n
        return True

    def send_probe(self, now):
        srv = self.srv
        payload, expected = make_payload(srv.rng, srv.config.probe_bytes)
        data = payload if srv.raw else encode(DATA, payload)
        if not self.send(data):
            return False
        if self.probes is None:
            self.probes = []
        self.probes.append(Probe(now, expected))
        return True

    def close(self):
        self.state = GONE
        t = self.transport
        if t is not None and not t.is_closing():
            if not self.draining:
                self.draining = True
                self.srv.closing += 1
            t.close()  # flushes what is queued, then FIN
            # A peer that never reads again would hold the descriptor and the queued bytes forever:
            # after the grace period the connection is aborted (RST) instead.
            if self.abort_timer is None:
                self.abort_timer = self.srv.loop.call_later(self.srv.close_grace_s, self.abort)

    def abort(self):
        self.abort_timer = None
        if self.transport is not None:
            self.transport.abort()

    # -- reading -----------------------------------------------------------------------------------

    def _framed(self, n, now):
        buf = self.srv.rbuf
        dec = self.decoder
        pos = 0
        frames = 0
        while pos < n:
            pos = dec.feed(buf, pos, n)
            ev = dec.event
            if ev == FRAME_IN_PLACE:
                frames += 1
                self._frame(dec.type, buf, dec.start + HEADER_SIZE, dec.length, now)
            elif ev == FRAME_ASSEMBLED:
                frames += 1
                self._frame(dec.type, dec.frame, HEADER_SIZE, dec.length, now)
            elif ev == ERROR:
                self.srv.protocol_error(self, dec.error_field, dec.error_value, dec.error_reason)
                return
        dec.release()
        self.srv.offline_rule.after_read(self, dec.have > 0, frames > 0, now)

    def _frame(self, ftype, buf, off, length, now):
        srv = self.srv
        self.frames_in += 1
        srv.frames_in += 1
        self.last_frame = now
        if ftype == HEART:
            # Only a HEART resets the count, as in the seed (offline.py says why).
            srv.offline_rule.heard(self, now)
            self.beats += 1
            srv.beats += 1
            if srv.verbose:
                srv.emit("beat", {"client": self.name})
            if srv.config.heart_reply:
                self.send(HEART_FRAME)
            return
        # DATA: consumed whole (the seed's server left it unread and lost the framing). The oldest probe
        # in flight claims it; with none in flight it is the client's own data, counted and dropped.
        srv.data_frames += 1
        pending = self.probes
        if pending:
            probe = pending.pop(0)
            srv.probe_done(self, probe, now, check_framed(probe, buf, off, length))
        elif srv.verbose:
            srv.emit("data", {"client": self.name, "len": length})

    def _raw(self, n, now):
        # No framing: any byte is a sign of life, and every byte belongs to a probe reply.
        self.srv.offline_rule.heard(self, now)
        self.last_frame = now
        data = memoryview(self.srv.rbuf)[:n]
        try:
            stray = match_raw(self.probes if self.probes is not None else [], data,
                              lambda p: self.srv.probe_done(
                                  self, p, now, None if p.bad_at < 0 else ("content", p.bad_at)))
        finally:
            data.release()  # never leave a view of the shared buffer behind
        if stray:
            self.srv.stray(self, stray)
