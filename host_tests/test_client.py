"""The client's connection loop on CPython, driven through a scripted network on a virtual clock.

Every branch -- refused, hanging connect, EAGAIN, partial reads and writes, EOF mid-frame, reset,
blocked writes, lacking socket options -- is reproduced exactly, and times are exact to the millisecond
because the clock is virtual (support/vloop.py)."""
import asyncio
import errno

import pytest

from firmware.hbkeep import compat
from firmware.hbkeep import protocol
from firmware.hbkeep.protocol_host import encode
from support import frames, vloop
from support.client_harness import Harness
from support.fake_sockets import HANG, REFUSE, REFUSE_NOW, FakeConn, FakeNet

HEART_BYTES = encode(protocol.HEART)


def frames_of(data, max_payload=1024):
    """What the client wrote, as frames; a torn, interleaved or partial frame fails the test."""
    out, err, leftover = frames.decode(bytes(data), max_payload)
    assert err is None, "client wrote a broken stream: %s" % (err,)
    assert leftover == 0, "client wrote a partial frame"
    return out


def test_refused_attempts_retry_every_retry_ms_and_close_each_socket():
    async def main():
        net = FakeNet([REFUSE, REFUSE_NOW, REFUSE, REFUSE])
        h = Harness(net, retry_ms=100, verbose=True)  # every failure printed, past the first few
        h.start()
        await h.wait_event("connect_failed", 4)
        gaps = [round((b - a) * 1000) for a, b in zip(net.attempt_times, net.attempt_times[1:])]
        assert gaps[:3] == [100, 100, 100]
        assert [e[2]["reason"] for e in h.events("connect_failed")][:4] == ["ECONNREFUSED"] * 4
        assert net.open_sockets() == [] or len(net.open_sockets()) <= 1  # only an attempt in flight
        assert all(s.closed for s in net.sockets[:4])

    vloop.run(main())


def test_hanging_connect_ends_at_connect_timeout_and_loop_goes_on():
    async def main():
        conn = FakeConn()
        net = FakeNet([HANG, HANG, conn])
        h = Harness(net, connect_timeout_ms=3000, retry_ms=100)
        h.start()
        await h.wait_event("connected")
        fails = h.events("connect_failed")
        assert [f[2]["reason"] for f in fails] == ["timeout", "timeout"]
        assert [int(f[2]["took_ms"]) for f in fails] == [3000, 3000]
        assert net.sockets[0].closed and net.sockets[1].closed and not net.sockets[2].closed

    vloop.run(main())


def test_framed_echo_survives_partial_reads_and_writes_and_eagain():
    async def main():
        conn = FakeConn(read_max=3, write_max=5)
        h = Harness(FakeNet([conn]), beat_ms=50)  # beats fall among the echoes
        h.start()
        await h.wait_event("connected")
        payloads = [b"hello", b"MiXeD 123 \xe9\xff", b"", b"z" * 200, b"abc"]
        for p in payloads:
            conn.send(encode(protocol.DATA, p))
            await asyncio.sleep(0.02)  # virtual: lets beats interleave with the traffic
        conn.send(encode(protocol.HEART))
        want = sum(8 + len(p) for p in payloads)
        await conn.wait_tx(want)
        await asyncio.sleep(0.2)
        got = frames_of(conn.tx)
        data = [p for t, p in got if t == protocol.DATA]
        hearts = [p for t, p in got if t == protocol.HEART]
        assert data == [p.upper() for p in payloads]  # bytes.upper(): a-z only, like C toupper
        assert len(hearts) >= 3 and set(hearts) == {b""}
        assert h.client.stats.frames_echoed == len(payloads)
        assert h.client.stats.hearts_received == 1

    vloop.run(main())


def test_every_split_of_the_stream_gives_the_same_echo():
    stream = b"".join(encode(protocol.DATA, p) for p in (b"ab", b"cD", b"e" * 30)) + HEART_BYTES

    async def main(chunk):
        conn = FakeConn(read_max=chunk)
        h = Harness(FakeNet([conn]), beat_ms=100000)
        h.start()
        await h.wait_event("connected")
        conn.send(stream)
        await conn.wait_tx(8 * 3 + 34)
        return frames_of(conn.tx)

    want = [(1, b"AB"), (1, b"CD"), (1, b"E" * 30)]
    for chunk in (1, 2, 3, 7, 8, 9, 13, 64):
        assert vloop.run(main(chunk)) == want, chunk


def test_heart_from_server_is_not_answered():
    async def main():
        conn = FakeConn()
        h = Harness(FakeNet([conn]), beat_ms=1000)
        h.start()
        await h.wait_event("connected")
        for _ in range(10):
            conn.send(HEART_BYTES)
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # virtual; 0.8 s in all, before the first beat is due
        assert conn.tx == b""
        await conn.wait_tx(8)
        assert bytes(conn.tx) == HEART_BYTES and h.client.stats.beats_sent == 1

    vloop.run(main())


