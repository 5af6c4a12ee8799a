"""Fault matrix rows 3 and 4 in network namespaces: a half-open link (the server's end of a veth
pair set down: no FIN, no RST reaches the client) and an address that drops SYNs.

Needs root and iproute2. Without them the tests skip with the reason -- or fail when HB_REQUIRE_NETNS is
set (CI). Client and server each run in a namespace of their own (support/netns.py) on addresses the
test chose in 10.213.0.0/16; nothing touches the root namespace."""
import time

import pytest

from support import faultrec, netns
from support.faultkit import TOL_MS, InstrumentedFwProc, SocketServer, ms
from tools.eventlines import HbServerProc

# Long by design (thousands of cycles, a simulated day, namespaces): more than pytest.ini's 60 s.
pytestmark = pytest.mark.timeout(600)

_subnets = iter(range(10, 250))


@pytest.fixture
def pair():
    netns.require_netns()
    p = netns.NetnsPair(subnet=next(_subnets))
    try:
        yield p
    finally:
        p.close()


# -- row 3, application level: beats and the server's offline rule ----------------------------
def test_row3_half_open_app_level(runtime, pair):
    beat_ms, peer_miss = 200, 3
    tick_ms, offline_ticks = 200, 5
    server = HbServerProc("--tick-ms", tick_ms, "--offline-ticks", offline_ticks, "--summary-ms", "0",
                          host=pair.server_ip, port=39002, prefix=pair.exec_server([]))
    fw = None
    try:
        cfg = {"host": pair.server_ip, "port": 39002, "beat_ms": beat_ms, "peer_miss": peer_miss,
               "retry_ms": 100, "connect_timeout_ms": 500, "keepalive": False, "stats_ms": 0, "verbose": True}
        fw = InstrumentedFwProc(runtime, cfg, prefix=pair.exec_client([]))
        fw.wait_event("connected", timeout=15)
        server.wait_event("online", timeout=10)
        for _ in range(3):  # beats flowing and answered: the client is watching for silence (auto)
            fw.wait_event("beat", timeout=5)
        t_down = time.monotonic()
        pair.link_down()
        d = fw.wait_event("disconnected", timeout=10)
        off = server.wait_event("offline", timeout=10)
        client_ms = ms(d.t - t_down)
        client_bound = peer_miss * beat_ms + beat_ms + TOL_MS
        since_last = int(off.fields["since_last_ms"])
        server_ms = ms(off.t - t_down)
        lo, hi = (offline_ticks - 1) * tick_ms, offline_ticks * tick_ms
        # The dark path: attempts fail meanwhile, and after the link returns the client is back.
        fw.wait_event("connect_failed", timeout=10)
        t_up = time.monotonic()
        pair.link_up()
        c = fw.wait_event("connected", timeout=15)
        server.wait_event("online", timeout=10)
        back_ms = ms(c.t - t_up)
        back_bound = 500 + 100 + TOL_MS  # an attempt in flight may run to connect_timeout, then retry_ms
        ok_c = d.fields["reason"] == "silence" and client_ms <= client_bound
        ok_s = off.fields["reason"] == "silent" and lo <= since_last <= hi + TOL_MS and server_ms <= hi + TOL_MS
        ok_b = back_ms <= back_bound
        faultrec.record(3, "half-open, app level: client detects", runtime,
                        "disconnected reason=silence <= peer_miss %d x beat_ms %d + 1 beat (+%d ms) after link down"
                        % (peer_miss, beat_ms, TOL_MS),
                        "reason=%s after %d ms" % (d.fields["reason"], client_ms), ok_c)
        faultrec.record(3, "half-open, app level: hbserver marks offline", runtime,
                        "offline reason=silent, last beat %d..%d ms before (ticks %d x %d ms, +%d ms)"
                        % (lo, hi, offline_ticks, tick_ms, TOL_MS),
                        "reason=%s, last beat %d ms before, %d ms after link down"
                        % (off.fields["reason"], since_last, server_ms), ok_s)
        faultrec.record(3, "half-open, app level: back after the link returns", runtime,
                        "connected <= connect_timeout 500 + retry 100 ms (+%d ms) after link up" % TOL_MS,
                        "%d ms" % back_ms, ok_b)
        assert ok_c, d.line
        assert ok_s, off.line
        assert ok_b, c.line
    finally:
        if fw is not None:
            fw.stop()
        server.stop()


