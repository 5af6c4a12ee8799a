"""TLS end to end: the firmware (CPython and the MicroPython unix port) against tools.hbserver --tls-cert,
over loopback, with certificates made fresh by tools.certs. A refused certificate is a connect_failed with
a tls_* reason and then the usual retry; a handshake that never ends is bounded; beats, echo probes and
the CA file's two encodings work; a plaintext device never gets in."""

import pytest

from firmware.hbkeep import tls as fwtls
from firmware.hbkeep.config import Config, ConfigError
from support.fwproc import FwProc
from support.loopserver import LoopbackServer
from support.seckit import pki  # noqa: F401  (session fixture: CA, server certificates, an expired one)
from tools.eventlines import HbServerProc


def tls_cfg(port, ca, **over):
    # peer_miss 10: on a loaded machine a slow tick must not turn into a silence drop in these tests.
    cfg = {"port": port, "beat_ms": 100, "peer_miss": 10, "stats_ms": 0, "retry_ms": 50,
           "tls": {"ca": ca, "server_hostname": "localhost", "handshake_timeout_ms": 3000}}
    for k, v in over.items():
        if k.startswith("tls_"):
            cfg["tls"][k[4:]] = v
        else:
            cfg[k] = v
    return cfg


@pytest.mark.parametrize("ca_form", ["pem", "der"])
def test_beats_and_echo_probes_over_tls(any_runtime, pki, ca_form):
    srv = HbServerProc("--tick-ms", "100", "--offline-ticks", "5", "--probe-ms", "50", "--summary-ms", "200",
                       *pki.server_args(), as_json=True)
    try:
        ca = pki.ca_pem if ca_form == "pem" else pki.ca_der
        with FwProc(any_runtime, tls_cfg(srv.port, ca)) as fw:
            ready = fw.wait_event("tls_ready", timeout=15)
            assert ready.fields["server_hostname"] == "localhost"
            fw.wait_event("connected", timeout=5)
            srv.wait_event("online", timeout=15, past=True)
            s = srv.wait_event("summary", timeout=20, where=lambda f: int(f["probes_ok"]) >= 10, past=True).fields
            assert int(s["probes_bad"]) == 0 and float(s["beats_per_s"]) > 0
            assert fw.count("disconnected") == 0 and fw.count("connect_failed") == 0, fw.output() + str(srv.events)
            # While the device runs (every line the server printed so far; the device's stop is an offline).
            assert not [e for e in srv.events if e.name in ("tls_failed", "protocol_error", "offline")]
    finally:
        assert srv.stop() == 0


@pytest.mark.parametrize("case,reason", [
    ("wrong_ca", "tls_untrusted"),
    ("wrong_hostname", "tls_hostname"),
    ("expired", "tls_expired"),
])
def test_a_refused_certificate_is_a_tls_connect_failure_then_a_retry(any_runtime, pki, case, reason):
    srv = HbServerProc("--tick-ms", "100", "--summary-ms", "0", *pki.server_args(expired=case == "expired"),
                       as_json=True)
    try:
        cfg = tls_cfg(srv.port, pki.other_ca_pem if case == "wrong_ca" else pki.ca_pem)
        if case == "wrong_hostname":
            cfg["tls"]["server_hostname"] = "not-this-server.example"
        with FwProc(any_runtime, cfg) as fw:
            first = fw.wait_event("connect_failed", timeout=15)
            assert first.fields["reason"] == reason, first.line
            again = fw.wait_event("connect_failed", timeout=10)  # the usual retry, refused again
            assert again.fields["reason"] == reason and int(again.fields["attempt"]) > int(first.fields["attempt"])
            assert fw.count("connected") == 0
        srv.wait_event("tls_failed", timeout=15, past=True)  # the server saw the device walk away from the handshake
    finally:
        assert srv.stop() == 0
    assert not [e for e in srv.events if e.name == "online"]


def test_a_plaintext_device_never_gets_into_a_tls_server(any_runtime, pki):
    srv = HbServerProc("--tick-ms", "100", "--summary-ms", "0", "--handshake-timeout-ms", "500", *pki.server_args(),
                       as_json=True)
    try:
        with FwProc(any_runtime, {"port": srv.port, "beat_ms": 100, "stats_ms": 0, "retry_ms": 50}) as fw:
            fw.wait_event("connected", timeout=15)  # TCP is up; the device's first beat is not a ClientHello
            failed = srv.wait_event("tls_failed", timeout=15, past=True).fields
            assert failed["reason"] not in ("timeout",), failed  # refused at once, not left to expire
            fw.wait_event("disconnected", timeout=10)
            fw.wait_event("connected", timeout=10)  # and it keeps trying, as after any disconnect
    finally:
        assert srv.stop() == 0
    assert not [e for e in srv.events if e.name == "online"]


