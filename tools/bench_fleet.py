"""Fleet benchmark (`make bench-fleet`): several server processes, a shared presence store, a light fleet.

    python3 -m tools.bench_fleet [--devices 24000] [--workers 2] [--seconds 20] [--phases asyncio:2000,...]

For each phase (an event loop for the servers and the fleet's backoff cap), on loopback only:
  1. a Valkey server (tools/presence_store.py), `tools.hbserver --workers N --presence --metrics-port`,
     and `tools.fleet --light` with --devices devices beating once a second;
  2. once every device is connected: a steady window of --seconds, measuring per worker process and for
     the whole host the devices held, beats/s, offline events (any offline while every device beats is a
     false offline), CPU (from /proc, % of one core and CPU-microseconds per device-second) and RSS per
     device (worker RSS with its devices minus its RSS before any);
  3. a reconnect storm: every worker is killed at once (SIGKILL); the supervisor starts them again and
     the fleet reconnects with its backoff. It reports the time from the first worker listening again
     until 99% and 100% of the devices are connected (the fleet's own count, every 100 ms), the accept
     rate achieved, and when the presence store's view is whole again.
The storm figures are the servers' own view (their metrics, read every 100 ms: devices online, connections
accepted); `fleet_t99_s`/`fleet_t100_s` are the same from the devices' side. Every line is key=value; keys
start with the phase's name. Everything stops by itself.
"""
import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import time

from tools.eventlines import follow
from tools.presence_store import StoreProcess, StoreUnavailable

CLK_TCK = os.sysconf("SC_CLK_TCK")
STATUS_MS = 100


def emit(key, value):
    print("%s=%s" % (key, value), flush=True)


