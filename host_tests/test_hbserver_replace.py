"""One online connection per client name, the newest wins (HeartbeatServer.replace in tools/hbserver/core.py).

An authenticated device that connects again while its old connection is still online (a reconnection the
server has not noticed yet, or a clone holding the same key), and a plain peer whose ip:port comes back
before the server has read its old connection's reset: the old connection is closed with a `replaced` line
naming both peers and an `offline reason=replaced`, the server, its metrics and the presence store show
the device once, and the old connection's end afterwards changes nothing. Loopback only, bounded waits."""
import asyncio
import json
import socket

import redis.asyncio as aioredis

from support.fake_device import EventLog, run
from support.seckit import KEY, OTHER_KEY, authenticate, closed_by_peer, open_device
from support.storefix import WAIT, store, until  # noqa: F401  (store is a fixture)
from tools.fleetstatus import snapshot
from tools.hbserver import HeartbeatServer
from firmware.hbkeep import auth
from firmware.hbkeep.protocol_host import encode
from firmware.hbkeep.protocol import HEART

HEART_FRAME = encode(HEART)
KEYS = {"dev-1": KEY.hex(), "dev-2": OTHER_KEY.hex()}


async def started(log, hooks=(), **cfg):
    cfg.setdefault("auth_keys", KEYS)
    srv = HeartbeatServer(on_event=log, host="127.0.0.1", port=0, tick_ms=1000, summary_ms=0, **cfg)
    srv.hooks.extend(hooks)
    await srv.start()
    return srv


async def device(port, dev_id="dev-1", key=KEY):
    """An authenticated connection: (reader, writer, its ip:port as the server sees it)."""
    r, w = await open_device(port)
    await authenticate(r, w, dev_id, key)
    host, p = w.get_extra_info("sockname")[:2]
    return r, w, "%s:%d" % (host, p)


async def beat(r, w):
    w.write(HEART_FRAME)
    assert await asyncio.wait_for(r.readexactly(8), WAIT) == HEART_FRAME


def names(log, *wanted):
    return [(n, f) for _, n, f in log.events if n in wanted]


def test_a_second_connection_under_the_same_id_replaces_the_first():
    async def main():
        log = EventLog()
        srv = await started(log)
        try:
            r1, w1, peer1 = await device(srv.port)
            await log.wait("online", client="dev-1")
            await beat(r1, w1)
            # The same id again while the first connection is up and well (a clone, or a device whose old
            # connection the server cannot yet know is dead): the first one is thrown out.
            r2, w2, peer2 = await device(srv.port)
            await log.wait("online", count=2, client="dev-1")
            assert log.of("replaced"), "the second connection is online and the first was not replaced"
            rep = log.of("replaced")[0][1]
            assert rep["client"] == "dev-1" and rep["old_peer"] == peer1 and rep["new_peer"] == peer2
            assert rep["since_last_ms"] <= rep["up_ms"]
            # In this order: who replaced whom, the old connection offline, the new one online -- the
            # online count never shows the device twice.
            seq = names(log, "replaced", "offline", "online")
            assert [(n, f.get("reason"), f.get("online")) for n, f in seq] == [
                ("online", None, 1), ("replaced", None, None), ("offline", "replaced", 0), ("online", None, 1)]
            assert seq[2][1]["beats"] == 1  # the offline line is the old connection's
            assert await closed_by_peer(r1)
            s = srv.stats()
            assert s["online"] == 1 and s["offline"]["replaced"] == 1 and s["connections"] == 2
            assert [row["client"] for row in srv.client_table()] == ["dev-1"]
            assert srv.client_table()[0]["beats"] == 0  # the new connection's own count
            await beat(r2, w2)  # the new connection is served
            await beat(r2, w2)
            w1.close()
            # The old connection ending later is no news: the device stays online on the new one. (Its
            # connection beat once, the new one twice: the next offline must be the new one's.)
            w2.close()
            off = await log.wait("offline", count=2, client="dev-1")
            assert off["reason"] == "closed" and off["beats"] == 2 and off["online"] == 0
            assert len(log.of("offline")) == 2 and len(log.of("replaced")) == 1
        finally:
            await srv.stop()
    run(main())


