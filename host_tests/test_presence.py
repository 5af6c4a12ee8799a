"""Presence in a real Valkey/Redis store (tools/hbserver/presence.py), with the server in this process.

Each test starts its own store on an ephemeral loopback port (storefix.store) and waits on the
presence writer's flushes, the store's change channel and the server's events, all bounded."""
import asyncio
import json

import pytest
import redis.asyncio as aioredis

from support.fake_device import EventLog, FakeClient, run
from support.storefix import WAIT, store, until  # noqa: F401  (store is a fixture)
from tools.fleetstatus import snapshot
from tools.hbserver import HeartbeatServer
from tools.hbserver.presence import Presence, PresenceConfig, device_name, parse_url

async def start_server(url, server_id, **presence_kw):
    log = EventLog()
    pc = PresenceConfig(url=url, server_id=server_id, flush_ms=presence_kw.pop("flush_ms", 50),
                        ttl_ms=presence_kw.pop("ttl_ms", 3000), **presence_kw)
    srv = HeartbeatServer(on_event=log, host="127.0.0.1", port=0, tick_ms=1000, summary_ms=0)
    p = Presence(pc)
    srv.hooks.append(p)
    await srv.start()
    return srv, p, log


async def record(r, name):
    return await r.hgetall("hb:dev:" + name)


def test_url_errors_name_the_problem():
    assert parse_url("redis://127.0.0.1:6380/2") == ("127.0.0.1", 6380, 2)
    assert parse_url("redis://store") == ("store", 6379, 0)
    for bad, words in [("http://h:1", "redis://HOST:PORT"), ("redis://h:99999", "port"),
                       ("redis://h:1/x", "database"), ("redis://:1", "no host")]:
        with pytest.raises(ValueError, match=words):
            parse_url(bad)
    with pytest.raises(ValueError, match="3 x flush_ms"):
        PresenceConfig(url="redis://h", flush_ms=1000, ttl_ms=2000).validate()


def test_device_name_prefers_the_authenticated_id():
    class Plain:
        name = "10.0.0.7:5000"

    class Authed(Plain):
        device_id = "sensor-17"

    assert device_name(Plain()) == "10.0.0.7:5000"
    assert device_name(Authed()) == "sensor-17"


def test_online_offline_records_and_changes_published(store):
    async def main():
        r = aioredis.Redis(port=store.port, decode_responses=True)
        ps = r.pubsub()
        await ps.subscribe("hb:changes")
        srv, p, log = await start_server(store.url, "srv-a")
        a = await FakeClient.connect(srv.port)
        b = await FakeClient.connect(srv.port)
        a.beat()
        await a.wait_hearts(1)
        await until("both records online", lambda: _both_online(r, a.name, b.name))
        rec = await record(r, a.name)
        assert rec["server"] == "srv-a" and rec["reason"] == "" and int(rec["last_beat"]) >= int(rec["since"])
        assert 0 < await r.pttl("hb:dev:" + a.name) <= 3000, "an online record must expire (crash window)"
        await b.close()
        await until("b offline", lambda: _state(r, b.name, "offline"))
        rec = await record(r, b.name)
        assert rec["reason"] == "closed" and rec["server"] == "srv-a"
        got = []
        async with asyncio.timeout(WAIT):
            while len(got) < 3:
                m = await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if m:
                    got.append(json.loads(m["data"]))
        assert {(g["device"], g["state"]) for g in got} == {(a.name, "online"), (b.name, "online"),
                                                          (b.name, "offline")}
        assert [g["reason"] for g in got if g["state"] == "offline"] == ["closed"]
        await srv.stop()
        # A graceful stop writes every device offline with reason shutdown and removes the server key.
        rec = await record(r, a.name)
        assert (rec["state"], rec["reason"]) == ("offline", "shutdown")
        assert await r.exists("hb:server:srv-a") == 0
        await a.close()
        await ps.aclose()
        await r.aclose()
    run(main())


async def _state(r, name, state):
    return (await r.hget("hb:dev:" + name, "state")) == state


async def _both_online(r, x, y):
    return await _state(r, x, "online") and await _state(r, y, "online")


class FakeConn:
    """What the presence hook reads of a connection; the server itself never sees it."""

    def __init__(self, device_id, t):
        self.device_id = device_id
        self.name = "addr"
        self.since = self.last_heard = t


def test_device_moved_to_another_server_keeps_the_newer_record(store):
    # The same authenticated device connects to B while A has not yet noticed the old connection died:
    # A's late offline must not overwrite B's online record.
    async def main():
        r = aioredis.Redis(port=store.port, decode_responses=True)
        srv_a, pa, _ = await start_server(store.url, "A")
        srv_b, pb, _ = await start_server(store.url, "B")
        now = srv_a.loop.time()
        old, new = FakeConn("dev-1", now - 1.0), FakeConn("dev-1", now)  # the new one connected a second later
        pa.online(old)
        await pa.wait_flush()
        pb.online(new)
        await pb.wait_flush()
        pa.offline(old, "silent")
        await pa.wait_flush()
        rec = await record(r, "dev-1")
        assert (rec["state"], rec["server"]) == ("online", "B")
        pb.offline(new, "closed")
        await pb.wait_flush()
        rec = await record(r, "dev-1")
        assert (rec["state"], rec["server"], rec["reason"]) == ("offline", "B", "closed")
        await srv_a.stop()
        await srv_b.stop()
        await r.aclose()
    run(main())


