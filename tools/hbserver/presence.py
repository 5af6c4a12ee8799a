"""Fleet presence shared through a Valkey or Redis store (`--presence redis://HOST:PORT[/DB]`).

Every server process writes, per device, one hash `<prefix>:dev:<device>`:

    state      online | offline
    server     the server id holding (or last holding) the device
    conn       that server's connection id (server id + a sequence number)
    since      wall-clock ms the connection was made
    last_beat  wall-clock ms of the last HEART (as of the last write: see `refresh` below)
    reason     why it went offline (silent, closed, reset, protocol, shutdown); empty while online
    changed    wall-clock ms of the last online/offline change

plus `<prefix>:devices`, a sorted set of every device name seen (score: last change), and
`<prefix>:server:<id>`, one hash per live server. Every online/offline change is published as a JSON
message on the channel `<prefix>:changes`.

Expiry is the crash rule: an online record and a server's own key live `ttl_ms` (default 15 s) and are
renewed while the server runs, so when a server dies without a word its devices' records vanish within
`ttl_ms`, and a reader (tools/fleetstatus.py) shows a device that is in the index but has no record as
offline with reason `expired`. Offline records are kept `keep_ms` (default one day).

Nothing here is on the per-beat path: the server's lifecycle hooks only note a change in a dict, and one
task writes the notes every `flush_ms` in pipelined round trips of up to CHUNK records. Online records are renewed in a
rotating slice each flush, so every one is rewritten at least every ttl_ms / 3.

A write that crosses another server's is settled inside the store by a small Lua script keyed on the
connection id: a device that moved from server A to server B keeps B's online record even when A's
`offline` for the old connection arrives later. One device has one online connection in the whole fleet,
the newest (by `since`), as inside one server (HeartbeatServer.replace): when the store answers an online
write or a renewal with another server's id, that server holds a newer connection of the device, and this
one is closed through `replaced_elsewhere` (a `replaced` line, then `offline reason=replaced`). Renewals
come every ttl_ms / 3, so a superseded connection on another server goes within that (plus one flush).

The store being unreachable never stops the server: a failed flush keeps its notes (newest per device),
reports the outage as a `presence_error` event at most once per `report_ms`, and the first flush that
succeeds afterwards rewrites every online device (the store may have restarted empty) and says
`presence_restored`.
"""
import asyncio
import json
import math
import os
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PREFIX = "hb"
CHUNK = 2000  # records per pipelined round trip

# KEYS: device hash, index zset. ARGV: mode, device, conn, server, now_ms, since_ms, last_beat_ms, reason,
# ttl_ms, channel, keep_ms. Returns 1 when written; for an offline of a connection that no longer holds the
# record, 0 (dropped); for an online or a renewal of a connection superseded by a newer one of the same
# device on another server, that server's id: its connection wins. Between two connections of one server
# the server itself has decided (HeartbeatServer.replace): its latest write stands, whatever the clock says.
_SCRIPT = """
local cur = redis.call('HGET', KEYS[1], 'conn')
local mode = ARGV[1]
local holder = false
if cur and cur ~= ARGV[3] then holder = redis.call('HGET', KEYS[1], 'server') or '?' end
if mode == 'refresh' then
  if cur == ARGV[3] then
    redis.call('HSET', KEYS[1], 'last_beat', ARGV[7])
    redis.call('PEXPIRE', KEYS[1], ARGV[9])
    return 1
  end
  if holder and holder ~= ARGV[4] then return holder end
  mode = 'online'  -- the record is gone (store restarted, or it expired during an outage): rewrite it
end
if mode == 'offline' and holder then return 0 end
if mode == 'online' and holder and holder ~= ARGV[4] then
  local since = tonumber(redis.call('HGET', KEYS[1], 'since'))
  if since and since > tonumber(ARGV[6]) then return holder end
end
local state = mode
local reason = ''
if mode == 'offline' then reason = ARGV[8] end
redis.call('HSET', KEYS[1], 'state', state, 'server', ARGV[4], 'conn', ARGV[3], 'since', ARGV[6],
           'last_beat', ARGV[7], 'reason', reason, 'changed', ARGV[5])
if mode == 'online' then
  redis.call('PEXPIRE', KEYS[1], ARGV[9])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[11])
end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[2])
redis.call('PUBLISH', ARGV[10], cjson.encode({device = ARGV[2], state = state, server = ARGV[4],
           reason = reason, t = tonumber(ARGV[5]), last_beat = tonumber(ARGV[7])}))
return 1
"""


