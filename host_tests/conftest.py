"""Shared pytest setup: the firmware's flat modules and the repo's tools are importable from tests."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # host_tests/shim and helper modules

import tools._firmware  # noqa: E402,F401  (puts firmware/ on sys.path)
