"""The client's scenarios on real loopback sockets, on CPython and on the MicroPython unix port.

The firmware runs as a child process (tools.hostrun) on CPython, MicroPython and 32-bit MicroPython; a
scripted server (support/scripted_server.py)
plays the other end. Tests synchronise on the firmware's event lines and on bytes arriving, never on
bare sleeps; every wait has a deadline. Timing bounds are asserted only where the project promises
one (reconnect within retry_ms of the server being back, silence detection within one beat of the
limit) and carry an explicit tolerance for a loaded 2-core CI machine.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from support.frames import DATA, HEART, frame, header
from support.fwproc import FwProc
from support.scripted_server import ScriptedServer
from tools import hostrun
from tools.eventlines import parse_line


@pytest.fixture
def runtime(any_runtime):
    """Every scenario on CPython, the 64-bit and the 32-bit MicroPython unix port."""
    return any_runtime


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

START = 20.0  # first `connected`: interpreter start-up on a busy machine
WAIT = 10.0  # any other event the test is sure must come
SCHED_TOLERANCE = 0.100  # seconds, for the explicit timing bounds


def cfg_for(srv, **kw):
    cfg = {"port": srv.port, "beat_ms": 100, "retry_ms": 100, "stats_ms": 0, "connect_timeout_ms": 2000}
    cfg.update(kw)
    return cfg


def upper(b):
    return bytes(b).upper()  # bytes.upper() maps a-z only: C toupper() in the C locale


def read_data_frames(conn, n, timeout=WAIT):
    """The next n DATA frames from the client, skipping its HEART beats; returns (payloads, hearts)."""
    deadline = time.monotonic() + timeout
    out = []
    hearts = 0
    while len(out) < n:
        ftype, payload = conn.recv_frame(max(0.0, deadline - time.monotonic()))
        if ftype == HEART:
            assert payload == b"", "HEART with a payload from the client: %r" % payload
            hearts += 1
        else:
            assert ftype == DATA, "unexpected frame type %d from the client" % ftype
            out.append(payload)
    return out, hearts


def final_stats(fw):
    """Stop the firmware and return the fields of the `stats` line it prints on SIGINT."""
    fw.stop()
    stats = [e for e in fw.events if e.name == "stats"]
    assert stats, "no stats line after SIGINT:\n" + fw.output()
    return stats[-1].fields


PAYLOADS = [
    b"hello",
    b"MiXeD cAsE 0123456789 azAZ",
    bytes(range(0x80, 0x100)) + b"after high bytes: xyz",
    b"",  # a DATA frame with no payload is echoed as one too
    b"\x00\x01 ` { @ [ ~ \x7f",  # the neighbours of a-z and A-Z must not move
    bytes(range(256)) * 4,  # 1024 = the default max_payload
]


# -- a. framed echo ------------------------------------------------------------------------------
def test_framed_echo(runtime):
    with ScriptedServer() as srv, FwProc(runtime, cfg_for(srv, beat_ms=2000)) as fw:
        fw.wait_event("connected", START)
        conn = srv.accept(WAIT)
        # Some frames one per write, then a burst in one write with HEARTs between DATA frames.
        for p in PAYLOADS[:2]:
            conn.send_frame(DATA, p)
        burst = frame(DATA, PAYLOADS[2]) + frame(HEART) + frame(DATA, PAYLOADS[3]) + frame(HEART) + frame(HEART)
        burst += b"".join(frame(DATA, p) for p in PAYLOADS[4:])
        conn.send(burst)
        got, hearts = read_data_frames(conn, len(PAYLOADS))
        elapsed_ms = (time.monotonic() - conn.accepted_at) * 1000
        for sent, echoed in zip(PAYLOADS, got):
            assert len(echoed) == len(sent)
            assert echoed == upper(sent), (sent[:40], echoed[:40])
        # HEART is not answered: any HEART from the client is its own periodic beat (beat_ms=2000).
        assert hearts <= elapsed_ms // 2000, "HEART answered? %d hearts in %d ms" % (hearts, elapsed_ms)
        stats = final_stats(fw)
        assert stats["hearts_rx"] == "3"
        assert stats["frames_echoed"] == str(len(PAYLOADS))
        assert stats["protocol_errors"] == "0"
        assert fw.count("disconnected", lambda f: f["reason"] != "stop") == 0, fw.output()


# -- b. frames split byte by byte ----------------------------------------------------------------
def test_framed_echo_bytewise(runtime):
    payloads = [b"split Me 1 byte\xe9 at a time", b"", bytes(range(0x60, 0x90)) * 3]
    with ScriptedServer() as srv, FwProc(runtime, cfg_for(srv, beat_ms=2000)) as fw:
        fw.wait_event("connected", START)
        conn = srv.accept(WAIT)
        conn.nodelay()
        stream = frame(DATA, payloads[0]) + frame(HEART) + frame(DATA, payloads[1]) + frame(DATA, payloads[2])
        conn.send_bytewise(stream, gap=0.0005)
        got, _ = read_data_frames(conn, len(payloads))
        assert got == [upper(p) for p in payloads]
        stats = final_stats(fw)
        assert stats["hearts_rx"] == "1" and stats["frames_echoed"] == "3", stats


# -- c. raw mode ---------------------------------------------------------------------------------
def test_raw_echo_no_beats(runtime):
    # peer_timeout off: in raw mode nothing makes a server talk, so an idle raw connection would
    # otherwise be dropped peer_miss x beat_ms after the server last spoke (see the report).
    chunks = [b"Hello, World! abc xyz", bytes(range(256)), b"\x00\x00\x00\x00\x00\x00\x00\x00", b"q"]
    with ScriptedServer() as srv, FwProc(runtime, cfg_for(srv, mode="raw", beat_ms=50, peer_timeout="off")) as fw:
        fw.wait_event("connected", START)
        conn = srv.accept(WAIT)
        sent = b""
        for c in chunks:
            conn.send(c)
            sent += c
        echoed = conn.recv_exact(len(sent), WAIT)
        assert echoed == upper(sent)
        # No framing and no beats: over 10 beat periods nothing else arrives.
        extra = conn.recv_some(10 * 0.050)
        assert extra == b"", "raw mode sent %d unrequested bytes: %r" % (len(extra), extra[:32])
        stats = final_stats(fw)
        assert stats["beats_sent"] == "0" and stats["bytes_echoed"] == str(len(sent)), stats


# -- d. beats against a server that never answers -------------------------------------------------
def test_beats_to_silent_server(runtime):
    beat_ms, miss = 100, 3
    watch = 5 * miss * beat_ms / 1000  # 1.5 s
    with ScriptedServer() as srv, FwProc(runtime, cfg_for(srv, beat_ms=beat_ms, peer_miss=miss)) as fw:
        fw.wait_event("connected", START)
        conn = srv.accept(WAIT)
        conn.start_discard()
        fw.expect_no_event("disconnected", watch)
        conn.stop_discard()
        watched = time.monotonic() - conn.accepted_at
        data = bytes(conn.drained)
        assert fw.proc.poll() is None, "firmware exited:\n" + fw.output()
        assert fw.count("connected") == 1, fw.output()
    assert data == bytes(len(data)), "beats must be HEART headers, 8 zero bytes each"
    beats = len(data) // 8
    expected = watched * 1000 / beat_ms
    # Steady: most of the expected beats (a loaded machine may delay some), never more than due,
    # and no gap anywhere near the silence limit.
    assert 0.6 * expected <= beats <= expected + 1, "%d beats in %.2fs at beat_ms=%d" % (beats, watched, beat_ms)
    times = [conn.accepted_at] + [t for t, _ in conn.drain_times]
    gap = max(b - a for a, b in zip(times, times[1:]))
    assert gap < 1.0, "a %.0f ms gap between beats" % (gap * 1000)


# -- e. server restart ---------------------------------------------------------------------------
RESTART_MS = {}  # (runtime, how) -> measured ms, for the report (printed with -s)


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_server_restart_reconnects_within_retry(runtime, how):
    retry_ms = 100
    with ScriptedServer() as srv, FwProc(runtime, cfg_for(srv, beat_ms=100, retry_ms=retry_ms)) as fw:
        fw.wait_event("connected", START)
        conn = srv.accept(WAIT)
        # The first beat: the session has lasted one beat period, so its end does not count as a failure
        # (one lost sooner would be the first of a run: docs/EVENTS.md), and three refusals follow it.
        assert conn.recv_exact(8, WAIT) == bytes(8)
        # Stop listening first, so the client cannot slip back in before the close.
        srv.stop_listening()
        if how == "fin":
            conn.close(wait_eof=True)
            ev = fw.wait_event("disconnected", WAIT)
            assert ev.fields["reason"] == "eof", ev.line
        else:
            conn.reset()
            ev = fw.wait_event("disconnected", WAIT)
            assert ev.fields["reason"] == "reset" and ev.fields["detail"] == "ECONNRESET", ev.line
        for _ in range(3):  # it keeps trying while the server is down
            ev = fw.wait_event("connect_failed", WAIT)
            assert ev.fields["reason"] == "ECONNREFUSED", ev.line
        t0 = srv.listen()
        conn2 = srv.accept(WAIT)
        t1 = conn2.accepted_at
        fw.wait_event("connected", WAIT)
        took = t1 - t0
        RESTART_MS[(runtime, how)] = took * 1000
        print("restart-reconnect %s %s: %.1f ms" % (runtime, how, took * 1000))
        assert took <= retry_ms / 1000 + SCHED_TOLERANCE, (
            "reconnected %.1f ms after the server was back (retry_ms=%d, tolerance %d ms)"
            % (took * 1000, retry_ms, SCHED_TOLERANCE * 1000))


# -- f. protocol errors --------------------------------------------------------------------------
BAD_HEADERS = [
    # (name, bytes, field, value, reason)
    ("negative_length", header(DATA, -1), "length", "-1", "negative"),
    ("length_over_max", header(DATA, 65) + b"x" * 65, "length", "65", "too_large"),
    ("length_int32_max", header(DATA, 2**31 - 1), "length", "2147483647", "too_large"),
    ("unknown_type", header(7, 0), "type", "7", "unknown"),
    ("negative_type", header(-2, 0), "type", "-2", "unknown"),
    ("heart_with_payload", header(HEART, 4) + b"abcd", "length", "4", "heart_with_payload"),
]


def test_protocol_errors_then_reconnect(runtime):
    with ScriptedServer() as srv, FwProc(runtime, cfg_for(srv, beat_ms=1000, max_payload=64)) as fw:
        for i, (name, bad, field, value, reason) in enumerate(BAD_HEADERS):
            fw.wait_event("connected", START if i == 0 else WAIT)
            conn = srv.accept(WAIT)
            # A valid frame in the same write, just before the bad header, is still echoed.
            good = b"ok %s" % name.encode()
            conn.send(frame(DATA, good) + bad)
            ev = fw.wait_event("protocol_error", WAIT)
            assert (ev.fields["field"], ev.fields["value"], ev.fields["reason"]) == (field, value, reason), ev.line
            ev = fw.wait_event("disconnected", WAIT)
            assert ev.fields["reason"] == "protocol", ev.line
            assert ev.fields["detail"] == "%s=%s" % (field, value), ev.line
            rest = conn.wait_eof(WAIT)  # the client closed: its echo, maybe a beat, then EOF
            assert frame(DATA, upper(good)) in rest, (name, rest)
            conn.close()
        # ...and after the last one it reconnects again.
        fw.wait_event("connected", WAIT)
        srv.accept(WAIT)
        assert fw.count("protocol_error") == len(BAD_HEADERS)


# -- g. peer silence -----------------------------------------------------------------------------
def test_silence_auto(runtime):
    beat_ms, miss = 100, 3
    limit = beat_ms * miss
    with ScriptedServer() as srv, FwProc(runtime, cfg_for(srv, beat_ms=beat_ms, peer_miss=miss, verbose=True)) as fw:
        fw.wait_event("connected", START)
        conn = srv.accept(WAIT)
        # auto judges silence only once the server has said something: over 2 limits, nothing.
        conn.start_discard()
        fw.expect_no_event("disconnected", 2 * limit / 1000)
        conn.stop_discard()
        conn.send_frame(DATA, b"once")
        got, _ = read_data_frames(conn, 1)
        assert got == [b"ONCE"]
        conn.start_discard()  # keeps the socket open and reads, but never sends again
        echo = fw.wait_event("echo", WAIT)
        silent = fw.wait_event("peer_silent", WAIT)
        down = fw.wait_event("disconnected", WAIT)
        assert down.fields["reason"] == "silence", down.line
        assert silent.fields["limit_ms"] == str(limit)
        assert int(silent.fields["silent_ms"]) >= limit, silent.line
        took = down.ms - echo.ms  # firmware clock: from the last byte heard to the disconnect
        assert limit - 20 <= took <= limit + beat_ms + SCHED_TOLERANCE * 1000, (
            "silence disconnect %d ms after the last frame (limit %d, beat %d)" % (took, limit, beat_ms))
        conn.wait_eof(WAIT)


def test_silence_strict(runtime):
    beat_ms, miss = 100, 3
    limit = beat_ms * miss
    with ScriptedServer() as srv, FwProc(runtime, cfg_for(srv, beat_ms=beat_ms, peer_miss=miss, peer_timeout="strict")) as fw:
        fw.wait_event("connected", START)
        conn = srv.accept(WAIT)
        conn.start_discard()  # the server never sends a byte
        silent = fw.wait_event("peer_silent", WAIT)
        down = fw.wait_event("disconnected", WAIT)
        assert down.fields["reason"] == "silence", down.line
        assert int(silent.fields["silent_ms"]) >= limit, silent.line
        up = int(down.fields["up_ms"])
        assert limit <= up <= limit + beat_ms + SCHED_TOLERANCE * 1000, down.line
        assert len(conn.drained) >= 8, "no beat reached the server before the silence disconnect"
        # and it comes back
        fw.wait_event("connected", WAIT)
        srv.accept(WAIT)


def test_silence_off(runtime):
    beat_ms, miss = 100, 3
    limit = beat_ms * miss
    with ScriptedServer() as srv, FwProc(runtime, cfg_for(srv, beat_ms=beat_ms, peer_miss=miss, peer_timeout="off")) as fw:
        fw.wait_event("connected", START)
        conn = srv.accept(WAIT)
        conn.send_frame(DATA, b"hi")
        assert read_data_frames(conn, 1)[0] == [b"HI"]
        conn.start_discard()
        fw.expect_no_event("disconnected", 5 * limit / 1000)
        conn.stop_discard()
        assert len(conn.drained) // 8 >= 5, "beats stopped while the server was silent"
        assert fw.count("peer_silent") == 0


# -- h. keepalive options ------------------------------------------------------------------------
def parse_ss_time(s):
    """Seconds from ss's timer format (iproute2 print_ms_timer): "2sec", "996ms", "1.996ms" (that is
    1 s + 996 ms), "1min", "1min30sec"."""
    m = re.fullmatch(r"(?:(\d+)min)?(?:(\d+)(?:sec|\.))?(?:(\d+)ms)?", s)
    if not m or not any(m.groups()):
        return None
    mins, secs, ms = (int(g) if g else 0 for g in m.groups())
    return mins * 60 + secs + ms / 1000


@pytest.mark.parametrize("text, secs", [("2sec", 2), ("996ms", 0.996), ("1.996ms", 1.996), ("1min", 60), ("1min30sec", 90), ("1.005ms", 1.005)])
def test_parse_ss_time(text, secs):
    assert parse_ss_time(text) == pytest.approx(secs)


def kernel_timer(local_port):
    """(source, timer name or None, seconds) of the established socket bound to 127.0.0.1:local_port,
    read with `ss -tno` when iproute2 is installed, else from /proc/net/tcp; None if not found."""
    if shutil.which("ss"):
        out = subprocess.run(["ss", "-tno", "state", "established"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            addrs = [c for c in line.split() if re.match(r"^\S+:\d+$", c)]
            if addrs and addrs[0] == "127.0.0.1:%d" % local_port:  # the first address is the local one
                m = re.search(r"timer:\((\w+),([^,]+),(\d+)\)", line)
                if not m:
                    return ("ss", None, None, line)
                return ("ss", m.group(1), parse_ss_time(m.group(2)), line)
        return None
    hz = os.sysconf("SC_CLK_TCK")
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            cols = line.split()
            local, st, timer = cols[1], cols[3], cols[5]
            if local == "0100007F:%04X" % local_port and st == "01":  # 01 = ESTABLISHED
                tr, when = timer.split(":")
                name = {0: None, 1: "on", 2: "keepalive", 4: "persist"}.get(int(tr, 16), "tr%d" % int(tr, 16))
                return ("/proc/net/tcp", name, int(when, 16) / hz if name else None, line)
    return None


def test_keepalive_applied_unix(runtime):
    ka = {"idle": 2, "intvl": 1, "cnt": 3}
    with ScriptedServer() as srv, FwProc(runtime, cfg_for(srv, beat_ms=60000, keepalive=ka)) as fw:
        ev = fw.wait_event("connected", START)
        assert ev.fields["applied"] == "keepalive,idle,intvl,cnt,nodelay", ev.line
        assert ev.fields["lacking"] == "-" and ev.fields["failed"] == "-", ev.line
        conn = srv.accept(WAIT)
        client_port = conn.peer[1]
        # The kernel has the settings: the client's socket runs a keepalive timer of at most idle.
        found = kernel_timer(client_port)
        assert found is not None, "client socket 127.0.0.1:%d not found" % client_port
        source, name, secs, line = found
        assert name == "keepalive", "%s: no keepalive timer on the client socket: %s" % (source, line)
        # At most idle (the kernel default would be 7200 s); read at once, so normally close to it.
        assert secs is not None and secs <= ka["idle"], "%s: keepalive timer %ss, idle is %ds: %s" % (
            source, secs, ka["idle"], line)


def test_keepalive_esp32_table(runtime):
    # The esp32 capability table on this host's sockets: only TCP_NODELAY is set. (With no wifi.ssid in
    # the config main.py starts no Wi-Fi, so the board table runs as is on the host.)
    with ScriptedServer() as srv, FwProc(runtime, cfg_for(srv, beat_ms=60000), board="esp32") as fw:
        ev = fw.wait_event("connected", START)
        assert ev.fields["applied"] == "nodelay", ev.line
        assert ev.fields["lacking"] == "keepalive,idle,intvl,cnt", ev.line
        assert ev.fields["failed"] == "-", ev.line
        conn = srv.accept(WAIT)
        found = kernel_timer(conn.peer[1])
        assert found is not None
        assert found[1] != "keepalive", "keepalive set although the table lacks it: %s" % found[3]


# -- i. bad configuration ------------------------------------------------------------------------
def run_hostrun(runtime, *args):
    return subprocess.run(
        [sys.executable, "-m", "tools.hostrun", "--runtime", runtime] + list(args),
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize(
    "sets, names",
    [
        (["beat_ms=-5"], "beat_ms"),
        (["bogus_key=1"], "bogus_key"),
        (['beat_ms="fast"'], "beat_ms"),
        (["beat_ms=true"], "beat_ms"),
        (["keepalive.idle=0"], "keepalive.idle"),
        (["peer_timeout=sometimes"], "peer_timeout"),
    ],
)
def test_hostrun_rejects_bad_config(runtime, sets, names):
    args = []
    for s in sets:
        args += ["--set", s]
    r = run_hostrun(runtime, *args)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert names in r.stderr, r.stderr
    assert r.stdout == "", "the firmware must not have started: %r" % r.stdout


def run_main(runtime, cfg_text, tmp_path, timeout=20):
    path = tmp_path / "config.json"
    path.write_text(cfg_text)
    argv = hostrun.runtime_argv(runtime) + [
        os.path.join(hostrun.FIRMWARE_DIR, "main.py"), str(path), hostrun.board_path("unix"),
    ]
    try:
        return subprocess.run(argv, cwd=hostrun.FIRMWARE_DIR, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("the firmware started with config %r instead of stopping: %s" % (cfg_text, e.stdout))


def test_firmware_rejects_truncated_config(runtime, tmp_path, request):
    # A config file cut short after a complete value (a half-finished upload to the board).
    r = run_main(runtime, '{"port": 1, "beat_ms": 100', tmp_path, timeout=3)
    assert r.returncode == 2 and "config_error" in r.stdout, r.stdout


@pytest.mark.parametrize(
    "cfg_text, names",
    [
        ('{"beat_ms": -5}', "beat_ms"),
        ('{"bogus_key": 1}', "bogus_key"),
        ('{"beat_ms": "fast"}', "beat_ms"),
        ('{"keepalive": {"idel": 2}}', "keepalive.idel"),
        ('{"port": 70000}', "port"),
        ('{"beat_ms": 100, "keepalive": {"idle": 2', "not valid JSON"),
        ("[1, 2]", "config"),
    ],
)
def test_firmware_config_error_line(runtime, tmp_path, cfg_text, names):
    r = run_main(runtime, cfg_text, tmp_path)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout + r.stderr
    ev = parse_line(lines[0])
    assert ev.name == "config_error" and ev.ms is not None, lines[0]
    assert names in lines[0], lines[0]


SECRET = "hunter2"

BAD_WITH_SECRET = [
    {"wifi": {"ssid": "lab", "password": SECRET}, "beat_ms": -5},
    {"wifi": {"ssid": "lab", "password": SECRET, "pin": 1234}},
    {"wifi": {"ssid": 5, "password": SECRET}},
    {"wifi": {"ssid": "lab", "password": [SECRET]}},
    {"wifi": {"ssid": "lab", "password": {"value": SECRET}}},
    {"wifi": SECRET},
    {"password": SECRET},  # misplaced at the top level
]


def test_secret_never_printed(runtime, tmp_path):
    # 1. A normal run (the unix board has no Wi-Fi, but the key is accepted and must stay unsaid).
    wifi = {"ssid": "lab", "password": SECRET}
    with ScriptedServer() as srv, FwProc(runtime, cfg_for(srv, beat_ms=100, verbose=True, wifi=wifi)) as fw:
        fw.wait_event("connected", START)
        conn = srv.accept(WAIT)
        conn.send_frame(DATA, SECRET.encode())
        assert read_data_frames(conn, 1)[0] == [SECRET.upper().encode()]
        final_stats(fw)
        assert SECRET not in fw.output()
    # 2. The firmware given bad configs that hold the secret.
    for cfg in BAD_WITH_SECRET:
        r = run_main(runtime, json.dumps(cfg), tmp_path)
        assert r.returncode == 2, (cfg, r.stdout, r.stderr)
        assert "config_error" in r.stdout
        assert SECRET not in r.stdout + r.stderr, (cfg, r.stdout, r.stderr)
    r = run_main(runtime, '{"wifi": {"password": "%s"' % SECRET, tmp_path)  # broken JSON
    assert r.returncode == 2 and SECRET not in r.stdout + r.stderr, (r.stdout, r.stderr)
    # 3. hostrun: from --set and from --config.
    r = run_hostrun(runtime, "--set", "wifi.password=" + SECRET, "--set", "beat_ms=-5")
    assert r.returncode == 2 and "beat_ms" in r.stderr and SECRET not in r.stdout + r.stderr, r.stderr
    for cfg in BAD_WITH_SECRET[:3]:  # the same validator as above; a few suffice for the tool's path
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(cfg))
        r = run_hostrun(runtime, "--config", str(path))
        assert r.returncode == 2 and SECRET not in r.stdout + r.stderr, (cfg, r.stderr)
    path.write_text('{"wifi": {"password": "%s"' % SECRET)
    r = run_hostrun(runtime, "--config", str(path))
    assert r.returncode == 2 and SECRET not in r.stdout + r.stderr, r.stderr


def test_secret_not_echoed_by_malformed_set(runtime):
    r = run_hostrun(runtime, "--set", "wifi.password:" + SECRET)
    assert r.returncode == 2
    assert SECRET not in r.stdout + r.stderr, r.stderr
