"""The runtime seam: its CPython side in process; how main.py ends after a config error, on every runtime."""
import os
import shutil
import socket
import subprocess

import pytest

from support.fwproc import ALL_RUNTIMES, require_runtime
from tools import hostrun

from firmware.hbkeep import compat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_upcase_is_c_toupper_in_the_c_locale():
    buf = bytearray(range(256))
    compat.upcase(buf, 0, 256)
    want = bytes(c - 32 if 97 <= c <= 122 else c for c in range(256))
    assert bytes(buf) == want


def test_upcase_touches_only_the_range():
    buf = bytearray(b"abcdef")
    compat.upcase(buf, 2, 4)
    assert buf == bytearray(b"abCDef")


def test_copy_bytes():
    dst = bytearray(8)
    compat.copy_bytes(dst, 2, b"xyzw", 1, 3)
    assert dst == bytearray(b"\0\0yzw\0\0\0")


def test_nonblocking_read_write_on_a_socketpair():
    a, b = socket.socketpair()
    a.setblocking(False)
    buf = bytearray(4)
    assert compat.try_read(a, buf) == -1  # nothing yet: would block
    b.sendall(b"hi")
    assert compat.try_read(a, buf) == 2 and buf[:2] == b"hi"
    assert compat.try_write(a, b"0123456789", 3, 4) == 4
    assert b.recv(10) == b"3456"
    b.close()
    assert compat.try_read(a, buf) == 0  # EOF
    a.close()


def test_errno_name_and_addr_str():
    assert compat.errno_name(OSError(111, "x")) == "ECONNREFUSED"
    assert compat.errno_name(OSError(99999, "x")) == "E99999"
    net = compat.Net()
    assert net.addr_str((2, 1, 6, ("127.0.0.1", 39002))) == "127.0.0.1:39002"
    # The MicroPython unix port's raw sockaddr_in: family 2, port big-endian, address.
    raw = bytearray(b"\x02\x00\x98\x5a\x7f\x00\x00\x01" + bytes(8))
    assert net.addr_str((2, 1, 6, raw)) == "127.0.0.1:39002"


def test_runtime_name():
    assert compat.RUNTIME == "cpython" and compat.MICROPYTHON is False


@pytest.mark.parametrize("runtime", ALL_RUNTIMES)
def test_a_config_error_ends_quietly_on_a_board_and_with_a_status_on_the_host(runtime, tmp_path):
    # A board runs main.py with no arguments; a SystemExit there would soft-reset into main.py again.
    require_runtime(runtime)
    fw = os.path.join(ROOT, "firmware")
    shutil.copy(os.path.join(fw, "main.py"), str(tmp_path / "main.py"))
    shutil.copytree(os.path.join(fw, "hbkeep"), str(tmp_path / "hbkeep"))
    (tmp_path / "config.json").write_text('{"beat_ms": -5}')
    shutil.copy(os.path.join(ROOT, "boards", "unix", "board.json"), str(tmp_path / "board.json"))
    argv = hostrun.runtime_argv(runtime)
    board = subprocess.run(argv + ["main.py"], cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert board.returncode == 0, board.stdout + board.stderr
    assert "config_error config.json: beat_ms" in board.stdout and "SystemExit" not in board.stdout + board.stderr
    host = subprocess.run(argv + ["main.py", "config.json", "board.json"], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert host.returncode == 2 and " config_error " in host.stdout and "beat_ms" in host.stdout, host.stdout + host.stderr


@pytest.mark.parametrize("runtime", ["micropython", "micropython32"])
def test_a_fastbuf_mpy_for_another_architecture_falls_back_to_plain_python(runtime, tmp_path):
    # MicroPython raises ValueError ("incompatible .mpy file") for it, not ImportError.
    require_runtime(runtime)
    from tools.build import mpycompile

    pkg = tmp_path / "hbkeep"
    shutil.copytree(os.path.join(ROOT, "firmware", "hbkeep"), str(pkg))
    os.remove(str(pkg / "fastbuf.py"))
    src = os.path.join(ROOT, "firmware", "hbkeep", "fastbuf.py")
    built = mpycompile.compile_one(src, "armv6m", str(tmp_path / "out"))
    shutil.copy(built, str(pkg / "fastbuf.mpy"))
    code = ("import sys; sys.path.insert(0, '.'); from hbkeep import compat; b = bytearray(b'abc{'); "
            "compat.upcase(b, 0, 4); print(bytes(b), compat.upcase.__name__)")
    p = subprocess.run(hostrun.runtime_argv(runtime) + ["-c", code], cwd=str(tmp_path), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.split() == ["b'ABC{'", "upcase"], p.stdout
