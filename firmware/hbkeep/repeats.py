# Which failures get a line of their own: the counting, sans-IO (FailureRun), and where the client counts a
# failed connect or lookup (failed). A session's end and a connection's probation are probation.py's.
#
# A server that is down is retried every retry_ms (the seed's 100 ms): one line per attempt would be ten
# lines a second for as long as it stays down, drowning a board's serial console. So a run of failures
# prints its first few in full, then one summary per SUMMARY_MS (how many, of what kind, the last reason),
# and a last summary when the run ends, if failures went unreported since the previous one. Verbose mode
# prints every failure. Times are ticks passed in by the caller.
#
# A failure is a connect attempt that failed (refused, timed out, TLS refused, the name not found) or a
# connection lost while on probation: before it had lasted one beat period (Link.down's rule, which
# backoff counts too) -- a server that accepts and closes at once, resets, sends garbage or fails the
# authentication. Such a server would otherwise cost a `connected`/`disconnected` pair every retry_ms. So
# the run goes on through those sessions, and it ends only with a connection that outlives its probation.
# Once a run has lost a session and is past its first lines, the next connection's lines are held back
# until the connection outlives its probation (a connection lost before then was never announced, and its
# end is counted, not printed): the lines stay paired.
#
# Loaded at the first failure; forgotten once a connection outlives its probation (probation.settle), or at
# a connect that follows no failure (dial.attempt): a device that stays connected does not carry it.
from .compat import ticks_add, ticks_diff

FIRST = 3  # failures of a run reported one by one
SUMMARY_MS = 10000  # then one summary line per this many ms
REASONS_MAX = 8  # distinct reasons a summary names; any further ones are counted as "other"
LOOKUP_MAX_MS = 5000  # failed name lookups are retried after retry_ms, doubling up to this (or retry_ms)


class FailureRun:
    def __init__(self, verbose=False, first=FIRST, summary_ms=SUMMARY_MS):
        self.verbose = verbose
        self.first = first
        self.summary_ms = summary_ms
        self.count = 0  # failures in the current run (0: not failing)
        self.reported = 0  # of those, how many a line has covered (one by one or summed up)
        self.sessions = 0  # of those, connections lost on probation
        self.reasons = {}  # reason -> failures of the run
        self.since = 0
        self.next_summary = 0
        self.last_reason = None
        self.held = None  # lines held back with a `connected` line (see above): a list, or None
        self.task = None  # the probation task of the session now up, if any
        # Name lookups: the wait after the last failed one (0: none failed since the last success), and
        # the tick before which the next one does not go out.
        self.lookup_ms = 0
        self.lookup_next = 0

    def failed(self, now, reason, session=False, shown=False):
        """Count one failure (session: a connection lost on probation; shown: its `connected` line was
        printed, so its end is printed too). True: print it in full. False: stay quiet (see summary_due)."""
        if self.count == 0:
            self.since = now
            self.next_summary = ticks_add(now, self.summary_ms)
        self.count += 1
        if session:
            self.sessions += 1
        self.last_reason = reason
        reasons = self.reasons
        if reason not in reasons and len(reasons) >= REASONS_MAX:
            reason = "other"
        reasons[reason] = reasons.get(reason, 0) + 1
        if shown or self.verbose or self.count <= self.first:
            if self.reported == self.count - 1:  # nothing quiet in between: this line covers it alone
                self.reported = self.count
            return True
        return False

    def lookup_failed(self, now, retry_ms):
        """A failed name lookup: the ms to wait before the next one. A lookup blocks on a board, and a
        DNS server asked ten times a second by every device of a fleet is the wrong answer to its
        failure: retry_ms, then doubling up to LOOKUP_MAX_MS (retry_ms if that is longer). Independent of
        backoff_max_ms, which is about the server's port, not the name."""
        cap = LOOKUP_MAX_MS if LOOKUP_MAX_MS > retry_ms else retry_ms
        wait = self.lookup_ms
        wait = retry_ms if wait == 0 else wait + wait  # both at most 3600000: no big int on a board
        if wait > cap:
            wait = cap
        self.lookup_ms = wait
        self.lookup_next = ticks_add(now, wait)
        return wait

    def lookup_left(self, now):
        """ms still to wait before the next name lookup may go out (0: now)."""
        left = ticks_diff(self.lookup_next, now) if self.lookup_ms else 0
        return left if left > 0 else 0

    def holds(self):
        """At a connect: True when its `connected` line waits for the end of the probation."""
        return not self.verbose and self.sessions > 0 and self.count >= self.first

    def summary_due(self, now):
        return self.count > self.reported and ticks_diff(now, self.next_summary) >= 0

    def summary(self, now):
        """Fields of a `connect_failing` line covering the failures not yet reported; marks them so."""
        reasons = self.reasons
        fields = ("failures", self.count, "unreported", self.count - self.reported,
                  "last_reason", self.last_reason, "for_ms", ticks_diff(now, self.since), "sessions", self.sessions,
                  "reasons", ",".join("%s:%d" % (k, reasons[k]) for k in sorted(reasons)))
        self.reported = self.count
        self.next_summary = ticks_add(now, self.summary_ms)
        return fields

    def ended(self, now):
        """The run is over (a connection outlived its probation). Returns a last summary's fields if
        failures went unreported."""
        fields = self.summary(now) if self.count > self.reported else None
        self.count = 0
        self.reported = 0
        self.sessions = 0
        self.reasons = {}
        self.last_reason = None
        return fields


# -- the client's side: where failures are counted and their lines printed --------------------------------
def failing(client):
    """The client's run of failures, made at its first failure."""
    run = client.failing
    if run is None:
        run = client.failing = FailureRun(client.cfg.verbose)
    return run


def failed(client, now, reason, session=False, shown=False):
    """True when this failure gets its own line; else maybe a summary line is due instead.
    session: a connection lost on probation (shown: its `connected` line was printed)."""
    run = failing(client)
    if run.failed(now, reason, session, shown):
        return True
    if run.summary_due(now):
        client.ev.emit("connect_failing", *run.summary(now))
    return False
