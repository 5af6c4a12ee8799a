"""Shared pytest setup: the repo root (firmware.hbkeep, tools) and host_tests/ (the `support` package of
test helpers) are importable from tests; the `runtime` and `any_runtime` fixtures."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
for path in (ROOT, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

from support.fwproc import ALL_RUNTIMES, RUNTIMES, require_runtime  # noqa: E402  (needs the paths above)


@pytest.fixture(params=RUNTIMES)
def runtime(request):
    """Both host runtimes, CPython and the MicroPython unix port. Without a MicroPython binary the test
    is skipped with the reason, or fails when HB_REQUIRE_MICROPYTHON is set (support/fwproc.py)."""
    require_runtime(request.param)
    return request.param


@pytest.fixture(params=ALL_RUNTIMES)
def any_runtime(request):
    """Both host runtimes and the 32-bit MicroPython (HB_REQUIRE_MICROPYTHON32 makes it mandatory)."""
    require_runtime(request.param)
    return request.param
