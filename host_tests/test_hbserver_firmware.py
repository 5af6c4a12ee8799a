"""tools.hbserver against the real firmware, on both runtimes, over loopback: beats keep the device
online, the server's echo probes verify the firmware's upper-case echo (framed and raw), and a device
that dies goes offline and comes back online when it returns."""
import json
import os
import queue
import signal
import subprocess
import sys
import threading

import pytest

from fwproc import FwProc, runtime  # noqa: F401  (the runtime fixture: cpython and micropython)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ServerProc:
    """`python -m tools.hbserver --json` on an ephemeral loopback port; waits on its JSON events."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "tools.hbserver", "--host", "127.0.0.1", "--port", "0", "--json",
             *args], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.events = []
        self._q = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.port = int(self.wait("listening")["port"])

    def _pump(self):
        for line in self.proc.stdout:
            self._q.put(json.loads(line))
        self._q.put(None)

    def wait(self, name, timeout=15.0, where=lambda e: True):
        for e in self.events:
            if e["ev"] == name and where(e):
                return e
        while True:
            try:
                e = self._q.get(timeout=timeout)  # bounded: a silent server fails the test
            except queue.Empty:
                raise AssertionError("no %r event in %ss; seen: %s" % (name, timeout, self.events[-8:]))
            if e is None:
                raise AssertionError("server exited before %r; seen: %s" % (name, self.events[-8:]))
            self.events.append(e)
            if e["ev"] == name and where(e):
                return e

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.returncode


@pytest.mark.parametrize("mode", ["framed", "raw"])
def test_probes_verify_the_firmwares_echo_and_beats_keep_it_online(runtime, mode):
    srv = ServerProc("--tick-ms", "100", "--offline-ticks", "5", "--probe-ms", "50", "--probe-bytes", "64",
                     "--probe-mode", mode, "--summary-ms", "200")
    try:
        with FwProc(runtime, {"port": srv.port, "mode": mode, "beat_ms": 100, "stats_ms": 0}) as fw:
            fw.wait_event("connected", timeout=15)
            srv.wait("online")
            s = srv.wait("summary", timeout=20, where=lambda e: int(e["probes_ok"]) >= 20)
            assert int(s["probes_bad"]) == 0 and int(s["online"]) == 1
            if mode == "framed":
                assert float(s["beats_per_s"]) > 0  # HEART frames from the device
            assert not [e for e in srv.events if e["ev"] in ("offline", "probe_mismatch", "protocol_error")]
            assert fw.count("disconnected") == 0
    finally:
        assert srv.stop() == 0


def test_a_device_that_dies_goes_offline_and_comes_back(runtime):
    srv = ServerProc("--tick-ms", "100", "--offline-ticks", "5", "--summary-ms", "0")
    try:
        cfg = {"port": srv.port, "beat_ms": 100, "stats_ms": 0}
        with FwProc(runtime, cfg) as fw:
            fw.wait_event("connected", timeout=15)
            srv.wait("online")
            fw.proc.kill()  # no goodbye: the kernel closes the socket
        off = srv.wait("offline")
        assert off["reason"] in ("closed", "reset")
        with FwProc(runtime, cfg) as fw:
            fw.wait_event("connected", timeout=15)
            # The device is a client again: a second `online` (the count includes the event just read).
            srv.wait("online", where=lambda e: sum(1 for x in srv.events if x["ev"] == "online") == 2)
    finally:
        assert srv.stop() == 0
