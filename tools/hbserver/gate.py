"""The admission gate of tools.hbserver: TLS and device authentication before a connection is a client.

Off by default (no --tls-cert, no --auth-keys): then connections are admitted at once, as the seed's server
does. When either is on, a new connection is *pending* until it has finished the TLS handshake and/or
authenticated (docs/SECURITY.md):

- pending connections count against their own small budget (--max-pending), never against --max-clients,
  and each has a deadline (--handshake-timeout-ms for TLS, then --auth-timeout-ms for the exchange), so
  connections that never finish cannot hold the slots of real devices;
- authentication: CHALLENGE (16 fresh random bytes) is sent at once; the connection must answer with AUTH
  (firmware/hbkeep/auth.py checks it); WELCOME goes back and only then is the client admitted (online,
  named by its id) -- beats and probes count only from then on;
- failures (TLS refused, timeout, bad frame, unknown id, wrong mac, replayed AUTH) drop the connection with
  an event, and failed authentications from one address are rate-limited (--auth-fail-limit per
  --auth-fail-window-ms): beyond that, its new connections are refused at once.

Keys, nonces and macs never appear in events. An id is printed only once it is known to the server: an
unknown id is attacker-chosen text.
"""
import asyncio
import collections
import json
import os
import ssl

from firmware.hbkeep import auth, auth_host
from firmware.hbkeep.auth import AUTH, AUTH_MAX, AuthError, CHALLENGE, NONCE_SIZE
from firmware.hbkeep.protocol import HEADER_SIZE, read_int32
from tools.hbserver.conn import ONLINE

REPLAY_MEMORY = 4096  # dnonces of accepted AUTH frames remembered, to name a replayed one as such
# asyncio's TLS layer can hand over the device's first bytes before start_tls() has returned to us; they
# are kept (up to this much) and handed on once the connection is admitted.
EARLY_MAX = 4096


def load_keys(path):
    """The --auth-keys file: a JSON object id -> hex key. Returns {id bytes: key bytes}; ValueError
    naming the file and the id (never the key) otherwise."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError("--auth-keys %s: cannot read (%s)" % (path, e.strerror or e))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        # Not e's own text: it repeats the offending byte, which may be part of a key. Where, instead.
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError("--auth-keys %s: not UTF-8 text (at line %d column %d)" % (path, line, col)) from None
    try:
        data = json.loads(text)
    except ValueError as e:  # what was expected and where (CPython's C scanner, which json uses), never the text
        raise ValueError("--auth-keys %s: not valid JSON (%s)" % (path, e)) from None
    return parse_keys(data, "--auth-keys %s" % path)


def parse_keys(data, where="auth_keys"):
    if not isinstance(data, dict) or not data:
        raise ValueError("%s: expected a non-empty JSON object of device id -> hex key" % where)
    keys = {}
    for dev_id, hexkey in data.items():
        try:
            b = auth.check_id(dev_id)
            keys[b] = auth.parse_key(hexkey)
        except ValueError as e:
            try:
                auth.parse_key(dev_id)
            except ValueError:  # an id, which is no secret: named
                raise ValueError("%s: device %r: %s" % (where, dev_id, e)) from None
            # Shaped like a key: id and key swapped, and the "id" is a secret.
            raise ValueError("%s: a device id is a hex key (id and key swapped?): %s" % (where, e)) from None
    return keys


def server_context(cert, key):
    """A TLS server context for --tls-cert/--tls-key; ValueError naming the file otherwise."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not os.path.isfile(path):
            raise ValueError("%s %s: no such file" % (option, path))
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise ValueError("--tls-cert %s / --tls-key %s: cannot load (%s)" % (cert, key, e))
    # Devices never resume sessions; tickets would only cost them bytes (and some MicroPython builds
    # mishandle a ticket arriving after the handshake).
    ctx.num_tickets = 0
    return ctx


class Pending:
    """What a connection holds while it passes the gate."""

    __slots__ = ("stage", "timer", "snonce", "buf", "task", "addr")

    def __init__(self, addr):
        self.stage = "tls"
        self.timer = None
        self.snonce = None
        self.buf = None  # the AUTH frame as it arrives
        self.task = None
        self.addr = addr