def cpu_seconds(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return 0.0


def rss_bytes(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def scrape(port):
    import urllib.request

    out = {}
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                name, _, v = line.rpartition(" ")
                out[name] = float(v)
    return out


class Phase:
    def __init__(self, args, store, name, loop, backoff_ms, prefix):
        self.args = args
        self.store = store
        self.name = name
        self.loop = loop
        self.backoff_ms = backoff_ms
        self.prefix = prefix
        self.q = queue.Queue()
        self.server = None
        self.fleet = None
        self.workers = {}  # index -> pid
        self.metrics = {}  # pid -> metrics port
        self.listening = []  # monotonic times of listening lines
        self.port = None
        self.connected = {}  # fleet proc -> latest connected count
        self.connects = {}
        self.beats = {}
        self.failures = {}
        self.lag_ms = 0  # the fleet's worst beat lag since last reset
        self.status = []  # (t_s, total connected, total connects)

    def out(self, key, value):
        emit("%s.%s" % (self.name, key), value)

    # -- children --------------------------------------------------------------------------------

    def start_server(self):
        a = self.args
        self.server = subprocess.Popen(
            [sys.executable, "-u", "-m", "tools.hbserver", "--host", "127.0.0.1", "--port", "0", "--json",
             "--quiet", "--workers", str(a.workers), "--tick-ms", "1000", "--offline-ticks", "5",
             "--summary-ms", "0", "--probe-ms", str(a.probe_ms), "--loop", self.loop, "--backlog", "4096",
             "--presence", self.store.url, "--presence-prefix", self.prefix, "--presence-flush-ms", "1000",
             "--presence-ttl-ms", str(a.ttl_ms), "--metrics-port", "0", "--metrics-host", "127.0.0.1"],
            stdout=subprocess.PIPE, text=True)
        follow("server", self.server.stdout, self.q)
        self.pump_until(lambda: len(self.metrics) >= a.workers and len(self.listening) >= a.workers, 30,
                        "the workers to listen")

    def start_fleet(self):
        a = self.args
        servers = ["--server", "127.0.0.1:%d" % self.port]
        self.fleet = subprocess.Popen(
            [sys.executable, "-u", "-m", "tools.fleet", "--light", "--clients", str(a.devices), "--procs",
             str(a.fleet_procs), "--beat-ms", "1000", "--retry-ms", "100", "--backoff-max-ms",
             str(self.backoff_ms), "--ramp-s", str(a.ramp_s), "--status-ms", str(STATUS_MS), "--seconds",
             "3600", "--loop", a.fleet_loop, *servers],
            stdout=subprocess.PIPE, text=True)
        follow("fleet", self.fleet.stdout, self.q)

    def stop(self):
        for p, sig in ((self.fleet, signal.SIGINT), (self.server, signal.SIGTERM)):
            if p is None or p.poll() is not None:
                continue
            p.send_signal(sig)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    # -- reading their lines ---------------------------------------------------------------------

    def pump(self, timeout):
        try:
            tag, line = self.q.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            if line is not None:
                self.handle(tag, line)
            try:
                tag, line = self.q.get_nowait()
            except queue.Empty:
                return

    def handle(self, tag, line):
        if tag == "fleet":
            if " fleet_status " in line:
                parts = line.split()
                f = dict(p.split("=", 1) for p in parts[2:])
                proc = int(f["proc"])
                self.connected[proc] = int(f["connected"])
                self.connects[proc] = int(f["connects"])
                self.beats[proc] = int(f["beats"])
                self.failures[proc] = int(f["failures"])
                self.lag_ms = max(self.lag_ms, int(f.get("lag_ms", 0)))
                self.status.append((int(parts[0]) / 1000, sum(self.connected.values()),
                                    sum(self.connects.values())))
            return
        if not line.startswith("{"):
            return
        ev = json.loads(line)
        name = ev.get("ev")
        if name == "worker_started":
            self.workers[ev["worker"]] = ev["pid"]
            self.port = ev["port"]
        elif name == "listening":
            self.listening.append(time.monotonic())
        elif name == "metrics":
            self.metrics[len(self.metrics)] = ev["port"]

    def pump_until(self, cond, timeout, what):
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise RuntimeError("%s: timed out after %.0f s waiting for %s" % (self.name, timeout, what))
            if self.server and self.server.poll() is not None:
                raise RuntimeError("%s: the server exited (%s)" % (self.name, self.server.returncode))
            self.pump(0.1)

    def total_connected(self):
        return sum(self.connected.values()) if len(self.connected) == self.args.fleet_procs else 0

    def presence_online(self):
        import redis

        r = redis.Redis(port=self.store.port, decode_responses=True)
        try:
            n = 0
            for k in r.scan_iter(match=self.prefix + ":server:*", count=1000):
                n += int(r.hget(k, "devices") or 0)
            return n
        finally:
            r.close()

    # -- the measurements ------------------------------------------------------------------------

    def worker_figures(self):
        """(pid, metrics) for every live worker, metrics scraped now."""
        ports = list(self.metrics.values())[-self.args.workers:]
        out = []
        for port in ports:
            try:
                out.append(scrape(port))
            except OSError:
                out.append({})
        return out

    def run(self):
        a = self.args
        self.out("loop", self.loop)
        self.out("backoff_max_ms", self.backoff_ms)
        self.start_server()
        time.sleep(0.5)  # a settled baseline (a measurement pause, not synchronisation)
        pids = [self.workers[i] for i in sorted(self.workers)]
        rss0 = {p: rss_bytes(p) for p in pids}
        t_fleet = time.monotonic()
        self.start_fleet()
        self.pump_until(lambda: self.total_connected() >= a.devices, a.ramp_s + 120, "every device connected")
        self.out("ramp_s", "%.1f" % (time.monotonic() - t_fleet))
        settled = time.monotonic() + 2.0  # presence flushes and probes under way before measuring
        self.pump_until(lambda: time.monotonic() >= settled, 10, "settling")
        # Steady window.
        fleet_pids = children(self.fleet.pid)
        m0 = self.worker_figures()
        c0 = {p: cpu_seconds(p) for p in pids}
        f0 = {p: cpu_seconds(p) for p in fleet_pids}
        s0 = cpu_seconds(self.store.proc.pid)
        t0 = time.monotonic()
        self.lag_ms = 0
        b0 = sum(self.beats.values())
        min_connected = a.devices
        while time.monotonic() < t0 + a.seconds:
            self.pump(0.2)
            min_connected = min(min_connected, self.total_connected())
        t1 = time.monotonic()
        b1 = sum(self.beats.values())
        m1 = self.worker_figures()
        span = t1 - t0
        host = {"devices": 0, "beats": 0.0, "offline": 0.0, "silent": 0.0, "cpu": 0.0, "rss_delta": 0}
        for i, p in enumerate(pids):
            cpu = cpu_seconds(p) - c0[p]
            rss = rss_bytes(p)
            dev = int(m1[i].get("hb_devices_online", 0))
            beats = m1[i].get("hb_beats_total", 0) - m0[i].get("hb_beats_total", 0)
            off = sum(v - m0[i].get(k, 0) for k, v in m1[i].items() if k.startswith("hb_offline_total"))
            silent = m1[i].get('hb_offline_total{reason="silent"}', 0) - m0[i].get('hb_offline_total{reason="silent"}', 0)
            w = "w%d" % i
            self.out(w + ".devices", dev)
            self.out(w + ".beats_per_s", "%.0f" % (beats / span))
            self.out(w + ".offline_in_window", int(off))
            self.out(w + ".false_offline_silent", int(silent))
            self.out(w + ".cpu_pct_of_one_core", "%.1f" % (100 * cpu / span))
            self.out(w + ".cpu_us_per_device_s", "%.2f" % (1e6 * cpu / span / max(1, dev)))
            self.out(w + ".rss_mib", "%.1f" % (rss / 2**20))
            self.out(w + ".rss_per_device_bytes", "%.0f" % ((rss - rss0[p]) / max(1, dev)))
            self.out(w + ".presence_errors", int(m1[i].get("hb_presence_errors_total", 0)))
            host["devices"] += dev
            host["beats"] += beats
            host["offline"] += off
            host["silent"] += silent
            host["cpu"] += cpu
            host["rss_delta"] += rss - rss0[p]
        self.out("host.window_s", "%.1f" % span)
        self.out("host.devices_held", host["devices"])
        self.out("host.min_connected_in_window", min_connected)
        self.out("host.beats_per_s", "%.0f" % (host["beats"] / span))
        self.out("host.fleet_beats_sent_per_s", "%.0f" % ((b1 - b0) / span))
        self.out("host.fleet_max_beat_lag_ms", self.lag_ms)
        self.out("host.false_offline", int(host["offline"]))
        self.out("host.server_cpu_pct_of_one_core", "%.1f" % (100 * host["cpu"] / span))
        self.out("host.server_cpu_us_per_device_s", "%.2f" % (1e6 * host["cpu"] / span / max(1, host["devices"])))
        self.out("host.server_rss_per_device_bytes", "%.0f" % (host["rss_delta"] / max(1, host["devices"])))
        self.out("host.fleet_cpu_pct_of_one_core",
                 "%.1f" % (100 * sum(cpu_seconds(p) - f0[p] for p in fleet_pids) / span))
        self.out("host.store_cpu_pct_of_one_core", "%.1f" % (100 * (cpu_seconds(self.store.proc.pid) - s0) / span))
        self.out("host.presence_online", self.presence_online())
        results = []
        for k in range(a.storms):
            pids = [self.workers[i] for i in sorted(self.workers)]  # the workers running now
            r = self.storm(pids, "storm%d" % (k + 1))
            if r is None:
                raise RuntimeError("storm %d: the fleet did not come back" % (k + 1))
            results.append(r)
            settled = time.monotonic() + 3.0  # let the fresh workers' first flushes and ticks pass
            self.pump_until(lambda: time.monotonic() >= settled, 10, "settling")
        for i, key in enumerate(("t99_s", "t100_s", "accept_rate_per_s")):
            vals = sorted(r[i] for r in results)
            fmt = "%.0f" if key == "accept_rate_per_s" else "%.2f"
            self.out("storm.%s_median" % key, fmt % vals[len(vals) // 2])
            self.out("storm.%s_range" % key, (fmt + ".." + fmt) % (vals[0], vals[-1]))

    def storm(self, pids, tag):
        """Kill every worker at once; report the recovery under keys `<phase>.<tag>.*`; return
        (t99_s, t100_s, accept_rate) or None when the fleet did not come back."""
        a = self.args
        n = a.devices
        listening_before = len(self.listening)
        metrics_before = len(self.metrics)
        failures_before = sum(self.failures.values())
        self.lag_ms = 0
        t_kill = time.monotonic()
        for p in pids:
            os.kill(p, signal.SIGKILL)
        self.pump_until(lambda: len(self.listening) > listening_before, 30, "a worker listening again")
        t_listen = self.listening[listening_before]
        # The servers' own view, every 100 ms: devices admitted (online) and connections accepted.
        view = []  # (t, online, accepted)
        t99 = t100 = None
        deadline = time.monotonic() + 120
        while t100 is None and time.monotonic() < deadline:
            self.pump(0.1)
            ports = list(self.metrics.values())[metrics_before:]
            online = accepted = 0
            offline = {}
            for port in ports:
                try:
                    m = scrape(port)
                except OSError:
                    continue
                online += m.get("hb_devices_online", 0)
                accepted += m.get("hb_connections_total", 0)
                for k, v in m.items():
                    if k.startswith("hb_offline_total{"):
                        reason = k.split('"')[1]
                        offline[reason] = offline.get(reason, 0) + int(v)
            t = time.monotonic()
            view.append((t, online, accepted))
            if t99 is None and online >= 0.99 * n:
                t99 = t
            if online >= n:
                t100 = t
        self.out(tag + ".devices", n)
        self.out(tag + ".servers_down_s", "%.2f" % (t_listen - t_kill))
        if t100 is None:
            self.out(tag + ".error", "not every device came back within 120 s (online %d)" % view[-1][1])
            return None
        self.out(tag + ".t99_s", "%.2f" % (t99 - t_listen))
        self.out(tag + ".t100_s", "%.2f" % (t100 - t_listen))
        self.out(tag + ".accepted", int(view[-1][2]))
        # Devices dropped again during the recovery (silent: their beats did not arrive in time).
        self.out(tag + ".offline_during_recovery", ",".join("%s:%d" % kv for kv in sorted(offline.items()) if kv[1])
                 or "0")
        self.out(tag + ".fleet_max_beat_lag_ms", self.lag_ms)
        self.out(tag + ".accept_rate_per_s", "%.0f" % (view[-1][2] / max(1e-3, t100 - t_listen)))
        # The best one-second window of accepts during the recovery.
        peak = 0.0
        j = 0
        for i in range(len(view)):
            while view[i][0] - view[j][0] > 1.0:
                j += 1
            if view[i][0] - view[j][0] >= 0.5:
                peak = max(peak, (view[i][2] - view[j][2]) / (view[i][0] - view[j][0]))
        self.out(tag + ".peak_accept_rate_per_s", "%.0f" % peak)
        # The devices' side: from the first moment they saw the loss, until they are connected again.
        t_drop = next((t for t, total, _ in self.status if t >= t_kill and total < 0.99 * n), None)
        f99 = f100 = None
        if t_drop is not None:
            f99 = next((t for t, total, _ in self.status if t > t_drop and total >= 0.99 * n), None)
            f100 = next((t for t, total, _ in self.status if t > t_drop and total >= n), None)
        if f99 is not None and f100 is not None:
            self.out(tag + ".fleet_t99_s", "%.2f" % (f99 - t_listen))
            self.out(tag + ".fleet_t100_s", "%.2f" % (f100 - t_listen))
        self.out(tag + ".fleet_failed_attempts", sum(self.failures.values()) - failures_before)
        deadline = time.monotonic() + 30
        while self.presence_online() < n and time.monotonic() < deadline:
            self.pump(0.25)
        got = self.presence_online()
        self.out(tag + ".presence_whole_s", "%.2f" % (time.monotonic() - t_listen) if got >= n else "no (%d)" % got)
        return (t99 - t_listen, t100 - t_listen, view[-1][2] / max(1e-3, t100 - t_listen))


def parse_phases(text):
    out = []
    for item in text.split(","):
        loop, _, backoff = item.partition(":")
        if loop not in ("asyncio", "uvloop") or not backoff.isdigit():
            raise argparse.ArgumentTypeError("expected LOOP:BACKOFF_MAX_MS items (LOOP asyncio or uvloop), got %r"
                                             % item)
        out.append((loop, int(backoff)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m tools.bench_fleet", description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=30000,
                    help="simulated devices (default %(default)s: more than one server process can hold, "
                         "~19,000 with a 20,000-descriptor limit)")
    ap.add_argument("--workers", type=int, default=2, help="server processes (default %(default)s)")
    ap.add_argument("--fleet-procs", type=int, default=2, help="light-fleet processes (default %(default)s)")
    ap.add_argument("--fleet-loop", choices=("asyncio", "uvloop"), default="uvloop",
                    help="event loop of the load generator (default %(default)s: leaves more CPU to the servers)")
    ap.add_argument("--seconds", type=float, default=15, help="steady window per phase (default %(default)s)")
    ap.add_argument("--ramp-s", type=float, default=10, help="fleet connects spread over this long (default %(default)s)")
    ap.add_argument("--probe-ms", type=int, default=10000, help="server echo probe period (default %(default)s)")
    ap.add_argument("--storms", type=int, default=3,
                    help="reconnect storms per phase, reported one by one and as median and range (default %(default)s)")
    ap.add_argument("--ttl-ms", type=int, default=15000, help="presence window (default %(default)s)")
    ap.add_argument("--phases", type=parse_phases, default=parse_phases("asyncio:500,asyncio:2000,asyncio:8000,uvloop:2000"),
                    help="LOOP:BACKOFF_MAX_MS,... one run each (default asyncio:500,asyncio:2000,asyncio:8000,uvloop:2000)")
    args = ap.parse_args(argv)
    if args.storms < 1:
        ap.error("--storms must be at least 1, got %d" % args.storms)
    if args.devices < 1:
        ap.error("--devices must be at least 1, got %d" % args.devices)
    if args.workers < 1 or args.fleet_procs < 1 or args.devices / args.fleet_procs > 19500:
        ap.error("--workers and --fleet-procs must be >= 1, with at most 19,500 devices per fleet process")
    emit("devices", args.devices)
    emit("workers", args.workers)
    emit("fleet_procs", args.fleet_procs)
    emit("cores", os.cpu_count())
    try:
        store = StoreProcess().start()
    except StoreUnavailable as e:
        emit("error", "no presence store: %s" % e)
        return 1
    code = 0
    try:
        for i, (loop, backoff) in enumerate(args.phases):
            name = "%s_b%d" % (loop, backoff)
            ph = Phase(args, store, name, loop, backoff, "bench%d" % i)
            try:
                ph.run()
            except RuntimeError as e:
                emit(name + ".error", str(e))
                code = 1
            finally:
                ph.stop()
    finally:
        store.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
