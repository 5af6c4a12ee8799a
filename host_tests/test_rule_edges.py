"""Every timing rule asserted at both edges, so a rule off by one step (one ms, one tick, one frame) fails.

Each test here was written against a bug planted in the code that the rest of the suite let through;
docs/TESTING.md lists them with the test that now catches each and how fast. Times are integers (Link),
a virtual clock (the client) or a server driven tick by tick with chosen loop times."""
import asyncio
import shutil
import subprocess

import pytest

from firmware.hbkeep.link import BEAT, NOTHING, SILENT, STALLED, Link
from support.fake_device import EventLog, run
from support import vloop
from support.fake_sockets import FakeConn, FakeNet
from support.client_harness import Harness
from support.frames import frames_of
from tools import hostrun
from tools.hbserver import HeartbeatServer

from firmware.hbkeep.protocol import DATA, HEART
from firmware.hbkeep.protocol_host import encode


@pytest.fixture
def runtime(any_runtime):
    """CPython, the MicroPython unix port and the 32-bit one (small ints end at 2^30 there, as on boards)."""
    return any_runtime


# -- Link ------------------------------------------------------------------------------------------
def test_the_beat_schedule_does_not_drift_when_a_beat_goes_out_late():
    lk = Link(1000)
    lk.up(0)
    assert lk.decide(1007) == BEAT  # the supervisor woke 7 ms late: the next beat is still due at 2000
    assert lk.next_beat == 2000
    assert lk.decide(2999) == BEAT  # 999 ms late: still on the schedule, not a burst
    assert lk.next_beat == 3000
    assert lk.decide(3000 + 1000) == BEAT  # a whole period late: from now, not a burst of catch-up beats
    assert lk.next_beat == 5000


def test_a_beat_is_due_exactly_beat_ms_after_the_connection_came_up():
    lk = Link(250)
    lk.up(10)
    assert lk.decide(259) == NOTHING and lk.decide(260) == BEAT


def test_backoff_resets_after_exactly_one_beat_period_not_one_ms_sooner():
    lk = Link(1000, retry_ms=100, backoff_max_ms=10_000)
    lk.up(0)
    lk.down(999)
    assert lk.failures == 1
    lk.up(2000)
    lk.down(3000)
    assert lk.failures == 0


def test_backoff_doubles_per_failure_from_the_first():
    lk = Link(1000, retry_ms=100, backoff_max_ms=1 << 30)
    top = lambda n: n - 1  # noqa: E731  (jitter at its top end: the cap itself)
    assert lk.retry_delay(top) == 100
    got = []
    for _ in range(5):
        lk.connect_failed()
        got.append(lk.retry_delay(top))
    assert got == [200, 400, 800, 1600, 3200]


@pytest.mark.parametrize("mode, heard, judged", [
    ("auto", False, False), ("auto", True, True), ("strict", False, True), ("off", True, False)])
def test_silence_judged_exactly_per_mode_and_at_the_limit(mode, heard, judged):
    lk = Link(100, peer_timeout=mode, peer_miss=4)
    lk.up(0)
    if heard:
        lk.received(0)
    assert lk.decide(399) != SILENT
    assert (lk.decide(400) == SILENT) is judged


def test_paused_reading_skips_exactly_the_paused_span():
    lk = Link(100, peer_timeout="strict", peer_miss=3)
    lk.up(0)
    lk.reading_paused(50)
    lk.reading_resumed(1050)  # 1000 ms not reading: the limit moves from 300 to 1300
    assert lk.decide(1299) != SILENT and lk.decide(1300) == SILENT


def test_stall_edges_and_progress_restarts_the_count():
    lk = Link(100, peer_miss=3)
    lk.up(0)
    lk.tx_blocked(1000)
    assert lk.decide(1299) != STALLED and lk.decide(1300) == STALLED
    lk.tx_blocked(1299)  # a byte went through
    assert lk.decide(1598) != STALLED and lk.decide(1599) == STALLED