class Gate:
    def __init__(self, srv, config):
        self.srv = srv
        self.cfg = config
        self.tls = server_context(config.tls_cert, config.tls_key) if config.tls_cert else None
        keys = config.auth_keys
        if isinstance(keys, str):
            keys = load_keys(keys)
        elif keys is not None:
            keys = parse_keys(keys)
        self.keys = keys
        self.pending = set()
        self.recent = collections.OrderedDict()  # accepted dnonces, oldest first
        self.failures = {}  # ip -> deque of loop times of failed authentications
        self.counts = collections.Counter()  # tls_failed / auth_failed reasons, rate_limited, pending_full

    # -- entry -------------------------------------------------------------------------------------

    def enter(self, conn):
        """A new connection (called from connection_made). Returns False when it was refused here."""
        srv = self.srv
        loop = srv.loop
        ip = conn.addr[0] if isinstance(conn.addr, tuple) else str(conn.addr)
        if self._limited(ip, loop.time()):
            self._refuse(conn, "rate_limited")
            return False
        if len(self.pending) >= self.cfg.max_pending:
            self._refuse(conn, "pending_full")
            return False
        p = Pending(ip)
        conn.gate = p
        self.pending.add(conn)
        if self.tls is not None:
            conn.transport.pause_reading()  # not a byte may reach us before TLS takes the stream over
            p.timer = loop.call_later(self.cfg.handshake_timeout_ms / 1000, self._expire, conn)
            p.task = loop.create_task(self._start_tls(conn))
        else:
            self._challenge(conn)
        return True

    def _refuse(self, conn, reason):
        srv = self.srv
        self.counts[reason] += 1
        srv.refused += 1
        srv.emit("refused", {"client": conn.name, "reason": reason, "online": len(srv.clients)})
        conn.close()

    async def _start_tls(self, conn):
        srv = self.srv
        raw = conn.transport
        try:
            # The handshake's own timeout is ours (the deadline timer); asyncio's is only a backstop.
            tr = await srv.loop.start_tls(raw, conn, self.tls, server_side=True,
                                          ssl_handshake_timeout=self.cfg.handshake_timeout_ms / 1000 + 5)
        except asyncio.CancelledError:
            raw.abort()
            raise
        except (OSError, ssl.SSLError, ConnectionError, asyncio.TimeoutError) as e:
            self._fail(conn, "tls_failed", _tls_reason(e), raw)
            return
        if conn not in self.pending:  # expired while the last handshake bytes were in flight
            tr.abort()
            return
        conn.transport = tr
        conn.gate.task = None
        self._cancel_timer(conn)
        if self.keys is None:
            self._pass(conn)
        else:
            self._challenge(conn)

    def _challenge(self, conn):
        p = conn.gate
        if p.buf:  # a device speaks only after CHALLENGE: these bytes cannot be an answer to it
            self._fail(conn, "auth_failed", "unexpected_frame")
            return
        p.stage = "auth"
        p.snonce = os.urandom(NONCE_SIZE)
        p.buf = bytearray()
        p.timer = self.srv.loop.call_later(self.cfg.auth_timeout_ms / 1000, self._expire, conn)
        conn.transport.write(auth.frame(CHALLENGE, p.snonce))

    # -- bytes before admission ----------------------------------------------------------------------

    def feed(self, conn, data):
        """Bytes from a pending connection (only ever the AUTH frame is expected)."""
        p = conn.gate
        if conn not in self.pending:
            return
        if p.stage == "tls":  # the handshake just ended, start_tls() has not returned yet: keep them
            if p.buf is None:
                p.buf = bytearray()
            p.buf += data
            if len(p.buf) > EARLY_MAX:
                self._fail(conn, "tls_failed", "early_data")
            return
        p.buf += data
        buf = p.buf
        if len(buf) < HEADER_SIZE:
            return
        ftype, length = read_int32(buf, 0), read_int32(buf, 4)
        if ftype != AUTH or length < auth.AUTH_MIN or length > AUTH_MAX:
            self._fail(conn, "auth_failed", "bad_frame" if ftype == AUTH else "unexpected_frame")
            return
        if len(buf) < HEADER_SIZE + length:
            return
        if len(buf) > HEADER_SIZE + length:
            # A device sends nothing before WELCOME; bytes past AUTH are a broken or hostile peer.
            self._fail(conn, "auth_failed", "unexpected_frame")
            return
        payload = bytes(buf[HEADER_SIZE:])
        known = None
        try:
            dnonce = auth_host.parse_auth(payload)[0]
            if dnonce in self.recent:
                known = auth_host.parse_auth(payload)[2]
                raise AuthError(auth_host.REPLAY)
            dev_id, dnonce, welcome = auth_host.verify_auth(self.keys, p.snonce, payload)
        except AuthError as e:
            reason = e.args[0]
            if reason == auth_host.BAD_MAC:
                known = auth_host.parse_auth(payload)[2]
            self._fail(conn, "auth_failed", reason, dev_id=known if known in self.keys else None)
            return
        self.recent[dnonce] = True
        if len(self.recent) > REPLAY_MEMORY:
            self.recent.popitem(last=False)
        conn.transport.write(welcome)
        conn.name = dev_id.decode()
        self._pass(conn)

    # -- outcomes ----------------------------------------------------------------------------------

    def _pass(self, conn):
        self._cancel_timer(conn)
        self.pending.discard(conn)
        early = conn.gate.buf if conn.gate.stage == "tls" else None
        conn.gate = None
        self.srv.admit_passed(conn)
        if early and conn.state == ONLINE:  # what arrived before start_tls() returned, in order
            n = len(early)
            self.srv.rbuf[:n] = early
            conn.buffer_updated(n)

    def _fail(self, conn, event, reason, raw=None, dev_id=None):
        """Drop a pending connection with a tls_failed or auth_failed event."""
        if conn not in self.pending:
            return
        p = conn.gate
        self._cancel_timer(conn)
        self.pending.discard(conn)
        if p.task is not None and p.task is not asyncio.current_task():
            p.task.cancel()  # a handshake still running: its cancellation aborts the raw transport
        self.counts[event + ":" + reason] += 1
        srv = self.srv
        fields = {"client": conn.name, "reason": reason}
        if dev_id is not None:
            fields["id"] = dev_id.decode()
        srv.emit(event, fields)
        if event == "auth_failed" and reason != "closed":  # a peer that just left proved nothing wrong
            self._count_failure(p.addr, srv.loop.time())
        if raw is not None:
            raw.abort()
        conn.close()
        if p.stage == "tls":
            # The raw transport now belongs to asyncio's TLS layer, which does not pass on its
            # connection_lost before a handshake has completed: forget the connection here.
            srv.loop.call_soon(srv.forget, conn)

    def _expire(self, conn):
        if conn in self.pending:
            stage = conn.gate.stage
            self._fail(conn, "tls_failed" if stage == "tls" else "auth_failed", "timeout")

    def lost(self, conn):
        """The connection closed while pending (called from connection_lost / eof_received)."""
        if conn in self.pending:
            stage = conn.gate.stage
            self._fail(conn, "tls_failed" if stage == "tls" else "auth_failed", "closed")

    def _cancel_timer(self, conn):
        p = conn.gate
        if p is not None and p.timer is not None:
            p.timer.cancel()
            p.timer = None

    def _limited(self, ip, now):
        q = self.failures.get(ip)
        if not q:
            return False
        horizon = now - self.cfg.auth_fail_window_ms / 1000
        while q and q[0] <= horizon:
            q.popleft()
        if not q:
            del self.failures[ip]
            return False
        return len(q) >= self.cfg.auth_fail_limit

    def _count_failure(self, ip, now):
        q = self.failures.get(ip)
        if q is None:
            if len(self.failures) >= 65536:  # bounded: forget the oldest address first
                self.failures.pop(next(iter(self.failures)))
            q = self.failures[ip] = collections.deque()
        q.append(now)
        if len(q) > self.cfg.auth_fail_limit:
            q.popleft()

    def close_all(self):
        """At shutdown: drop every pending connection (no event: they were never clients)."""
        for conn in list(self.pending):
            self._cancel_timer(conn)
            if conn.gate.task is not None:
                conn.gate.task.cancel()
            self.pending.discard(conn)
            conn.close()


def _tls_reason(e):
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    if isinstance(e, ssl.SSLError):
        return (e.reason or "ssl_error").lower()
    if isinstance(e, ConnectionError):
        return "closed"
    return getattr(e, "strerror", None) or type(e).__name__
