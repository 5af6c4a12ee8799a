"""Several real server processes sharing presence in a real Valkey/Redis store, as a fleet runs them:
two servers on two ports, `--workers 2` on one port, devices from tools.fleet --light, the fleet view
from tools.fleetstatus. Processes are killed for real (SIGKILL); every wait is bounded."""
import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time

import redis

from support.storefix import WAIT, store  # noqa: F401  (store is a fixture)
from tools import fleetstatus
from tools.eventlines import EventProc, HbServerProc
from tools.paths import REPO

TTL_MS = 1500  # presence window in these tests: short, so a dead server's devices expire quickly
START = 20.0  # a process start-up on a loaded machine
STOP = 15.0  # a clean stop on a loaded machine, before SIGKILL


def worker(i):
    return lambda f: f.get("worker") == i


def server(url, *extra):
    """A server with presence on, JSON lines; started (its first `listening` read) when this returns."""
    return HbServerProc("--quiet", "--tick-ms", "500", "--presence", url, "--presence-flush-ms", "100",
                        "--presence-ttl-ms", str(TTL_MS), *extra, as_json=True, listen_timeout=START)


def proc(label, *args):
    return EventProc([sys.executable, "-u", *args], label, cwd=REPO, stop_signal=signal.SIGTERM)


def fleet(servers, clients, seconds=60):
    args = ["-m", "tools.fleet", "--light", "--clients", str(clients), "--seconds", str(seconds),
            "--ramp-s", "0.2", "--retry-ms", "50", "--backoff-max-ms", "300", "--beat-ms", "250"]
    for hp in servers:
        args += ["--server", hp]
    return proc("fleet", *args)


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
    procs = []
    try:
        a = server(store.url, "--server-id", "A")
        procs.append(a)
        b = server(store.url, "--server-id", "B")
        procs.append(b)
        pa, pb = a.port, b.port
        # Ten devices spread over the two servers, and one lone device, in a process of its own, to kill.
        many = fleet(["127.0.0.1:%d" % pa, "127.0.0.1:%d" % pb], 10)
        lone = fleet(["127.0.0.1:%d" % pb], 1)
        procs += [many, lone]
        s = wait_view(store.url, "11 online", lambda s: s["counts"]["online"] == 11, WAIT)
        by = s["counts"]["by_server"]
        assert by.get("A", 0) >= 5 and by.get("B", 0) >= 5 and by["A"] + by["B"] == 11, by
        assert set(s["servers"]) == {"A", "B"}
        lone.stop(STOP, sig=signal.SIGKILL)
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
        a.stop(STOP, sig=signal.SIGKILL)
        t0 = time.monotonic()
        s = wait_view(store.url, "A's devices expired", lambda s: s["counts"]["offline_by_reason"].get("expired"),
                      TTL_MS / 1000 + WAIT)
        assert time.monotonic() - t0 < TTL_MS / 1000 + 3.0, "expiry took %.1f s" % (time.monotonic() - t0)
        s = wait_view(store.url, "all 10 online on B",
                      lambda s: s["counts"]["by_server"] == {"B": 10}, TTL_MS / 1000 + WAIT)
    finally:
        for p in procs:
            p.stop(STOP)