# -- the client: rules that live in the driver ---------------------------------------------------
def _slow_reader(net, conn, every_s, chunk):
    """Play a server that takes `chunk` bytes every `every_s` virtual seconds, no faster: after each
    write the socket is full again until the next period."""
    real = net.try_write

    def try_write(sock, buf, off, n):
        k = real(sock, buf, off, n)
        if k:
            conn.write_blocked = True
            conn.writable.clear()
        return k

    net.try_write = try_write
    conn.write_max = chunk

    async def loop():
        while True:
            await asyncio.sleep(every_s)
            conn.write_blocked = False
            conn.writable.set()
    return asyncio.create_task(loop())


def test_a_slow_but_reading_server_is_neither_stalled_nor_silent():
    # limit = 3 x 100 ms. The echo of one 400-byte frame trickles out 8 bytes per 200 ms: 10 s of a
    # blocked write with progress every 200 ms. Progress must restart the stall count, and the
    # receiver's own blocked write must pause the silence clock (the server, waiting for its echo, says
    # nothing meanwhile).
    async def main():
        conn = FakeConn()
        net = FakeNet([conn])
        h = Harness(net, beat_ms=100, peer_miss=3, peer_timeout="auto")
        h.start()
        await h.wait_event("connected")
        reader = _slow_reader(net, conn, 0.2, 8)
        conn.send(encode(DATA, b"s" * 400))
        loop = asyncio.get_running_loop()
        end = loop.time() + 30
        while b"S" * 400 not in bytes(conn.tx):
            assert not h.events("disconnected"), h.lines[-5:]
            assert loop.time() < end, "echo never finished"
            conn.tx_grew.clear()
            try:
                await asyncio.wait_for(conn.tx_grew.wait(), 1)
            except asyncio.TimeoutError:
                pass
        reader.cancel()
        assert not h.events("disconnected") and not h.events("peer_silent"), h.lines[-5:]
        frames_of(conn.tx)  # and the stream stayed whole

    vloop.run(main())


def test_a_server_that_stops_reading_is_dropped_at_the_stall_limit_not_later():
    async def main():
        conn = FakeConn()
        net = FakeNet([conn])
        h = Harness(net, beat_ms=100, peer_miss=3)
        h.start()
        await h.wait_event("connected")
        conn.write_blocked = True
        conn.writable.clear()
        conn.send(encode(DATA, b"x" * 64))
        t0 = asyncio.get_running_loop().time()
        d = await h.wait_event("disconnected", limit_s=10)
        assert d[2]["reason"] == "write_stall"
        took = asyncio.get_running_loop().time() - t0
        assert 0.300 <= took <= 0.300 + 0.001, took  # exactly the limit on the virtual clock
        assert net.sockets[0].closed  # and the socket of that session is closed

    vloop.run(main())


# -- the server: offline and partial-frame rules, tick by tick -----------------------------------
async def _one_client(**cfg):
    log = EventLog()
    srv = HeartbeatServer(on_event=log, host="127.0.0.1", port=0, tick_ms=3_600_000, summary_ms=0, **cfg)
    await srv.start()  # the real ticker waits an hour: the test calls tick itself
    r, w = await asyncio.open_connection("127.0.0.1", srv.port)
    await log.wait("online")
    return srv, log, next(iter(srv.clients)), w


def test_a_silent_client_goes_offline_at_exactly_offline_ticks():
    async def main():
        srv, log, c, w = await _one_client(offline_ticks=3)
        t0 = c.last_heard
        srv.config.tick_ms = 100  # the rule's period, for its time guard
        for k in (1, 2):
            srv.tick(t0 + 0.1 * k)
            assert not log.of("offline"), "offline after %d ticks, before the rule's 3" % k
        srv.tick(t0 + 0.3)
        off = log.of("offline")
        assert len(off) == 1 and off[0][1]["missed"] == 3 and off[0][1]["reason"] == "silent"
        w.close()
        await srv.stop()
    run(main())


