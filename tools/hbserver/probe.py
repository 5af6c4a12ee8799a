"""Echo probes for tools.hbserver: what was sent, what must come back, and round-trip statistics.

The firmware's main job is to answer each DATA frame with the same bytes upper-cased (C toupper() in the
C locale: a-z only). The server checks that by sending probes and comparing the replies here. Nothing in
this module does I/O; the connection code (tools/hbserver/conn.py) hands it bytes and the loop clock.
"""
import math

# At most this many probes wait for their replies per client. A client that stops answering then costs
# PROBE_WINDOW * probe_bytes of memory, not more; further probes are skipped until replies come.
PROBE_WINDOW = 8

# Outcomes of a probe (each probe ends in exactly one; see Probes.resolve).
OK = "ok"
BAD = "bad"
LATE = "late"


class Probe:
    """One probe in flight: the loop time it was sent, the reply expected and how much has matched."""

    __slots__ = ("sent", "expected", "pos", "bad_at", "counted_late")

    def __init__(self, sent, expected):
        self.sent = sent  # loop.time() when written
        self.expected = memoryview(expected)  # the upper-cased payload; a view so slices do not copy
        self.pos = 0  # raw mode: reply bytes received so far
        self.bad_at = -1  # offset of the first wrong byte, -1 while all matched
        self.counted_late = False  # already counted as late by the sweep, before its reply came


def make_payload(rng, n):
    """N random bytes (letters and everything else) and the reply they must draw."""
    payload = rng.randbytes(n)
    return payload, payload.upper()  # bytes.upper() maps a-z only, exactly C toupper()


def first_difference(a, b):
    """Offset of the first differing byte of two equal-length byte sequences (-1 when equal)."""
    for i in range(len(a)):
        if a[i] != b[i]:
            return i
    return -1


def check_framed(probe, buf, off, length):
    """Compare one DATA reply frame with a framed probe. Returns None when it matches, else a
    (reason, detail) pair: ("length", got_length) or ("content", first_bad_offset)."""
    exp = probe.expected
    if length != len(exp):
        return ("length", length)
    got = memoryview(buf)[off : off + length]
    if got == exp:
        return None
    return ("content", first_difference(got, exp))


def match_raw(pending, data, done):
    """Match a chunk of a raw (unframed) reply stream against the probes in flight, oldest first.

    Replies are matched by byte count, so any split of the stream across reads gives the same result.
    A wrong byte marks its probe bad but the probe still consumes its full length, so later probes stay
    aligned. `done(probe)` is called for each probe whose reply is complete and the probe is removed
    from `pending`. Returns the number of bytes that arrived when no probe was waiting (stray bytes)."""
    n = len(data)
    i = 0
    while i < n and pending:
        p = pending[0]
        k = min(n - i, len(p.expected) - p.pos)
        if p.bad_at < 0:
            got = data[i : i + k]
            want = p.expected[p.pos : p.pos + k]
            if got != want:
                p.bad_at = p.pos + first_difference(got, want)
        p.pos += k
        i += k
        if p.pos == len(p.expected):
            pending.pop(0)
            done(p)
    return n - i


class Histogram:
    """Round-trip times in microseconds, in log-linear buckets: 32 per power of two, so any
    percentile read back is within about 3% of the true value. Memory stays at a few hundred
    counters however many samples are added, which matters at ten thousand probes a second."""

    __slots__ = ("counts", "total")

    def __init__(self):
        self.counts = {}
        self.total = 0

    @staticmethod
    def index(us):
        if us < 64:
            return us if us > 0 else 0  # exact below 64 µs
        e = us.bit_length() - 6  # keep the top six bits: 32..63 after the shift
        return (e + 1) * 32 + (us >> e) - 32

    @staticmethod
    def value(i):
        """A representative value (the bucket's middle) for bucket index i, in microseconds."""
        if i < 64:
            return float(i)
        e = i // 32 - 1
        low = (i % 32 + 32) << e
        return low + ((1 << e) - 1) / 2

    def add(self, seconds):
        i = self.index(int(seconds * 1e6 + 0.5))
        self.counts[i] = self.counts.get(i, 0) + 1
        self.total += 1

    def percentile_ms(self, q):
        """The q-quantile (0 < q <= 1) in milliseconds, rounded to 0.001; None without samples."""
        if not self.total:
            return None
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return round(self.value(i) / 1000, 3)
        raise AssertionError("unreachable: rank %d beyond %d samples" % (rank, self.total))

    def clear(self):
        self.counts.clear()
        self.total = 0


class ProbeStats:
    """Server-wide probe counters. Each probe sent ends in exactly one of ok, bad, late or lost:

    - ok: the reply matched and came within probe_late_ms;
    - late: the reply was overdue -- counted as soon as the sweep sees it overdue, or when a matching
      reply arrives after the limit; a late probe whose reply finally arrives wrong moves to bad;
    - bad: the reply differed (length or content);
    - lost: the client left before replying, without the reply having been overdue.
    """

    __slots__ = ("sent", "ok", "bad", "late", "lost", "skipped", "stray_bytes", "rtt", "rtt_window")

    def __init__(self):
        self.sent = 0
        self.ok = 0
        self.bad = 0
        self.late = 0
        self.lost = 0
        self.skipped = 0  # not sent: PROBE_WINDOW probes already in flight, or the client not reading
        self.stray_bytes = 0  # raw mode: reply bytes when no probe was in flight
        self.rtt = Histogram()  # since start, for the final report
        self.rtt_window = Histogram()  # since the last summary line

    def resolve(self, probe, now, late_s, matched):
        """Count a probe whose reply is complete. Returns its outcome (OK, LATE or BAD)."""
        if not matched:
            if probe.counted_late:
                self.late -= 1  # it was counted late while overdue; now it is known to be wrong
            self.bad += 1
            return BAD
        rtt = now - probe.sent
        self.rtt.add(rtt)
        self.rtt_window.add(rtt)
        if probe.counted_late:
            return LATE
        if rtt > late_s:
            self.late += 1
            return LATE
        self.ok += 1
        return OK

    def overdue(self, probe):
        """The sweep found the probe unanswered past the limit: count it late now, once."""
        if not probe.counted_late:
            probe.counted_late = True
            self.late += 1
            return True
        return False

    def abandon(self, pending):
        """The client left: its unanswered probes are lost (unless already counted late)."""
        for p in pending:
            if not p.counted_late:
                self.lost += 1