class SilentServer(LoopbackServer):
    """Accepts and reads, never answers: a TLS handshake against it can only time out."""

    def step(self):
        self.conns.append(self.sock.accept()[0])


def test_a_handshake_that_never_ends_is_bounded_and_the_loop_keeps_running(any_runtime, pki):
    srv = SilentServer()
    try:
        cfg = tls_cfg(srv.port, pki.ca_pem, tls_handshake_timeout_ms=300, stats_ms=100, beat_ms=50)
        with FwProc(any_runtime, cfg) as fw:
            failed = fw.wait_event("connect_failed", timeout=15)
            assert failed.fields["reason"] == "tls_timeout" and failed.fields["detail"] == "300ms"
            assert 250 <= int(failed.fields["took_ms"]) < 3000
            # The event loop ran during the handshake: the stats task printed on schedule meanwhile.
            stats_during = [e for e in fw.events if e.name == "stats" and e.ms < failed.ms]
            assert len(stats_during) >= 2
            fw.wait_event("connect_failed", timeout=10, where=lambda f: f["reason"] == "tls_timeout")
    finally:
        srv.close()


# -- the tls module on its own ----------------------------------------------------------------------------

def test_ca_file_in_either_encoding_gives_the_same_der(pki, tmp_path):
    der = open(pki.ca_der, "rb").read()
    assert fwtls.der_from_file(pki.ca_pem) == der
    assert fwtls.der_from_file(pki.ca_der) == der
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"hello")
    with pytest.raises(fwtls.CaError, match="neither a PEM certificate nor a DER one"):
        fwtls.der_from_file(str(bad))
    with pytest.raises(fwtls.CaError, match="cannot read .*ENOENT"):
        fwtls.der_from_file(str(tmp_path / "missing.pem"))


def test_config_tls_section():
    cfg = Config({"host": "hb.lan", "tls": {"ca": "ca.pem"}})
    assert (cfg.tls_ca, cfg.tls_server_hostname, cfg.tls_handshake_timeout_ms) == ("ca.pem", None, 5000)
    assert Config({}).tls_ca is None
    with pytest.raises(ConfigError, match="tls.ca: required"):
        Config({"tls": {}})
    with pytest.raises(ConfigError, match="tls.handshake_timeout_ms: expected an integer from 100"):
        Config({"tls": {"ca": "ca.pem", "handshake_timeout_ms": 5}})
    with pytest.raises(ConfigError, match="tls: needs \"mode\": \"framed\""):
        Config({"mode": "raw", "tls": {"ca": "ca.pem"}})


def test_config_ca_path_is_relative_to_the_config_file(tmp_path):
    from firmware.hbkeep.config import load

    p = tmp_path / "config.json"
    p.write_text('{"tls": {"ca": "ca.der"}}')
    assert load(str(p)).tls_ca == str(tmp_path / "ca.der")


def test_missing_ca_file_stops_start_up_with_a_config_error(any_runtime, tmp_path):
    with FwProc(any_runtime, {"tls": {"ca": str(tmp_path / "nope.pem")}}) as fw:
        ev = fw.wait_event("config_error", timeout=15)
        assert "tls.ca" in ev.line and "nope.pem" in ev.line
        fw.proc.wait(timeout=10)
        assert fw.proc.returncode == 2


def test_fleet_speaks_tls_and_authenticates(pki, tmp_path):
    import subprocess
    import sys

    from support.seckit import KEY, OTHER_KEY, write_keys
    from tools.paths import REPO as ROOT

    keys = write_keys(tmp_path / "keys.json", {"dev-1": KEY, "dev-2": OTHER_KEY, "dev-3": KEY})
    srv = HbServerProc("--tick-ms", "200", "--summary-ms", "0", "--auth-keys", keys, *pki.server_args(),
                       as_json=True)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "tools.fleet", "--clients", "3", "--server", "127.0.0.1:%d" % srv.port,
             "--seconds", "2", "--beat-ms", "200", "--tls-ca", pki.ca_pem, "--tls-name", "localhost",
             "--auth-keys", keys], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        report = [line for line in out.stdout.splitlines() if " fleet_report " in line][0]
        assert " connects=3 " in report and " device_errors=0" in report
        onl = [e for e in srv.events if e.name == "online"] or [srv.wait_event("online", timeout=15, past=True)]
        assert {e.fields["client"] for e in onl} <= {"dev-1", "dev-2", "dev-3"}
    finally:
        assert srv.stop() == 0
    assert int(srv.wait_event("stopped", timeout=15, past=True).fields["beats"]) > 0
    assert not [e for e in srv.events if e.name in ("auth_failed", "tls_failed", "replaced")]
    assert KEY.hex() not in out.stdout + out.stderr


