# Which connect failures get a line of their own, sans-IO.
#
# A server that is down is retried every retry_ms (the seed's 100 ms): one line per attempt would be ten
# lines a second for as long as it stays down, drowning a board's serial console. So a run of failures
# prints its first few attempts in full, then one summary per SUMMARY_MS (how many, the last reason), and a
# last summary when the run ends, if attempts went unreported since the previous one. Verbose mode prints
# every attempt. Times are ticks passed in by the caller.
from .compat import ticks_add, ticks_diff

FIRST = 3  # failures of a run reported one by one
SUMMARY_MS = 10000  # then one summary line per this many ms


class FailureRun:
    def __init__(self, verbose=False, first=FIRST, summary_ms=SUMMARY_MS):
        self.verbose = verbose
        self.first = first
        self.summary_ms = summary_ms
        self.count = 0  # failures in the current run (0: not failing)
        self.reported = 0  # of those, how many a line has covered (one by one or summed up)
        self.since = 0
        self.next_summary = 0
        self.last_reason = None

    def failed(self, now, reason):
        """Count one failure. True: print it in full. False: stay quiet (see summary_due)."""
        if self.count == 0:
            self.since = now
            self.next_summary = ticks_add(now, self.summary_ms)
        self.count += 1
        self.last_reason = reason
        if self.verbose or self.count <= self.first:
            self.reported = self.count
            return True
        return False

    def summary_due(self, now):
        return self.count > self.reported and ticks_diff(now, self.next_summary) >= 0

    def summary(self, now):
        """Fields of a `connect_failing` line covering the failures not yet reported; marks them so."""
        fields = ("failures", self.count, "unreported", self.count - self.reported,
                  "last_reason", self.last_reason, "for_ms", ticks_diff(now, self.since))
        self.reported = self.count
        self.next_summary = ticks_add(now, self.summary_ms)
        return fields

    def ended(self, now):
        """The run is over (connected). Returns a last summary's fields if failures went unreported."""
        fields = self.summary(now) if self.count > self.reported else None
        self.count = 0
        self.reported = 0
        self.last_reason = None
        return fields
