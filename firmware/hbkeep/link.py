# The link's decisions, sans-IO: when to beat, when the peer counts as silent, when a blocked write
# counts as stalled, how long to wait before the next connect attempt. Times are tick values passed in
# by the caller; nothing here reads a clock or touches a socket, so every rule is testable in
# microseconds and replayable on a virtual clock.
#
# While connected, the driver asks one question, decide(now), and acts on the answer: the order in
# which the rules are weighed lives here, not in the driver.
from .compat import const, ticks_add, ticks_diff

# peer_timeout modes
AUTO = "auto"  # judge silence only once the server has sent something on this connection
STRICT = "strict"  # always
OFF = "off"  # never (leave it to TCP keepalive)

_NEVER = const(-1)  # a tick that has not happened (tx_blocked_at, paused_at)

# What decide() tells the driver to do now. Small ints: answering allocates nothing on MicroPython.
# const(): written as numbers into this module's code; still importable by name from elsewhere.
NOTHING = const(0)  # sleep for Link.wait ms, then ask again
BEAT = const(1)  # send a HEART now (already booked as sent: the next one is due beat_ms later)
SILENT = const(2)  # the peer said nothing for limit_ms: end the connection
STALLED = const(3)  # our writes stayed blocked for limit_ms: end the connection


class Link:
    def __init__(self, beat_ms, peer_timeout=AUTO, peer_miss=3, retry_ms=100, backoff_max_ms=0, beats=True,
                 beats_unacked_max=0):
        self.beat_ms = beat_ms
        # A link that sends no beats (raw mode) gives the peer nothing to answer, so under `auto` a
        # merely idle server would count as silent: there `auto` means off. `strict` still applies.
        if not beats and peer_timeout == AUTO:
            peer_timeout = OFF
        self.beats = beats
        # Beats written since the peer was last heard, and the most the port takes without harm (0: no
        # limit). On rp2 every write of a beat queues one lwIP pbuf until acknowledged; past lwIP's queue
        # length a write() blocks for up to 10 s inside the call (docs/PORTS.md). A peer we hear from is
        # acknowledging; one we do not hear from gets no more beats than this.
        self.beats_unacked_max = beats_unacked_max or 0
        self.beats_unheard = 0
        self.mode = peer_timeout
        self.limit_ms = peer_miss * beat_ms
        self.wait = 0  # set by decide(): ms until the next decision is needed
        self.retry_ms = retry_ms
        self.backoff_max_ms = backoff_max_ms
        self.failures = 0  # consecutive failed or short-lived connections, for backoff
        self.up(0)

    # -- one connection ------------------------------------------------------------------------
    def up(self, now):
        self.since = now
        self.last_rx = now
        self.heard = False
        self.next_beat = ticks_add(now, self.beat_ms)
        self.tx_blocked_at = _NEVER
        self.paused_at = _NEVER  # the receiver is waiting on a write of its own since then
        self.beats_unheard = 0

    def received(self, now):
        # Keepalive runs on the last thing *received*: a peer that only reads is not alive for us.
        self.last_rx = now
        self.heard = True
        self.beats_unheard = 0

    def beats_held(self):
        """True while a beat must not be written: the port's unacknowledged-write budget is spent."""
        return self.beats_unacked_max > 0 and self.beats_unheard >= self.beats_unacked_max

    def beat_written(self):
        self.beats_unheard += 1

    def watching(self):
        return self.mode == STRICT or (self.mode == AUTO and self.heard)

    def silent_for(self, now):
        return ticks_diff(now, self.last_rx)

    def reading_paused(self, now):
        self.paused_at = now

    def reading_resumed(self, now):
        # Time spent not reading is not the peer's silence: the silence clock skips exactly that span.
        if self.paused_at != _NEVER:
            self.last_rx = ticks_add(self.last_rx, ticks_diff(now, self.paused_at))
            self.paused_at = _NEVER

    def tx_blocked(self, now):
        # Also called on each bit of progress: a slow reader is not a stalled one.
        self.tx_blocked_at = now

    def tx_unblocked(self):
        self.tx_blocked_at = _NEVER

    def stalled_for(self, now):
        return ticks_diff(now, self.tx_blocked_at)

    def decide(self, now):
        """What the driver does now: SILENT, STALLED, BEAT or NOTHING, weighed in that order, so a
        dead link is reported before a beat is spent on it. After BEAT or NOTHING, self.wait holds
        the ms from `now` the driver may sleep before asking again. An int answer plus an int
        attribute rather than a tuple: this runs every beat period and must not allocate on a board.
        Each rule is written out here rather than in a method of its own: on a board every method is
        code and names on the heap for good. Tests ask decide() itself."""
        # Silence: not judged while the receiver is paused on a write of its own (the peer's bytes then
        # sit unread in the socket; the stall rule covers that time).
        if self.watching() and self.paused_at == _NEVER and ticks_diff(now, self.last_rx) >= self.limit_ms:
            return SILENT
        # A stall: a peer that stops reading leaves our writes blocked forever; on boards without TCP
        # keepalive this is the only way to notice. Judged like silence, but regardless of `heard`.
        if self.mode != OFF and self.tx_blocked_at != _NEVER and ticks_diff(now, self.tx_blocked_at) >= self.limit_ms:
            return STALLED
        act = NOTHING
        if self.beats and ticks_diff(now, self.next_beat) >= 0:
            # Booked as sent even when the driver skips it (write side busy): a skipped beat is not
            # made up for, the next one comes beat_ms later as usual.
            nxt = ticks_add(self.next_beat, self.beat_ms)
            # After a long stall, beat on from now rather than sending a burst to catch up.
            if ticks_diff(now, nxt) >= 0:
                nxt = ticks_add(now, self.beat_ms)
            self.next_beat = nxt
            act = BEAT
        self.wait = self.wait_ms(now, self.beats)
        return act

    def wait_ms(self, now, beating=True):
        """How long the supervisor may sleep before something needs deciding."""
        wait = self.limit_ms
        if beating:
            wait = ticks_diff(self.next_beat, now)
        if self.watching() and self.paused_at == _NEVER:
            w = self.limit_ms - ticks_diff(now, self.last_rx)
            if w < wait:
                wait = w
        if self.tx_blocked_at != _NEVER and self.mode != OFF:
            w = self.limit_ms - ticks_diff(now, self.tx_blocked_at)
            if w < wait:
                wait = w
        return wait if wait > 0 else 0

    # -- between connections -------------------------------------------------------------------
    def down(self, now):
        # A connection that lasted at least one beat period counts as a success and resets backoff;
        # one that dies at once (server accepting then dropping) keeps backing off.
        if ticks_diff(now, self.since) >= self.beat_ms:
            self.failures = 0
        else:
            self.failures += 1

    def connect_failed(self):
        self.failures += 1

    def retry_delay(self, rand_below):
        """ms to wait before the next attempt. rand_below(n) returns an int in [0, n)."""
        if self.backoff_max_ms <= 0:
            return self.retry_ms  # the seed's fixed 100 ms
        # Capped exponential backoff with full jitter: spreads a fleet that lost its server at once.
        # Doubled step by step and stopped at the cap: retry_ms << failures would pass 2^30 and allocate a
        # big int on a board (small ints are 31 bits there).
        cap = self.retry_ms
        n = self.failures
        while n > 0 and cap < self.backoff_max_ms:
            cap += cap
            n -= 1
        if cap > self.backoff_max_ms:
            cap = self.backoff_max_ms
        return rand_below(cap + 1)
