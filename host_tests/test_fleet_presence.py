"""Several real server processes sharing presence in a real Valkey/Redis store, as a fleet runs them:
two servers on two ports, `--workers 2` on one port, devices from tools.fleet --light, the fleet view
from tools.fleetstatus. Processes are killed for real (SIGKILL); every wait is bounded."""
import asyncio
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import redis

from support.storefix import WAIT, store  # noqa: F401  (store is a fixture)
from tools import fleetstatus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TTL_MS = 1500  # presence window in these tests: short, so a dead server's devices expire quickly
START = 20.0  # a process start-up on a loaded machine


class Proc:
    """A child process whose stdout lines are read into a queue by a thread."""

    def __init__(self, args):
        self.p = subprocess.Popen([sys.executable, "-u", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        self.q = queue.Queue()
        self.lines = []
        self.unclaimed = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def wait_json(self, ev, timeout=START, **match):
        """The first JSON event line named ev (with these fields) not yet taken; lines from several
        processes interleave, so the ones passed over are kept for later waits."""
        for i, d in enumerate(self.unclaimed):
            if d.get("ev") == ev and all(d.get(k) == v for k, v in match.items()):
                return self.unclaimed.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.q.get(timeout=max(0.01, left))
            except queue.Empty:
                line = ""
            if line is None or left <= 0:
                raise AssertionError("no %r %s within %.0f s; output:\n%s" % (ev, match, timeout,
                                                                            "\n".join(self.lines[-30:])))
            self.lines.append(line)
            if line.startswith("{"):
                d = json.loads(line)
                if d.get("ev") == ev and all(d.get(k) == v for k, v in match.items()):
                    return d
                self.unclaimed.append(d)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return self.p.returncode


def server(url, *extra):
    return Proc(["-m", "tools.hbserver", "--host", "127.0.0.1", "--port", "0", "--json", "--quiet",
                 "--tick-ms", "500", "--presence", url, "--presence-flush-ms", "100",
                 "--presence-ttl-ms", str(TTL_MS), *extra])


def fleet(servers, clients, seconds=60):
    args = ["-m", "tools.fleet", "--light", "--clients", str(clients), "--seconds", str(seconds),
            "--ramp-s", "0.2", "--retry-ms", "50", "--backoff-max-ms", "300", "--beat-ms", "250"]
    for hp in servers:
        args += ["--server", hp]
    return Proc(args)


def snap(url):
    async def read():
        r = fleetstatus.connect(url)
        try:
            return await fleetstatus.snapshot(r, "hb")
        finally:
            await r.aclose()
    return asyncio.run(read())


def wait_view(url, what, cond, timeout):
    deadline = time.monotonic() + timeout
    while True:
        s = snap(url)
        if cond(s):
            return s
        if time.monotonic() >= deadline:
            raise AssertionError("fleet view: no %s within %.1f s; counts: %s" % (what, timeout, s["counts"]))
        time.sleep(0.1)  # polling the store, which gives no signal for an expiry


def test_two_servers_one_view_and_a_killed_device(store):
    a = server(store.url, "--server-id", "A")
    b = server(store.url, "--server-id", "B")
    procs = [a, b]
    try:
        pa = a.wait_json("listening")["port"]
        pb = b.wait_json("listening")["port"]
        # Ten devices spread over the two servers, and one lone device, in a process of its own, to kill.
        many = fleet(["127.0.0.1:%d" % pa, "127.0.0.1:%d" % pb], 10)
        lone = fleet(["127.0.0.1:%d" % pb], 1)
        procs += [many, lone]
        s = wait_view(store.url, "11 online", lambda s: s["counts"]["online"] == 11, WAIT)
        by = s["counts"]["by_server"]
        assert by.get("A", 0) >= 5 and by.get("B", 0) >= 5 and by["A"] + by["B"] == 11, by
        assert set(s["servers"]) == {"A", "B"}
        lone.stop(signal.SIGKILL)
        s = wait_view(store.url, "the killed device offline", lambda s: s["counts"]["offline"] == 1, WAIT)
        gone = [d for d in s["devices"] if d["state"] == "offline"]
        assert gone[0]["server"] == "B" and gone[0]["reason"] in ("closed", "reset"), gone
        assert s["counts"]["online"] == 10
        # The command line: text and JSON agree with the store.
        out = io.StringIO()
        assert fleetstatus.main(["--presence", store.url], out=out) == 0
        text = out.getvalue()
        assert "devices=11 online=10 offline=1 servers_alive=2" in text, text
        assert "server A online=" in text and "server B online=" in text
        assert text.count(" online server=") == 10 and text.count(" offline server=B") == 1, text
        out = io.StringIO()
        assert fleetstatus.main(["--presence", store.url, "--json"], out=out) == 0
        doc = json.loads(out.getvalue())
        assert doc["counts"]["online"] == 10 and len(doc["devices"]) == 11
        # A server killed without a word: its devices read offline (expired) within the window, and the
        # devices move to the other server (the fleet's next address) and read online there.
        a.stop(signal.SIGKILL)
        t0 = time.monotonic()
        s = wait_view(store.url, "A's devices expired", lambda s: s["counts"]["offline_by_reason"].get("expired"),
                      TTL_MS / 1000 + WAIT)
        assert time.monotonic() - t0 < TTL_MS / 1000 + 3.0, "expiry took %.1f s" % (time.monotonic() - t0)
        s = wait_view(store.url, "all 10 online on B",
                      lambda s: s["counts"]["by_server"] == {"B": 10}, TTL_MS / 1000 + WAIT)
    finally:
        for p in procs:
            p.stop()


def test_worker_killed_devices_come_back_on_the_others(store):
    srv = server(store.url, "--workers", "2", "--server-id", "W", "--metrics-port", "0",
                 "--metrics-host", "127.0.0.1")
    procs = [srv]
    try:
        started = [srv.wait_json("worker_started", worker=i) for i in (0, 1)]
        port = srv.wait_json("listening")["port"]
        srv.wait_json("listening")
        n = 40
        f = fleet(["127.0.0.1:%d" % port], n)
        procs.append(f)
        s = wait_view(store.url, "%d online" % n, lambda s: s["counts"]["online"] == n, WAIT)
        victims = s["counts"]["by_server"].get("W-w0", 0)
        assert victims > 0 and s["counts"]["by_server"].get("W-w1", 0) > 0, s["counts"]
        # Each worker serves its own metrics; together they count the fleet.
        ports = [srv.wait_json("metrics")["port"] for _ in (0, 1)]
        online = sum(_scrape_value(p, "hb_devices_online") for p in ports)
        assert online == n
        os.kill(started[0]["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        ex = srv.wait_json("worker_exited", worker=0)
        assert ex["code"] == -signal.SIGKILL
        # Devices are named by address here, so a reconnected device is a new name: the fleet is whole
        # again when n devices read online; the dead worker's old records read expired.
        s = wait_view(store.url, "%d online again, none on the dead worker's old records" % n,
                      lambda s: s["counts"]["online"] == n
                      and s["counts"]["offline_by_reason"].get("expired", 0) == victims,
                      TTL_MS / 1000 + WAIT)
        took = time.monotonic() - t0
        assert took < TTL_MS / 1000 + 5.0, "took %.1f s, window %.1f s + reconnect" % (took, TTL_MS / 1000)
        # The supervisor starts the worker again; it listens on the same port and serves new devices.
        srv.wait_json("worker_started", worker=0)
        assert srv.wait_json("listening")["port"] == port
    finally:
        for p in procs:
            p.stop()
    assert srv.p.returncode == 0
    stopped = [ln for ln in srv.lines + _drain(srv) if '"ev":"stopped"' in ln]
    assert len(stopped) == 2, "both live workers stop cleanly on SIGTERM"


def _scrape_value(port, name):
    import urllib.request

    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError("%s not in the metrics of port %d" % (name, port))


def _drain(proc):
    out = []
    while True:
        try:
            line = proc.q.get(timeout=5)
        except queue.Empty:
            return out
        if line is None:
            return out
        out.append(line)


def test_fleetstatus_watch_follows_changes(store):
    a = server(store.url, "--server-id", "A")
    procs = [a]
    try:
        port = a.wait_json("listening")["port"]
        w = Proc(["-m", "tools.fleetstatus", "--presence", store.url, "--watch", "--json", "--count", "2"])
        procs.append(w)
        first = w.q.get(timeout=START)  # the snapshot line: the watch is subscribed from here on
        assert json.loads(first)["counts"]["online"] == 0
        d = fleet(["127.0.0.1:%d" % port], 1)
        procs.append(d)
        on = json.loads(w.q.get(timeout=WAIT))
        assert (on["state"], on["server"]) == ("online", "A")
        d.stop(signal.SIGKILL)
        off = json.loads(w.q.get(timeout=WAIT))
        assert (off["device"], off["state"]) == (on["device"], "offline")
        assert w.p.wait(WAIT) == 0, "--count 2 ends the watch after two changes"
    finally:
        for p in procs:
            p.stop()


def test_fleetstatus_names_an_unreachable_store():
    r = subprocess.run([sys.executable, "-m", "tools.fleetstatus", "--presence", "redis://127.0.0.1:1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=START)
    assert r.returncode == 1 and "cannot read redis://127.0.0.1:1" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "tools.fleetstatus", "--presence", "http://x"],
                       cwd=ROOT, capture_output=True, text=True, timeout=START)
    assert r.returncode == 2 and "redis://HOST:PORT" in r.stderr


def test_server_rejects_a_bad_presence_url():
    r = subprocess.run([sys.executable, "-m", "tools.hbserver", "--presence", "redis://h:1/db"],
                       cwd=ROOT, capture_output=True, text=True, timeout=START)
    assert r.returncode == 2 and "database after / must be a number" in r.stderr, r.stderr


_ = redis  # the client library must be importable for this tier (a missing pin fails here, clearly)


def test_authenticated_devices_are_named_by_their_id(store, tmp_path):
    keys = tmp_path / "keys.json"
    for i in (1, 2):
        r = subprocess.run([sys.executable, "-m", "tools.certs", "device-key", "--id", "sensor-%d" % i,
                            "--keys", str(keys)], cwd=ROOT, capture_output=True, text=True, timeout=START)
        assert r.returncode == 0, r.stderr
    a = server(store.url, "--server-id", "A", "--auth-keys", str(keys))
    procs = [a]
    try:
        port = a.wait_json("listening")["port"]
        # Full firmware clients (tools.fleet without --light) authenticate with the ids of the key file.
        f = Proc(["-m", "tools.fleet", "--clients", "2", "--seconds", "60", "--beat-ms", "250",
                  "--server", "127.0.0.1:%d" % port, "--auth-keys", str(keys), "--ramp-s", "0.1"])
        procs.append(f)
        s = wait_view(store.url, "both devices online", lambda s: s["counts"]["online"] == 2, WAIT)
        assert sorted(d["device"] for d in s["devices"]) == ["sensor-1", "sensor-2"]
        f.stop(signal.SIGKILL)
        s = wait_view(store.url, "both offline", lambda s: s["counts"]["offline"] == 2, WAIT)
        assert sorted(d["device"] for d in s["devices"]) == ["sensor-1", "sensor-2"], "the same two names"
    finally:
        for p in procs:
            p.stop()
