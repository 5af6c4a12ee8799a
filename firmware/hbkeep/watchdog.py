# The hardware watchdog (machine.WDT) where the board table says there is one ("watchdog": true).
#
# It is fed from a task of the event loop, and only while the client shows progress: the client bumps
# `progress` on every pass of its connection loop and of its supervisor, and never sleeps longer than
# `pulse_ms` (set here) in one go. So the board resets both when something blocks the scheduler (the
# feeder cannot run) and when a task hangs while the scheduler runs on (the counter stops). Whether
# there is a watchdog, and its timeout, is decided once at start (start.watchdog_timeout): a board
# without one never loads this module.
#
# Parking (wdtpark.py) is needed twice, when the feeder takes over from a watchdog that boot.py parked
# and when the user interrupts the firmware: the module is loaded for each and forgotten in between, so
# that it holds no heap while the firmware runs.
from . import compat
from .compat import ticks_ms, ticks_diff, sleep_ms


class Feeder:
    def __init__(self, client, timeout_ms, events):
        self.client = client
        self.ev = events
        self.timeout_ms = timeout_ms
        self.every_ms = timeout_ms // 4 or 1
        client.pulse_ms = self.every_ms
        # The longest quiet the client may have without being stuck: its longest wait that is not sliced
        # by pulse_ms (a connect, a TLS handshake or an authentication, each bounded by its own timeout)
        # plus one pulse. After that the feeder stops; the board resets at most timeout_ms later.
        cfg = client.cfg
        longest = cfg.connect_timeout_ms
        if cfg.tls_ca and cfg.tls_handshake_timeout_ms > longest:
            longest = cfg.tls_handshake_timeout_ms
        if cfg.auth_id and cfg.auth_timeout_ms > longest:
            longest = cfg.auth_timeout_ms
        self.quiet_max_ms = longest + self.every_ms
        self.wdt = None
        self.feeds = 0
        self.starving = False

    async def run(self):
        import machine
        from . import wdtpark

        wdtpark.unpark()  # from a parked watchdog (boot.py) to ours
        del wdtpark  # this frame lives as long as the feeder: it must not hold the module
        compat.forget_module("wdtpark")
        self.wdt = machine.WDT(timeout=self.timeout_ms)
        self.ev.emit("watchdog", "state", "on", "timeout_ms", self.timeout_ms, "quiet_max_ms", self.quiet_max_ms)
        client = self.client
        seen = client.progress
        since = ticks_ms()
        while True:
            now = ticks_ms()
            if client.progress != seen:
                seen = client.progress
                since = now
                if self.starving:
                    self.starving = False
                    self.ev.emit("watchdog", "state", "fed_again")
            if ticks_diff(now, since) < self.quiet_max_ms:
                self.wdt.feed()
                self.feeds += 1
            elif not self.starving:
                # Said once, so that whoever reads the log after the reset knows why it came.
                self.starving = True
                self.ev.emit("watchdog", "state", "starving", "quiet_ms", ticks_diff(now, since))
            await sleep_ms(self.every_ms)

    def park(self, board, reason):
        """The user interrupted the firmware: keep the board alive under them (wdtpark.py)."""
        if self.wdt is None:
            return
        # A second Ctrl-C (pressed twice, as people do) can land while this runs: then it parks again
        # rather than leave the running watchdog to reset the board under the user.
        for _ in range(3):
            try:
                from . import wdtpark  # loaded again: a few ms, well within the watchdog's timeout

                wdtpark.park(board, reason, self._say)
                return
            except KeyboardInterrupt:
                pass
            except Exception as e:  # said, so that a reset that follows is explained; the REPL stays free
                self.ev.emit("watchdog", "state", "park_failed", "error", compat.exc_text(e))
                return

    def _say(self, body):
        self.ev.write("%d %s" % (self.ev.clock(), body))
