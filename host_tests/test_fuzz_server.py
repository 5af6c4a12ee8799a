"""Fuzzing the server's input handling: tools.hbserver's HeartbeatServer on loopback, fed any
byte stream cut into any pieces over a real socket (hypothesis). Whatever arrives, the server reports
exactly what the firmware's decoder says about the same bytes -- the frames (beats counted) or the same
protocol error -- closes that client, and keeps serving everyone else; it never raises."""
import asyncio
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from firmware.hbkeep import protocol
from firmware.hbkeep.protocol_host import encode
from support.frames import header
from tools import hbserver

MAX_PAYLOAD = 64


class ServerThread:
    """The server on its own event loop in a thread; events collected under a condition variable."""

    def __init__(self):
        self.events = []
        self.cond = threading.Condition()
        self.loop = asyncio.new_event_loop()
        self.errors = []
        self.loop.set_exception_handler(lambda loop, ctx: self.errors.append(ctx))
        self.srv = hbserver.HeartbeatServer(
            hbserver.ServerConfig(host="127.0.0.1", port=0, tick_ms=60000, summary_ms=0,
                                  max_payload=MAX_PAYLOAD, header_timeout_ms=60000),
            on_event=self._on_event)
        self.thread = threading.Thread(target=self.loop.run_forever, name="hbserver", daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self.srv.start(), self.loop).result(timeout=10)

    def _on_event(self, name, fields):
        with self.cond:
            self.events.append((name, dict(fields)))
            self.cond.notify_all()

    def wait(self, name, client, timeout=5.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for n, f in self.events:
                    if n == name and f.get("client") == client:
                        return f
                left = deadline - time.monotonic()
                assert left > 0, "no %s for %s within %.1fs; last events: %s" % (name, client, timeout, self.events[-5:])
                self.cond.wait(left)

    def find(self, name, client):
        with self.cond:
            return [f for n, f in self.events if n == name and f.get("client") == client]

    def close(self):
        asyncio.run_coroutine_threadsafe(self.srv.stop(), self.loop).result(timeout=15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def server():
    s = ServerThread()
    yield s
    s.close()
    assert not s.errors, "the server's loop reported errors: %s" % s.errors


def expected(data):
    dec = protocol.Decoder(MAX_PAYLOAD)
    hearts = frames = 0
    pos = 0
    while pos < len(data):
        pos = dec.feed(data, pos, len(data))
        if dec.event == protocol.ERROR:
            return hearts, frames, (dec.error_field, dec.error_reason)
        if dec.event in (protocol.FRAME_IN_PLACE, protocol.FRAME_ASSEMBLED):
            frames += 1
            hearts += dec.type == protocol.HEART
    return hearts, frames, None


frame_st = st.one_of(
    st.just(encode(protocol.HEART)),
    st.binary(max_size=MAX_PAYLOAD).map(lambda p: encode(protocol.DATA, p)),
    st.tuples(st.integers(-2**31, 2**31 - 1), st.integers(-2**31, 2**31 - 1)).map(lambda t: header(*t)),
    st.binary(min_size=1, max_size=40),
)


def send_pieces(sock, data, cuts):
    points = sorted(set(c % (len(data) + 1) for c in cuts)) if data else []
    last = 0
    for p in points + [len(data)]:
        if p > last:
            sock.sendall(data[last:p])
            time.sleep(0.0005)  # pacing only: lets the pieces arrive as separate reads
        last = p


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(frame_st, max_size=12), st.lists(st.integers(0, 10**6), max_size=8))
def test_server_reports_what_the_decoder_says_for_any_stream_and_split(server, parts, cuts):
    data = b"".join(parts)
    hearts, frames, err = expected(data)
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        name = "127.0.0.1:%d" % s.getsockname()[1]
        server.wait("online", name)
        try:
            send_pieces(s, data, cuts)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            assert err is not None  # the server may already have dropped us for the bad header
        off = server.wait("offline", name)
        if err is None:
            assert off["reason"] == "closed", off
            assert (off["beats"], off["frames_in"]) == (hearts, frames), (off, hearts, frames)
        else:
            pe = server.find("protocol_error", name)
            assert len(pe) == 1 and (pe[0]["field"], pe[0]["reason"]) == err, (pe, err)
            assert off["reason"] == "protocol", off
            assert off["frames_in"] == frames
    finally:
        s.close()
    assert not server.errors, server.errors


def test_server_still_serves_after_the_fuzzing(server):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        name = "127.0.0.1:%d" % s.getsockname()[1]
        server.wait("online", name)
        s.sendall(encode(protocol.HEART))
        s.settimeout(5)
        assert s.recv(8) == encode(protocol.HEART)  # heart_reply
    finally:
        s.close()
