# The sans-IO core (protocol, link, config, counters) checked on the runtime that runs this script:
#
#     <python> host_tests/support/mp_sansio.py REPO
#
# Written for MicroPython first (no pytest there): every check_* function runs, and the script prints
# "ok NAME" or "FAIL NAME: why" per check, then "done PASSED/TOTAL". host_tests/test_mp_sansio.py runs it
# on CPython and both MicroPython tiers. On the 32-bit tier (a board's widths: 31-bit small ints, a 2^30 ms
# tick) it also drives counters past 2^30 and the link's clock across the tick wrap and near the 2^29
# ticks_add limit, with the real time.ticks_* functions.
import sys

sys.path.insert(0, sys.argv[1] + "/firmware")

from hbkeep import compat  # noqa: E402
from hbkeep import protocol  # noqa: E402
from hbkeep.protocol_host import encode  # noqa: E402
from hbkeep.config import Config, ConfigError, TICKS_SPAN_MAX  # noqa: E402
from hbkeep.events import Stats  # noqa: E402
from hbkeep.link import BEAT, NOTHING, SILENT, Link  # noqa: E402
from hbkeep.repeats import FailureRun, LOOKUP_MAX_MS  # noqa: E402

BOARD_WIDTHS = compat.MICROPYTHON and sys.maxsize < (1 << 31)  # the 32-bit tier
if compat.MICROPYTHON:
    import gc
    import time

    TICKS_PERIOD = time.ticks_add(0, -1) + 1  # 2^30 on a 32-bit build, 2^62 on a 64-bit one
else:
    gc = None
    time = None
    TICKS_PERIOD = 0


class Failed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failed(msg)


def heap_delta(fn):
    """Bytes allocated while fn() runs (MicroPython; None on CPython)."""
    if gc is None:
        fn()
        return None
    gc.collect()
    gc.disable()
    try:
        a = gc.mem_alloc()
        fn()
        return gc.mem_alloc() - a
    finally:
        gc.enable()


# -- protocol --------------------------------------------------------------------------------------
def check_frames_round_trip_in_any_split():
    frames = encode(protocol.DATA, b"abc") + encode(protocol.HEART) + \
        encode(protocol.DATA, b"x" * 300)
    for cut in (1, 7, 8, 9, 64, len(frames)):
        dec = protocol.Decoder(1024)
        got = []
        for start in range(0, len(frames), cut):
            buf = bytearray(frames[start:start + cut])
            pos = 0
            while pos < len(buf):
                nxt = dec.feed(buf, pos, len(buf))
                ev = dec.event
                check(ev != protocol.ERROR, "error at cut %d" % cut)
                if ev == protocol.FRAME_IN_PLACE:
                    got.append((dec.type, bytes(buf[dec.start + 8:dec.start + 8 + dec.length])))
                elif ev == protocol.FRAME_ASSEMBLED:
                    got.append((dec.type, bytes(dec.frame[8:8 + dec.length])))
                pos = nxt
        check(got == [(1, b"abc"), (0, b""), (1, b"x" * 300)], "cut %d gave %r" % (cut, got[:3]))


def check_bad_header_names_the_field():
    dec = protocol.Decoder(16)
    buf = bytearray(encode(protocol.DATA, b""))
    buf[4] = 100  # length 100 > max_payload 16
    dec.feed(buf, 0, len(buf))
    check(dec.error_field == "length" and dec.error_value == 100, "field %r value %r" % (
        dec.error_field, dec.error_value))


# -- link ------------------------------------------------------------------------------------------
def check_beats_and_silence():
    link = Link(100, "strict", 3)
    link.up(1000)
    check(link.decide(1099) == NOTHING and link.decide(1100) == BEAT, "beat at 100 ms")
    check(link.decide(1199) == NOTHING and link.decide(1200) == BEAT, "next beat")
    check(link.decide(1299) != SILENT and link.decide(1300) == SILENT, "silence at 3 x 100 ms")
    link.received(1250)
    check(link.decide(1549) != SILENT and link.decide(1550) == SILENT, "silence counts from the last byte")


