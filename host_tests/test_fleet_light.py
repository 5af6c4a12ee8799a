"""tools.fleet --light (tools/fleet_light.py): many devices per task that beat and echo probes, with the
firmware's backoff and server-list rules, against the real server in the same event loop."""
import asyncio
import socket
import subprocess
import sys
import os

from support.fake_device import EventLog
from tools.fleet_light import LightFleet
from tools.hbserver import HeartbeatServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(coro):
    async def bounded():
        async with asyncio.timeout(60):
            return await coro
    return asyncio.run(bounded())


def refused_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # bound, never listening: connections to it are refused
    return s


def test_light_devices_beat_and_echo_probes():
    async def main():
        log = EventLog()
        srv = HeartbeatServer(on_event=log, host="127.0.0.1", port=0, tick_ms=100, offline_ticks=5,
                              summary_ms=0, probe_ms=100, probe_late_ms=5000)
        await srv.start()
        n = 300
        fleet = LightFleet([("127.0.0.1", srv.port)], n, beat_ms=100, retry_ms=50, backoff_max_ms=500,
                           ramp_s=0.1, seed=3)
        task = asyncio.create_task(fleet.run(seconds=30))
        await log.wait("online", count=n)
        ok_before = srv.probes.ok
        beats_before = srv.beats
        async with asyncio.timeout(10):
            while srv.probes.ok < ok_before + 2 * n or srv.beats < beats_before + 3 * n:
                await asyncio.sleep(0.05)  # the server's counters have no signal; bounded polling
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        s = srv.stats()
        assert s["probes_bad"] == 0 and s["protocol_errors"] == 0
        assert s["offline"]["silent"] == 0, "no device went silent while beating every 100 ms"
        assert fleet.connects == n and fleet.failures == 0
        assert fleet.echoes >= 2 * n and fleet.hearts_in > 0
        await srv.stop()
    run(main())


def test_light_devices_move_to_the_next_server():
    async def main():
        dead = refused_port()
        log = EventLog()
        srv = HeartbeatServer(on_event=log, host="127.0.0.1", port=0, tick_ms=1000, summary_ms=0)
        await srv.start()
        n = 50
        fleet = LightFleet([("127.0.0.1", dead.getsockname()[1]), ("127.0.0.1", srv.port)], n, beat_ms=200,
                           retry_ms=20, backoff_max_ms=100, ramp_s=0.05, seed=1)
        task = asyncio.create_task(fleet.run(seconds=30))
        await log.wait("online", count=n)
        assert fleet.failures >= n // 2 - 1, "half the devices start on the dead address and must fail first"
        assert fleet.connected == n
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await srv.stop()
        dead.close()
    run(main())


def test_fleet_light_command_line():
    r = subprocess.run([sys.executable, "-m", "tools.fleet", "--light", "--clients", "5", "--server",
                        "127.0.0.1:9", "--silent", "0.5"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--light devices only beat and echo" in r.stderr, r.stderr
