"""A server that misbehaves the same way at every attempt costs a few lines, not a pair every retry_ms
(firmware/hbkeep/repeats.py, probation.py, dial.py; docs/EVENTS.md): one that accepts and drops every
connection (closes, resets, sends garbage, fails authentication) is summarised like one that refuses, and
the summary says which it is; a name that does not resolve is looked up less and less often. Scripted
network on a virtual clock (support/), so minutes of retries take milliseconds; and one loopback run on
every runtime."""
import asyncio
import threading

import pytest

from firmware.hbkeep import compat
from firmware.hbkeep.dial import ResolveError
from firmware.hbkeep.repeats import FIRST, LOOKUP_MAX_MS, SUMMARY_MS, FailureRun
from support import vloop
from support.client_harness import Harness
from support.faultkit import CloseAtOnceServer
from support.fake_sockets import REFUSE, FakeConn, FakeNet
from support.frames import header
from support.fwproc import FwProc

BEAT_MS = 3000  # the default: a session shorter than this is on probation


class DroppingNet(FakeNet):
    """Every connect succeeds, and the server then does `what` at once: "eof" (closes), "reset", "garbage"
    (a frame of an unknown type), or "good" (stays up, silent). `what` may change while the client runs."""

    def __init__(self, what):
        super().__init__([])
        self.what = what
        self.conns = []

    def connect_start(self, sock, addr):
        conn = FakeConn()
        if self.what == "eof":
            conn.eof()
        elif self.what == "reset":
            conn.reset()
        elif self.what == "garbage":
            conn.send(header(7, 0))
        elif self.what == "refuse":
            self.plans.append(REFUSE)
            return super().connect_start(sock, addr)
        self.conns.append(conn)
        self.plans.append(conn)
        return super().connect_start(sock, addr)


def fields(ev):
    return ev[2]


REASON = {"eof": "eof", "reset": "reset", "garbage": "protocol", "auth": "auth"}


async def stop(h, net=None):
    """Stop the client; first, with net, let the server refuse, so that no connection is up then."""
    if net is not None:
        net.what = "refuse"
        await asyncio.sleep(0.25)
    h.task.cancel()
    try:
        await h.task
    except asyncio.CancelledError:
        pass


def run_dropping(what, seconds, then=None, verbose=False, **cfg):
    """The client against a server that drops every connection for `seconds` (virtual), then (optionally)
    one that behaves `then` until the next line; returns (harness, net)."""
    async def main():
        net = DroppingNet("eof" if what == "auth" else what)
        if what == "auth":
            cfg["auth"] = {"id": "dev-1", "key": "00" * 32}
        h = Harness(net, retry_ms=100, beat_ms=BEAT_MS, verbose=verbose, **cfg)
        h.start()
        await asyncio.sleep(seconds)
        if then is not None:
            net.what = then
            n = len(h.lines)
            await h.wait_event("connected", len(h.events("connected")) + 1)
            assert len(h.lines) > n
            await stop(h)
        else:
            await stop(h, net)
        return h, net

    return vloop.run(main())


@pytest.mark.parametrize("what", ["eof", "reset", "garbage", "auth"])
def test_a_server_that_drops_every_connection_costs_a_few_lines_not_a_pair_every_100ms(what):
    h, net = run_dropping(what, 65)
    reason = REASON[what]
    attempts = len(net.attempt_times)
    assert attempts >= 600, attempts  # still every retry_ms: the seed's 100 ms, no backoff configured
    gaps = [b - a for a, b in zip(net.attempt_times, net.attempt_times[1:])]
    assert max(gaps) < 0.1 + 0.01, max(gaps)
    # The first FIRST connections in full, then summaries only.
    assert len(h.events("connected")) == FIRST, h.lines[:20]
    ends = [fields(e)["reason"] for e in h.events("disconnected")]
    assert ends == [reason] * FIRST, h.lines[:20]
    assert len(h.events("protocol_error")) == (FIRST if what == "garbage" else 0)
    summaries = [fields(e) for e in h.events("connect_failing")]
    assert len(summaries) == 65000 // SUMMARY_MS, h.lines
    # Every summary names what happened: sessions lost, not connects refused, and why.
    for s in summaries:
        assert s["sessions"] == s["failures"] and s["last_reason"] == reason, s
        assert s["reasons"] == "%s:%s" % (reason, s["failures"]), s
    # The lines account for every failure up to the last summary.
    assert FIRST + sum(int(s["unreported"]) for s in summaries) == int(summaries[-1]["failures"])
    # The rate is bounded: a handful of lines a minute, where there was a pair every 100 ms.
    assert len(h.lines) <= 2 + 3 * FIRST + 65000 // SUMMARY_MS + 3, h.lines


