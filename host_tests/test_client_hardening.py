"""Nothing kills the client and nothing floods its console: exceptions become events and reconnects,
resolver failures read the same on every runtime, and a server that stays down costs a few lines, not ten
a second. Scripted network on a virtual clock (support/), so hours of retries take milliseconds."""
import asyncio
import errno
import socket
import subprocess

import pytest

from firmware.hbkeep import compat, dial
from firmware.hbkeep.repeats import FIRST, SUMMARY_MS, FailureRun
from support import vloop
from support.fake_sockets import FakeConn, FakeNet
from support.client_harness import Harness
from tools import hostrun


@pytest.fixture
def runtime(any_runtime):
    """CPython, the MicroPython unix port and the 32-bit one (small ints end at 2^30 there, as on boards)."""
    return any_runtime


# -- exceptions nobody foresaw -------------------------------------------------------------------
def test_a_host_label_over_63_characters_is_a_resolve_failure_not_the_end():
    # CPython's IDNA codec raises UnicodeError for it (before any lookup: nothing leaves this machine).
    async def main():
        net = FakeNet([])
        real = compat.Net()
        net.resolve = real.resolve
        h = Harness(net, host="a" * 64 + ".example", retry_ms=100)
        h.start()
        await h.wait_event("resolve_failed", 2, limit_s=5)  # a tight bound: retries are 100 ms apart
        assert {e[2]["error"] for e in h.events("resolve_failed")} == {"EAI_NONAME"}
        assert not h.task.done()  # still trying

    vloop.run(main())


@pytest.mark.parametrize("exc, text", [
    (socket.gaierror(-2, "Name or service not known"), "EAI_NONAME"),
    (OSError("[addrinfo error -2]"), "EAI_NONAME"),  # the MicroPython unix port's form
    (OSError("[addrinfo error -3]"), "EAI_AGAIN"),
    (OSError(202), "EAI_FAIL"),  # lwIP's netdb numbers
    (OSError(errno.ENOMEM, "x"), "ENOMEM"),
    (OSError("[addrinfo error -77]"), "EAI_-77"),
])
def test_resolver_errors_have_one_name_whatever_the_runtime_says(exc, text):
    assert dial.resolve_error_name(exc) == text


