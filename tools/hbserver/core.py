"""The heartbeat server itself: configuration, client registry, ticker, probe sweep, summaries.

The command line around it is cli.py; one connection's bytes are conn.py; when a client goes offline is
offline.py; probe bookkeeping is probe.py; TLS and authentication, when on, gate.py. Import HeartbeatServer
and ServerConfig from tools.hbserver.
"""
import asyncio
import errno
import random
from dataclasses import asdict, dataclass
from typing import Optional, Union

from tools.hbserver.conn import ONLINE, Conn, LazyDecoder, peer_name
from tools.hbserver.offline import INCOMPLETE, SILENT, OfflineRule
from tools.hbserver.probe import BAD, LATE, PROBE_WINDOW, ProbeStats

READ_BUFFER = 65536  # the one read buffer all connections share
WRITE_HIGH_WATER = 16384  # per client: above this, HEART replies and probes are skipped (bounded memory)
ACCEPT_REPORT_S = 10.0  # out of descriptors: one accept_failed line per this many seconds at most
OFFLINE_REASONS = ("silent", "closed", "reset", "protocol", "shutdown", "replaced")


@dataclass
class ServerConfig:
    host: str = "0.0.0.0"  # all addresses, as the seed's server
    port: int = 39002  # the seed's port; 0 picks a free one (the `listening` event says which)
    tick_ms: int = 3000  # the seed's checker period
    offline_ticks: int = 5  # the seed's HEART_COUNT
    heart_reply: bool = True  # answer each HEART with a HEART (False: silent, as the seed's server)
    probe_ms: int = 0  # echo probe period; 0 = no probes
    probe_bytes: int = 16
    probe_mode: str = "framed"  # "framed": DATA frames; "raw": bare bytes, for unframed clients
    probe_late_ms: int = 1000  # a probe reply later than this counts as late
    max_clients: int = 0  # 0 = no limit
    max_payload: int = 1024  # largest DATA payload accepted (the firmware's default)
    header_timeout_ms: int = 5000  # a partial frame held longer than this drops the client
    summary_ms: int = 10000  # 0 = no summary lines
    verbose: bool = False  # also emit per-frame events (beat, data, probe_ok)
    backlog: int = 1024  # the seed used 20; a fleet reconnecting at once needs more
    close_ms: int = 2000  # a dropped client's queued bytes may take this long to flush; then it is aborted
    # Security options (docs/SECURITY.md; gate.py). Off by default: the seed's plain protocol.
    tls_cert: Optional[str] = None  # certificate chain (PEM); with tls_key, serve TLS
    tls_key: Optional[str] = None
    auth_keys: Union[str, dict, None] = None  # JSON file path, or a dict id -> hex key: authenticate
    auth_timeout_ms: int = 5000  # a connection must have authenticated this long after CHALLENGE
    handshake_timeout_ms: int = 5000  # ... and finished its TLS handshake this long after accept
    max_pending: int = 64  # connections still in TLS handshake or authentication, at most
    auth_fail_limit: int = 10  # failed authentications from one address per window before refusing it
    auth_fail_window_ms: int = 60000
    reuse_port: bool = False  # SO_REUSEPORT: several processes share the port (tools/hbserver/workers.py)

    @property
    def timeout_ms(self):
        return self.tick_ms * self.offline_ticks

    def validate(self):
        """Raise ValueError naming the first bad value (the CLI checks ranges before this)."""
        def need(ok, text):
            if not ok:
                raise ValueError(text)

        need(0 <= self.port <= 65535, "port must be from 0 to 65535, got %r" % (self.port,))
        need(self.tick_ms >= 1, "tick_ms must be at least 1, got %r" % (self.tick_ms,))
        need(self.offline_ticks >= 1, "offline_ticks must be at least 1, got %r" % (self.offline_ticks,))
        need(self.probe_ms >= 0, "probe_ms must be >= 0, got %r" % (self.probe_ms,))
        need(self.probe_mode in ("framed", "raw"),
             "probe_mode must be 'framed' or 'raw', got %r" % (self.probe_mode,))
        need(self.probe_bytes >= 1, "probe_bytes must be at least 1, got %r" % (self.probe_bytes,))
        need(self.max_payload >= 0, "max_payload must be >= 0, got %r" % (self.max_payload,))
        need(self.probe_mode == "raw" or self.probe_bytes <= self.max_payload,
             "probe_bytes (%d) must not exceed max_payload (%d): the replies would be refused"
             % (self.probe_bytes, self.max_payload))
        need(self.probe_late_ms >= 1, "probe_late_ms must be at least 1, got %r" % (self.probe_late_ms,))
        need(self.max_clients >= 0, "max_clients must be >= 0, got %r" % (self.max_clients,))
        need(self.header_timeout_ms >= 1,
             "header_timeout_ms must be at least 1, got %r" % (self.header_timeout_ms,))
        need(self.summary_ms >= 0, "summary_ms must be >= 0, got %r" % (self.summary_ms,))
        need(self.backlog >= 1, "backlog must be at least 1, got %r" % (self.backlog,))
        need(self.close_ms >= 1, "close_ms must be at least 1, got %r" % (self.close_ms,))
        need((self.tls_cert is None) == (self.tls_key is None),
             "tls_cert and tls_key go together: give both or neither")
        need(self.auth_keys is None or self.probe_mode == "framed",
             "auth_keys needs probe_mode 'framed': authentication is made of frames, raw clients cannot do it")
        for name in ("auth_timeout_ms", "handshake_timeout_ms", "max_pending", "auth_fail_limit",
                     "auth_fail_window_ms"):
            need(getattr(self, name) >= 1, "%s must be at least 1, got %r" % (name, getattr(self, name)))

    @property
    def gated(self):
        return self.tls_cert is not None or self.auth_keys is not None