def test_a_flapping_run_ends_with_a_connection_that_outlives_its_probation():
    h, net = run_dropping("eof", 12, then="good")
    names = [e.name for e in h.events()]
    # The connection that stayed is announced once its probation (one beat period) is over, right after
    # the run's last summary; no `disconnected` comes before that (nothing was lost).
    i = names.index("connected", names.index("connect_failing") + 1)
    assert names[i - 1] == "connect_failing", names
    last = fields(h.events()[i - 1])
    assert int(last["sessions"]) == int(last["failures"]) and int(last["unreported"]) > 0, last
    connected_at = h.events()[i].ms
    # Its line waited for the probation: the attempt it names was made BEAT_MS before.
    made = net.attempt_times[int(fields(h.events()[i])["attempt"]) - 1]
    assert made * 1000 + BEAT_MS - 1 <= connected_at <= made * 1000 + BEAT_MS + 10, (made, connected_at)
    assert names[i + 1:] == ["disconnected"], names[i:]  # stopped: the test's cancel
    assert h.client.failing is None  # the run, and with it repeats.py, is gone while connected


def test_a_new_run_after_a_good_session_prints_its_first_failures_again():
    async def main():
        net = DroppingNet("eof")
        h = Harness(net, retry_ms=100, beat_ms=1000)
        h.start()
        await asyncio.sleep(3)
        net.what = "good"
        await h.wait_event("connected", FIRST + 1)
        await asyncio.sleep(2)  # the session outlives its probation
        net.what = "eof"
        net.conns[-1].eof()  # the good session ends, and the server goes back to dropping
        await h.wait_event("connected", 2 * FIRST + 1)
        await asyncio.sleep(3)
        await stop(h, net)
        return h

    h = vloop.run(main())
    assert len(h.events("connected")) == 2 * FIRST + 1, h.lines
    ends = [fields(e)["reason"] for e in h.events("disconnected")]
    assert ends == ["eof"] * (2 * FIRST + 1), h.lines


def test_verbose_keeps_every_pair():
    h, net = run_dropping("eof", 5, verbose=True)
    assert len(h.events("connected")) == len(net.conns) >= 45
    assert len(h.events("disconnected")) == len(net.conns)
    assert h.events("connect_failing") == []


def test_refusals_and_drops_in_one_run_are_told_apart():
    async def main():
        net = DroppingNet("refuse")
        h = Harness(net, retry_ms=100)
        h.start()
        await asyncio.sleep(2)
        net.what = "reset"
        await asyncio.sleep(11)  # the next summary is due 10 s after the one printed with the first drop
        await stop(h, net)
        return h

    h = vloop.run(main())
    s = fields(h.events("connect_failing")[-1])  # the first one came with the first drop's pair
    refused, dropped = [int(x.split(":")[1]) for x in s["reasons"].split(",")]
    assert s["reasons"].startswith("ECONNREFUSED:") and ",reset:" in s["reasons"], s
    assert int(s["sessions"]) == dropped and refused + dropped == int(s["failures"]), s
    assert refused == 20 and dropped >= 100, s
    # The run's first three lines are the refusals. The first drop's pair is printed (after a summary of
    # the refusals: the run had lost no connection yet); from then on the drops are only counted.
    assert len(h.events("connect_failed")) == FIRST
    assert len(h.events("connected")) == 1 and len(h.events("disconnected")) == 1, h.lines


