"""tools/hbserver/gate.py: the server's admission gate, driven in-process by devices written in plain asyncio.
Challenge on accept, a device that never answers, a replayed AUTH, beats before WELCOME, squatters against
--max-clients, the failed-authentication rate limit, TLS and authentication together, and the command
line's checks."""
import asyncio
import json
import os
import ssl
import subprocess
import sys

import pytest

from firmware.hbkeep import auth, protocol_host
from firmware.hbkeep.auth import CHALLENGE
from support.fake_device import run
from support.seckit import KEY, OTHER_KEY, authenticate, closed_by_peer, open_device, pki, write_keys  # noqa: F401
from tools.hbserver import HeartbeatServer, ServerConfig
from tools.hbserver.gate import parse_keys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEART = protocol_host.encode(0)


class Recorder:
    def __init__(self):
        self.events = []
        self._cond = None

    def __call__(self, name, fields):
        self.events.append((name, dict(fields)))
        if self._cond is not None:
            self._cond.set()

    def named(self, name, **match):
        return [f for n, f in self.events if n == name and all(f.get(k) == v for k, v in match.items())]

    async def wait(self, name, timeout=5.0, count=1, **match):
        """Until `count` events `name` (with fields matching) were seen; bounded."""
        self._cond = asyncio.Event()
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.named(name, **match)) < count:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError("no %d x %s %s within %ss; seen %s" % (count, name, match, timeout,
                                                                           self.events[-10:]))
            self._cond.clear()
            try:
                await asyncio.wait_for(self._cond.wait(), left)
            except asyncio.TimeoutError:
                pass
        return self.named(name, **match)[count - 1]


async def started(rec, **cfg):
    cfg.setdefault("auth_keys", {"dev-1": KEY.hex(), "dev-2": OTHER_KEY.hex(), "dev-3": KEY.hex()})
    srv = HeartbeatServer(ServerConfig(host="127.0.0.1", port=0, tick_ms=50, summary_ms=0, **cfg), on_event=rec)
    await srv.start()
    return srv


def test_challenge_at_once_then_online_under_the_id_and_beats_count_from_then():
    async def main():
        rec = Recorder()
        srv = await started(rec)
        try:
            r, w = await open_device(srv.port)
            head = await asyncio.wait_for(r.readexactly(24), 5)
            assert auth.header(head) == (CHALLENGE, 16)
            assert srv.stats()["online"] == 0  # not a client yet
            dev = auth.DeviceAuth("dev-1", KEY)
            w.write(bytes(dev.answer(head)))
            dev.check_welcome(await asyncio.wait_for(r.readexactly(40), 5))
            online = await rec.wait("online")
            assert online["client"] == "dev-1"
            w.write(HEART)
            assert await asyncio.wait_for(r.readexactly(8), 5) == HEART  # answered once online
            assert srv.stats()["beats"] == 1
            w.close()
        finally:
            await srv.stop()
    run(main())


def test_a_device_that_never_answers_the_challenge_is_dropped_at_the_deadline():
    async def main():
        rec = Recorder()
        srv = await started(rec, auth_timeout_ms=200)
        try:
            t0 = asyncio.get_running_loop().time()
            r, w = await open_device(srv.port)
            await asyncio.wait_for(r.readexactly(24), 5)
            failed = await rec.wait("auth_failed")
            assert failed["reason"] == "timeout"
            assert asyncio.get_running_loop().time() - t0 >= 0.2
            assert await closed_by_peer(r)
            assert not rec.named("online")
        finally:
            await srv.stop()
    run(main())


def test_a_beat_before_welcome_counts_for_nothing_and_drops_the_connection():
    async def main():
        rec = Recorder()
        srv = await started(rec)
        try:
            r, w = await open_device(srv.port)
            await asyncio.wait_for(r.readexactly(24), 5)
            w.write(HEART)
            assert (await rec.wait("auth_failed"))["reason"] == "unexpected_frame"
            assert srv.stats()["beats"] == 0 and not rec.named("online")
        finally:
            await srv.stop()
    run(main())


