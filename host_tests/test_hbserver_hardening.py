"""tools.hbserver against peers that misbehave on purpose, and against its own failures.

Every descriptor and buffer held for a client is released within a bounded time after the server drops
it, even when the peer never reads again; an idle connection's cost does not depend on --max-payload; a
failing periodic task or a broken stdout stops the server (non-zero) instead of leaving it half-alive;
running out of descriptors is one line per interval; a frame cut by the peer's close is named. Each
misbehaving-peer test checks descriptors, memory and a well-behaved client's state before and after."""
import asyncio
import os
import resource
import socket
import subprocess
import sys
import time
import tracemalloc

import pytest

from support.fake_device import WAIT, EventLog, FakeClient
from support.frames import header
from test_hbserver import run, serving
from tools.hbserver import HeartbeatServer

from firmware.hbkeep.protocol_host import encode
from firmware.hbkeep.protocol import DATA, HEART

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEART_BYTES = encode(HEART)


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def raw_peer(port, rcvbuf=None):
    """A blocking socket the test drives byte by byte; optionally with a tiny receive buffer."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    return s


async def until(cond, timeout=WAIT, what="condition"):
    # Re-checked on every loop turn (a few ms of real time each), bounded.
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "%s not met within %.1fs" % (what, timeout)
        await asyncio.sleep(0.01)


# -- release within a bound, and counted meanwhile -----------------------------------------------
def test_a_dropped_client_that_never_reads_is_released_within_close_ms_and_counted_until_then():
    async def main():
        async with serving(close_ms=400, max_clients=1, tick_ms=60000) as (srv, log, connect):
            fds0 = open_fds()
            s = raw_peer(srv.port, rcvbuf=4096)
            await log.wait("online")
            # HEART replies pile up unread until the server's write buffer is above its high-water mark.
            c = next(iter(srv.clients))
            burst = HEART_BYTES * 8192
            end = time.monotonic() + WAIT
            while not c.paused:
                assert time.monotonic() < end, "server write side never paused"
                try:
                    s.send(burst)
                except BlockingIOError:
                    pass
                await asyncio.sleep(0.001)
            s.send(header(7, 0))  # a protocol error: the server drops it with bytes still queued
            off = await log.wait("offline")
            assert off["reason"] == "protocol"
            t_drop = asyncio.get_running_loop().time()
            assert len(srv._conns) == 1  # still held: flushing to a peer that does not read
            # Meanwhile it counts against --max-clients: a second client is refused...
            other = await connect()
            # Whichever comes first decides: no waiting out a deadline for an event that will not come.
            await until(lambda: log.of("refused", client=other.name) or log.of("online", client=other.name),
                        what="the second client admitted or refused")
            assert not log.of("online", client=other.name), "admitted while a dropped client still held its slot"
            ref = log.of("refused", client=other.name)[0][1]
            assert ref["reason"] == "max_clients" and ref["closing"] == 1
            # ...and within close_ms the held one is aborted and released.
            await until(lambda: not srv._conns, timeout=2, what="held connection released")  # close_ms + slack
            held_s = asyncio.get_running_loop().time() - t_drop
            assert 0.35 <= held_s < 2.0, held_s
            third = await connect()
            await log.wait("online", client=third.name)
            s.close()
            await third.close()
            await until(lambda: open_fds() <= fds0 + 1, timeout=5, what="descriptors back")  # +1: other's
    run(main())


def test_an_idle_connection_costs_the_same_whatever_max_payload_allows():
    async def per_conn(max_payload, n=100):
        async with serving(max_payload=max_payload, tick_ms=60000) as (srv, log, connect):
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            peers = [raw_peer(srv.port) for _ in range(n)]
            await log.wait("online", count=n)
            used = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            for p in peers:
                p.close()
            return used / n

    small = run(per_conn(1024))
    big = run(per_conn(16 << 20))
    assert big < 8192 and big < small * 1.5 + 512, (small, big)  # was 16 MiB + per idle connection


def test_a_header_that_announces_megabytes_costs_only_what_arrives():
    async def main():
        async with serving(max_payload=16 << 20, tick_ms=60000) as (srv, log, connect):
            peers = [raw_peer(srv.port) for _ in range(50)]
            await log.wait("online", count=50)
            for p in peers:
                p.send(header(DATA, 16 << 20) + b"x")  # 16 MiB announced, 1 byte sent
            await until(lambda: all(c.decoder.have == 9 for c in srv.clients), what="50 partial frames held")
            held = sum(len(c.decoder.frame) for c in srv.clients)
            assert held <= 50 * 64, held  # was 50 x 16 MiB
            for p in peers:
                p.close()
    run(main())


def test_a_split_large_frame_gets_a_buffer_only_while_it_is_split():
    async def main():
        async with serving(max_payload=1 << 20, tick_ms=60000) as (srv, log, connect):
            s = raw_peer(srv.port)
            await log.wait("online")
            c = next(iter(srv.clients))
            assert len(c.decoder.frame) == 8
            payload = b"x" * (1 << 20)
            s.setblocking(True)
            s.sendall(header(DATA, len(payload)) + payload[:1000])
            await until(lambda: c.decoder.have == 1008, what="partial frame held")
            # Sized by what arrived, not by the 1 MiB the header announces.
            assert 1008 <= len(c.decoder.frame) <= 2 * 1008, len(c.decoder.frame)
            s.sendall(payload[1000:] + HEART_BYTES)
            await until(lambda: c.beats == 1, what="frame done")
            assert len(c.decoder.frame) == 8 and c.frames_in == 2
            s.close()
    run(main())


# -- failures of the server's own parts ----------------------------------------------------------
@pytest.mark.parametrize("part", ["_tick", "_summary", "_probe_sweep", "emit"])
def test_a_failing_part_stops_the_server_instead_of_leaving_it_half_alive(part):
    async def main():
        log = EventLog()
        srv = HeartbeatServer(on_event=log, host="127.0.0.1", port=0, tick_ms=20, summary_ms=20, probe_ms=20)
        armed = []
        if part != "emit":
            real = getattr(srv, part)

            def broken(now):
                if armed:
                    raise RuntimeError("planted")
                return real(now)
            broken.__name__ = part
            setattr(srv, part, broken)  # before start(): the periodic tasks take the method then
        await srv.start()
        c = await FakeClient.connect(srv.port)
        await log.wait("online")
        if part == "emit":
            def closed_stdout(name, fields):
                raise BrokenPipeError(32, "Broken pipe")  # print() to a closed stdout
            srv.on_event = closed_stdout
            c.beat()  # the next event to print
            srv.emit("probe", {})
        armed.append(1)
        await asyncio.wait_for(srv.done.wait(), 2)  # the parts run every 20 ms
        assert srv.failure is not None and srv.failure[0] == part.strip("_")
        assert not srv.clients and not srv._conns  # every client dropped, nothing held
        await c.close()
    run(main())


def _server_proc(*args, **popen):
    return subprocess.Popen([sys.executable, "-m", "tools.hbserver", "--host", "127.0.0.1", "--port", "0",
                             *args], cwd=ROOT, stderr=subprocess.PIPE, text=True, **popen)


def test_a_closed_stdout_makes_the_process_exit_non_zero_at_once():
    r, w = os.pipe()
    os.close(r)  # nobody will ever read: the first event line fails with EPIPE
    p = _server_proc("--summary-ms", "100", stdout=w)
    os.close(w)
    try:
        rc = p.wait(20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    err = p.stderr.read()
    p.stderr.close()
    assert rc == 1, (rc, err)
    assert "Traceback" not in err and "emit failed: BrokenPipeError" in err, err


def test_out_of_descriptors_is_one_line_per_interval_not_a_traceback_per_retry():
    limit = 24

    def low_fd_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))  # hard too: the CLI raises soft to hard

    p = _server_proc("--summary-ms", "0", "--tick-ms", "60000", stdout=subprocess.PIPE, preexec_fn=low_fd_limit)
    peers = []
    try:
        port = None
        line = p.stdout.readline()
        assert " listening " in line, line
        port = int(line.split(" port=")[1].split(" ")[0])
        peers = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(limit + 10)]
        seen = []
        end = time.monotonic() + 15
        while not seen and time.monotonic() < end:
            line = p.stdout.readline()
            if " accept_failed " in line:
                seen.append(line)
        assert seen and "reason=EMFILE" in seen[0], seen
        # asyncio retries the accept every second; over three more seconds: no second line, no traceback.
        for s in peers:
            s.close()
        peers = []
        newcomer = socket.create_connection(("127.0.0.1", port), timeout=5)
        peers.append(newcomer)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            line = p.stdout.readline()
            assert " accept_failed " not in line, line
            if " offline " in line:
                break  # the earlier peers closing: the server is accepting and serving again
        p.send_signal(2)
        p.wait(10)
        err = p.stderr.read()
        assert "Traceback" not in err and "out of system resource" not in err, err[-2000:]
    finally:
        for s in peers:
            s.close()
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()


# -- misbehaving peers ---------------------------------------------------------------------------
def test_misbehaving_peers_cost_nothing_lasting_and_a_good_client_never_notices():
    async def main():
        # Silence is judged after 10 x 50 ms, a partial frame after 300 ms: each peer meets its own rule.
        async with serving(tick_ms=50, offline_ticks=10, header_timeout_ms=300, close_ms=300,
                           probe_ms=50, max_payload=1024) as (srv, log, connect):
            loop = asyncio.get_running_loop()
            good = await connect()
            good.start_beating(0.02)
            await log.wait("online", client=good.name)
            fds0 = open_fds()
            tracemalloc.start()
            snap0 = tracemalloc.take_snapshot()

            flood = raw_peer(srv.port, rcvbuf=4096)  # beats as fast as it can, never reads a reply
            squat = raw_peer(srv.port)  # connects and says nothing
            trickle = raw_peer(srv.port)  # a HEART, one byte per 100 ms: 800 ms for a frame, > header timeout
            cut = raw_peer(srv.port)  # closes in the middle of a frame
            names = {}
            for s, what in ((flood, "flood"), (squat, "squat"), (trickle, "trickle"), (cut, "cut")):
                names["127.0.0.1:%d" % s.getsockname()[1]] = what
            await log.wait("online", count=5)
            cut.send(header(DATA, 100) + b"abc")
            await until(lambda: any(c.decoder.have == 11 for c in srv.clients), what="cut frame held")
            cut.close()
            t_end = loop.time() + 1.0
            next_drip = loop.time()
            while loop.time() < t_end:
                try:
                    flood.send(HEART_BYTES * 512)
                except BlockingIOError:
                    pass
                if loop.time() >= next_drip:
                    next_drip += 0.1
                    try:
                        trickle.send(b"\x00")
                    except OSError:
                        pass  # dropped already
                await asyncio.sleep(0.005)
            offline = {names.get(f["client"]): f for _, f in log.of("offline")}
            assert offline["squat"]["reason"] == "silent"
            assert offline["trickle"]["reason"] == "protocol"
            assert offline["cut"]["reason"] == "closed"
            assert offline["cut"]["cut"] == "payload" and offline["cut"]["partial"] == 11
            assert "flood" not in offline  # it beats: it is alive, only rude; its replies are skipped
            flooder = [c for c in srv.clients if names.get(c.name) == "flood"][0]
            assert flooder.transport.get_write_buffer_size() <= 16384 + 8 * 1024  # bounded by high water
            for s in (flood, squat, trickle):
                s.close()
            await until(lambda: len(srv._conns) == 1, timeout=5, what="only the good client left")
            await until(lambda: open_fds() <= fds0, timeout=5, what="descriptors back to the baseline")
            snap1 = tracemalloc.take_snapshot()
            tracemalloc.stop()
            # What the server and the transports still hold (not the test's own event log).
            held = tracemalloc.Filter(True, "*hbserver*"), tracemalloc.Filter(True, "*asyncio*")
            grown = sum(d.size_diff for d in snap1.filter_traces(held).compare_to(snap0.filter_traces(held), "filename"))
            assert grown < 16 * 1024, grown
            # The good client never noticed: online throughout, probes answered, never offline.
            assert good.name not in [f["client"] for _, f in log.of("offline")]
            assert any(c.name == good.name for c in srv.clients)
            await good.stop_beating()
    run(main())