@dataclass
class PresenceConfig:
    url: str = ""  # redis://HOST:PORT[/DB]
    server_id: str = ""  # default: hostname:pid
    prefix: str = DEFAULT_PREFIX
    flush_ms: int = 1000  # how often changes are written (pipelined, CHUNK records per round trip)
    ttl_ms: int = 15000  # an online record not renewed for this long expires: the crash window
    keep_ms: int = 86400000  # how long offline records are kept
    report_ms: int = 10000  # at most one presence_error line per this period during an outage
    timeout_ms: int = 2000  # connect and command timeout for the store

    def validate(self):
        parse_url(self.url)
        if self.flush_ms < 10:
            raise ValueError("presence flush_ms must be at least 10, got %r" % (self.flush_ms,))
        if self.ttl_ms < 3 * self.flush_ms:
            raise ValueError("presence ttl_ms (%d) must be at least 3 x flush_ms (%d): records would expire "
                             "between renewals" % (self.ttl_ms, self.flush_ms))
        if not self.prefix or any(c in self.prefix for c in " \t\r\n"):
            raise ValueError("presence prefix must be a non-empty word, got %r" % (self.prefix,))


def parse_url(url):
    """Check a redis://HOST:PORT[/DB] address; returns (host, port, db). ValueError names what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "valkey"):
        raise ValueError("presence URL must look like redis://HOST:PORT[/DB], got %r" % (url,))
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("presence URL %r: the port is not a number from 0 to 65535" % (url,))
    if not parts.hostname:
        raise ValueError("presence URL %r: no host" % (url,))
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError("presence URL %r: the database after / must be a number, got %r" % (url, path))
    return parts.hostname, port, int(path) if path else 0


def connect(url, timeout_ms=2000):
    """An asyncio client for the store (redis-py, which speaks to Valkey and Redis alike)."""
    import redis.asyncio as redis  # lazy: a server without --presence never imports the client library
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    host, port, db = parse_url(url)
    t = timeout_ms / 1000
    # No retries inside the client: a failed flush is retried by the next one, with the notes kept.
    return redis.Redis(host=host, port=port, db=db, socket_timeout=t, socket_connect_timeout=t,
                       retry=Retry(NoBackoff(), 0), decode_responses=True)


def keys(prefix):
    return {"index": prefix + ":devices", "channel": prefix + ":changes", "dev": prefix + ":dev:",
            "server": prefix + ":server:"}


def device_name(conn):
    """The name a device has in the store: its authenticated id when device authentication set one on
    the connection (`conn.device_id`), else its address as the server's events show it."""
    return getattr(conn, "device_id", None) or conn.name


def wall_ms():
    return int(time.time() * 1000)


