"""The link's decisions, with plain integers for time: no clock, no sockets."""
import pytest

from firmware.hbkeep.link import BEAT, NOTHING, SILENT, STALLED, Link


def test_beats_every_beat_ms_and_never_bursts_after_a_stall():
    lk = Link(1000)
    lk.up(0)
    assert lk.decide(999) == NOTHING and lk.decide(1000) == BEAT
    assert lk.next_beat == 2000
    assert lk.decide(7500) == BEAT  # the loop was stuck for 5 s: next beat from now, not five at once
    assert lk.next_beat == 8500


@pytest.mark.parametrize("mode", ["auto", "strict", "off"])
def test_silence_rules(mode):
    lk = Link(100, peer_timeout=mode, peer_miss=3)
    lk.up(0)
    # Never heard anything on this connection.
    assert (lk.decide(10_000) == SILENT) is (mode == "strict")
    lk.received(10_000)
    assert lk.decide(10_299) != SILENT
    assert (lk.decide(10_300) == SILENT) is (mode != "off")


def test_silence_counts_from_the_last_byte_received():
    lk = Link(100, peer_timeout="auto", peer_miss=3)
    lk.up(0)
    for t in range(0, 5000, 250):  # the peer talks every 250 ms: < 300 ms limit
        lk.received(t)
        assert lk.decide(t + 299) != SILENT


def test_stall_is_judged_from_when_writes_blocked():
    lk = Link(100, peer_miss=3)
    lk.up(0)
    assert lk.decide(10_000) != STALLED
    lk.tx_blocked(500)
    assert lk.decide(799) != STALLED and lk.decide(800) == STALLED
    lk.tx_unblocked()
    assert lk.decide(5000) != STALLED
    off = Link(100, peer_timeout="off")
    off.tx_blocked(0)
    assert off.decide(10**6) != STALLED


def test_wait_ms_is_the_time_to_the_next_decision():
    lk = Link(1000, peer_timeout="strict", peer_miss=3)
    lk.up(0)
    assert lk.wait_ms(0) == 1000  # next beat
    assert lk.decide(1000) == BEAT and lk.decide(2000) == BEAT
    assert lk.wait_ms(2500) == 500  # silence deadline at 3000 comes before the beat at 3000? equal
    assert lk.wait_ms(2500, beating=False) == 500
    lk.received(2500)
    assert lk.wait_ms(2600) == 400  # beat at 3000
    lk.tx_blocked(2600)
    assert lk.wait_ms(2600) == 400
    assert lk.wait_ms(9000) == 0


def test_fixed_retry_is_the_seeds_100ms():
    lk = Link(3000)
    assert [lk.retry_delay(lambda n: 0) for _ in range(5)] == [100] * 5


def test_backoff_caps_double_and_jitter_stays_within_them():
    lk = Link(3000, retry_ms=100, backoff_max_ms=1500)
    caps = []
    for _ in range(7):
        lk.connect_failed()
        caps.append(lk.retry_delay(lambda n: n - 1))
    assert caps == [200, 400, 800, 1500, 1500, 1500, 1500]
    seen = set()
    for _ in range(200):
        import random

        d = lk.retry_delay(lambda n: random.randrange(n))
        assert 0 <= d <= 1500
        seen.add(d)
    assert len(seen) > 50  # full jitter: spread over the whole range


def test_backoff_resets_only_after_a_connection_that_lasted():
    lk = Link(1000, retry_ms=100, backoff_max_ms=10_000)
    lk.connect_failed()
    lk.connect_failed()
    lk.up(0)
    lk.down(50)  # accepted then dropped at once: still failing
    assert lk.failures == 3
    lk.up(100)
    lk.down(1100)
    assert lk.failures == 0


