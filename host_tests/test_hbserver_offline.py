"""tools/hbserver/offline.py: the server's offline rule on its own, no sockets, no loop -- times are plain
numbers (seconds)."""
from types import SimpleNamespace

import pytest

from tools.hbserver.offline import INCOMPLETE, SILENT, OfflineRule


def rule_of(**settings):
    """The rule on these settings (the server hands it its ServerConfig)."""
    return OfflineRule(SimpleNamespace(**settings))


class Client:
    """The three attributes the rule works on (the server's Conn has them as slots)."""

    def __init__(self, rule, now=0.0):
        rule.start(self, now)


def ticks(rule, c, times):
    return [rule.tick(c, t) for t in times]


def test_offline_on_the_kth_missed_tick_not_before():
    rule = rule_of(tick_ms=1000, offline_ticks=5, header_timeout_ms=60000)
    c = Client(rule)
    assert ticks(rule, c, [1.0, 2.0, 3.0, 4.0]) == [None] * 4
    assert c.missed == 4
    assert rule.tick(c, 5.0) == SILENT and c.missed == 5


def test_a_heart_sets_the_count_back_to_zero():
    rule = rule_of(tick_ms=1000, offline_ticks=3, header_timeout_ms=60000)
    c = Client(rule)
    assert ticks(rule, c, [1.0, 2.0]) == [None, None]
    rule.heard(c, 2.5)
    assert (c.missed, c.last_heard) == (0, 2.5)
    assert ticks(rule, c, [3.0, 4.0]) == [None, None]
    assert rule.tick(c, 5.0) == SILENT


def test_crowded_ticks_wait_for_k_minus_one_ticks_of_quiet():
    # A late tick followed closely by on-time ones brings `missed` to K before (K - 1) ticks of time have
    # passed: the time guard holds the client until they have.
    rule = rule_of(tick_ms=1000, offline_ticks=3, header_timeout_ms=60000)
    c = Client(rule)
    assert ticks(rule, c, [0.9, 1.0, 1.05]) == [None] * 3
    assert c.missed == 3
    assert rule.tick(c, 1.99) is None  # 1.99 s of quiet < (3 - 1) * 1 s
    assert rule.tick(c, 2.0) == SILENT


def test_a_partial_frame_held_too_long_comes_first_even_for_a_beating_client():
    rule = rule_of(tick_ms=100, offline_ticks=5, header_timeout_ms=250)
    c = Client(rule)
    rule.after_read(c, holding=True, completed=False, now=0.0)
    assert c.partial_since == 0.0
    assert rule.tick(c, 0.1) is None
    rule.heard(c, 0.15)  # beats keep coming through other reads: they do not excuse the held frame
    assert rule.tick(c, 0.2) is None
    assert rule.tick(c, 0.3) == INCOMPLETE


def test_incomplete_wins_over_silent_on_the_same_tick():
    rule = rule_of(tick_ms=100, offline_ticks=2, header_timeout_ms=150)
    c = Client(rule)
    rule.after_read(c, holding=True, completed=False, now=0.0)
    assert rule.tick(c, 0.1) is None
    assert rule.tick(c, 0.2) == INCOMPLETE  # both would hold here


def test_partial_deadline_runs_from_the_start_of_the_frame_now_held():
    rule = rule_of(tick_ms=100, offline_ticks=100, header_timeout_ms=500)
    c = Client(rule)
    rule.after_read(c, holding=True, completed=False, now=1.0)
    rule.after_read(c, holding=True, completed=False, now=1.3)  # more of the same frame
    assert c.partial_since == 1.0
    rule.after_read(c, holding=True, completed=True, now=1.4)  # that frame ended, a new one began
    assert c.partial_since == 1.4
    rule.after_read(c, holding=False, completed=True, now=1.5)  # nothing held
    assert c.partial_since is None
    assert rule.tick(c, 10.0) is None


@pytest.mark.parametrize("k", [1, 2, 7])
def test_the_window_is_k_ticks(k):
    rule = rule_of(tick_ms=50, offline_ticks=k, header_timeout_ms=60000)
    c = Client(rule)
    verdicts = ticks(rule, c, [0.05 * i for i in range(1, k + 1)])
    assert verdicts == [None] * (k - 1) + [SILENT]


def test_a_changed_setting_applies_from_the_next_tick():
    cfg = SimpleNamespace(tick_ms=1000, offline_ticks=3, header_timeout_ms=60000)
    rule = OfflineRule(cfg)
    c = Client(rule)
    assert ticks(rule, c, [0.1, 0.2, 0.3]) == [None] * 3  # 3 ticks, but 0.3 s < 2 s of quiet
    cfg.tick_ms = 100
    assert rule.tick(c, 0.3) == SILENT  # now 0.3 s >= 2 ticks of 100 ms