def test_a_replayed_auth_is_dropped_as_a_replay():
    async def main():
        rec = Recorder()
        srv = await started(rec)
        try:
            r, w = await open_device(srv.port)
            frame = await authenticate(r, w)
            await rec.wait("online")
            # An eavesdropper replays the captured AUTH on a connection of its own.
            r2, w2 = await open_device(srv.port)
            await asyncio.wait_for(r2.readexactly(24), 5)  # a fresh CHALLENGE it cannot answer
            w2.write(frame)
            failed = await rec.wait("auth_failed")
            assert failed["reason"] == "replay" and failed["id"] == "dev-1"
            assert await closed_by_peer(r2)
            assert len(rec.named("online")) == 1
            w.close()
        finally:
            await srv.stop()
    run(main())


def test_wrong_key_unknown_id_and_a_malformed_auth_are_each_named():
    async def main():
        rec = Recorder()
        srv = await started(rec)
        try:
            for dev_id, key, payload, reason in [
                ("dev-1", OTHER_KEY, None, "bad_mac"),
                ("who\nknows", KEY, None, "unknown_id"),
                (None, None, bytes(20), "bad_frame"),
            ]:
                r, w = await open_device(srv.port)
                challenge = await asyncio.wait_for(r.readexactly(24), 5)
                if payload is None:
                    w.write(bytes(auth.DeviceAuth(dev_id, key).answer(challenge)))
                else:
                    w.write(auth.frame(auth.AUTH, payload))
                assert await closed_by_peer(r)
                assert rec.named("auth_failed")[-1]["reason"] == reason
            assert "who" not in str(rec.events)  # an unknown id is never echoed into the output
            assert not rec.named("online")
        finally:
            await srv.stop()
    run(main())


def test_squatters_cannot_hold_the_slots_of_real_devices():
    async def main():
        rec = Recorder()
        srv = await started(rec, max_clients=2, max_pending=4, auth_timeout_ms=300, auth_fail_limit=1000)
        try:
            squatters = [await open_device(srv.port) for _ in range(10)]  # connect, never authenticate
            await rec.wait("refused", count=6, reason="pending_full")
            assert srv.stats()["online"] == 0

            async def real(dev_id):
                # A device retrying as the firmware does: every 50 ms until it is in.
                while True:
                    r, w = await open_device(srv.port)
                    try:
                        await authenticate(r, w, dev_id, KEY)
                        return r, w
                    except (asyncio.IncompleteReadError, ConnectionError):
                        w.close()
                        await asyncio.sleep(0.05)

            devices = await asyncio.wait_for(asyncio.gather(real("dev-1"), real("dev-3")), 10)
            assert {f["client"] for f in rec.named("online")} == {"dev-1", "dev-3"}
            assert len(rec.named("auth_failed", reason="timeout")) == 4  # the squatters that got a slot
            # Both slots are real devices; one more real device is refused for max_clients, not for squatters.
            r, w = await open_device(srv.port)
            await authenticate(r, w, "dev-2", OTHER_KEY)
            refused = await rec.wait("refused", reason="max_clients")
            assert refused["client"] == "dev-2"
            for _, sw in squatters + list(devices):
                sw.close()
        finally:
            await srv.stop()
    run(main())


def test_failed_authentications_from_one_address_are_rate_limited():
    async def main():
        rec = Recorder()
        srv = await started(rec, auth_fail_limit=3, auth_fail_window_ms=60000)
        try:
            for _ in range(3):
                r, w = await open_device(srv.port)
                challenge = await asyncio.wait_for(r.readexactly(24), 5)
                w.write(bytes(auth.DeviceAuth("dev-1", OTHER_KEY).answer(challenge)))
                assert await closed_by_peer(r)
            r, w = await open_device(srv.port)
            assert await closed_by_peer(r)  # no CHALLENGE: refused at once
            assert (await rec.wait("refused"))["reason"] == "rate_limited"
            # Even the right key waits for the window: the address is refused before any exchange.
            assert len(rec.named("auth_failed")) == 3
        finally:
            await srv.stop()
    run(main())