def check_beat_budget():
    link = Link(100, "off", 3, beats_unacked_max=2)
    link.up(0)
    link.beat_written()
    check(not link.beats_held(), "one beat is within the budget")
    link.beat_written()
    check(link.beats_held(), "the budget is spent at 2")
    link.received(5)
    check(not link.beats_held(), "hearing the peer renews the budget")


def check_backoff_never_makes_big_ints():
    link = Link(100, "auto", 3, 3600000, 3600000)
    link.failures = 1000
    seen = []
    d = link.retry_delay(lambda n: seen.append(n) or n - 1)
    check(seen == [3600001] and d == 3600000, "cap %r" % seen)
    link = Link(100, "auto", 3, 100, 3600000)
    link.failures = 40
    below = _below  # made before measuring: creating a closure allocates, calling one does not

    def delays():
        for _ in range(10):
            link.retry_delay(below)

    check(heap_delta(delays) in (None, 0), "retry_delay allocated %s bytes" % heap_delta(delays))


def _below(n):
    return n - 1


def check_config_ticks_span():
    try:
        Config({"peer_miss": 1000, "beat_ms": 3600000})
    except ConfigError as e:
        msg = str(e)
        check("peer_miss" in msg and "beat_ms" in msg and "3600000000" in msg, msg)
    else:
        raise Failed("peer_miss x beat_ms = 3.6e9 ms accepted")
    Config({"peer_miss": 149, "beat_ms": 3600000})  # 536400000 < 2^29: accepted


# -- a board's widths -------------------------------------------------------------------------------
def check_counters_pass_2_30_without_allocating():
    st = Stats()
    st.bytes_echoed = 0x3FFFFFFF - 5000
    st.frames_echoed = 0x3FFFFFFF - 3

    def frames():
        for _ in range(10):
            st.echoed(1024)

    d = heap_delta(frames)
    check(st.frames_echoed_wraps == 1 and st.frames_echoed == 6, "frames %d/%d" % (
        st.frames_echoed_wraps, st.frames_echoed))
    check(st.bytes_echoed_wraps == 1, "bytes wraps %d" % st.bytes_echoed_wraps)
    total = 0x3FFFFFFF - 5000 + 10240
    fields = st.fields()
    got = dict((fields[i], fields[i + 1]) for i in range(0, len(fields), 2))
    check(got["bytes_echoed"] == total, "total %d != %d" % (got["bytes_echoed"], total))
    check(got["frames_echoed"] == 0x3FFFFFFF - 3 + 10, "frames total %d" % got["frames_echoed"])
    check(d in (None, 0), "%s bytes allocated by 10 increments past 2^30" % d)
    if BOARD_WIDTHS:
        # What the split avoids: a plain counter past 2^30 is a heap object on every increment.
        box = [0x3FFFFFFF - 3]

        def plain():
            for _ in range(10):
                box[0] += 1024

        check(heap_delta(plain) > 0, "a plain counter past 2^30 did not allocate: is this a 32-bit build?")


def check_tick_period_and_ticks_add_limit():
    if not BOARD_WIDTHS:
        return
    check(TICKS_PERIOD == 1 << 30, "tick period %d" % TICKS_PERIOD)
    try:
        time.ticks_add(0, 1 << 29)
    except OverflowError:
        pass
    else:
        raise Failed("ticks_add accepted 2^29")
    check(TICKS_SPAN_MAX == 1 << 29, "the config's span limit is not the ticks_add limit")
    time.ticks_add(0, TICKS_SPAN_MAX - 1)  # the longest span the config accepts is addable


