"""The firmware's real connection loop and Wi-Fi station against models of the esp32 and rp2 ports.

host_tests/support/portmodel.py answers socket, errno and network calls as each port does (docs/PORTS.md);
host_tests/support/portmodel_run.py runs the firmware's Client and Station on it and plays the server and the
access point. Each (runtime, port) runs once as a child process on CPython, the 64-bit and the 32-bit
MicroPython unix port; the tests below read its output, one scenario each.

`rp2_old` is rp2 before MicroPython 1.25.0, whose poll reported a connecting socket writable at once.
"""
import json
import os
import subprocess

import pytest

from support import portmodel
from support.fwproc import ALL_RUNTIMES, require_runtime
from tools import hostrun
from tools.eventlines import parse_line
from tools.paths import BOARDS_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORTS = ("esp32", "rp2", "rp2_old")
TIMEOUT = 180

_runs = {}


def run_model(runtime, port):
    """{scenario: {"events": [Event...], "model": {key: int}, "raw": [lines]}} for one child run."""
    key = (runtime, port)
    if key not in _runs:
        args = [ROOT, "rp2", "old_poll"] if port == "rp2_old" else [ROOT, port]
        argv = hostrun.runtime_argv(runtime) + [os.path.join(ROOT, "host_tests", "support", "portmodel_run.py")] + args
        p = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
        out = {}
        cur = None
        for line in p.stdout.splitlines():
            if line.startswith("scenario "):
                cur = out.setdefault(line.split(" ", 1)[1], {"events": [], "model": None, "raw": []})
            elif cur is None:
                continue
            elif line.startswith("model "):
                cur["model"] = dict((k, int(v)) for k, v in (f.split("=") for f in line.split(" ")[1:]))
            cur is not None and cur["raw"].append(line)
            if cur is not None and not line.startswith("model "):
                ev = parse_line(line)
                if ev.name != "_raw":
                    cur["events"].append(ev)
        assert p.returncode == 0 and "done" in p.stdout.splitlines(), (
            "port model run failed (rc=%d):\n%s\n%s" % (p.returncode, p.stdout[-3000:], p.stderr[-3000:]))
        _runs[key] = out
    return _runs[key]


@pytest.fixture(params=[(r, p) for r in ALL_RUNTIMES for p in PORTS], ids=lambda rp: "%s-%s" % rp)
def model(request):
    runtime, port = request.param
    require_runtime(runtime)
    return port, run_model(runtime, port)


def scenario(result, name):
    sc = result[name]
    text = "\n".join(sc["raw"][-40:])
    assert sc["model"] is not None, "scenario %s never reported:\n%s" % (name, text)
    assert not any(x.startswith("hung ") for x in sc["raw"]), "scenario %s hung:\n%s" % (name, text)
    return sc, text


def named(sc, name):
    return [e for e in sc["events"] if e.name == name]


def test_connects_beats_and_echoes(model):
    port, result = model
    sc, text = scenario(result, "connect_beat")
    ev = named(sc, "connected")
    assert len(ev) == 1 and ev[0].fields["attempt"] == "1", text  # the first attempt: EISCONN is success
    assert not named(sc, "connect_failed"), text
    assert sc["model"]["beats"] >= 2 and sc["model"]["echo"] == 1, text
    assert ev[0].fields["applied"] == "nodelay" and sc["model"]["warnings"] == 0, text
    if port == "rp2_old":
        assert sc["model"]["ealready"] >= 1, "the old poll should have made the firmware meet EALREADY"


def test_refusal_is_named_and_retried(model):
    port, result = model
    sc, text = scenario(result, "refused")
    failed = named(sc, "connect_failed")
    # esp32 says ENOTCONN, rp2 says EBADF: both are a refusal, and the event says so.
    assert [e.fields["reason"] for e in failed] == ["ECONNREFUSED"], text
    assert named(sc, "connected"), text
    assert sc["model"]["open"] == 1 and sc["model"]["sockets"] == 2, "the refused socket was not closed"


def test_connect_timeout(model):
    port, result = model
    sc, text = scenario(result, "timeout")
    failed = named(sc, "connect_failed")
    assert [e.fields["reason"] for e in failed] == ["timeout"], text
    assert int(failed[0].fields["took_ms"]) >= 300, text
    assert named(sc, "connected") and sc["model"]["open"] == 1, text


