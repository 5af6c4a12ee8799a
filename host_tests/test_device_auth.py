"""Device authentication end to end, the firmware's side (CPython and the MicroPython unix port): against
tools.hbserver --auth-keys with and without TLS, with a wrong key or an unknown id, and against scripted
servers that give a wrong proof, something other than WELCOME, or nothing at all."""
import pytest

from firmware.hbkeep import auth, auth_host
from firmware.hbkeep.auth import WELCOME
from support.fwproc import FwProc
from support.seckit import KEY, KEY_HEX, OTHER_KEY, ScriptedAuthServer, pki, write_keys  # noqa: F401
from tools.eventlines import HbServerProc


def dev_cfg(port, dev_id="dev-1", key=KEY_HEX, **over):
    # peer_miss 10: a loaded test machine must not turn a slow tick into a silence drop here.
    cfg = {"port": port, "beat_ms": 100, "peer_miss": 10, "stats_ms": 0, "retry_ms": 50,
           "auth": {"id": dev_id, "key": key, "timeout_ms": 2000}}
    cfg.update(over)
    return cfg


def no_secret_in(text, *secrets):
    for s in secrets:
        assert s.hex() not in text and s.hex().upper() not in text


@pytest.mark.parametrize("with_tls", [False, True], ids=["plain", "tls"])
def test_an_authenticated_device_beats_and_echoes_under_its_id(any_runtime, pki, tmp_path, with_tls):
    keys = write_keys(tmp_path / "keys.json", {"dev-1": KEY, "dev-2": OTHER_KEY})
    args = ["--tick-ms", "100", "--offline-ticks", "5", "--probe-ms", "50", "--summary-ms", "200",
            "--auth-keys", keys] + (pki.server_args() if with_tls else [])
    srv = HbServerProc(*args, as_json=True)
    try:
        cfg = dev_cfg(srv.port)
        if with_tls:
            cfg["tls"] = {"ca": pki.ca_der, "server_hostname": "localhost"}
        with FwProc(any_runtime, cfg) as fw:
            ev = fw.wait_event("authenticated", timeout=15)
            assert ev.fields["id"] == "dev-1"
            online = srv.wait_event("online", timeout=15, past=True).fields
            assert online["client"] == "dev-1"  # the server names the device by its id
            s = srv.wait_event("summary", timeout=20, where=lambda f: int(f["probes_ok"]) >= 10, past=True).fields
            assert int(s["probes_bad"]) == 0 and float(s["beats_per_s"]) > 0
            assert fw.count("disconnected") == 0, fw.output() + str(srv.events)
            # While the device runs (every line the server printed so far; the device's stop is an offline).
            assert not [e for e in srv.events if e.name in ("auth_failed", "tls_failed", "offline")]
            out = fw.output()
    finally:
        assert srv.stop() == 0
    no_secret_in(out + str(srv.events), KEY, OTHER_KEY)


@pytest.mark.parametrize("case", ["wrong_key", "unknown_id"])
def test_a_device_the_server_does_not_know_is_dropped_and_retries(any_runtime, tmp_path, case):
    keys = write_keys(tmp_path / "keys.json", {"dev-1": KEY})
    srv = HbServerProc("--tick-ms", "100", "--summary-ms", "0", "--auth-keys", keys, "--auth-fail-limit", "1000",
                       as_json=True)
    try:
        cfg = dev_cfg(srv.port, "dev-1" if case == "wrong_key" else "stranger",
                      OTHER_KEY.hex() if case == "wrong_key" else KEY_HEX)
        with FwProc(any_runtime, cfg) as fw:
            d = fw.wait_event("disconnected", timeout=15)
            assert d.fields["reason"] == "auth" and d.fields["detail"] == "closed"
            fw.wait_event("disconnected", timeout=10, where=lambda f: f["reason"] == "auth")  # retried
            assert fw.count("authenticated") == 0
            out = fw.output()
        failed = srv.wait_event("auth_failed", timeout=15, past=True).fields
        if case == "wrong_key":
            assert failed["reason"] == "bad_mac" and failed["id"] == "dev-1"
        else:
            assert failed["reason"] == "unknown_id" and "id" not in failed  # attacker-chosen text is not echoed
    finally:
        assert srv.stop() == 0
    assert not [e for e in srv.events if e.name == "online"]
    no_secret_in(out + str(srv.events), KEY, OTHER_KEY)


def _wrong_proof(payload, snonce):
    dnonce, _, dev_id = auth_host.parse_auth(payload)
    return auth.frame(WELCOME, auth.server_proof(OTHER_KEY, dnonce, snonce, dev_id))  # not the device's key


def _right_proof(payload, snonce):
    dnonce, _, dev_id = auth_host.parse_auth(payload)
    return auth.frame(WELCOME, auth.server_proof(KEY, dnonce, snonce, dev_id))


@pytest.mark.parametrize("reply,detail", [
    (_wrong_proof, "bad_proof"),
    (lambda payload, snonce: auth.frame(0, b""), "expected_welcome"),  # a HEART instead of WELCOME
    (lambda payload, snonce: auth.frame(1, b"hello"), "expected_welcome"),
    (lambda payload, snonce: None, "timeout"),  # a server that never answers the AUTH
])
def test_a_server_that_does_not_prove_the_key_is_left_with_reason_auth(any_runtime, reply, detail):
    srv = ScriptedAuthServer(reply)
    try:
        with FwProc(any_runtime, dev_cfg(srv.port, auth={"id": "dev-1", "key": KEY_HEX, "timeout_ms": 400})) as fw:
            d = fw.wait_event("disconnected", timeout=15)
            assert d.fields["reason"] == "auth" and d.fields["detail"] == detail, d.line
            fw.wait_event("disconnected", timeout=10)  # and the usual retry
            assert fw.count("authenticated") == 0
            assert fw.count("beat") == 0
    finally:
        srv.close()
    # Before WELCOME the device sent its AUTH frame and nothing else: no beat, no echo.
    assert srv.received and all(r[:4] == b"\x03\0\0\0" and len(r) == 8 + 48 + 5 for r in srv.received)


def test_the_device_starts_beating_only_after_a_right_welcome(any_runtime):
    srv = ScriptedAuthServer(_right_proof)
    try:
        with FwProc(any_runtime, dev_cfg(srv.port, verbose=True)) as fw:
            fw.wait_event("authenticated", timeout=15)
            fw.wait_event("beat", timeout=5)
            lines = [e.name for e in fw.events]
            assert lines.index("authenticated") < lines.index("beat")
    finally:
        srv.close()