def test_beats_go_out_every_beat_ms_against_a_silent_server():
    async def main():
        conn = FakeConn()
        h = Harness(FakeNet([conn]), beat_ms=3000, peer_timeout="auto")
        h.start()
        t0 = (await h.wait_event("connected"))[0]
        times = []
        for i in range(1, 41):
            await conn.wait_tx(8 * i)
            times.append(compat.ticks_ms() - t0)
        assert times == [3000 * i for i in range(1, 41)]
        assert h.events("disconnected") == []  # auto: a server that never sends is never dropped

    vloop.run(main())


@pytest.mark.parametrize(
    "mode,server_speaks,limit",
    [("auto", True, 900), ("strict", False, 900), ("auto", False, None), ("off", True, None)],
)
def test_peer_silence_modes(mode, server_speaks, limit):
    async def main():
        conn = FakeConn()
        h = Harness(FakeNet([conn]), beat_ms=300, peer_miss=3, peer_timeout=mode)
        h.start()
        t0 = (await h.wait_event("connected"))[0]
        if server_speaks:
            conn.send(HEART_BYTES)
            t0 = compat.ticks_ms()  # silence counts from the last byte received
        if limit is None:
            await asyncio.sleep(60)
            assert h.events("disconnected") == []
            return
        d = await h.wait_event("disconnected")
        assert d[2]["reason"] == "silence"
        assert d[0] - t0 == limit
        assert int(h.events("peer_silent")[0][2]["silent_ms"]) == limit

    vloop.run(main())


def test_eof_mid_frame_disconnects_without_echoing_the_cut_frame_then_reconnects():
    async def main():
        first, second = FakeConn(), FakeConn()
        h = Harness(FakeNet([first, second]), beat_ms=100000, retry_ms=100)
        h.start()
        await h.wait_event("connected")
        whole = encode(protocol.DATA, b"kept")
        cut = encode(protocol.DATA, b"never echoed")[:11]
        first.send(whole + cut)
        first.eof()
        d = await h.wait_event("disconnected")
        assert d[2]["reason"] == "eof"
        assert frames_of(first.tx) == [(1, b"KEPT")]
        await h.wait_event("connected", 2)
        assert first.sock.closed

    vloop.run(main())


def test_reset_is_reported_with_its_errno():
    async def main():
        conn = FakeConn()
        h = Harness(FakeNet([conn]), beat_ms=100000)
        h.start()
        await h.wait_event("connected")
        conn.reset(errno.ECONNRESET)
        d = await h.wait_event("disconnected")
        assert (d[2]["reason"], d[2]["detail"]) == ("reset", "ECONNRESET")
        assert h.client.stats.disconnects == {"reset": 1}

    vloop.run(main())


@pytest.mark.parametrize(
    "header,field,value,reason",
    [
        ((1, -5), "length", "-5", "negative"),
        ((1, 65), "length", "65", "too_large"),
        ((7, 0), "type", "7", "unknown"),
        ((0, 4), "length", "4", "heart_with_payload"),
    ],
)
def test_protocol_error_names_field_and_value_then_reconnects(header, field, value, reason):
    async def main():
        first, second = FakeConn(), FakeConn()
        h = Harness(FakeNet([first, second]), max_payload=64, beat_ms=100000)
        h.start()
        await h.wait_event("connected")
        bad = bytearray(8)
        protocol.encode_header(bad, 0, *header)
        first.send(encode(protocol.DATA, b"ok") + bytes(bad) + b"trailing")
        e = await h.wait_event("protocol_error")
        assert (e[2]["field"], e[2]["value"], e[2]["reason"]) == (field, value, reason)
        d = await h.wait_event("disconnected")
        assert d[2]["reason"] == "protocol"
        assert frames_of(first.tx) == [(1, b"OK")]  # the valid frame before the error was echoed
        await h.wait_event("connected", 2)

    vloop.run(main())


def test_a_beat_never_lands_inside_a_frame_held_by_blocked_writes():
    async def main():
        conn = FakeConn(write_max=3)
        h = Harness(FakeNet([conn]), beat_ms=100, peer_miss=100)
        h.start()
        await h.wait_event("connected")
        conn.block_writes()
        conn.send(encode(protocol.DATA, b"x" * 100))
        await asyncio.sleep(1.0)  # ten beats fall due while the echo is blocked
        conn.unblock_writes()
        await conn.wait_tx(108 + 8)
        await asyncio.sleep(0.5)
        got = frames_of(conn.tx)
        assert (1, b"X" * 100) in got
        assert all(p == b"" for t, p in got if t == protocol.HEART)

    vloop.run(main())


def test_writes_blocked_too_long_count_as_a_stall():
    async def main():
        conn = FakeConn()
        h = Harness(FakeNet([conn]), beat_ms=200, peer_miss=3)
        h.start()
        t0 = (await h.wait_event("connected"))[0]
        conn.block_writes()
        d = await h.wait_event("disconnected")
        assert d[2]["reason"] == "write_stall"
        # The first beat (t=200) blocks; the stall is declared 3 x 200 ms later.
        assert d[0] - t0 == 800

    vloop.run(main())