def test_backoff_slows_a_server_that_drops_every_connection(monkeypatch):
    # The short sessions count for backoff (Link.down): with backoff_max_ms, the retries slow down.
    monkeypatch.setattr(compat, "rand_below", lambda n: n - 1)  # jitter at its top: each wait is its cap
    async def main():
        net = DroppingNet("eof")
        h = Harness(net, retry_ms=100, backoff_max_ms=1000)
        h.start()
        await asyncio.sleep(10)
        await stop(h, net)
        return net

    net = vloop.run(main())
    gaps = [round((b - a) * 1000) for a, b in zip(net.attempt_times, net.attempt_times[1:])]
    assert gaps[:5] == [200, 400, 800, 1000, 1000], gaps


def test_a_held_connection_stopped_on_probation_still_prints_its_pair():
    async def main():
        net = DroppingNet("eof")
        h = Harness(net, retry_ms=100)
        h.start()
        await asyncio.sleep(2)
        net.what = "good"
        t = net.attempt_times[-1]
        while net.attempt_times[-1] == t:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # connected, well inside its probation
        n = len(h.events("connected"))
        await stop(h)
        return h, n

    h, held = vloop.run(main())
    assert held == FIRST  # its line was being held
    names = [e.name for e in h.events()]
    assert names[-3:] == ["connect_failing", "connected", "disconnected"], names
    assert fields(h.events()[-1])["reason"] == "stop"


# -- name lookups -------------------------------------------------------------------------------------
class LookupNet(FakeNet):
    def __init__(self, failures, plans=()):
        super().__init__(plans, resolve_errors=failures)
        self.resolve_times = []

    def resolve(self, host, port):
        self.resolve_times.append(asyncio.get_running_loop().time())
        if self.resolve_errors:
            self.resolve_errors -= 1
            raise ResolveError("EAI_NONAME")  # as compat.Net.resolve raises it, on every runtime
        return super().resolve(host, port)


@pytest.mark.parametrize("backoff_max_ms", [0, 60000])
def test_failed_lookups_back_off_to_seconds_and_connect_retries_stay_at_100ms(backoff_max_ms, monkeypatch):
    monkeypatch.setattr(compat, "rand_below", lambda n: n - 1)
    async def main():
        net = LookupNet(12, [REFUSE] * 5 + [FakeConn()])
        h = Harness(net, retry_ms=100, backoff_max_ms=backoff_max_ms, host="server.example")
        h.start()
        await h.wait_event("connected", limit_s=120)
        await stop(h)
        return h, net

    h, net = vloop.run(main())
    gaps = [round((b - a) * 1000) for a, b in zip(net.resolve_times, net.resolve_times[1:])]
    waits = [100, 200, 400, 800, 1600, 3200] + [LOOKUP_MAX_MS] * 6
    assert gaps == waits, gaps  # independent of backoff_max_ms
    lines = [fields(e) for e in h.events("resolve_failed")]
    assert [int(e["retry_ms"]) for e in lines] == waits[:FIRST], lines  # the wait is in the line
    assert {e["error"] for e in lines} == {"EAI_NONAME"}
    # Summarised as before: the first FIRST failures in full, then a line when SUMMARY_MS have passed, and
    # one more when the run ends; the lines account for every failure.
    summaries = h.events("connect_failing")
    assert all(b.ms - a.ms >= SUMMARY_MS for a, b in zip(summaries, summaries[1:-1])), summaries
    assert len(summaries) <= 36800 // SUMMARY_MS + 1, summaries
    assert FIRST + sum(int(fields(s)["unreported"]) for s in summaries) == 17 == int(fields(summaries[-1])["failures"])
    assert fields(summaries[0])["reasons"] == "EAI_NONAME:%s" % fields(summaries[0])["failures"]
    # Once the name is known, connect attempts go every retry_ms (no backoff configured) as the seed's.
    connects = net.attempt_times
    assert len(connects) == 6 and connects[0] - net.resolve_times[-1] < 0.001
    if not backoff_max_ms:
        assert [round((b - a) * 1000) for a, b in zip(connects, connects[1:])] == [100] * 5
    assert len(net.resolve_times) == 13  # 12 failures, then resolved once for good


