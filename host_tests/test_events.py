"""Event lines: the documented format, parseable back."""
from firmware.hbkeep.events import Events, Stats
from tools.eventlines import parse_line


def test_line_format_and_values_without_spaces():
    out = []
    ev = Events(write=out.append, clock=lambda: 1234)
    ev.emit("connected", "addr", "1.2.3.4:5", "applied", "", "detail", "two words", "n", 7)
    assert out == ["1234 connected addr=1.2.3.4:5 applied=- detail=two_words n=7"]
    ev = parse_line(out[0])
    assert (ev.ms, ev.name) == (1234, "connected")
    assert ev.fields["n"] == "7"


def test_stats_fields_add_up():
    s = Stats()
    s.disconnected("eof")
    s.disconnected("eof")
    s.disconnected("silence")
    s.connect_failed("ECONNREFUSED")
    f = dict(zip(s.fields()[::2], s.fields()[1::2]))
    assert f["disconnects"] == 3 and f["by_reason"] == "eof:2,silence:1"
    assert f["connect_failures"] == "ECONNREFUSED:1"