class HeartbeatServer:
    """The server. `on_event(name, fields)` is called synchronously for every event, fields being a
    dict in a stable order (see docs/SERVER.md for names and fields)."""

    def __init__(self, config=None, on_event=None, **overrides):
        config = config or ServerConfig()
        if overrides:
            config = ServerConfig(**{**asdict(config), **overrides})
        config.validate()
        self.config = config
        self.on_event = on_event
        self.verbose = config.verbose
        self.raw = config.probe_mode == "raw"
        self.rng = random.Random()
        self.rbuf = bytearray(READ_BUFFER)
        self.offline_rule = OfflineRule(config)
        # What connections hand asyncio to read into. A view, not the bytearray: asyncio's TLS layer
        # (sslproto) reads a second record into `buf[offset:]`, which for a bytearray is a copy -- the
        # bytes would be lost and stale ones delivered in their place.
        self.rview = memoryview(self.rbuf)
        self.loop = None
        self.port = None
        self.clients = set()  # online connections
        self.by_name = {}  # client name (device id, or peer address) -> its one online connection
        self.close_grace_s = config.close_ms / 1000
        self.closing = 0  # connections we closed whose transport is not gone yet (still flushing, or stuck)
        self.failure = None  # the exception that stopped the server (a periodic task or the event hook)
        self.accept_failures = 0  # accepts that failed for lack of descriptors or memory, since start
        self._accept_unreported = 0
        self._accept_reported_at = None
        self._prev_handler = None
        self.done = asyncio.Event()  # set once stop() has finished, whoever called it
        self.probes = ProbeStats()
        self.late_s = config.probe_late_ms / 1000
        # Totals since start.
        self.connections = 0
        self.refused = 0
        self.beats = 0
        self.data_frames = 0
        self.frames_in = self.bytes_in = self.frames_out = self.bytes_out = 0
        self.protocol_errors = 0
        self.offline_by = dict.fromkeys(OFFLINE_REASONS, 0)
        # Observers of the client lifecycle (presence.py, metrics.py): each may define started(server),
        # online(conn), offline(conn, reason) and a coroutine stopped(). Called outside the per-frame path.
        self.hooks = []
        self._server = None
        self._tasks = []
        self._conns = set()  # every transport not yet lost: online, refused or dropped and flushing
        self._all_closed = None
        self._stopped = None
        self._started_at = 0.0
        self._window_at = 0.0  # start of the current summary window
        self._window_beats = 0
        self._state = "new"
        self.gate = None
        if config.gated:  # imported only when asked for: the plain server never loads ssl or auth
            from tools.hbserver.gate import Gate

            self.gate = Gate(self, config)  # reads the certificate and key files: ValueError naming them

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self):
        """Listen; returns the bound port (useful with port 0)."""
        if self._state != "new":
            raise RuntimeError("HeartbeatServer.start() called twice")
        self._state = "running"
        self.loop = asyncio.get_running_loop()
        self._all_closed = asyncio.Event()
        cfg = self.config
        self._server = await self.loop.create_server(
            lambda: Conn(self), cfg.host, cfg.port, backlog=cfg.backlog, reuse_address=True,
            reuse_port=cfg.reuse_port or None)
        self.port = self._server.sockets[0].getsockname()[1]
        self._started_at = self._window_at = self.loop.time()
        self._prev_handler = self.loop.get_exception_handler()
        self.loop.set_exception_handler(self._loop_exception)
        self._tasks.append(asyncio.create_task(self._every(cfg.tick_ms, self.tick)))
        if cfg.probe_ms:
            self._tasks.append(asyncio.create_task(self._every(cfg.probe_ms, self._probe_sweep)))
        if cfg.summary_ms:
            self._tasks.append(asyncio.create_task(self._every(cfg.summary_ms, self._summary)))
        self.emit("listening", {
            "host": cfg.host, "port": self.port, "tick_ms": cfg.tick_ms, "offline_ticks": cfg.offline_ticks,
            "timeout_ms": cfg.timeout_ms, "heart_reply": "on" if cfg.heart_reply else "off",
            "probe_ms": cfg.probe_ms, "probe_mode": cfg.probe_mode, "probe_bytes": cfg.probe_bytes,
            "max_clients": cfg.max_clients, "max_payload": cfg.max_payload,
            "tls": "on" if cfg.tls_cert else "off", "auth": "on" if cfg.auth_keys is not None else "off",
            "loop": type(self.loop).__module__.split(".")[0]})
        self._call_hooks("started", self)
        return self.port

    async def stop(self):
        """Stop accepting, close every client (offline reason=shutdown), wait for them to go, and
        emit `stopped`. Safe to call more than once; a second call waits for the first to finish."""
        if self._state == "stopping":
            await self._stopped.wait()
        if self._state != "running":
            return
        self._state = "stopping"
        self._stopped = asyncio.Event()
        self._server.close()
        current = asyncio.current_task()
        for t in self._tasks:
            if t is not current:
                t.cancel()
        await asyncio.gather(*(t for t in self._tasks if t is not current), return_exceptions=True)
        if self.gate is not None:
            self.gate.close_all()
        for c in list(self.clients):
            self.offline(c, "shutdown")
        if self._conns:
            try:
                async with asyncio.timeout(self.close_grace_s):
                    await self._all_closed.wait()
            except TimeoutError:
                pass  # clients that do not read cannot be flushed to; they are aborted below
        # Anything still open here belongs to a peer not reading what was queued: abort, not wait.
        for c in list(self._conns):
            c.abort()
        await self._server.wait_closed()
        if self.loop.get_exception_handler() == self._loop_exception:
            self.loop.set_exception_handler(self._prev_handler)
        for h in self.hooks:
            if hasattr(h, "stopped"):
                await h.stopped()
        self._state = "stopped"
        self._stopped.set()
        self.done.set()
        s = self.stats()
        self.emit("stopped", {
            "up_ms": s["up_ms"], "connections": s["connections"], "refused": s["refused"],
            "beats": s["beats"], "protocol_errors": s["protocol_errors"], "probes_sent": s["probes_sent"],
            "probes_ok": s["probes_ok"], "probes_bad": s["probes_bad"], "probes_late": s["probes_late"],
            "probes_lost": s["probes_lost"], "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"]})

    async def _every(self, period_ms, fn):
        """Call fn(now) every period at a fixed phase. A slot missed because the loop was busy is
        skipped, never made up back to back: running two ticks in a row would count a missed beat for
        clients whose beats are sitting unread in the socket -- a false offline."""
        loop = self.loop
        period = period_ms / 1000
        nxt = loop.time() + period
        while True:
            await asyncio.sleep(nxt - loop.time())
            now = loop.time()
            try:
                fn(now)
            except Exception as e:
                # A ticker that died would leave a server answering beats but dropping nobody.
                self._fail(fn.__name__.strip("_"), e)
                return
            nxt += period
            if nxt <= now:
                nxt += period * (int((now - nxt) / period) + 1)

    def _fail(self, where, exc):
        """Something every client depends on failed (a periodic task, or the event hook: a broken stdout).
        A half-alive server is worse than none: record it and stop; the CLI then exits non-zero."""
        if self.failure is not None:
            return
        self.failure = (where, exc)
        if self._state == "running":
            self._tasks.append(asyncio.ensure_future(self.stop()))

    def _loop_exception(self, loop, context):
        # asyncio reports an accept() that failed for lack of descriptors (EMFILE, ENFILE) or memory
        # through the loop's exception handler, with a traceback, once per failed retry: under a connect
        # storm that is a flood. Counted here and reported once per interval instead.
        exc = context.get("exception")
        if isinstance(exc, OSError) and "accept" in str(context.get("message", "")):
            self.accept_failures += 1
            self._accept_unreported += 1
            now = loop.time()
            if self._accept_reported_at is None or now - self._accept_reported_at >= ACCEPT_REPORT_S:
                self._accept_reported_at = now
                self.emit("accept_failed", {
                    "reason": errno.errorcode.get(exc.errno, str(exc.errno)), "count": self._accept_unreported,
                    "total": self.accept_failures, "open": len(self._conns)})
                self._accept_unreported = 0
            return
        if self._prev_handler is not None:
            self._prev_handler(loop, context)
        else:
            loop.default_exception_handler(context)

    # -- what a connection calls (conn.py, and gate.py on its behalf) ---------------------------------
    # Besides these methods a connection reads `loop`, `rbuf` and `rview` (the shared read buffer),
    # `config`, `raw`, `verbose`, `rng`, `gate` and `offline_rule`, adds to the totals (`beats`,
    # `frames_in`, `bytes_in`, `frames_out`, `bytes_out`, `data_frames`) and reports through `emit`.

    def admit(self, conn):
        """A new connection: online, or refused (over max_clients, or stopping)."""
        self._conns.add(conn)
        if self.gate is not None and self._state == "running":
            self.gate.enter(conn)  # TLS and/or authentication first; the gate calls admit_passed
            return
        self.admit_passed(conn)

    def admit_passed(self, conn):
        """A connection past the gate (or with none to pass): online, or refused."""
        cfg = self.config
        # One online connection per name, the newest wins (replace() says why). A connection that takes
        # over its name takes over that connection's slot too: a device whose stale connection holds the
        # last slot of a full server gets back in, instead of being locked out until the stale one times out.
        old = self.by_name.get(conn.name)
        # Every connection not yet released counts, not only the online ones: a dropped client still
        # flushing (or never reading) holds a descriptor and its queued bytes until it is gone.
        if self._state != "running" or (
                old is None and cfg.max_clients and len(self.clients) + self.closing >= cfg.max_clients):
            self.refused += 1
            self.emit("refused", {"client": conn.name,
                                  "reason": "max_clients" if self._state == "running" else "stopping",
                                  "online": len(self.clients), "closing": self.closing})
            conn.close()  # a clean FIN: the client sees the connection end, not a reset
            return
        if old is not None:
            self.replace(old, conn)
        conn.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        conn.decoder = LazyDecoder(cfg.max_payload)
        conn.state = ONLINE
        self.clients.add(conn)
        self.by_name[conn.name] = conn
        self.connections += 1
        self.emit("online", {"client": conn.name, "online": len(self.clients)})
        self._call_hooks("online", conn)

    def replace(self, old, new, now=None):
        """`new` is being admitted under the name `old` is online with: `old` is closed, reason replaced.

        With device authentication the name is the device id, and a key is one device: a second
        connection under that id is either the device back before the server noticed its old connection
        die (Wi-Fi gone, a reboot, a NAT that forgot the mapping: nothing reaches the server until the
        offline rule runs out) or someone else holding the key. The newest wins: the reconnected device is
        served at once instead of locked out for up to the offline timeout, and a clone becomes visible --
        each side's reconnection throws the other out, a `replaced` line each time, naming both peers.
        Without authentication the name is the peer's ip:port. A device reaches the server at one address,
        and TCP allows one live connection per pair of addresses, so a new connection from the same ip:port
        means the kernel has already dropped the old one; the server has only not read that yet."""
        self._replaced(old, peer_name(new.addr), None, now)

    def replaced_elsewhere(self, conn, server):
        """A newer connection under `conn`'s name is held by another server (the presence store says so,
        presence.py): the same rule across servers -- `conn` is closed, reason replaced."""
        self._replaced(conn, None, server)

    def _replaced(self, old, new_peer, new_server, now=None):
        if old not in self.clients:  # already offline (or never a client of this server)
            return
        now = self.loop.time() if now is None else now
        self.emit("replaced", {
            "client": old.name, "old_peer": peer_name(old.addr), "new_peer": new_peer, "new_server": new_server,
            "up_ms": _ms(now - old.since), "since_last_ms": _ms(now - old.last_heard)})
        self.offline(old, "replaced", now)

    def offline(self, conn, reason, now=None):
        """Report a client offline once, forget it, close its connection."""
        if conn.state != ONLINE:
            return
        now = self.loop.time() if now is None else now
        self.clients.discard(conn)
        if self.by_name.get(conn.name) is conn:
            del self.by_name[conn.name]
        self.offline_by[reason] += 1
        if conn.probes:
            self.probes.abandon(conn.probes)
            conn.probes = None
        cut, held = conn.decoder.cut() if conn.decoder is not None else ("-", 0)
        self.emit("offline", {
            "client": conn.name, "reason": reason, "missed": conn.missed,
            "since_last_ms": _ms(now - conn.last_heard), "up_ms": _ms(now - conn.since),
            "beats": conn.beats, "frames_in": conn.frames_in, "bytes_in": conn.bytes_in,
            "frames_out": conn.frames_out, "bytes_out": conn.bytes_out, "cut": cut, "partial": held,
            "online": len(self.clients)})
        self._call_hooks("offline", conn, reason)
        conn.close()

    def forget(self, conn):
        """The transport is gone (after offline, refusal or a peer's close)."""
        self._conns.discard(conn)
        if not self._conns and self._state == "stopping":
            self._all_closed.set()

    def protocol_error(self, conn, field, value, reason):
        """The client's bytes broke the framing: reported, and the client goes offline."""
        self.protocol_errors += 1
        self.emit("protocol_error", {"client": conn.name, "field": field, "value": value, "reason": reason})
        self.offline(conn, "protocol")

    def probe_done(self, conn, probe, now, mismatch):
        """A reply to `probe` arrived: `mismatch` None, or (what, detail) saying how it differs."""
        outcome = self.probes.resolve(probe, now, self.late_s, mismatch is None)
        if outcome == BAD:
            what, detail = mismatch
            fields = {"client": conn.name, "mode": self.config.probe_mode, "reason": what}
            if what == "length":
                fields.update(expected=len(probe.expected), got=detail)
            else:
                fields.update(offset=detail, len=len(probe.expected))
            self.emit("probe_mismatch", fields)
        elif outcome == LATE and not probe.counted_late:
            self.emit("probe_late", {"client": conn.name, "rtt_ms": _ms3(now - probe.sent)})
        elif self.verbose:
            self.emit("probe_ok", {"client": conn.name, "rtt_ms": _ms3(now - probe.sent)})

    def stray(self, conn, nbytes):
        """Raw mode: bytes arrived with no probe in flight."""
        self.probes.stray_bytes += nbytes
        if not conn.strays:  # once per connection: a chattering client must not flood the output
            self.emit("probe_mismatch", {"client": conn.name, "mode": self.config.probe_mode,
                                         "reason": "unsolicited", "len": nbytes})
        conn.strays += nbytes

    # -- probes ------------------------------------------------------------------------------------

    def _probe_sweep(self, now):
        late = self.late_s
        ps = self.probes
        # A snapshot: writing is the one thing here that reaches into the transport, and the event hook
        # is the caller's code; neither may change the set under our feet.
        for c in list(self.clients):
            if c.state != ONLINE:
                continue
            pending = c.probes
            if pending:
                for p in pending:  # oldest first: stop at the first one not yet overdue
                    if now - p.sent <= late:
                        break
                    if ps.overdue(p):
                        self.emit("probe_late", {"client": c.name, "waited_ms": _ms(now - p.sent)})
                if len(pending) >= PROBE_WINDOW:
                    ps.skipped += 1
                    continue
            if c.send_probe(now):
                ps.sent += 1
            else:
                ps.skipped += 1

    # -- ticks and summaries -----------------------------------------------------------------------

    def tick(self, now):
        """One checker tick at `now` (time.monotonic() seconds): the offline rule for every client, and
        the offline reports it calls for. The server's own ticker calls it every tick_ms; a caller with
        its own clock (a test driving crowded or late ticks) may call it directly."""
        rule = self.offline_rule
        silent = []
        partial = []
        for c in self.clients:
            verdict = rule.tick(c, now)
            if verdict is INCOMPLETE:
                partial.append(c)
            elif verdict is SILENT:
                silent.append(c)
        for c in partial:
            have = c.decoder.have
            self.protocol_errors += 1
            self.emit("protocol_error", {"client": c.name, "field": "header" if have < 8 else "payload",
                                         "value": have, "reason": "incomplete",
                                         "held_ms": _ms(now - c.partial_since)})
            self.offline(c, "protocol", now)
        for c in silent:
            self.offline(c, "silent", now)

    def _summary(self, now):
        span = now - self._window_at
        beats = self.beats - self._window_beats
        w = self.probes.rtt_window
        self.emit("summary", {
            "online": len(self.clients), "beats_per_s": round(beats / span, 1) if span > 0 else 0.0,
            "probes_ok": self.probes.ok, "probes_bad": self.probes.bad, "probes_late": self.probes.late,
            "p50_ms": w.percentile_ms(0.5), "p99_ms": w.percentile_ms(0.99),
            "offline": sum(self.offline_by.values()), "refused": self.refused,
            "protocol_errors": self.protocol_errors})
        w.clear()
        self._window_at = now
        self._window_beats = self.beats

    # -- reporting ---------------------------------------------------------------------------------

    def _call_hooks(self, what, *args):
        for h in self.hooks:
            fn = getattr(h, what, None)
            if fn is None:
                continue
            if what == "started":
                fn(*args)  # a hook that cannot start (a busy metrics port) fails start() itself
                continue
            try:
                fn(*args)
            except Exception as e:  # a broken observer is a broken server, as a broken event hook is
                self._fail("hook %s.%s" % (type(h).__name__, what), e)

    def emit(self, name, fields):
        if self.on_event is not None:
            try:
                self.on_event(name, fields)
            except Exception as e:
                self._fail("emit", e)

    def stats(self):
        """A snapshot of the totals since start (a new dict each call)."""
        ps = self.probes
        now = self.loop.time() if self.loop else 0.0
        return {
            "online": len(self.clients), "connections": self.connections, "refused": self.refused,
            "beats": self.beats, "data_frames": self.data_frames, "frames_in": self.frames_in,
            "bytes_in": self.bytes_in, "frames_out": self.frames_out, "bytes_out": self.bytes_out,
            "protocol_errors": self.protocol_errors, "offline": dict(self.offline_by),
            "probes_sent": ps.sent, "probes_ok": ps.ok, "probes_bad": ps.bad, "probes_late": ps.late,
            "probes_lost": ps.lost, "probes_skipped": ps.skipped, "stray_bytes": ps.stray_bytes,
            "p50_ms": ps.rtt.percentile_ms(0.5), "p99_ms": ps.rtt.percentile_ms(0.99),
            "up_ms": _ms(now - self._started_at) if self.loop else 0,
        }

    def client_table(self):
        """One dict per online client, oldest connection first."""
        now = self.loop.time()
        rows = []
        for c in sorted(self.clients, key=lambda c: c.since):
            rows.append({
                "client": c.name, "since_ms": _ms(c.since), "up_ms": _ms(now - c.since),
                "last_frame_ago_ms": None if c.last_frame is None else _ms(now - c.last_frame),
                "since_last_ms": _ms(now - c.last_heard), "missed": c.missed, "beats": c.beats,
                "frames_in": c.frames_in, "bytes_in": c.bytes_in, "frames_out": c.frames_out,
                "bytes_out": c.bytes_out, "probes_pending": len(c.probes) if c.probes else 0})
        return rows


def _ms(seconds):
    return int(seconds * 1000 + 0.5)


def _ms3(seconds):
    return round(seconds * 1000, 3)
