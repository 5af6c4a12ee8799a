"""Prometheus metrics for tools.hbserver (`--metrics-port PORT`), through the official prometheus_client.

The values are read from the server's own counters when Prometheus scrapes, never updated per beat: the
hot path pays nothing for metrics. The HTTP endpoint is prometheus_client's own (a small thread); every
read it does of the server is of plain integers or of a dict copied in one step.

    hb_devices_online                     gauge     clients online in this process
    hb_beats_total                        counter   HEART frames received (rate() of it is beats/s)
    hb_connections_total                  counter   connections admitted
    hb_refused_total                      counter   connections refused (max_clients, stopping)
    hb_offline_total{reason}              counter   clients gone offline, by reason (`replaced`: a newer
                                                    connection under the same name took over)
    hb_protocol_errors_total              counter
    hb_probes_total{outcome}              counter   echo probes by outcome: ok, bad, late, lost
    hb_probe_rtt_seconds                  histogram echo probe round trips (ok and late replies)
    hb_presence_up                        gauge     1 while the presence store answers, 0 during an outage
    hb_presence_errors_total              counter   failed presence writes (one per failed flush)
    hb_presence_writes_total              counter   device records written to the presence store

With `--workers N` each worker serves its own endpoint on PORT + worker index (0 .. N-1).
"""
from tools.hbserver.core import OFFLINE_REASONS

# Upper bounds of the round-trip histogram, seconds (loopback is sub-millisecond, Wi-Fi tens of ms).
RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServerCollector:
    """A prometheus_client collector reading a HeartbeatServer (and its Presence hook, if any)."""

    def __init__(self, server, presence=None):
        self.server = server
        self.presence = presence

    def describe(self):
        return []  # unchecked collector: the families are produced at scrape time

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        srv = self.server
        yield GaugeMetricFamily("hb_devices_online", "Clients online in this server process.",
                                value=len(srv.clients))
        yield CounterMetricFamily("hb_beats", "HEART frames received.", value=srv.beats)
        yield CounterMetricFamily("hb_connections", "Connections admitted.", value=srv.connections)
        yield CounterMetricFamily("hb_refused", "Connections refused.", value=srv.refused)
        off = CounterMetricFamily("hb_offline", "Clients gone offline, by reason.", labels=["reason"])
        by = dict(srv.offline_by)
        for reason in OFFLINE_REASONS:
            off.add_metric([reason], by.get(reason, 0))
        yield off
        yield CounterMetricFamily("hb_protocol_errors", "Protocol errors (bad frames).",
                                  value=srv.protocol_errors)
        ps = srv.probes
        probes = CounterMetricFamily("hb_probes", "Echo probes by outcome.", labels=["outcome"])
        for outcome, n in (("ok", ps.ok), ("bad", ps.bad), ("late", ps.late), ("lost", ps.lost)):
            probes.add_metric([outcome], n)
        yield probes
        buckets, total_s = rtt_buckets(dict(ps.rtt.counts), type(ps.rtt).value)
        hist = HistogramMetricFamily("hb_probe_rtt_seconds", "Echo probe round-trip time.")
        hist.add_metric([], buckets, sum_value=total_s)
        yield hist
        p = self.presence
        if p is not None:
            yield GaugeMetricFamily("hb_presence_up", "1 while the presence store answers.",
                                    value=1 if p.up else 0)
            yield CounterMetricFamily("hb_presence_errors", "Failed presence store writes.", value=p.errors)
            yield CounterMetricFamily("hb_presence_writes", "Device records written to the presence store.",
                                      value=p.writes)


def rtt_buckets(counts, value_us):
    """Cumulative Prometheus buckets from the server's log-linear histogram (bucket index -> count).
    Each internal bucket is placed by its middle value; the internal buckets are ~3% wide, so a sample
    lands in the right Prometheus bucket except within ~3% of a bound. The sum is from the same values."""
    per = [0] * (len(RTT_BUCKETS) + 1)
    total_s = 0.0
    for i, n in counts.items():
        s = value_us(i) / 1e6
        total_s += s * n
        for j, bound in enumerate(RTT_BUCKETS):
            if s <= bound:
                per[j] += n
                break
        else:
            per[-1] += n
    out = []
    run = 0
    for j, bound in enumerate(RTT_BUCKETS):
        run += per[j]
        out.append((repr(bound), run))
    out.append(("+Inf", run + per[-1]))
    return out, total_s


class Metrics:
    """A server hook: serves the endpoint from start to stop."""

    def __init__(self, port, host="0.0.0.0", presence=None):
        self.port = port
        self.host = host
        self.presence = presence
        self._httpd = None
        self.bound_port = None

    def started(self, srv):
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(ServerCollector(srv, self.presence))
        try:
            self._httpd, _thread = start_http_server(self.port, addr=self.host, registry=registry)
        except OSError as e:
            raise OSError(e.errno, "--metrics-port %s:%d: %s" % (self.host, self.port, e.strerror or e)) from None
        self.bound_port = self._httpd.server_address[1]
        srv.emit("metrics", {"host": self.host, "port": self.bound_port, "path": "/metrics"})

    async def stopped(self):
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            import asyncio

            await asyncio.to_thread(httpd.shutdown)  # waits for the serving thread's poll to end
            httpd.server_close()