def test_an_older_connection_written_after_a_newer_one_loses_and_its_server_is_told(store):
    # A's write for its (older) connection of dev-1 reaches the store after B's for a newer one -- A's flush
    # was late. The store keeps B's record and answers A with B's id; A's server is told to let it go.
    async def main():
        r = aioredis.Redis(port=store.port, decode_responses=True)
        srv_a, pa, _ = await start_server(store.url, "A")
        srv_b, pb, _ = await start_server(store.url, "B")
        told = []
        srv_a.replaced_elsewhere = lambda conn, server: told.append((conn, server))
        now = srv_a.loop.time()
        older, newer = FakeConn("dev-1", now - 1.0), FakeConn("dev-1", now)
        pb.online(newer)
        await pb.wait_flush()
        pa.online(older)
        await pa.wait_flush()
        rec = await record(r, "dev-1")
        assert (rec["state"], rec["server"]) == ("online", "B")
        assert told and told[0] == (older, "B")
        # A then puts its connection offline (what replaced_elsewhere does): that write is dropped.
        pa.offline(older, "replaced")
        await pa.wait_flush()
        assert (await record(r, "dev-1"))["server"] == "B"
        await srv_a.stop()
        await srv_b.stop()
        await r.aclose()
    run(main())


def test_within_one_server_its_own_replacement_stands_whatever_the_wall_clock_says(store):
    # The server replaced dev-1's connection itself; the wall clock stepped back in between (NTP), so the
    # new connection's `since` is below the old one's. The store must still take the new one.
    async def main():
        r = aioredis.Redis(port=store.port, decode_responses=True)
        srv, p, _ = await start_server(store.url, "A")
        told = []
        srv.replaced_elsewhere = lambda conn, server: told.append((conn, server))
        now = srv.loop.time()
        old, new = FakeConn("dev-1", now), FakeConn("dev-1", now - 5.0)
        p.online(old)
        await p.wait_flush()
        conn_old = (await record(r, "dev-1"))["conn"]
        p.offline(old, "replaced")
        p.online(new)
        await p.wait_flush()
        rec = await record(r, "dev-1")
        assert rec["state"] == "online" and rec["conn"] != conn_old and not told
        await srv.stop()
        await r.aclose()
    run(main())


def test_dead_server_devices_read_offline_within_the_ttl(store):
    async def main():
        r = aioredis.Redis(port=store.port, decode_responses=True)
        srv, p, _ = await start_server(store.url, "doomed", ttl_ms=600, flush_ms=100)
        c = await FakeClient.connect(srv.port)
        await until("online", lambda: _state(r, c.name, "online"))
        # A crash: the writer stops without a word (no offline, no server key removal).
        p._task.cancel()
        await asyncio.gather(p._task, return_exceptions=True)
        p._task = None
        t0 = asyncio.get_running_loop().time()
        snap = await until("the device reads expired", lambda: _expired(r, c.name), timeout=5.0)
        waited = asyncio.get_running_loop().time() - t0
        assert waited < 0.6 + 2.0, "expired after %.2f s, the window is 0.6 s (+ slack for a loaded host)" % waited
        assert snap["counts"]["offline_by_reason"] == {"expired": 1}
        assert "doomed" not in snap["servers"], "a dead server's own key expires too"
        p.r = None  # nothing left to write for a crashed writer; stop() must still finish
        p.srv = None
        srv.hooks.clear()
        await srv.stop()
        await c.close()
        await r.aclose()
    run(main())


async def _expired(r, name):
    snap = await snapshot(r, "hb")
    for d in snap["devices"]:
        if d["device"] == name and d["reason"] == "expired":
            return snap
    return None


def test_store_outage_keeps_serving_reports_once_and_resyncs(store):
    async def main():
        srv, p, log = await start_server(store.url, "srv-o", flush_ms=50, report_ms=60000)
        a = await FakeClient.connect(srv.port)
        b = await FakeClient.connect(srv.port)
        r = aioredis.Redis(port=store.port, decode_responses=True)
        await until("online", lambda: _both_online(r, a.name, b.name))
        await r.aclose()
        store.stop()
        # Several failed flushes, one report (report_ms is a minute); the server goes on serving.
        await until("5 failed flushes", lambda: p.errors >= 5)
        assert len(log.of("presence_error")) == 1, log.of("presence_error")
        a.beat()
        await a.wait_hearts(1)  # HEART answered during the outage
        await b.close()
        await log.wait("offline", client=b.name)
        c = await FakeClient.connect(srv.port)
        await log.wait("online", client=c.name)
        store.start()  # same port, empty: nothing survived the restart
        await log.wait("presence_restored")
        r = aioredis.Redis(port=store.port, decode_responses=True)
        assert await _state(r, a.name, "online") and await _state(r, c.name, "online")
        rec = await record(r, b.name)
        assert (rec["state"], rec["reason"]) == ("offline", "closed"), "the change made during the outage"
        assert await r.exists("hb:server:srv-o") == 1
        assert p.up is True
        await srv.stop()
        for x in (a, c):
            await x.close()
        await r.aclose()
    run(main())