def test_resolver_error_names_on_the_runtime_itself(runtime, tmp_path):
    # The port's own exception, from its own getaddrinfo: a name that cannot exist in any DNS (".invalid"
    # is reserved and the label is over 63 bytes, so no resolver sends a query for it).
    script = tmp_path / "r.py"
    script.write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom hbkeep import compat\n"
        "try:\n    compat.Net().resolve(%r, 80)\nexcept OSError as e:\n    print(compat.errno_name(e))\n"
        % (hostrun.FIRMWARE_DIR, "b" * 70 + ".invalid"))
    r = subprocess.run(hostrun.runtime_argv(runtime) + [str(script)], capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "EAI_NONAME", (r.stdout, r.stderr)


def test_an_exception_while_connecting_is_an_event_and_a_retry():
    async def main():
        conn = FakeConn()
        net = FakeNet([conn])
        real_open = net.open
        calls = []

        def open_once_broken(addr):
            calls.append(addr)
            if len(calls) == 1:
                raise TypeError("lwIP option table says no")  # e.g. a setsockopt a port rejects oddly
            return real_open(addr)

        net.open = open_once_broken
        h = Harness(net, retry_ms=100)
        h.start()
        await h.wait_event("connected")
        err = h.events("client_error")
        assert len(err) == 1 and err[0][2]["where"] == "attempt", h.lines
        assert err[0][2]["error"].startswith("TypeError:")

    vloop.run(main())


@pytest.mark.parametrize("where", ["supervisor", "receiver"])
def test_an_exception_inside_a_session_ends_it_with_reason_error_and_reconnects(where, monkeypatch):
    async def main():
        conns = [FakeConn(), FakeConn()]
        net = FakeNet(conns)
        h = Harness(net, beat_ms=100, retry_ms=100)
        broke = []
        if where == "supervisor":
            real = h.client.link.decide

            def decide(now):
                if not broke:
                    broke.append(now)
                    raise ZeroDivisionError("planted")
                return real(now)

            h.client.link.decide = decide
        else:
            real = h.client.link.received

            def received(now):
                if not broke:
                    broke.append(now)
                    raise ZeroDivisionError("planted")
                return real(now)

            h.client.link.received = received
        h.start()
        await h.wait_event("connected")
        if where == "receiver":
            conns[0].send(b"\x00" * 8)
        await h.wait_event("connected", 2)
        errs = h.events("client_error")
        assert [e[2]["where"] for e in errs] == [where], h.lines
        d = h.events("disconnected")[0][2]
        assert d["reason"] == "error" and d["detail"] == "ZeroDivisionError", h.lines
        assert net.sockets[0].closed

    vloop.run(main())


# -- a server that stays down --------------------------------------------------------------------
def run_down_server(seconds, verbose=False):
    """Refused for `seconds` (virtual) at retry_ms 100, then a server: returns the harness."""
    async def main():
        conn = FakeConn()
        net = FakeNet([])
        h = Harness(net, retry_ms=100, verbose=verbose)
        h.start()
        await asyncio.sleep(seconds)
        net.plans.append(conn)
        await h.wait_event("connected")
        return h

    return vloop.run(main())


def test_a_server_down_for_a_minute_costs_a_few_lines_not_six_hundred():
    h = run_down_server(65)
    attempts = int(h.events("connected")[0][2]["attempt"])
    assert attempts >= 640  # every 100 ms, as the seed
    assert len(h.events("connect_failed")) == FIRST
    summaries = h.events("connect_failing")
    # One per SUMMARY_MS while failing, plus the last one when the run ends.
    assert len(summaries) == 65000 // SUMMARY_MS + 1, h.lines
    assert all(s[2]["last_reason"] == "ECONNREFUSED" for s in summaries)
    # Nothing is lost: the lines account for every failure.
    assert FIRST + sum(int(s[2]["unreported"]) for s in summaries) == attempts - 1
    assert int(summaries[-1][2]["failures"]) == attempts - 1
    # The gap between summaries is the summary period, at both edges (not one retry early or late).
    times = [s[0] for s in summaries[:-1]]
    assert all(b - a == SUMMARY_MS for a, b in zip(times, times[1:])), times
    others = [e[1] for e in h.events() if e[1] not in ("connect_failed", "connect_failing")]
    assert others[:3] == ["start", "resolved", "connected"], others  # nothing else per attempt


def test_verbose_keeps_every_attempt():
    h = run_down_server(5, verbose=True)
    attempts = int(h.events("connected")[0][2]["attempt"])
    assert len(h.events("connect_failed")) == attempts - 1
    assert h.events("connect_failing") == []


def test_failure_run_edges():
    r = FailureRun(first=2, summary_ms=1000)
    assert r.failed(0, "a") and r.failed(100, "a")
    assert not r.failed(200, "b")
    assert not r.summary_due(999)  # one ms early
    assert r.summary_due(1000)  # exactly on time
    f = dict(zip(*[iter(r.summary(1000))] * 2))
    assert f == {"failures": 3, "unreported": 1, "last_reason": "b", "for_ms": 1000}
    assert not r.summary_due(1500)  # nothing new
    assert not r.failed(1600, "b")
    assert not r.summary_due(1999) and r.summary_due(2000)
    end = dict(zip(*[iter(r.ended(2100))] * 2))
    assert end["failures"] == 4 and end["unreported"] == 1
    # A new run starts from scratch: its first failures are printed again.
    assert r.failed(3000, "c") and r.failed(3001, "c") and not r.failed(3002, "c")
    assert r.ended(3003) is not None and r.ended(3004) is None
