"""Install the scripted `machine` stand-in (support/board/machine.py) for a CPython test; `machine` is
the pytest fixture doing so on the firmware's clock (import it into a test module to use it)."""
import importlib.util
import os
import sys

import pytest

BOARD_SHIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "board")


def install(monkeypatch, clock):
    spec = importlib.util.spec_from_file_location("machine", os.path.join(BOARD_SHIM_DIR, "machine.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.clock = clock
    monkeypatch.setitem(sys.modules, "machine", mod)
    return mod


@pytest.fixture
def machine(monkeypatch):
    """The stand-in as `machine`, on the firmware's clock (compat.ticks_ms), with the watchdog's park
    timer cleared before and after, so that no test inherits another's parked watchdog."""
    from firmware.hbkeep import compat, wdtpark

    mod = install(monkeypatch, compat.ticks_ms)
    wdtpark.unpark()
    yield mod
    wdtpark.unpark()