class Presence:
    """A server hook (HeartbeatServer.hooks) that mirrors the server's clients into the store."""

    def __init__(self, config, client=None):
        config.validate()
        self.config = config
        self.server_id = config.server_id or "%s:%d" % (socket.gethostname(), os.getpid())
        self.k = keys(config.prefix)
        self.r = client
        self.srv = None
        self.notes = {}  # device -> (mode, conn, since_ms, last_beat_ms, reason, changed_ms); newest wins
        self.ring = []  # online connections, renewed a slice per flush
        self.ring_pos = 0
        self.seq = 0
        self._epoch = "%x" % wall_ms()  # connection ids stay unique across restarts under one server id
        self._conn_ids = {}  # online connection -> its id (a connection object takes no new attributes)
        self._owner = {}  # device name -> the connection that holds it here (the newest one)
        self.up = None  # None: not tried yet; True/False: the last flush's outcome
        self.resync = False
        self.errors = 0  # failed flushes since start (a metric)
        self.writes = 0  # records written since start
        self.flushes = 0
        self._errors_reported = 0
        self._last_report = None
        self._down_since = None
        self._task = None
        self._closing = False
        self._sha = None  # the write script's SHA1 once loaded into the store
        self._started = 0  # flushes begun
        self._done = 0  # the latest begun flush that has finished
        self._flushed = None  # set after every flush (wait_flush)

    # -- server hooks (synchronous, cheap) ---------------------------------------------------------

    def started(self, srv):
        self.srv = srv
        if self.r is None:
            self.r = connect(self.config.url, self.config.timeout_ms)
        self._flushed = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    def online(self, conn):
        self.seq += 1
        conn_id = "%s/%s.%d" % (self.server_id, self._epoch, self.seq)
        self._conn_ids[conn] = conn_id
        now = wall_ms()
        name = device_name(conn)
        self._owner[name] = conn
        # `since` is when the connection was made, the same on every write: the store ranks a device's
        # connections by it (the newest wins).
        self.notes[name] = ("online", conn_id, self._wall(conn.since), now, "", now)
        self.ring.append(conn)

    def offline(self, conn, reason):
        conn_id = self._conn_ids.pop(conn, None)
        name = device_name(conn)
        if conn_id is None or self._owner.get(name) is not conn:
            return  # a newer connection of the same device holds the record now
        del self._owner[name]
        now = wall_ms()
        self.notes[name] = ("offline", conn_id, self._wall(conn.since), self._last_beat(conn),
                                         reason, now)

    async def stopped(self):
        """After the server has put every client offline: write that, drop the server key, close."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            # The client library may turn a cancellation that lands mid-command into an error of its own,
            # which flush() then counts as a failed write; the _closing flag ends the loop either way.
            task.cancel()
            await asyncio.wait([task], timeout=self.config.timeout_ms / 1000 * 2)
        try:
            async with asyncio.timeout(self.config.timeout_ms / 1000 * 2):
                await self.flush(final=True)
        except (TimeoutError, OSError):
            pass
        try:
            await self.r.aclose()
        except Exception:  # closing a client whose store is gone must not fail the shutdown
            pass

    # -- the writer --------------------------------------------------------------------------------

    def _wall(self, loop_t):
        return int((time.time() - (self.srv.loop.time() - loop_t)) * 1000)

    def _last_beat(self, conn):
        return self._wall(conn.last_heard)

    async def _run(self):
        period = self.config.flush_ms / 1000
        me = asyncio.current_task()
        # cancelling(): a cancellation the client library turned into an error of its own (flush() then
        # counts a failed write) must still end the loop, or whoever cancelled would wait forever.
        while not self._closing and not me.cancelling():
            await self.flush()
            if not self._closing and not me.cancelling():
                await asyncio.sleep(period)

    def _renewals(self):
        """The slice of online connections to renew this flush: all of them every ttl_ms / 3."""
        ring = [c for c in self.ring if c in self._conn_ids] if self.ring_pos == 0 else self.ring
        self.ring = ring
        if not ring:
            return []
        per_flush = math.ceil(len(ring) * self.config.flush_ms / (self.config.ttl_ms / 3))
        part = ring[self.ring_pos : self.ring_pos + per_flush]
        self.ring_pos += per_flush
        if self.ring_pos >= len(ring):
            self.ring_pos = 0
        return part

    async def flush(self, final=False):
        cfg = self.config
        self._started += 1
        this = self._started
        notes, self.notes = self.notes, {}
        if self.resync:
            # The store was away: it may have restarted empty. Rewrite every device we hold.
            for name, conn in self._owner.items():
                if name not in notes:
                    notes[name] = ("online", self._conn_ids[conn], self._wall(conn.since), self._last_beat(conn),
                                   "", wall_ms())
            renew = []
        else:
            renew = [] if final else self._renewals()
        now = wall_ms()
        k = self.k
        dev, index, channel, ttl, keep, sid = k["dev"], k["index"], k["channel"], cfg.ttl_ms, cfg.keep_ms, self.server_id
        calls = []  # EVALSHA arguments, one tuple per record
        whose = []  # per call: the online connection it is written for, or None (an offline note)
        ids = self._conn_ids
        owner = self._owner
        for name, (mode, conn_id, since, beat, reason, changed) in notes.items():
            calls.append((dev + name, index, mode, name, conn_id, sid, changed, since, beat, reason, ttl, channel,
                          keep))
            held = owner.get(name) if mode == "online" else None
            whose.append(held if held is not None and ids.get(held) == conn_id else None)
        for conn in renew:
            conn_id = ids.get(conn)
            if conn_id is None:
                continue
            name = device_name(conn)
            if name in notes or owner.get(name) is not conn:
                continue
            calls.append((dev + name, index, "refresh", name, conn_id, sid, now, self._wall(conn.since),
                          self._last_beat(conn), "", ttl, channel, keep))
            whose.append(conn)
        superseded = []  # (connection, the server holding a newer connection of its device)
        try:
            if self._sha is None:  # first flush, or the store restarted and forgot its scripts
                self._sha = await self.r.script_load(_SCRIPT)
            # Several bounded round trips rather than one huge one: a fleet coming online at once (tens of
            # thousands of notes) must not outgrow the command timeout, nor hold the loop building it.
            for i in range(0, len(calls), CHUNK):
                pipe = self.r.pipeline(transaction=False)
                for a in calls[i : i + CHUNK]:
                    pipe.evalsha(self._sha, 2, *a)
                for conn, res in zip(whose[i : i + CHUNK], await pipe.execute()):
                    if conn is not None and isinstance(res, str):
                        superseded.append((conn, res))
            pipe = self.r.pipeline(transaction=False)
            skey = k["server"] + sid
            if final:
                pipe.delete(skey)
            else:
                pipe.hset(skey, mapping={"devices": len(ids), "seen": now, "pid": os.getpid(),
                                         "port": self.srv.port if self.srv else 0})
                pipe.pexpire(skey, ttl)
            if self.flushes % 600 == 0:
                pipe.zremrangebyscore(index, "-inf", now - keep)  # forget devices gone for long
            await pipe.execute()
        except Exception as e:  # any failure of the store: connection, timeout, a reply we cannot use
            self._sha = None  # the store may come back as a new process without our script: load it again
            self._failed(notes, e)
            return False
        finally:
            self.flushes += 1
            self._done = max(self._done, this)
            if self._flushed is not None:
                self._flushed.set()
        self.writes += len(calls)
        if self.up is False:
            self.srv.emit("presence_restored", {
                "server": self.server_id, "down_ms": wall_ms() - self._down_since, "errors": self.errors,
                "written": len(notes)})
        self.up = True
        self.resync = False
        for conn, holder in superseded:
            if conn in ids and self.srv is not None:  # still online here: the newer connection wins
                self.srv.replaced_elsewhere(conn, holder)
        return True

    def _failed(self, notes, exc):
        # Put the notes back under anything newer taken since; report, but not every flush.
        for name, note in notes.items():
            self.notes.setdefault(name, note)
        self.errors += 1
        if self.up is not False:
            self._down_since = wall_ms()
        self.up = False
        self.resync = True
        now = time.monotonic()
        if self._last_report is None or now - self._last_report >= self.config.report_ms / 1000:
            if self.srv is not None:
                self.srv.emit("presence_error", {
                    "server": self.server_id, "error": _describe(exc), "errors": self.errors,
                    "since_last_report": self.errors - self._errors_reported, "pending": len(self.notes)})
            self._last_report = now
            self._errors_reported = self.errors

    async def wait_flush(self):
        """Wait until a flush that started after this call has finished: everything noted before the
        call has then been sent (tests and tools that want a known point)."""
        target = self._started + 1
        while self._done < target:
            self._flushed.clear()
            await self._flushed.wait()


def _describe(exc):
    text = str(exc) or type(exc).__name__
    return text.replace("\n", " ")[:200]