def test_worker_killed_devices_come_back_on_the_others(store):
    srv = server(store.url, "--workers", "2", "--server-id", "W", "--metrics-port", "0",
                 "--metrics-host", "127.0.0.1")
    procs = [srv]
    try:
        started = [srv.take("worker_started", START, where=worker(i)).fields for i in (0, 1)]
        port = srv.port  # the first worker's `listening`
        srv.take("listening", START)  # the second's
        n = 40
        f = fleet(["127.0.0.1:%d" % port], n)
        procs.append(f)
        s = wait_view(store.url, "%d online" % n, lambda s: s["counts"]["online"] == n, WAIT)
        victims = {d["device"] for d in s["devices"] if d["state"] == "online" and d["server"] == "W-w0"}
        assert victims and s["counts"]["by_server"].get("W-w1", 0) > 0, s["counts"]
        # Each worker serves its own metrics; together they count the fleet.
        ports = [srv.take("metrics", START).fields["port"] for _ in (0, 1)]
        online = sum(_scrape_value(p, "hb_devices_online") for p in ports)
        assert online == n
        killed_ms = int(time.time() * 1000)
        os.kill(started[0]["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        ex = srv.take("worker_exited", START, where=worker(0)).fields
        assert ex["code"] == -signal.SIGKILL
        # Devices are named by address here, so a reconnected device is mostly a new name: the fleet is whole
        # again when n devices read online on the live worker, and each of the dead worker's old records
        # reads expired -- unless the kernel gave the reconnect the same source port, and so the same name,
        # which then reads online on the live worker (the newest connection wins).
        def whole(s):
            rec = {d["device"]: d for d in s["devices"]}
            # A record from before the kill reads online until it expires; a taken-over one has a newer `since`.
            back = [v for v in victims if rec[v]["state"] == "online" and rec[v]["since"] >= killed_ms]
            expired = [v for v in victims if rec[v]["state"] == "offline" and rec[v]["reason"] == "expired"]
            return (s["counts"]["online"] == n and len(back) + len(expired) == len(victims)
                    and s["counts"]["offline_by_reason"].get("expired", 0) == len(expired))
        s = wait_view(store.url, "%d online again, the dead worker's old records expired or taken over" % n,
                      whole, TTL_MS / 1000 + WAIT)
        took = time.monotonic() - t0
        assert took < TTL_MS / 1000 + 5.0, "took %.1f s, window %.1f s + reconnect" % (took, TTL_MS / 1000)
        # The supervisor starts the worker again; it listens on the same port and serves new devices.
        srv.take("worker_started", START, where=worker(0))
        assert srv.take("listening", START).fields["port"] == port
    finally:
        for p in procs:
            p.stop(STOP)
    assert srv.proc.returncode == 0
    assert srv.count("stopped") == 2, "both live workers stop cleanly on SIGTERM"


def _scrape_value(port, name):
    import urllib.request

    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError("%s not in the metrics of port %d" % (name, port))


def test_fleetstatus_watch_follows_changes(store):
    a = server(store.url, "--server-id", "A")
    procs = [a]
    try:
        port = a.port
        w = proc("fleetstatus", "-m", "tools.fleetstatus", "--presence", store.url, "--watch", "--json",
                 "--count", "2")
        procs.append(w)
        # Its lines are JSON documents, not events: each is read as the next line, whatever it says.
        first = w.wait_line(lambda x: True, START).line  # the snapshot: the watch is subscribed from here on
        assert json.loads(first)["counts"]["online"] == 0
        d = fleet(["127.0.0.1:%d" % port], 1)
        procs.append(d)
        on = json.loads(w.wait_line(lambda x: True, WAIT).line)
        assert (on["state"], on["server"]) == ("online", "A")
        d.stop(STOP, sig=signal.SIGKILL)
        off = json.loads(w.wait_line(lambda x: True, WAIT).line)
        assert (off["device"], off["state"]) == (on["device"], "offline")
        assert w.proc.wait(WAIT) == 0, "--count 2 ends the watch after two changes"
    finally:
        for p in procs:
            p.stop(STOP)


def test_fleetstatus_names_an_unreachable_store():
    r = subprocess.run([sys.executable, "-m", "tools.fleetstatus", "--presence", "redis://127.0.0.1:1"],
                       cwd=REPO, capture_output=True, text=True, timeout=START)
    assert r.returncode == 1 and "cannot read redis://127.0.0.1:1" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "tools.fleetstatus", "--presence", "http://x"],
                       cwd=REPO, capture_output=True, text=True, timeout=START)
    assert r.returncode == 2 and "redis://HOST:PORT" in r.stderr


def test_server_rejects_a_bad_presence_url():
    r = subprocess.run([sys.executable, "-m", "tools.hbserver", "--presence", "redis://h:1/db"],
                       cwd=REPO, capture_output=True, text=True, timeout=START)
    assert r.returncode == 2 and "database after / must be a number" in r.stderr, r.stderr


_ = redis  # the client library must be importable for this tier (a missing pin fails here, clearly)


def test_authenticated_devices_are_named_by_their_id(store, tmp_path):
    keys = tmp_path / "keys.json"
    for i in (1, 2):
        r = subprocess.run([sys.executable, "-m", "tools.certs", "device-key", "--id", "sensor-%d" % i,
                            "--keys", str(keys)], cwd=REPO, capture_output=True, text=True, timeout=START)
        assert r.returncode == 0, r.stderr
    a = server(store.url, "--server-id", "A", "--auth-keys", str(keys))
    procs = [a]
    try:
        port = a.port
        # Full firmware clients (tools.fleet without --light) authenticate with the ids of the key file.
        f = proc("fleet", "-m", "tools.fleet", "--clients", "2", "--seconds", "60", "--beat-ms", "250",
                 "--server", "127.0.0.1:%d" % port, "--auth-keys", str(keys), "--ramp-s", "0.1")
        procs.append(f)
        s = wait_view(store.url, "both devices online", lambda s: s["counts"]["online"] == 2, WAIT)
        assert sorted(d["device"] for d in s["devices"]) == ["sensor-1", "sensor-2"]
        f.stop(STOP, sig=signal.SIGKILL)
        s = wait_view(store.url, "both offline", lambda s: s["counts"]["offline"] == 2, WAIT)
        assert sorted(d["device"] for d in s["devices"]) == ["sensor-1", "sensor-2"], "the same two names"
    finally:
        for p in procs:
            p.stop(STOP)