def test_options_lacking_on_the_board_are_never_set_and_are_reported():
    async def main():
        conn = FakeConn()
        net = FakeNet([conn])
        h = Harness(net, board_name="esp32")
        h.start()
        e = await h.wait_event("connected")
        assert (e[2]["applied"], e[2]["lacking"], e[2]["failed"]) == ("nodelay", "keepalive,idle,intvl,cnt", "-")
        assert net.sockets[0].opts == {(6, 1): 1}

    vloop.run(main())


def test_unix_board_sets_all_five_with_linux_numbers_and_a_failing_option_is_reported():
    async def main():
        conn = FakeConn()
        net = FakeNet([conn], bad_opts={(6, 6)})
        h = Harness(net, keepalive={"idle": 1, "intvl": 2, "cnt": 4})
        h.start()
        e = await h.wait_event("connected")
        assert (e[2]["applied"], e[2]["lacking"], e[2]["failed"]) == ("keepalive,idle,intvl,nodelay", "-", "cnt")
        assert net.sockets[0].opts == {(1, 9): 1, (6, 4): 1, (6, 5): 2, (6, 1): 1}

    vloop.run(main())


def test_resolve_once_even_across_reconnects_and_retry_resolve_failures():
    async def main():
        conns = [FakeConn() for _ in range(3)]
        net = FakeNet(conns, resolve_errors=2)
        h = Harness(net, beat_ms=100000)
        h.start()
        for i, c in enumerate(conns, 1):
            await h.wait_event("connected", i)
            c.eof()
        await h.wait_event("disconnected", 3)
        assert len(h.events("resolve_failed")) == 2
        assert net.resolves == 3  # two failures, then resolved once for good

    vloop.run(main())


def test_no_attempt_while_the_network_link_is_down():
    async def main():
        conn = FakeConn()
        net = FakeNet([conn])
        net.up = False
        h = Harness(net, retry_ms=100)
        h.start()
        await asyncio.sleep(5)
        assert net.resolves == 0 and net.attempt_times == []
        net.up = True
        await h.wait_event("connected")

    vloop.run(main())


def test_backoff_grows_to_its_cap_with_full_jitter(monkeypatch):
    # Jitter at its top end makes each delay equal its cap: 100, 200, 400, 800, 1000, 1000.
    monkeypatch.setattr(compat, "rand_below", lambda n: n - 1)

    async def main():
        net = FakeNet([REFUSE] * 7)
        h = Harness(net, retry_ms=100, backoff_max_ms=1000, verbose=True)
        h.start()
        await h.wait_event("connect_failed", 7)
        gaps = [round((b - a) * 1000) for a, b in zip(net.attempt_times, net.attempt_times[1:])]
        assert gaps[:6] == [200, 400, 800, 1000, 1000, 1000]

    vloop.run(main())


def test_raw_mode_echoes_every_byte_upper_cased_and_never_beats():
    async def main():
        conn = FakeConn(read_max=4)
        h = Harness(FakeNet([conn]), mode="raw", beat_ms=100)
        h.start()
        await h.wait_event("connected")
        data = bytes(range(256)) + b"hello, World"
        conn.send(data)
        await conn.wait_tx(len(data))
        await asyncio.sleep(2)
        assert bytes(conn.tx) == data.upper()
        assert h.client.stats.beats_sent == 0

    vloop.run(main())


def test_stats_line_counts_what_happened():
    async def main():
        conn = FakeConn()
        h = Harness(FakeNet([REFUSE, conn]), beat_ms=1000, retry_ms=100, peer_timeout="off")
        h.client.cfg.stats_ms = 10000
        h.start()
        await h.wait_event("connected")
        conn.send(encode(protocol.DATA, b"abc") * 2)
        s = await h.wait_event("stats")
        f = s[2]
        assert (f["attempts"], f["connects"], f["beats_sent"], f["frames_echoed"], f["bytes_echoed"]) == (
            "2", "1", "9", "2", "6",
        )
        assert f["connect_failures"] == "ECONNREFUSED:1"

    vloop.run(main())


def test_raw_mode_auto_does_not_drop_an_idle_server():
    async def main():
        conn = FakeConn()
        h = Harness(FakeNet([conn]), mode="raw", beat_ms=100)  # peer_timeout defaults to auto
        h.start()
        await h.wait_event("connected")
        conn.send(b"once")
        await asyncio.sleep(60)
        assert h.events("disconnected") == []

    vloop.run(main())


@pytest.mark.parametrize("partial", [False, True])
def test_a_beat_that_meets_a_broken_connection_ends_the_session_with_its_errno(partial):
    async def main():
        conn = FakeConn(write_max=3 if partial else 1 << 20)
        h = Harness(FakeNet([conn, FakeConn()]), beat_ms=100, peer_timeout="off")
        h.start()
        await h.wait_event("connected")
        if partial:
            conn.block_writes()  # the first beat goes out in part and waits in the background
            await conn.wait_tx(0)
            await asyncio.sleep(0.15)
        conn.fail_writes()
        d = await h.wait_event("disconnected")
        assert (d[2]["reason"], d[2]["detail"]) == ("reset", "EPIPE")
        await h.wait_event("connected", 2)  # and the loop goes on

    vloop.run(main())