def test_a_successful_lookup_resets_the_lookup_backoff():
    # Two servers by name: the first fails 6 times, the second resolves and refuses; after the first one
    # resolves once, its next failures start again from retry_ms.
    run = FailureRun()
    waits = [run.lookup_failed(t, 100) for t in range(0, 60000, 10000)]
    assert waits == [100, 200, 400, 800, 1600, 3200]
    assert run.lookup_left(60000) == 0 and run.lookup_left(50000 + 3199) == 1
    run.lookup_ms = 0  # what dial.resolve does on success
    assert run.lookup_failed(70000, 100) == 100 and run.lookup_left(70050) == 50
    # A retry_ms above the cap is kept as it is: lookups never go out more often than connects would.
    slow = FailureRun()
    assert [slow.lookup_failed(0, 8000) for _ in range(3)] == [8000, 8000, 8000]


def test_lookup_backoff_resets_when_a_lookup_succeeds_in_the_client():
    async def main():
        net = LookupNet(4, [REFUSE] * 30)
        h = Harness(net, retry_ms=100, servers=["a.example:1", "b.example:2"])
        h.start()
        await asyncio.sleep(5)
        await stop(h)
        return net

    net = vloop.run(main())
    # a fails (100), b fails (200), a fails (400), b fails (800), then a resolves and is cached; b's next
    # lookup comes retry_ms after a's refused attempt, not after 1600 ms.
    gaps = [round((b - a) * 1000) for a, b in zip(net.resolve_times, net.resolve_times[1:])]
    assert gaps[:4] == [100, 200, 400, 800], gaps
    assert gaps[4] == 100, gaps  # b, right after a's success: the backoff started again


# -- on every runtime, against a real loopback server ------------------------------------------------
class CountingCloseServer(CloseAtOnceServer):
    """CloseAtOnceServer that lets a test wait for its n-th accept."""

    def __init__(self):
        self.cond = threading.Condition()
        super().__init__()

    def _close(self, s):
        super()._close(s)
        with self.cond:
            self.cond.notify_all()

    def wait_accepts(self, n, timeout):
        with self.cond:
            return self.cond.wait_for(lambda: self.accepted >= n, timeout)


def test_a_server_that_closes_at_once_costs_a_few_lines_on_every_runtime(any_runtime):
    n = 40  # 4 s at retry_ms 100; the line count before: a pair for each
    with CountingCloseServer() as srv:
        fw = FwProc(any_runtime, {"port": srv.port, "stats_ms": 0, "retry_ms": 100})
        try:
            assert srv.wait_accepts(n, 60), "only %d accepts:\n%s" % (srv.accepted, fw.output())
            accepted = srv.accepted
        finally:
            fw.stop()
    events = list(fw.events)
    names = [e.name for e in events]
    ends = [e.fields["reason"] for e in events if e.name == "disconnected"]
    assert names[:2] == ["start", "resolved"], names
    # The first FIRST pairs; a connection up when the test stopped it may add one more, and the last summary.
    assert ends[:FIRST] == ["eof"] * FIRST or set(ends[:FIRST]) <= {"eof", "reset"}, names
    assert ends[FIRST:] in ([], ["stop"]), names
    assert names.count("connected") <= FIRST + 1, names
    assert len(names) <= 2 + 2 * (FIRST + 1) + 2 + 2, (accepted, fw.output())
    assert not fw.raw_lines(), fw.raw_lines()