def test_reset_is_detected_and_reconnected(model):
    port, result = model
    sc, text = scenario(result, "reset")
    down = named(sc, "disconnected")
    assert down[0].fields["reason"] == "reset" and down[0].fields["detail"] == "ECONNRESET", text
    assert len(named(sc, "connected")) == 2, text


def test_full_send_buffer_is_a_write_stall_and_never_rp2s_blocking_write(model):
    port, result = model
    sc, text = scenario(result, "full_send_buffer")
    down = named(sc, "disconnected")
    assert down and down[0].fields["reason"] == "write_stall", text
    assert sc["model"]["errmem_blocks"] == 0, text
    if port.startswith("rp2"):
        assert sc["model"]["max_write"] <= 800, "a write larger than the rp2 table's write_max"


def test_unanswered_beats_stop_within_the_ports_budget(model):
    port, result = model
    sc, text = scenario(result, "unanswered_beats")
    m = sc["model"]
    assert m["errmem_blocks"] == 0, "a write would have blocked 10 s inside rp2's write()"
    if port.startswith("rp2"):
        assert m["beats_sent"] == 24 and m["beats_skipped"] >= 30 and m["max_queued"] < portmodel.RP2_QUEUELEN, text
    else:
        assert m["beats_sent"] >= 60 and m["beats_skipped"] == 0, text  # esp32's write has no such block


def test_wifi_loss_and_return(model):
    port, result = model
    sc, text = scenario(result, "ap_loss")
    m = sc["model"]
    assert named(sc, "disconnected")[0].fields["reason"] == "silence", text
    assert m["held"] == 1 and m["connects_without_ip"] == 0 and m["dns_without_ip"] == 0, text
    assert m["dns"] == 1, "the address is resolved once and cached"
    assert len(named(sc, "connected")) == 2 and m["beats_after"] >= 1, text
    if port == "esp32":
        assert m["wlan_connects"] == 1, "esp32 rejoins by itself"
    else:
        # cyw43 stays at STAT_CONNECTING: the station's join timeout calls connect() again.
        assert m["wlan_connects"] >= 2 and named(sc, "wifi_rejoin"), text


def test_wrong_password_is_an_event_and_a_slow_retry(model):
    port, result = model
    sc, text = scenario(result, "wrong_password")
    m = sc["model"]
    failed = named(sc, "wifi_failed")
    # The runner shortens the retry to 300 ms, doubling to a 1200 ms cap.
    assert [e.fields["retry_ms"] for e in failed[:3]] == ["300", "600", "1200"], text
    assert all(e.fields["reason"] == "wrong_password" and e.fields["ssid"] == "lab" for e in failed), text
    assert m["attempts_while_refused"] == 0 and m["dns_without_ip"] == 0 and m["connects_without_ip"] == 0, text
    assert named(sc, "connected"), text
    if port == "esp32":
        assert m["wlan_disconnects"] >= 3, "esp32's own quick retries were not stopped"
    assert not any("hunter2" in x for x in sc["raw"])


@pytest.mark.parametrize("board, port", [("esp32", "esp32"), ("rp2_pico_w", "rp2")])
def test_board_tables_agree_with_the_port_models(board, port):
    with open(os.path.join(BOARDS_DIR, board, "board.json")) as f:
        sk = json.load(f)["socket"]
    e = portmodel.ERRNO[port]
    assert sk["isconn"] == [e["EISCONN"]]
    assert sk["already"] == [e["EALREADY"]]
    assert sk["pending"] == [e["EINPROGRESS"], e["EAGAIN"]]
    assert sk["refused"] == [e["ENOTCONN"] if port == "esp32" else e["EBADF"]]
    for name, num in e.items():
        if str(num) in sk["errno_names"]:
            assert sk["errno_names"][str(num)] == name
    assert sk["errno_names"][str(e["EISCONN"])] == "EISCONN"


@pytest.mark.parametrize("board, port", [("esp32", "esp32"), ("rp2_pico_w", "rp2")])
def test_board_watchdog_limit_is_the_ports(board, port):
    with open(os.path.join(BOARDS_DIR, board, "board.json")) as f:
        limit = json.load(f)["wdt_max_ms"]
    machine = portmodel.make_machine_module(port)
    assert limit == portmodel.WDT_MAX_MS[port]
    if limit is not None:
        assert machine.WDT(timeout=limit).timeout == limit  # the clamp the firmware applies is accepted
        with pytest.raises(ValueError):
            machine.WDT(timeout=limit + 1)
