# A connection's probation and a session's end. While a run of failures is going on (repeats.py), a new
# connection is on probation until it has lasted one beat period: lost sooner, it is one more failure of
# the run (its lines counted, or printed while the run is in its first lines); lasting, it ends the run
# (the last summary, then its held lines). A session that ends is told to the link and printed from here.
#
# A module of its own, loaded at a session's end and for a probation only: a server that is merely down
# costs repeats.py and not this. It is forgotten after a session's end is printed (client.py), and once a
# probation is over (settle); a session without one does not keep it either (dial.attempt).
from . import compat
from .compat import ticks_diff, ticks_ms, sleep_ms
from .client import R_PROTOCOL, R_STOP


def ended(client):
    """A session's end, the socket closed (Client._attempt): the link and the counters told, then its lines,
    or its place in the run of failures when it did not outlive its probation."""
    reason = client._reason
    detail = client._detail
    link = client.link
    now = ticks_ms()
    link.down(now)
    client.stats.disconnected(reason)
    up_ms = ticks_diff(now, link.since)
    run = client.failing
    if run is not None and run.task is not None:
        run.task.cancel()
        run.task = None
    # Link.down's verdict: failures is 0 after a session that lasted at least one beat period.
    if link.failures == 0 or reason == R_STOP:
        if run is not None:
            end(client, run, now)  # a held `connected` line comes before its `disconnected`
        report_end(client, reason, detail, up_ms)
        return
    lost(client, now, reason, detail, up_ms)


def lost(client, now, reason, detail, up_ms):
    """A connection lost on probation: a failure of the run, printed in full only if its `connected` line
    was."""
    from .repeats import failing, failed

    run = failing(client)
    shown = run.held is None
    run.held = None
    if failed(client, now, reason, True, shown):
        report_end(client, reason, detail, up_ms)


def report_end(client, reason, detail, up_ms):
    dec = client.dec
    if reason == R_PROTOCOL and dec is not None and dec.error_field is not None:
        # Printed here rather than where the decoder found it, so that a server sending garbage at every
        # connection is summarised with the rest; the decoder keeps it until the next session.
        client.ev.emit(
            "protocol_error", "field", dec.error_field, "value", dec.error_value, "reason", dec.error_reason,
        )
    client.ev.emit("disconnected", "reason", reason, "detail", detail, "up_ms", up_ms)


def end(client, run, now):
    """End the client's run: its last summary and a held `connected` line, if any, are printed now."""
    client.failing = None
    fields = run.ended(now)
    if fields is not None:
        client.ev.emit("connect_failing", *fields)
    held = run.held
    run.held = None
    if held is not None:
        for line in held:
            client.ev.emit(*line)


async def settle(client, run, connects):
    """Started with a session that begins while a run is going on: once the session has lasted one beat
    period, the run ends. A task of its own, not a step of the supervisor, so that neither this code nor
    the run is in the heap once the probation is over: client.py carries nothing of it. If the session
    ends first, ended() cancels this and counts the session in the run."""
    link = client.link
    while True:
        # Defensive: the session under probation is up as long as no other connection was made since.
        if client.failing is not run or client.sock is None or client.stats.connects != connects:
            return
        now = ticks_ms()
        left = link.beat_ms - ticks_diff(now, link.since)
        if left <= 0:
            run.task = None
            end(client, run, now)
            # The run is over: the session goes on without either module (dial.attempt).
            compat.forget_module("repeats")
            compat.forget_module("probation")
            return
        await sleep_ms(left)