def test_a_heart_resets_the_count_so_the_window_restarts():
    async def main():
        srv, log, c, w = await _one_client(offline_ticks=2)
        srv.config.tick_ms = 100
        t0 = c.last_heard
        srv.tick(t0 + 0.1)
        w.write(encode(HEART))
        await w.drain()
        while c.beats == 0:
            await asyncio.sleep(0.001)
        t1 = c.last_heard
        srv.tick(t1 + 0.1)
        assert not log.of("offline")  # one tick since the HEART, not two since the connection
        srv.tick(t1 + 0.2)
        assert log.of("offline")
        w.close()
        await srv.stop()
    run(main())


def test_the_partial_frame_deadline_runs_from_when_the_held_frame_began():
    async def main():
        srv, log, c, w = await _one_client(offline_ticks=1000, header_timeout_ms=300)
        loop = asyncio.get_running_loop()
        # Every read completes the frame held and starts the next one: a partial frame is held without
        # a break, but each one is new, so the deadline must restart with each whole frame.
        w.write(encode(HEART)[:3])
        await w.drain()
        while c.decoder.have != 3:
            await asyncio.sleep(0.001)
        first = c.partial_since
        for i in range(1, 6):
            await asyncio.sleep(0.05)  # time must pass between the reads for a stale deadline to show
            w.write(encode(HEART)[3:] + encode(HEART)[:3])
            await w.drain()
            while c.frames_in < i:
                await asyncio.sleep(0.001)
            assert c.decoder.have == 3
        began = c.partial_since
        assert began > first
        assert began is not None and loop.time() - began < 0.2  # restarted by the last whole frame
        srv.tick(began + 0.299)
        assert not log.of("offline")
        srv.tick(began + 0.3001)  # (float loop times: the edge itself is not representable)
        off = log.of("offline")
        assert off and off[0][1]["reason"] == "protocol" and off[0][1]["partial"] == 3
        w.close()
        await srv.stop()
    run(main())


# -- fallback paths: what ships runs on some tier ------------------------------------------------
def test_the_plain_python_byte_loops_are_right_on_the_runtime_itself(runtime, tmp_path):
    # A copy of the firmware whose viper module cannot load: compat must fall back, and the fallback
    # must upper-case exactly a-z and copy exactly, on MicroPython as on CPython.
    fw = tmp_path / "firmware"
    shutil.copytree(hostrun.FIRMWARE_DIR, fw, ignore=shutil.ignore_patterns("__pycache__"))
    (fw / "hbkeep" / "fastbuf.py").write_text('raise ImportError("no native emitter on this port")\n')
    script = tmp_path / "loops.py"
    script.write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom hbkeep import compat\n"
        "buf = bytearray(bytes(range(256)) * 2)\n"
        "compat.upcase(buf, 3, 509)\n"
        "print(bytes(buf).hex())\n"
        "dst = bytearray(10)\n"
        "compat.copy_bytes(dst, 2, b'abcdefgh', 1, 5)\n"
        "print(bytes(dst).hex())\n"
        "print(getattr(compat.upcase, '__module__', 'hbkeep.compat'))\n" % str(fw))
    r = subprocess.run(hostrun.runtime_argv(runtime) + [str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    up, copied, _where = r.stdout.split()
    want = bytearray(range(256)) * 2
    want[3:509] = bytes(want[3:509]).upper()
    assert bytes.fromhex(up) == bytes(want)
    assert bytes.fromhex(copied) == b"\0\0bcdef\0\0\0"


def test_the_viper_byte_loops_are_what_micropython_uses_when_it_can(tmp_path):
    from support.fwproc import require_runtime

    require_runtime("micropython")
    script = tmp_path / "which.py"
    script.write_text("import sys\nsys.path.insert(0, %r)\nfrom hbkeep import compat, fastbuf\n"
                      "print(compat.upcase is fastbuf.upcase)\n"
                      "b = bytearray(range(256)); compat.upcase(b, 0, 256); print(bytes(b).hex())\n"
                      % hostrun.FIRMWARE_DIR)
    r = subprocess.run(hostrun.runtime_argv("micropython") + [str(script)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    same, up = r.stdout.split()
    assert same == "True" and bytes.fromhex(up) == bytes(range(256)).upper()

