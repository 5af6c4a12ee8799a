"""An asyncio event loop on a virtual clock, for tests with scripted (fake) sockets.

When nothing is ready, the loop jumps its clock straight to the next timer instead of waiting, so a test
of 24 simulated hours runs in the time its callbacks take. The firmware reads its ticks from the running
loop's clock (compat.ticks_ms on CPython), so it lives on the same virtual time.

A loop with nothing scheduled and nothing ready would wait forever; here it raises Deadlock instead, which
turns a hung test into a clear failure.
"""
import asyncio
import selectors


class Deadlock(RuntimeError):
    pass


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self):
        super().__init__()
        self.loop = None

    def select(self, timeout=None):
        ready = super().select(0)  # only the loop's own self-pipe is ever registered
        if ready:
            return ready
        if timeout is None:
            raise Deadlock("virtual loop: nothing scheduled and nothing ready")
        if timeout > 0:
            self.loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, start=1000.0):
        sel = _VirtualSelector()
        super().__init__(selector=sel)
        sel.loop = self
        self._now = start
        self._clock_resolution = 1e-9

    def time(self):
        return self._now

    def advance(self, seconds):
        self._now += seconds


def run(coro, start=1000.0):
    """asyncio.run() on a fresh virtual-time loop."""
    loop = VirtualTimeLoop(start)
    try:
        return loop.run_until_complete(coro)
    finally:
        # Cancel what the test left running (a client's forever loop) before closing.
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()
