"""Shared pytest setup: the firmware's flat modules and the repo's tools are importable from tests."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # host_tests/shim and helper modules



# --- issue 4, fault matrix: regenerate docs/FAULTS.md when fault tests recorded figures (host_tests/faultrec.py)
def pytest_sessionfinish(session, exitstatus):
    import faultrec

    faultrec.write_table_if_recorded()
# --- end fault matrix hook