def test_a_clone_that_keeps_coming_back_shows_as_alternating_replacements():
    async def main():
        log = EventLog()
        srv = await started(log)
        try:
            _, _, a = await device(srv.port)
            _, _, b = await device(srv.port)   # the clone
            _, _, a2 = await device(srv.port)  # the real device reconnects
            await log.wait("replaced", count=2)
            assert [(f["old_peer"], f["new_peer"]) for _, f in log.of("replaced")] == [(a, b), (b, a2)]
            assert srv.stats()["offline"]["replaced"] == 2 and srv.stats()["online"] == 1
            # Another device is untouched by all this.
            _, _, c = await device(srv.port, "dev-2", OTHER_KEY)
            await log.wait("online", client="dev-2")
            assert srv.stats()["online"] == 2 and len(log.of("replaced")) == 2
        finally:
            await srv.stop()
    run(main())


def test_a_device_whose_stale_connection_holds_the_last_slot_gets_back_in():
    async def main():
        log = EventLog()
        srv = await started(log, max_clients=1)
        try:
            r1, w1, _ = await device(srv.port)
            r2, w2, _ = await device(srv.port)  # takes over its own slot: not refused
            await log.wait("replaced")
            assert not log.of("refused") and srv.stats()["online"] == 1
            await beat(r2, w2)
            r3, w3 = await open_device(srv.port)  # another device still finds the server full
            await authenticate(r3, w3, "dev-2", OTHER_KEY)
            assert (await log.wait("refused"))["reason"] == "max_clients"
            for w in (w1, w2, w3):
                w.close()
        finally:
            await srv.stop()
    run(main())


def test_a_plain_peer_address_back_before_its_reset_was_read_replaces_the_old_connection():
    # Without authentication a client is its ip:port. TCP holds one live connection per address pair, so
    # a new connection from the same ip:port means the kernel already dropped the old one; the server has
    # only not read that yet. Reading is paused on the old connection to stand for a loop that has not got
    # to it: the peer resets, binds the same port again and connects.
    async def main():
        log = EventLog()
        loop = asyncio.get_running_loop()
        srv = HeartbeatServer(on_event=log, host="127.0.0.1", port=0, tick_ms=1000, summary_ms=0)
        await srv.start()
        socks = []
        try:
            def sock_from(port):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setblocking(False)
                s.bind(("127.0.0.1", port))
                socks.append(s)
                return s

            s1 = sock_from(0)
            await asyncio.wait_for(loop.sock_connect(s1, ("127.0.0.1", srv.port)), WAIT)
            name = "127.0.0.1:%d" % s1.getsockname()[1]
            await log.wait("online", client=name)
            old = srv.by_name[name]
            old.transport.pause_reading()
            s1.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s1.close()  # RST: the server's kernel drops the connection; the server does not read it
            s2 = sock_from(int(name.rsplit(":", 1)[1]))
            await asyncio.wait_for(loop.sock_connect(s2, ("127.0.0.1", srv.port)), WAIT)
            await log.wait("online", count=2, client=name)
            rep = await log.wait("replaced")
            assert (rep["client"], rep["old_peer"], rep["new_peer"]) == (name, name, name)
            assert [f["reason"] for _, f in log.of("offline")] == ["replaced"]
            assert srv.stats()["online"] == 1 and srv.by_name[name] is not old
            # The old transport goes (its close needs no reading); the new connection is served.
            await until("the old connection released", lambda: old not in srv._conns)
            await loop.sock_sendall(s2, HEART_FRAME)
            assert await asyncio.wait_for(loop.sock_recv(s2, 8), WAIT) == HEART_FRAME
            assert srv.client_table()[0]["beats"] == 1 and len(log.of("offline")) == 1
        finally:
            await srv.stop()
            for s in socks:
                s.close()
    run(main())


