"""Scale benchmark of tools.hbserver (`make bench-server`). Prints key=value lines.

    python3 -m tools.bench_server [--clients 10000] [--seconds 60] [--loop asyncio|uvloop]

Starts the server on 127.0.0.1 (its own process) and tools.fleet with N devices beating once a second
(the firmware's own client code on CPython). After every device is online, it measures for --seconds:
server CPU (from /proc, user + system, in % of one core), RSS per connection (server RSS with all clients
minus its RSS before any), beats handled per second and probe round-trip p99 (the server's own summary
lines), and false offline events (offline for silence while every device beats). Everything talks over
loopback only and stops by itself.
"""
import argparse
import os
import queue
import signal
import subprocess
import sys
import time

from tools.eventlines import HbServerProc, WaitFailed, follow, parse_line

CLK_TCK = os.sysconf("SC_CLK_TCK")


def emit(key, value):
    print("%s=%s" % (key, value), flush=True)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m tools.bench_server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=60, help="measured steady-state window (default 60)")
    ap.add_argument("--beat-ms", type=int, default=1000)
    ap.add_argument("--loop", default="asyncio", help="server event loop: asyncio or uvloop")
    ap.add_argument("--fleet-procs", type=int, default=2, help="fleet worker processes (default 2)")
    ap.add_argument("--probe-ms", type=int, default=10000, help="server echo probe interval per client")
    ap.add_argument("--ramp-s", type=float, default=10.0, help="fleet connects spread over this long")
    args = ap.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0:
        ap.error("--clients must be >= 1 and --seconds > 0")

    q = queue.Queue()  # (tag, line) from the server and the fleet; (tag, None) at an end
    try:
        server = HbServerProc("--tick-ms", args.beat_ms, "--offline-ticks", 5, "--summary-ms", 1000,
                              "--probe-ms", args.probe_ms, "--loop", args.loop, "--quiet",
                              as_json=True, tee=(q, "server"), listen_timeout=20)
    except WaitFailed:
        emit("error", "server_did_not_start")
        return 1
    server.record = False  # from here on its lines are read from q only
    port = server.port
    time.sleep(0.5)  # let the fresh process settle before the baseline reading (a measurement, not sync)
    rss0 = rss_bytes(server.proc.pid)
    total_s = args.ramp_s + 5 + args.seconds + 5
    fleet = subprocess.Popen(
        [sys.executable, "-u", "-m", "tools.fleet", "--clients", str(args.clients), "--server",
         "127.0.0.1:%d" % port, "--seconds", str(total_s), "--beat-ms", str(args.beat_ms),
         "--procs", str(args.fleet_procs), "--ramp-s", str(args.ramp_s)],
        stdout=subprocess.PIPE, text=True,
    )
    follow("fleet", fleet.stdout, q)

    summaries = []
    false_offline = 0
    offline_reasons = {}
    window = None  # (t0, cpu0) once everyone is online
    rss_all = None
    fleet_report = None
    end = time.monotonic() + total_s + 120
    try:
        while time.monotonic() < end:
            try:
                tag, line = q.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                if tag == "fleet":
                    break
                continue
            if tag == "fleet":
                fev = parse_line(line)
                if fev.name == "fleet_report":
                    fleet_report = fev.fields
                continue
            sev = parse_line(line)
            name, ev = sev.name, sev.fields
            if name == "offline":
                offline_reasons[ev.get("reason")] = offline_reasons.get(ev.get("reason"), 0) + 1
                if ev.get("reason") == "silent" and window is not None:
                    false_offline += 1
            elif name == "summary":
                online = int(ev.get("online", 0))
                now = time.monotonic()
                if window is None and online >= args.clients:
                    window = (now, cpu_seconds(server.proc.pid))
                    rss_all = rss_bytes(server.proc.pid)
                elif window is not None and now - window[0] <= args.seconds:
                    summaries.append(ev)
                    rss_all = max(rss_all, rss_bytes(server.proc.pid))
                    last = (now, cpu_seconds(server.proc.pid))
    finally:
        fleet.send_signal(signal.SIGINT) if fleet.poll() is None else None
        try:
            fleet.wait(timeout=30)
        except subprocess.TimeoutExpired:
            fleet.kill()
        server.stop(timeout=30)  # SIGTERM, then SIGKILL after 30 s
    stopped = {}
    while True:  # the server's last line carries the whole run's probe percentiles
        try:
            tag, line = q.get(timeout=2)
        except queue.Empty:
            break
        if tag == "server" and line:
            sev = parse_line(line)
            if sev.name == "stopped":
                stopped = sev.fields

    emit("clients", args.clients)
    emit("loop", args.loop)
    emit("beat_ms", args.beat_ms)
    if window is None or not summaries:
        emit("error", "not_all_clients_online (offline reasons: %s)" % offline_reasons)
        return 1
    t0, c0 = window
    t1, c1 = last
    emit("window_s", "%.1f" % (t1 - t0))
    emit("all_online", "yes" if min(int(s["online"]) for s in summaries) >= args.clients else "no")
    emit("min_online_in_window", min(int(s["online"]) for s in summaries))
    emit("false_offline", false_offline)
    emit("server_cpu_pct_of_one_core", "%.1f" % (100 * (c1 - c0) / (t1 - t0)))
    emit("server_rss_base_mib", "%.1f" % (rss0 / 2**20))
    emit("server_rss_all_mib", "%.1f" % (rss_all / 2**20))
    emit("rss_per_connection_kib", "%.2f" % ((rss_all - rss0) / args.clients / 1024))
    bps = [float(s["beats_per_s"]) for s in summaries]
    emit("beats_per_s_mean", "%.0f" % (sum(bps) / len(bps)))
    emit("beats_per_s_min", "%.0f" % min(bps))
    emit("probe_p50_ms", stopped.get("p50_ms"))
    emit("probe_p99_ms", stopped.get("p99_ms"))
    emit("probes_ok", stopped.get("probes_ok"))
    emit("probes_bad", stopped.get("probes_bad"))
    emit("probes_late", stopped.get("probes_late"))
    emit("probes_lost", stopped.get("probes_lost"))
    if fleet_report:
        emit("fleet_beats_per_s", fleet_report.get("beats_per_s"))
        emit("fleet_device_errors", fleet_report.get("device_errors"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
