"""Install the scripted `machine` stand-in (support/board/machine.py) for a CPython test."""
import importlib.util
import os
import sys

BOARD_SHIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "board")


def install(monkeypatch, clock):
    spec = importlib.util.spec_from_file_location("machine", os.path.join(BOARD_SHIM_DIR, "machine.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.clock = clock
    monkeypatch.setitem(sys.modules, "machine", mod)
    return mod
