"""firmware/hbkeep/sntp.py: the board's clock for certificate dates, set by one non-blocking SNTP query.
Against a scripted SNTP server on loopback, on CPython and on the MicroPython tier."""
import asyncio
import socket
import subprocess
import sys
import threading
import types

import pytest

from firmware.hbkeep import sntp
from support.fwproc import micropython_status, require_runtime
from tools import hostrun

T = 1_764_000_000  # a moment in 2025, seconds since 1970


def reply(unix_seconds, mode=4, stratum=2):
    b = bytearray(48)
    b[0] = 0x20 | mode
    b[1] = stratum
    b[40:44] = (unix_seconds + 2208988800).to_bytes(4, "big")
    return bytes(b)


class FakeSntp:
    """Answers each request with reply(T), after ignoring the first `drop` requests."""

    def __init__(self, drop=0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.drop = drop
        self.requests = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            except OSError:
                return
            self.requests.append(data)
            if len(self.requests) > self.drop:
                self.sock.sendto(reply(T), peer)

    def close(self):
        self._stop.set()
        self._t.join(timeout=5)
        self.sock.close()


def test_parse_takes_the_transmit_timestamp_and_refuses_non_answers():
    assert sntp.parse(reply(T)) == T
    with pytest.raises(ValueError, match="not an SNTP server reply"):
        sntp.parse(reply(T, mode=3))
    with pytest.raises(ValueError, match="kiss-of-death"):
        sntp.parse(reply(T, stratum=0))
    with pytest.raises(ValueError):
        sntp.parse(b"\x24" * 10)
    assert sntp.request()[0] == 0x23 and len(sntp.request()) == 48  # v4 client


class Lines:
    def __init__(self):
        self.lines = []

    def emit(self, name, *kv):
        self.lines.append((name, dict(zip(kv[::2], kv[1::2]))))


def test_keep_retries_until_one_answer_sets_the_clock():
    srv = FakeSntp(drop=1)
    try:
        ev = Lines()
        got = []
        secs = asyncio.run(asyncio.wait_for(sntp.keep("127.0.0.1", ev, lambda: True, got.append, port=srv.port,
                                                      retry_ms=10, timeout_ms=200), 10))
        assert secs == T and got == [T]
        assert [n for n, _ in ev.lines] == ["clock_failed", "clock_set"]
        assert ev.lines[0][1]["error"] == "timeout"
        assert all(r[0] == 0x23 for r in srv.requests)
    finally:
        srv.close()


def test_keep_waits_for_the_link_before_any_lookup():
    ev = Lines()
    calls = []

    async def main():
        task = asyncio.create_task(sntp.keep("no.such.host.invalid", ev, lambda: calls.append(1) and False,
                                             retry_ms=10))
        while len(calls) < 3:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert ev.lines == []  # link down: no lookup, no query, nothing to report


@pytest.mark.parametrize("tier", ["micropython", "micropython32"])
def test_query_on_micropython(tier):
    require_runtime(tier)
    argv = micropython_status(tier)[1]
    srv = FakeSntp()
    try:
        script = ("import sys\nsys.path.insert(0, %r)\nimport socket\nfrom hbkeep import sntp, compat\n"
                  "addr = socket.getaddrinfo('127.0.0.1', %d, 0, socket.SOCK_DGRAM)[0][-1]\n"
                  "print(compat.run(sntp.query(addr, 2000)))\n") % (hostrun.FIRMWARE_DIR, srv.port)
        out = subprocess.run(argv + ["-c", script], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert int(out.stdout.split()[-1]) == T
    finally:
        srv.close()


@pytest.mark.parametrize("epoch", [1970, 2000])
def test_set_rtc_writes_the_date_whatever_the_ports_epoch(monkeypatch, epoch):
    import time as real_time

    set_to = []
    offset = 946684800 if epoch == 2000 else 0
    fake_time = types.SimpleNamespace(gmtime=lambda s: real_time.gmtime(s + offset))
    fake_machine = types.SimpleNamespace(RTC=lambda: types.SimpleNamespace(datetime=set_to.append))
    monkeypatch.setitem(sys.modules, "machine", fake_machine)
    monkeypatch.setitem(sys.modules, "time", fake_time)
    sntp.set_rtc(T)
    monkeypatch.undo()
    # 2025-11-24 16:00:00 UTC, a Monday (weekday 0)
    assert set_to == [(2025, 11, 24, 0, 16, 0, 0, 0)]
