"""Every host tool module imports: a module renamed or removed under a command that no other test runs
(a benchmark, say) fails here at once instead of at its user's first try."""
import importlib
import pkgutil

import pytest

import tools

# Scripts run by path inside a MicroPython child, with their arguments on the command line: importing
# them on the host is not how they are used.
CHILD_SCRIPTS = {"tools.fwbench", "tools.fwheapmap", "tools.tlsbench_child"}

MODULES = sorted(m.name for m in pkgutil.walk_packages(tools.__path__, "tools.")
                 if not m.name.endswith("__main__") and m.name not in CHILD_SCRIPTS)


def test_the_list_is_not_empty():
    assert "tools.bench_fleet" in MODULES and "tools.hbserver.cli" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_imports(name):
    importlib.import_module(name)