def test_fleet_refuses_more_devices_than_ids(tmp_path):
    # The server keeps one connection per id (the newest): devices sharing one would throw each other out.
    import subprocess
    import sys

    from support.seckit import KEY, OTHER_KEY, write_keys
    from tools.paths import REPO as ROOT

    keys = write_keys(tmp_path / "keys.json", {"dev-1": KEY, "dev-2": OTHER_KEY})
    out = subprocess.run([sys.executable, "-m", "tools.fleet", "--clients", "3", "--server", "127.0.0.1:9",
                          "--seconds", "1", "--auth-keys", keys], capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert out.returncode == 2
    assert "has 2 ids for --clients 3: each device needs an id of its own" in out.stderr, out.stderr
    assert KEY.hex() not in out.stderr


@pytest.mark.parametrize("tier", ["micropython", "micropython32"])
def test_the_plain_default_loads_neither_tls_nor_auth_on_micropython(pki, tier):
    """Lazy imports: a device without "tls"/"auth" never loads those modules (nor mbedTLS's bindings)."""
    import subprocess

    from support.fwproc import micropython_status, require_runtime
    from tools import hostrun

    require_runtime(tier)
    argv = micropython_status(tier)[1]
    script = (
        "import sys\nsys.path.insert(0, %r)\n"
        "from hbkeep.config import Config\nfrom hbkeep.client import Client\n"
        "Client(Config(%s), {})\n"
        "print(' '.join(m for m in ('hbkeep.tls', 'hbkeep.auth', 'tls', 'ssl', 'hashlib') if m in sys.modules))\n"
    )
    plain = subprocess.run(argv + ["-c", script % (hostrun.FIRMWARE_DIR, "{}")], capture_output=True,
                           text=True, timeout=60)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.split() == []
    secured = {"tls": {"ca": pki.ca_der}, "auth": {"id": "d", "key": "ab" * 16}}
    both = subprocess.run(argv + ["-c", script % (hostrun.FIRMWARE_DIR, secured)], capture_output=True,
                          text=True, timeout=60)
    assert both.returncode == 0, both.stderr
    assert {"hbkeep.tls", "hbkeep.auth"} <= set(both.stdout.split())  # (built-in modules are not listed)


@pytest.mark.parametrize("tier", ["micropython", "micropython32"])
def test_tls_benchmark_reports_its_figures_from_the_firmwares_handshake(tier):
    import subprocess
    import sys

    from support.fwproc import require_runtime
    from tools.paths import REPO as ROOT

    require_runtime(tier)
    p = subprocess.run([sys.executable, "-m", "tools.tlsbench", "--runtime", tier, "--rounds", "3"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    figures = dict(line.split("=", 1) for line in p.stdout.split())
    assert figures["runtime"].startswith("micropython") and figures["rounds"] == "3"
    for key in ("handshake_ms_median", "heap_context_bytes", "heap_peak_during_handshake_bytes",
                "heap_held_by_open_tls_socket_bytes", "heap_growth_per_round_bytes"):
        int(figures[key])  # a number, measured
    assert int(figures["heap_peak_during_handshake_bytes"]) > 0  # the handshake allocates on the heap


def test_failed_handshakes_leave_no_descriptor_behind(any_runtime, pki):
    import os

    srv = HbServerProc("--tick-ms", "100", "--summary-ms", "0", *pki.server_args(), as_json=True)
    try:
        # verbose: every failed attempt keeps its line (otherwise only the first 3, then summaries)
        with FwProc(any_runtime, tls_cfg(srv.port, pki.other_ca_pem, retry_ms=10, verbose=True)) as fw:
            fw.wait_event("connect_failed", timeout=15, where=lambda f: f["attempt"] == "3")
            fds = lambda: len(os.listdir("/proc/%d/fd" % fw.proc.pid))  # noqa: E731
            early = fds()
            fw.wait_event("connect_failed", timeout=30, where=lambda f: f["attempt"] == "40")
            # 37 more refused handshakes; at most the one attempt in flight may differ between the counts
            assert fds() <= early + 1
    finally:
        assert srv.stop() == 0


def test_deploy_ships_the_ca_file_beside_the_config(pki, tmp_path):
    import json
    import shutil

    from tools.deploy import plan

    shutil.copy(pki.ca_der, tmp_path / "lab-ca.der")
    (tmp_path / "config.json").write_text(json.dumps({"tls": {"ca": "lab-ca.der", "server_hostname": "hb.lan"}}))
    out = plan.files("unix", plan.load_config(str(tmp_path / "config.json")), source=True)
    assert out["lab-ca.der"] == open(pki.ca_der, "rb").read()
    assert json.loads(out["config.json"])["tls"] == {"ca": "lab-ca.der", "server_hostname": "hb.lan"}
    (tmp_path / "config.json").write_text(json.dumps({"tls": {"ca": "missing.der"}}))
    with pytest.raises(plan.PlanError, match="tls.ca .*missing.der: no such file"):
        plan.load_config(str(tmp_path / "config.json"))