# -- row 3, kernel level: TCP keepalive options reach the kernel -------------------------------
def test_row3_half_open_kernel_keepalive(runtime, pair):
    idle, intvl, cnt = 1, 1, 2
    lsock = pair.server_socket(39003)
    srv = SocketServer(lambda: lsock)
    base = {"host": pair.server_ip, "port": 39003, "mode": "raw", "peer_timeout": "off", "stats_ms": 0,
            "retry_ms": 100, "connect_timeout_ms": 500}
    # Two clients side by side on the same dark path: one with keepalive, one without (the control).
    ka = InstrumentedFwProc(runtime, dict(base, keepalive={"idle": idle, "intvl": intvl, "cnt": cnt}),
                     prefix=pair.exec_client([]))
    ctl = InstrumentedFwProc(runtime, dict(base, keepalive=False), prefix=pair.exec_client([]))
    try:
        e1 = ka.wait_event("connected", timeout=15)
        ctl.wait_event("connected", timeout=15)
        srv.accept(timeout=10)
        srv.accept(timeout=10)
        assert "idle" in e1.fields["applied"].split(","), e1.line
        t_down = time.monotonic()
        pair.link_down()
        bound_ms = (idle + intvl * cnt + 1) * 1000
        d = ka.wait_event("disconnected", timeout=bound_ms / 1000 + 5)
        took = ms(d.t - t_down)
        # The control has no keepalive and peer_timeout off: nothing may end it (checked until 1 s past
        # the keepalive client's bound).
        left = max(0.0, (bound_ms + 1000) / 1000 - (time.monotonic() - t_down))
        ctl_alive = True
        try:
            ctl.expect_no_event("disconnected", left)
        except AssertionError:
            ctl_alive = False
        ok = d.fields["reason"] == "reset" and d.fields["detail"] == "ETIMEDOUT" and took <= bound_ms and ctl_alive
        faultrec.record(3, "half-open, kernel keepalive (idle 1 s, intvl 1 s, cnt 2), peer_timeout off", runtime,
                        "disconnected ETIMEDOUT <= idle + intvl x cnt + 1 s = %d ms after link down; "
                        "control without keepalive still up at %d ms" % (bound_ms, bound_ms + 1000),
                        "%s %s after %d ms; control %s" % (d.fields["reason"], d.fields["detail"], took,
                                                           "still up" if ctl_alive else "ENDED"), ok)
        assert (d.fields["reason"], d.fields["detail"]) == ("reset", "ETIMEDOUT"), d.line
        assert took <= bound_ms, "keepalive ended the connection after %d ms; bound %d ms" % (took, bound_ms)
        assert ctl_alive, "the control client without keepalive was disconnected: %s" % ctl.output()
    finally:
        ka.stop()
        ctl.stop()
        srv.close()


# -- row 4: an address that drops SYNs ---------------------------------------------------------
def test_row4_syn_dropping_address(runtime, pair):
    timeout_ms, attempts = 300, 6
    dark = pair.dark_address()
    # verbose: every failed attempt gets a line of its own (otherwise the first few, then summaries).
    cfg = {"host": dark, "port": 39002, "connect_timeout_ms": timeout_ms, "retry_ms": 50, "stats_ms": 0,
           "verbose": True}
    fw = InstrumentedFwProc(runtime, cfg, watch=("connect_failed",), prefix=pair.exec_client([]))
    try:
        fails, probes = [], []
        for _ in range(attempts):
            fails.append(fw.wait_event("connect_failed", timeout=10))
            probes.append(fw.wait_event("probe", timeout=10))
        took = [int(f.fields["took_ms"]) for f in fails]
        reasons = {f.fields["reason"] for f in fails}
        fds = [int(p.fields["fds"]) for p in probes]
        heap = [int(p.fields["heap"]) for p in probes]
        within = all(timeout_ms <= t <= timeout_ms + TOL_MS for t in took)
        # A leak grows at every attempt, so it shows in the lower of the last two probes; one high reading
        # (a stale pointer on the C stack keeping a dead object alive for the conservative collector) does not.
        grew = min(heap[-2:]) - heap[1] if runtime == "micropython" else 0
        flat = len(set(fds[1:])) == 1 and grew <= 256
        ok = reasons == {"timeout"} and within and flat and not fw.raw_lines()
        faultrec.record(4, "SYNs dropped (neighbour entry to a MAC nobody has), %d attempts" % attempts, runtime,
                        "each attempt ends by timeout at connect_timeout_ms %d (+%d ms); fds and heap flat"
                        % (timeout_ms, TOL_MS),
                        "reasons %s; took %d..%d ms; fds %s; heap %s" % (
                            ",".join(sorted(reasons)), min(took), max(took), "/".join(map(str, fds)),
                            ("%+d B" % grew) if runtime == "micropython" else "n/a"), ok)
        assert reasons == {"timeout"}, [f.line for f in fails]
        assert within, took
        assert flat, (fds, heap)
    finally:
        fw.stop()
