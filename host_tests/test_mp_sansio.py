"""The sans-IO core on every runtime: host_tests/support/mp_sansio.py run on CPython and both MicroPython tiers.

On the 32-bit tier that includes counters driven past 2^30 without allocating, the link's clock across the
2^30 ms tick wrap, and the 2^29 ticks_add limit the config's span check guards."""
import os
import subprocess

import pytest

from support.fwproc import ALL_RUNTIMES, require_runtime
from tools import hostrun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "host_tests", "support", "mp_sansio.py")


@pytest.mark.parametrize("runtime", ALL_RUNTIMES)
def test_sansio_checks_pass(runtime):
    require_runtime(runtime)
    p = subprocess.run(hostrun.runtime_argv(runtime) + [SCRIPT, ROOT], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    lines = p.stdout.splitlines()
    failed = [x for x in lines if x.startswith("FAIL ")]
    assert p.returncode == 0 and lines and lines[-1].startswith("done "), p.stdout + p.stderr
    assert not failed, "\n".join(failed)
    passed, total = lines[-1].split(" ")[1].split("/")
    assert passed == total and int(total) >= 9, lines[-1]
    widths = [x for x in lines if x.startswith("widths ")][0]
    if runtime == "micropython32":
        # The tier is only worth having if it has a board's widths.
        assert widths == "widths bits=32 tick_period=1073741824", widths
