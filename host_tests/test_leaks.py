"""Fault matrix row 7: 10,000 connect/disconnect cycles on the MicroPython unix port (and a
shorter run on CPython) against a loopback server that accepts and closes at once. Open descriptors and,
on MicroPython, heap in use after gc.collect() must stay flat; the instrumented firmware
(support/fw_instrumented.py) reads both inside the firmware process at every 1,000th disconnect."""
import time

import pytest

from support import faultrec
from support.faultkit import CloseAtOnceServer, InstrumentedFwProc

# Long by design (thousands of cycles, a simulated day, namespaces): more than pytest.ini's 60 s.
pytestmark = pytest.mark.timeout(300)

CYCLES = {"micropython": 10000, "cpython": 2000}
EVERY = {"micropython": 1000, "cpython": 250}
HEAP_TOL = 256  # bytes; one leaked socket object or read buffer would be far more, times 9,000
TIME_LIMIT_S = 150


def test_row7_connect_disconnect_cycles_do_not_leak(runtime):
    n, every = CYCLES[runtime], EVERY[runtime]
    with CloseAtOnceServer() as srv:
        # verbose: every cycle keeps its `disconnected` line (the probe's trigger), where a quiet client sums
        # up a server that drops every connection (docs/EVENTS.md).
        cfg = {"port": srv.port, "retry_ms": 1, "stats_ms": 0, "keepalive": {"idle": 3, "intvl": 3, "cnt": 3},
               "verbose": True}
        fw = InstrumentedFwProc(runtime, cfg, watch=("disconnected",), every=every)
        try:
            t0 = time.monotonic()
            probes = []
            while len(probes) < n // every:
                probes.append(fw.wait_event("probe", timeout=TIME_LIMIT_S,
                                            where=lambda f: f["after"] == "disconnected"))
            took = time.monotonic() - t0
        finally:
            fw.stop()
        heap = [int(p.fields["heap"]) for p in probes]
        fds = [int(p.fields["fds"]) for p in probes]
        connects = fw.count("connected")
        reasons = {e.fields["reason"] for e in fw.events if e.name == "disconnected"} - {"stop"}
        # The first checkpoint is the baseline: by then every first-use allocation has happened. A leak
        # grows at every checkpoint, so it shows in the lowest of the last three; one high reading (the
        # collector is conservative: a stale pointer on the C stack can keep a dead buffer alive at one
        # probe) does not.
        heap_growth = min(heap[-3:]) - heap[0]
        fds_flat = len(set(fds)) == 1
        heap_flat = runtime != "micropython" or heap_growth <= HEAP_TOL
        ok = fds_flat and heap_flat and connects >= n and not fw.raw_lines()
        faultrec.record(
            7, "%d connect/disconnect cycles (retry_ms 1, server closes at once)" % n, runtime,
            "open fds equal at every %d-cycle checkpoint; heap after gc.collect() within +%d B of the first "
            "checkpoint" % (every, HEAP_TOL),
            "fds %s; heap %s; %d cycles in %.1f s (%.2f ms each)" % (
                "/".join(sorted(set(map(str, fds)))) + (" (flat)" if fds_flat else " (GROWING)"),
                ("%d..%d B (%+d B)" % (min(heap), max(heap), heap_growth)) if runtime == "micropython" else "n/a",
                connects, took, took * 1000 / max(1, connects)),
            ok, seconds=round(took, 1))
        assert reasons <= {"eof", "reset"}, reasons
        assert connects >= n
        assert fds_flat, "descriptors grow: %s" % fds
        assert heap_flat, "heap grows: %s" % heap
        assert not fw.raw_lines(), fw.raw_lines()
