"""--metrics-port: Prometheus' text format, scraped over loopback and parsed with the official library's
parser; values checked against what the test's devices did."""
import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from support.fake_device import EventLog, FakeClient, run, upper
from support.storefix import store  # noqa: F401  (store is a fixture)
from tools.hbserver import HeartbeatServer
from tools.hbserver.metrics import RTT_BUCKETS, Metrics, rtt_buckets
from tools.hbserver.presence import Presence, PresenceConfig
from tools.hbserver.probe import Histogram


async def scrape(port):
    def get():
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            return r.read().decode()
    text = await asyncio.to_thread(get)
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_scraped(store):
    async def main():
        log = EventLog()
        srv = HeartbeatServer(on_event=log, host="127.0.0.1", port=0, tick_ms=1000, summary_ms=0,
                              probe_ms=50, probe_late_ms=5000)
        p = Presence(PresenceConfig(url=store.url, server_id="m", flush_ms=50, ttl_ms=3000, report_ms=60000))
        m = Metrics(0, "127.0.0.1", presence=p)
        srv.hooks += [p, m]
        await srv.start()
        a = await FakeClient.connect(srv.port, echo=upper)
        b = await FakeClient.connect(srv.port, echo=upper)
        for _ in range(3):
            a.beat()
        b.beat()
        await a.wait_hearts(3)
        await b.wait_hearts(1)
        await log.wait("online", count=2)
        await a.wait_data(2)
        await b.wait_data(2)
        await b.close()
        await log.wait("offline", client=b.name)
        await p.wait_flush()
        s = await scrape(m.bound_port)
        assert value(s, "hb_devices_online") == 1
        assert value(s, "hb_beats_total") == 4
        assert value(s, "hb_connections_total") == 2
        assert value(s, "hb_offline_total", reason="closed") == 1
        assert value(s, "hb_offline_total", reason="silent") == 0
        ok = value(s, "hb_probes_total", outcome="ok")
        assert ok >= 2 and value(s, "hb_probes_total", outcome="bad") == 0
        assert value(s, "hb_probe_rtt_seconds_count") == ok + value(s, "hb_probes_total", outcome="late")
        assert value(s, "hb_probe_rtt_seconds_bucket", le="+Inf") == value(s, "hb_probe_rtt_seconds_count")
        assert value(s, "hb_presence_up") == 1 and value(s, "hb_presence_errors_total") == 0
        assert value(s, "hb_presence_writes_total") >= 3  # a, b online; b offline
        # The store goes away: the endpoint says so.
        store.stop()
        await p.wait_flush()
        await p.wait_flush()
        s = await scrape(m.bound_port)
        assert value(s, "hb_presence_up") == 0 and value(s, "hb_presence_errors_total") >= 1
        await srv.stop()
        await a.close()
    run(main())


def test_rtt_buckets_are_cumulative_and_placed_by_value():
    h = Histogram()
    for sec in (0.0002, 0.0007, 0.003, 0.003, 0.2, 20.0):
        h.add(sec)
    buckets, total = rtt_buckets(dict(h.counts), Histogram.value)
    d = dict(buckets)
    assert d["0.0005"] == 1 and d["0.001"] == 2 and d["0.005"] == 4 and d["0.25"] == 5
    assert d["10.0"] == 5 and d["+Inf"] == 6
    assert [n for _, n in buckets] == sorted(n for _, n in buckets)
    assert len(buckets) == len(RTT_BUCKETS) + 1
    assert abs(total - 20.2069) < 20.2069 * 0.03


def test_busy_metrics_port_is_named():
    import os
    import socket
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "tools.hbserver", "--host", "127.0.0.1", "--port", "0",
                            "--quiet", "--metrics-port", str(port), "--metrics-host", "127.0.0.1"],
                           cwd=root, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "--metrics-port 127.0.0.1:%d: Address already in use" % port in r.stderr, r.stderr


def test_a_replaced_connection_is_counted_once_and_the_device_once():
    from support.seckit import KEY, authenticate, open_device

    async def main():
        log = EventLog()
        srv = HeartbeatServer(on_event=log, host="127.0.0.1", port=0, tick_ms=1000, summary_ms=0,
                              auth_keys={"dev-1": KEY.hex()})
        m = Metrics(0, "127.0.0.1")
        srv.hooks.append(m)
        await srv.start()
        try:
            conns = []
            for _ in range(2):  # the same device twice: the second connection replaces the first
                r, w = await open_device(srv.port)
                await authenticate(r, w)
                conns.append(w)
            await log.wait("replaced")
            s = await scrape(m.bound_port)
            assert value(s, "hb_devices_online") == 1
            assert value(s, "hb_connections_total") == 2
            assert value(s, "hb_offline_total", reason="replaced") == 1
            assert value(s, "hb_offline_total", reason="closed") == 0
            for w in conns:
                w.close()
        finally:
            await srv.stop()
    run(main())
