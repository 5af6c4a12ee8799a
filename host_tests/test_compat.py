"""The CPython side of the runtime seam (the MicroPython side runs in the loopback tier)."""
import socket


from firmware.hbkeep import compat


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
