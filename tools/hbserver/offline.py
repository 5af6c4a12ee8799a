"""When a client goes offline: the server's rule in one place, sans-IO (no sockets, no clock of its own).

The seed's checker: every tick adds one to each client's missed count, a HEART sets it back to 0, and a
client whose count reaches `offline_ticks` is offline. Two additions:
  - a time guard, so that the promised lower bound holds in time too, even when a late tick is followed
    closely by an on-time one: never offline before (offline_ticks - 1) ticks' worth of quiet;
  - a partial-frame deadline: a client holding part of a frame for `header_timeout_ms` or more is dropped
    as a protocol error (`incomplete`) whatever its beats, since a stream stuck mid-frame never recovers.
    It is checked first.

The rule works on any object with three attributes (the server's Conn has them as slots, so that a
client costs no second object): `missed` (ticks since last heard), `last_heard` and `partial_since`
(times, in seconds, on the caller's clock; `partial_since` is None while no partial frame is held).
"""

SILENT = "silent"  # missed too many ticks
INCOMPLETE = "incomplete"  # held a partial frame too long


class OfflineRule:
    """`config` holds the three settings (`tick_ms`, `offline_ticks`, `header_timeout_ms`; the server
    passes its ServerConfig). They are read at every tick, so a changed setting applies from the next one."""

    def __init__(self, config):
        self.config = config

    @staticmethod
    def start(c, now):
        """A new client: heard now, nothing missed, no partial frame."""
        c.missed = 0
        c.last_heard = now
        c.partial_since = None

    @staticmethod
    def heard(c, now):
        """A sign of life: a HEART (framed), any byte (raw). Echo replies are not one: they come from
        another part of the firmware and must not hide a beat task that has stopped."""
        c.missed = 0
        c.last_heard = now

    @staticmethod
    def after_read(c, holding, completed, now):
        """After one read was decoded: `holding`, a partial frame is now held; `completed`, the read
        completed at least one frame. The deadline runs from the moment the frame now held began, and a
        frame completed in this read means any partial one is new."""
        if holding:
            if completed or c.partial_since is None:
                c.partial_since = now
        else:
            c.partial_since = None

    def tick(self, c, now):
        """One checker tick for client c: count it, and say whether c goes offline now (INCOMPLETE,
        SILENT) or not (None)."""
        cfg = self.config
        c.missed += 1
        if c.partial_since is not None and now - c.partial_since >= cfg.header_timeout_ms / 1000:
            return INCOMPLETE
        k = cfg.offline_ticks
        if c.missed >= k and now - c.last_heard >= (k - 1) * cfg.tick_ms / 1000:
            return SILENT
        return None