def test_the_presence_store_and_fleetstatus_show_the_replaced_device_once_and_online(store):
    from tools.hbserver.presence import Presence, PresenceConfig

    async def main():
        r = aioredis.Redis(port=store.port, decode_responses=True)
        ps = r.pubsub()
        await ps.subscribe("hb:changes")
        log = EventLog()
        p = Presence(PresenceConfig(url=store.url, server_id="edge", flush_ms=50, ttl_ms=3000))
        srv = await started(log, hooks=[p])
        try:
            r1, w1, _ = await device(srv.port)
            await until("dev-1 online", lambda: _hget(r, "state", "online"))
            conn1 = await r.hget("hb:dev:dev-1", "conn")
            old = srv.by_name["dev-1"]
            r2, w2, _ = await device(srv.port)
            await log.wait("replaced")
            await p.wait_flush()
            rec = await r.hgetall("hb:dev:dev-1")
            assert rec["state"] == "online" and rec["conn"] != conn1 and rec["reason"] == ""
            # The old connection now ends on its own side: the record stays the new connection's.
            w1.close()
            await until("the old connection released", lambda: old not in srv._conns)
            await p.wait_flush()
            await p.wait_flush()  # a renewal round included
            snap = await snapshot(r, "hb")
            assert [(d["device"], d["state"]) for d in snap["devices"]] == [("dev-1", "online")]
            assert snap["counts"]["online"] == 1 and snap["counts"]["offline"] == 0
            # What a watcher saw: online, online again (the new connection) -- never offline in between.
            # Changes are published in order, so an offline in between would come before the second online.
            seen = []
            async with asyncio.timeout(WAIT):
                while seen.count("online") < 2:
                    m = await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if m is not None:
                        seen.append(json.loads(m["data"])["state"])
            assert seen == ["online", "online"], seen
            w2.close()
            await log.wait("offline", reason="closed")
            await until("dev-1 offline", lambda: _hget(r, "state", "offline"))
            assert await r.hget("hb:dev:dev-1", "reason") == "closed"
        finally:
            await srv.stop()
            await ps.aclose()
            await r.aclose()
    run(main())


async def _hget(r, field, want):
    return (await r.hget("hb:dev:dev-1", field)) == want



def test_across_servers_sharing_the_store_the_newest_connection_wins_too(store):
    # Two servers (two --workers, or two hosts) sharing the presence store. The device's old connection is
    # on A; it reconnects and lands on B. A learns from the store, at its next renewal of the old
    # connection, that B holds a newer one, and closes its own.
    from tools.hbserver.presence import Presence, PresenceConfig

    async def main():
        r = aioredis.Redis(port=store.port, decode_responses=True)
        logs, servers = {}, {}
        for sid in ("A", "B"):
            logs[sid] = EventLog()
            p = Presence(PresenceConfig(url=store.url, server_id=sid, flush_ms=50, ttl_ms=300))
            servers[sid] = await started(logs[sid], hooks=[p])
        try:
            r1, w1, peer1 = await device(servers["A"].port)
            await until("dev-1 online on A", lambda: _hget(r, "server", "A"))
            r2, w2, _ = await device(servers["B"].port)
            rep = await logs["A"].wait("replaced")
            assert (rep["client"], rep["old_peer"], rep["new_peer"], rep["new_server"]) == ("dev-1", peer1, None, "B")
            assert (await logs["A"].wait("offline"))["reason"] == "replaced"
            assert await closed_by_peer(r1)
            assert servers["A"].stats()["online"] == 0 and servers["B"].stats()["online"] == 1
            assert not logs["B"].of("replaced") and not logs["B"].of("offline")
            await beat(r2, w2)
            snap = await snapshot(r, "hb")
            assert [(d["device"], d["state"], d["server"]) for d in snap["devices"]] == [("dev-1", "online", "B")]
            w1.close()
            w2.close()
        finally:
            for srv in servers.values():
                await srv.stop()
            await r.aclose()
    run(main())


def test_only_a_connection_that_proves_the_key_can_take_an_id_over():
    # Naming an online device's id is not enough: a wrong key, or a replayed AUTH frame, fails before
    # admission and the device's connection is untouched.
    async def main():
        log = EventLog()
        srv = await started(log)
        try:
            r1, w1 = await open_device(srv.port)
            frame = await authenticate(r1, w1)
            await log.wait("online", client="dev-1")
            r2, w2 = await open_device(srv.port)
            await authenticate_wrong(r2, w2)
            r3, w3 = await open_device(srv.port)
            await asyncio.wait_for(r3.readexactly(24), WAIT)
            w3.write(frame)  # the AUTH dev-1 sent, captured and replayed
            await log.wait("auth_failed", count=2)
            assert sorted(f["reason"] for _, f in log.of("auth_failed")) == ["bad_mac", "replay"]
            assert await closed_by_peer(r2) and await closed_by_peer(r3)
            assert not log.of("replaced") and not log.of("offline") and srv.stats()["online"] == 1
            await beat(r1, w1)  # still served
            w1.close()
        finally:
            await srv.stop()
    run(main())


async def authenticate_wrong(r, w):
    challenge = await asyncio.wait_for(r.readexactly(24), WAIT)
    w.write(bytes(auth.DeviceAuth("dev-1", OTHER_KEY).answer(challenge)))
