"""The presence-store tier: a real Valkey/Redis server per test (tools/presence_store.py), never a mock.

Without a server binary the tests skip with the reason, unless HB_REQUIRE_PRESENCE is set (the Makefile
and CI set it): then they fail."""
import asyncio
import time

import pytest

from support.tiers import skip_or_fail
from tools.presence_store import StoreProcess, StoreUnavailable

WAIT = 10.0  # seconds for any one condition that must come true; generous for a loaded machine


@pytest.fixture
def store():
    try:
        s = StoreProcess()
    except StoreUnavailable as e:
        skip_or_fail("HB_REQUIRE_PRESENCE", "a Valkey/Redis server", str(e))
    try:
        s.start()
    except StoreUnavailable as e:
        s.close()
        skip_or_fail("HB_REQUIRE_PRESENCE", "a Valkey/Redis server", str(e))
    try:
        yield s
    finally:
        s.close()


async def until(what, check, timeout=WAIT, every=0.05):
    """Poll an async or plain check until it returns a true value (returned); fail naming `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1f s waiting for %s (last: %r)" % (timeout, what, last))
        await asyncio.sleep(every)  # the store gives no signal for a key expiring: polling, bounded
