"""tools/eventlines.py: event lines read back (text and JSON), a child process waited on with deadlines,
tools.hbserver started on a free port."""
import signal
import sys

import pytest

from tools.eventlines import EventProc, HbServerProc, WaitFailed, parse_line


def test_text_line():
    ev = parse_line("1234 connected addr=1.2.3.4:5 applied=- n=7 detail=a=b\n", t=9.5)
    assert (ev.ms, ev.name, ev.t) == (1234, "connected", 9.5)
    assert ev.fields == {"addr": "1.2.3.4:5", "applied": "-", "n": "7", "detail": "a=b"}
    assert ev.line == "1234 connected addr=1.2.3.4:5 applied=- n=7 detail=a=b"


def test_json_line_keeps_numbers_numbers():
    ev = parse_line('{"t": 77, "ev": "stopped", "connections": 1, "p99_ms": 0.5, "host": "x"}')
    assert (ev.ms, ev.name) == (77, "stopped")
    assert ev.fields == {"connections": 1, "p99_ms": 0.5, "host": "x"}


@pytest.mark.parametrize("line", [
    "Traceback (most recent call last):", "", "   ", "12", "12 ", "{not json", '{"t": 1}', "[1, 2]",
])
def test_anything_else_is_raw(line):
    ev = parse_line(line)
    assert ev.name == "_raw" and ev.ms is None and ev.fields == {} and ev.line == line


def child(code):
    return EventProc([sys.executable, "-u", "-c", code], "child")


def test_waits_consume_in_order_and_rest_returns_what_is_left():
    with child("print('1 a n=1'); print('2 b'); print('oops'); print('3 a n=2'); print('4 c')") as p:
        assert p.wait_event("a", timeout=10, where=lambda f: f["n"] == "2").ms == 3
        assert [e.name for e in p.rest(timeout=10)] == ["c"]
        assert p.count("a") == 2 and p.raw_lines() == ["oops"]
    assert p.proc.returncode == 0


def test_past_finds_an_event_already_read_even_if_consumed():
    with child("print('1 a n=1'); print('2 b'); print('3 a n=2')") as p:
        p.wait_event("b", timeout=10)  # consumes `1 a n=1` on the way
        assert p.wait_event("a", timeout=10, past=True).ms == 1
        assert p.wait_event("a", timeout=10).ms == 3  # without `past`: the next one not consumed yet
        assert p.wait_event("b", timeout=10, where=lambda f: True, past=True).ms == 2


def test_a_wait_fails_when_the_output_ends_naming_the_event_and_the_last_lines():
    with child("print('1 a'); print('last words')") as p:
        with pytest.raises(WaitFailed) as e:
            p.wait_event("never", timeout=10)
    assert "'never'" in str(e.value) and "output ended" in str(e.value) and "last words" in str(e.value)


def test_a_wait_fails_at_its_deadline():
    with child("import time; print('1 a'); time.sleep(30)") as p:
        with pytest.raises(WaitFailed) as e:
            p.wait_event("never", timeout=0.3)
        assert "within 0.3s" in str(e.value) and "running" in str(e.value)
        assert p.expect_no_event("never", 0.2) == []
    assert p.proc.returncode == -signal.SIGINT  # stop() interrupted the sleep


def test_hbserver_starts_on_a_free_port_and_stops_with_sigterm():
    srv = HbServerProc("--tick-ms", 50, "--summary-ms", 0, as_json=True)
    try:
        assert srv.port > 0 and srv.listening.fields["port"] == srv.port
        assert srv.listening.fields["tick_ms"] == 50
    finally:
        assert srv.stop() == 0
    assert srv.events[-1].name == "stopped"


def test_hbserver_that_cannot_start_raises_with_its_output():
    with pytest.raises(WaitFailed) as e:
        HbServerProc("--tick-ms", "abc", listen_timeout=30)
    assert "'listening'" in str(e.value) and "abc" in str(e.value)