def check_link_across_the_tick_wrap():
    if not BOARD_WIDTHS:
        return
    add, diff = time.ticks_add, time.ticks_diff
    start = add(0, -50)  # 50 ms before the wrap
    link = Link(100, "strict", 3)
    link.up(start)
    t = add(start, 100)
    check(t < start, "no wrap happened")
    check(link.decide(add(t, -1)) == NOTHING and link.decide(t) == BEAT, "beat across the wrap")
    check(diff(link.next_beat, t) == 100, "next beat across the wrap")
    check(link.decide(add(start, 299)) != SILENT and link.decide(add(start, 300)) == SILENT, "silence across the wrap")
    check(link.wait_ms(add(start, 250), True) == 0 or link.wait_ms(add(start, 250), True) <= 50, "wait_ms")
    # The longest silence limit the config accepts, judged across the wrap.
    peer_miss, beat_ms = 149, 3600000
    Config({"peer_miss": peer_miss, "beat_ms": beat_ms})
    link = Link(beat_ms, "strict", peer_miss)
    now = add(0, -1000)
    link.up(now)
    limit = peer_miss * beat_ms
    check(link.decide(add(now, limit - 1)) != SILENT and link.decide(add(now, limit)) == SILENT,
          "longest limit across the wrap")
    link.reading_paused(now)
    link.reading_resumed(add(now, 5000))  # ticks_add of a measured span: must not overflow
    check(diff(link.last_rx, now) == 5000, "pause span")


def check_failure_run_counts_sessions_and_backs_off_lookups():
    run = FailureRun(first=2, summary_ms=1000)
    check(run.failed(0, "ECONNREFUSED") and run.failed(100, "eof", True, True), "first two in full")
    check(run.holds(), "a run past its first lines that lost a session holds the next connection's lines")
    check(not run.failed(200, "eof", True) and run.summary_due(1000), "quiet, then a summary")
    f = run.summary(1000)
    got = {}
    for i in range(0, len(f), 2):
        got[f[i]] = f[i + 1]
    check(got["failures"] == 3 and got["unreported"] == 1 and got["sessions"] == 2, "summary %r" % (got,))
    check(got["reasons"] == "ECONNREFUSED:1,eof:2", "reasons %r" % got["reasons"])
    check(run.failed(1100, "eof", True, True), "a shown connection's end is printed")
    # Lookups: retry_ms doubling to the cap; reset on success; a long retry_ms is kept.
    waits = [run.lookup_failed(0, 100) for _ in range(8)]
    check(waits == [100, 200, 400, 800, 1600, 3200, LOOKUP_MAX_MS, LOOKUP_MAX_MS], "waits %r" % waits)
    run.lookup_ms = 0
    check(run.lookup_failed(0, 3600000) == 3600000, "retry_ms above the cap")
    check(run.lookup_failed(0, 3600000) == 3600000, "and it stays, with no big int on the way")
    if BOARD_WIDTHS:
        # The next lookup's time across the 2^30 ms tick wrap.
        add, diff = time.ticks_add, time.ticks_diff
        run.lookup_ms = 0
        now = add(0, -50)
        run.lookup_failed(now, 100)
        check(run.lookup_left(now) == 100 and run.lookup_left(add(now, 60)) == 40, "left across the wrap")
        check(run.lookup_left(add(now, 100)) == 0 and run.lookup_left(add(now, 5000)) == 0, "due across the wrap")
        check(diff(run.lookup_next, now) == 100, "next across the wrap")
    many = FailureRun()
    for i in range(12):
        many.failed(i, "E%d" % i)
    check(len(many.reasons) == 9 and many.reasons["other"] == 4, "reasons capped: %r" % (many.reasons,))


def main():
    names = sorted(k for k in globals() if k.startswith("check_"))
    passed = 0
    for name in names:
        try:
            globals()[name]()
        except Exception as e:  # noqa: BLE001 (every failure is reported by name)
            print("FAIL %s: %s %s" % (name[6:], type(e).__name__, e))
        else:
            passed += 1
            print("ok " + name[6:])
    print("widths bits=%d tick_period=%d" % (32 if BOARD_WIDTHS else 64, TICKS_PERIOD))
    print("done %d/%d" % (passed, len(names)))


main()
