"""tools.hbserver against the real firmware, on both runtimes, over loopback: beats keep the device
online, the server's echo probes verify the firmware's upper-case echo (framed and raw), and a device
that dies goes offline and comes back online when it returns."""
import pytest

from support.fwproc import FwProc
from tools.eventlines import HbServerProc


@pytest.mark.parametrize("mode", ["framed", "raw"])
def test_probes_verify_the_firmwares_echo_and_beats_keep_it_online(runtime, mode):
    srv = HbServerProc("--tick-ms", "100", "--offline-ticks", "5", "--probe-ms", "50", "--probe-bytes", "64",
                       "--probe-mode", mode, "--summary-ms", "200", as_json=True)
    try:
        with FwProc(runtime, {"port": srv.port, "mode": mode, "beat_ms": 100, "stats_ms": 0}) as fw:
            fw.wait_event("connected", timeout=15)
            srv.wait_event("online", timeout=15)
            s = srv.wait_event("summary", timeout=20, where=lambda f: int(f["probes_ok"]) >= 20).fields
            assert int(s["probes_bad"]) == 0 and int(s["online"]) == 1
            if mode == "framed":
                assert float(s["beats_per_s"]) > 0  # HEART frames from the device
            assert not [e for e in srv.events if e.name in ("offline", "probe_mismatch", "protocol_error")]
            assert fw.count("disconnected") == 0
    finally:
        assert srv.stop() == 0


def test_a_device_that_dies_goes_offline_and_comes_back(runtime):
    srv = HbServerProc("--tick-ms", "100", "--offline-ticks", "5", "--summary-ms", "0", as_json=True)
    try:
        cfg = {"port": srv.port, "beat_ms": 100, "stats_ms": 0}
        with FwProc(runtime, cfg) as fw:
            fw.wait_event("connected", timeout=15)
            srv.wait_event("online", timeout=15)
            fw.proc.kill()  # no goodbye: the kernel closes the socket
        off = srv.wait_event("offline", timeout=15).fields
        assert off["reason"] in ("closed", "reset")
        with FwProc(runtime, cfg) as fw:
            fw.wait_event("connected", timeout=15)
            # The device is a client again: a second `online` (the first was consumed before the kill).
            srv.wait_event("online", timeout=15)
            assert srv.count("online") == 2
    finally:
        assert srv.stop() == 0
