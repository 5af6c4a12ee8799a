# Event lines and counters. Format (docs/EVENTS.md): "<ms> <event> key=value ...", one line per event.
# Per-frame things (beats, echoes) are counted here and printed only in verbose mode.
from .compat import const, ticks_ms, write_line


class Events:
    def __init__(self, write=write_line, clock=ticks_ms, verbose=False, secret=None):
        self.write = write
        self.clock = clock
        self.verbose = verbose
        # A value never to print (the Wi-Fi password): masked in every field, whatever path brought it
        # there -- an exception message, a status text, a user's own event.
        self.secret = secret or None

    def emit(self, name, *kv):
        # Keys and values as alternating positional arguments: MicroPython's dicts do not keep order,
        # and a stable field order makes lines easy to read and diff.
        parts = [str(self.clock()), name]
        for i in range(0, len(kv) - 1, 2):
            v = kv[i + 1]
            if v is None or v == "":
                v = "-"
            v = str(v)
            if self.secret and self.secret in v:
                v = v.replace(self.secret, "***")
            parts.append("%s=%s" % (kv[i], v.replace(" ", "_")))
        self.write(" ".join(parts))


SMALL_INT_MAX = const(0x3FFFFFFF)  # 2^30 - 1: the largest small int on a 32-bit board; past it an int is a heap object


class Stats:
    # Counters that grow per frame or per byte are kept as two small ints (count mod 2^30, and how many
    # times it wrapped): a single counter would pass 2^30 after 1 GiB echoed and then allocate a big int on
    # every increment on a board. Counters that grow per connection or per beat stay plain.
    def __init__(self):
        self.attempts = 0
        self.connects = 0
        self.disconnects = {}  # reason -> count
        self.connect_failures = {}  # reason -> count
        self.beats_sent = 0
        self.beats_skipped = 0  # due while the write side was held: a beat would only have queued
        self.hearts_received = 0
        self.frames_echoed = 0  # mod 2^30; frames_echoed_wraps counts the wraps
        self.frames_echoed_wraps = 0
        self.bytes_echoed = 0  # mod 2^30; bytes_echoed_wraps counts the wraps
        self.bytes_echoed_wraps = 0
        self.protocol_errors = 0
        # DATA payloads handed to the application's handler, frames it sent with Client.send: both wrap
        # at 2^30 (appio.py bumps them masked), so they never become heap objects.
        self.app_rx = 0
        self.app_tx = 0

    def echoed(self, nbytes):
        # Compared before adding, so that no intermediate value passes SMALL_INT_MAX either.
        f = self.frames_echoed
        if f == SMALL_INT_MAX:
            self.frames_echoed = 0
            self.frames_echoed_wraps += 1
        else:
            self.frames_echoed = f + 1
        room = SMALL_INT_MAX - self.bytes_echoed
        if nbytes > room:
            self.bytes_echoed = nbytes - room - 1
            self.bytes_echoed_wraps += 1
        else:
            self.bytes_echoed += nbytes

    def disconnected(self, reason):
        table = self.disconnects
        table[reason] = table.get(reason, 0) + 1

    def connect_failed(self, reason):
        table = self.connect_failures
        table[reason] = table.get(reason, 0) + 1

    @staticmethod
    def _table(table):
        return ",".join("%s:%d" % (k, table[k]) for k in sorted(table)) or "-"

    def fields(self):
        return (
            "attempts", self.attempts,
            "connects", self.connects,
            "disconnects", sum(self.disconnects.values()),
            "by_reason", self._table(self.disconnects),
            "connect_failures", self._table(self.connect_failures),
            "beats_sent", self.beats_sent,
            "beats_skipped", self.beats_skipped,
            "hearts_rx", self.hearts_received,
            "frames_echoed", (self.frames_echoed_wraps << 30) + self.frames_echoed,
            "bytes_echoed", (self.bytes_echoed_wraps << 30) + self.bytes_echoed,
            "protocol_errors", self.protocol_errors,
            "app_rx", self.app_rx,
            "app_tx", self.app_tx,
        )