def test_tls_and_auth_together_with_a_python_device(pki):
    async def main():
        rec = Recorder()
        srv = await started(rec, tls_cert=pki.cert, tls_key=pki.key)
        try:
            r, w = await open_device(srv.port, pki.client_context())
            await authenticate(r, w)
            assert (await rec.wait("online"))["client"] == "dev-1"
            assert w.get_extra_info("ssl_object").version().startswith("TLS")
            w.write(HEART)
            assert await asyncio.wait_for(r.readexactly(8), 5) == HEART
            w.close()
        finally:
            await srv.stop()
    run(main())


def test_tls_squatters_hold_pending_slots_only_until_the_handshake_deadline(pki):
    async def main():
        rec = Recorder()
        srv = await started(rec, tls_cert=pki.cert, tls_key=pki.key, auth_keys=None, max_pending=2,
                            handshake_timeout_ms=200)
        try:
            squatters = [await open_device(srv.port) for _ in range(2)]  # TCP only, no ClientHello
            failed = await rec.wait("tls_failed", count=2)
            assert failed["reason"] == "timeout"
            r, w = await open_device(srv.port, pki.client_context())
            assert (await rec.wait("online"))["client"].startswith("127.0.0.1:")  # no auth: named by address
            for _, sw in squatters + [(r, w)]:
                sw.close()
        finally:
            await srv.stop()
    run(main())


def test_no_key_or_nonce_in_any_event():
    async def main():
        rec = Recorder()
        srv = await started(rec)
        sent = []
        try:
            r, w = await open_device(srv.port)
            sent.append(await authenticate(r, w))
            await rec.wait("online")
            w.close()
            await rec.wait("offline")
        finally:
            await srv.stop()
        text = json.dumps(rec.events)
        frame = sent[0]
        for secret in (KEY, OTHER_KEY, frame[8:24], frame[24:56]):
            assert secret.hex() not in text
    run(main())


# -- the command line ------------------------------------------------------------------------------------

def cli(*args):
    return subprocess.run([sys.executable, "-m", "tools.hbserver", *args], capture_output=True, text=True,
                          timeout=30, cwd=ROOT)


def test_cli_checks_name_the_bad_option(tmp_path, pki):
    p = cli("--tls-cert", pki.cert)
    assert p.returncode == 2 and "--tls-cert and --tls-key go together" in p.stderr
    p = cli("--tls-cert", str(tmp_path / "none.pem"), "--tls-key", pki.key)
    assert p.returncode == 2 and "none.pem" in p.stderr
    keys = write_keys(tmp_path / "keys.json", {"dev-1": "00" * 10})
    p = cli("--auth-keys", keys)
    assert p.returncode == 2 and "dev-1" in p.stderr and "00" * 10 not in p.stderr
    p = cli("--auth-keys", str(tmp_path / "missing.json"))
    assert p.returncode == 2 and "missing.json" in p.stderr


def test_keys_given_as_ids_are_not_named():
    # A keys file written the wrong way round ({key: id}): the error must not repeat the key as a "device".
    for table in ({KEY.hex(): "dev-1"}, {"dev-1": "00" * 16, KEY.hex(): "dev-2"}):
        with pytest.raises(ValueError) as e:
            parse_keys(table)
        assert "swapped" in str(e.value) and KEY.hex() not in str(e.value), str(e.value)
    with pytest.raises(ValueError, match="device 'dev-1': key: expected hex digits only"):
        parse_keys({"dev-1": "zz" * 16})  # an id is named


def test_certs_command_makes_what_the_docs_say(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    run_ = lambda *a: subprocess.run([sys.executable, "-m", "tools.certs", *a], capture_output=True, text=True,
                                     timeout=60, cwd=ROOT, env=env)
    assert run_("ca", "--out", str(tmp_path)).returncode == 0
    p = run_("server", "--ca", str(tmp_path), "--name", "hb.lan", "--name", "10.0.0.2", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tmp_path / "server.pem"), str(tmp_path / "server.key"))  # a usable pair
    assert oct(os.stat(tmp_path / "server.key").st_mode & 0o777) == "0o600"
    p = run_("device-key", "--id", "dev-9", "--keys", str(tmp_path / "keys.json"), "--config",
             str(tmp_path / "config.json"))
    assert p.returncode == 0
    keys = json.loads((tmp_path / "keys.json").read_text())
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["auth"] == {"id": "dev-9", "key": keys["dev-9"]} and len(keys["dev-9"]) == 64
    assert keys["dev-9"] not in p.stdout + p.stderr  # written to the files only
    p = run_("server", "--ca", str(tmp_path / "nowhere"), "--name", "x", "--out", str(tmp_path))
    assert p.returncode == 2 and "no ca.key there" in p.stderr