def test_silence_is_not_judged_while_the_receiver_is_paused_on_its_own_write():
    # The receiver waits to write and reads nothing meanwhile: the peer's bytes sit unread.
    lk = Link(100, peer_timeout="auto", peer_miss=3)
    lk.up(0)
    lk.received(0)
    lk.reading_paused(100)
    lk.tx_blocked(100)
    assert lk.decide(5000) != SILENT  # (the stall rule answers instead)
    assert lk.wait_ms(200, beating=False) == 200  # only the stall deadline counts: 100 + 300 - 200
    lk.tx_unblocked()
    lk.reading_resumed(5000)
    # The silence clock skips the 4900 ms spent not reading: 100 ms of silence were already counted.
    assert lk.decide(5199) != SILENT and lk.decide(5200) == SILENT


def test_our_own_writes_do_not_reset_the_silence_clock():
    # A beat that needs several write calls must not count as hearing from the peer.
    lk = Link(100, peer_timeout="auto", peer_miss=3)
    lk.up(0)
    lk.received(0)
    for t in (100, 200):
        lk.tx_blocked(t)
        lk.tx_unblocked()
    assert lk.decide(300) == SILENT


def test_write_progress_keeps_a_slow_reader_from_counting_as_stalled():
    lk = Link(100, peer_miss=3)
    lk.up(0)
    for t in range(0, 3000, 200):  # a byte gets through every 200 ms: < 300 ms limit
        lk.tx_blocked(t)
        assert lk.decide(t + 299) != STALLED
    assert lk.decide(2800 + 300) == STALLED


# -- decide(): the one question the driver asks, and the order in which the rules answer it ----------


def test_decide_beats_when_due_and_says_how_long_to_sleep():
    lk = Link(1000, peer_timeout="off")
    lk.up(0)
    assert lk.decide(400) == NOTHING and lk.wait == 600
    assert lk.decide(1000) == BEAT and lk.wait == 1000
    assert lk.next_beat == 2000  # booked as sent: asking again at once does not beat twice
    assert lk.decide(1000) == NOTHING and lk.wait == 1000
    assert lk.decide(7500) == BEAT and lk.next_beat == 8500  # late: on from now, no burst


def test_decide_reports_silence_before_a_stall_and_both_before_a_beat():
    lk = Link(100, peer_timeout="strict", peer_miss=3)
    lk.up(0)
    lk.tx_blocked(0)
    # At 300 the beat (due since 100), the silence and the stall limits are all reached.
    assert lk.decide(300) == SILENT
    lk.received(300)
    assert lk.decide(300) == STALLED
    lk.tx_unblocked()
    assert lk.decide(300) == BEAT
    nb = lk.next_beat
    # A dead link is reported without spending the beat that was due as well.
    assert lk.decide(10_000) == SILENT and lk.next_beat == nb


def test_decide_wait_is_the_nearest_deadline():
    lk = Link(1000, peer_timeout="strict", peer_miss=3)
    lk.up(0)
    lk.received(0)
    lk.decide(1000)
    lk.decide(2000)  # beats at 1000 and 2000; silence limit at 3000, next beat at 3000
    assert lk.decide(2500) == NOTHING and lk.wait == 500
    lk.received(2500)
    lk.tx_blocked(2600)  # stall limit at 5600, silence at 5500, beat at 3000
    assert lk.decide(2600) == NOTHING and lk.wait == 400


def test_a_link_without_beats_never_beats_and_waits_for_its_limits_only():
    lk = Link(100, peer_timeout="strict", peer_miss=3, beats=False)
    lk.up(0)
    assert [lk.decide(t) for t in (100, 200, 299)] == [NOTHING] * 3
    assert lk.wait == 1  # the silence limit at 300, not a beat
    assert lk.decide(300) == SILENT


def test_auto_means_off_on_a_link_without_beats():
    # Raw mode sends no beats, so nothing prompts an idle server to talk: `auto` must not drop it.
    lk = Link(100, peer_timeout="auto", peer_miss=3, beats=False)
    lk.up(0)
    lk.received(0)
    lk.tx_blocked(0)
    assert lk.decide(10**6) == NOTHING and lk.wait == 300
    assert lk.mode == "off"
    framed = Link(100, peer_timeout="auto", peer_miss=3)
    framed.up(0)
    framed.received(0)
    assert framed.decide(300) == SILENT