def test_records_arriving_together_over_tls_are_all_delivered(pki):
    """asyncio's TLS layer reads a second record into a slice of the buffer the connection hands it; the
    server hands a view, so no record is lost or replaced by stale bytes (checked with varied frames)."""
    async def main():
        rec = Recorder()
        srv = await started(rec, tls_cert=pki.cert, tls_key=pki.key, auth_keys=None, verbose=True,
                            heart_reply=False)
        try:
            r, w = await open_device(srv.port, pki.client_context())
            await rec.wait("online")
            n = 300
            for i in range(n):  # one TLS record per write, sent back to back
                w.write(HEART)
                w.write(protocol_host.encode(1, bytes([65 + i % 26]) * (1 + i % 7)))
            await w.drain()
            await rec.wait("data", timeout=10, count=n)
            assert srv.stats()["beats"] == n and srv.stats()["data_frames"] == n
            assert not rec.named("protocol_error")
            lens = [f["len"] for f in rec.named("data")]
            assert lens == [1 + i % 7 for i in range(n)]
            w.close()
        finally:
            await srv.stop()
    run(main())


def test_bytes_sent_with_the_end_of_the_handshake_are_not_lost(pki):
    """A device's first beat can arrive with its last handshake message, before start_tls() has returned
    to the gate: it is kept and counted once the connection is online."""
    import socket as socket_

    def device(port):
        # Through memory BIOs, so that the client's last handshake message and its first frames leave in
        # one segment, as a fast device's may.
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = pki.client_context().wrap_bio(inc, out, server_hostname="localhost")
        with socket_.create_connection(("127.0.0.1", port), timeout=5) as raw:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    raw.sendall(out.read())
                    inc.write(raw.recv(65536))
            tls.write(HEART + protocol_host.encode(1, b"first"))
            raw.sendall(out.read())  # the client's Finished and the frames together
            while True:
                try:
                    return tls.read(8)  # the server's HEART reply: it counted the beat
                except ssl.SSLWantReadError:
                    inc.write(raw.recv(65536))

    async def main():
        rec = Recorder()
        srv = await started(rec, tls_cert=pki.cert, tls_key=pki.key, auth_keys=None, verbose=True)
        try:
            for _ in range(5):
                assert await asyncio.to_thread(device, srv.port) == HEART
            await rec.wait("data", count=5)
            assert srv.stats()["beats"] == 5 and not rec.named("protocol_error")
        finally:
            await srv.stop()
    run(main())


def test_failed_tls_handshakes_leave_nothing_behind(pki):
    """Every connection the server tracks ends up forgotten: a flood of failed handshakes must not grow it
    (and shutdown must not wait on them)."""
    async def main():
        rec = Recorder()
        srv = await started(rec, tls_cert=pki.cert, tls_key=pki.key, handshake_timeout_ms=200,
                            auth_fail_limit=1000)
        try:
            for _ in range(5):  # plaintext: refused by the TLS layer
                r, w = await open_device(srv.port)
                w.write(HEART)
                assert await closed_by_peer(r)
                w.close()
            for _ in range(5):  # silent: the handshake deadline
                r, w = await open_device(srv.port)
                assert await closed_by_peer(r)
                w.close()
            await rec.wait("tls_failed", count=10)
            await asyncio.sleep(0)  # one loop pass: the forgetting is scheduled with the event
            assert not srv._conns  # the server's set of live transports (what stop() waits for)
        finally:
            await srv.stop()
    run(main())
