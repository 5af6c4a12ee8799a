"""firmware/hbkeep/auth.py: HMAC-SHA256 written for ports without `hmac` (checked against CPython's hmac on
RFC 4231's vectors, on CPython and on the MicroPython tier), the device's and the server's checks, and the
`auth` config section."""
import hmac
import json
import subprocess

import pytest

from firmware.hbkeep import auth, auth_host
from firmware.hbkeep.auth import AUTH, CHALLENGE, WELCOME, AuthError, DeviceAuth
from firmware.hbkeep.config import Config, ConfigError
from support.fwproc import micropython_status, require_runtime
from tools import hostrun

# RFC 4231 section 4: (key, data) of test cases 1-4, 6 and 7 (case 5 is a truncated output).
RFC4231 = [
    (b"\x0b" * 20, b"Hi There"),
    (b"Jefe", b"what do ya want for nothing?"),
    (b"\xaa" * 20, b"\xdd" * 50),
    (bytes(range(1, 26)), b"\xcd" * 50),
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First"),
    (b"\xaa" * 131, b"This is a test using a larger than block-size key and a larger than block-size data. The key "
                    b"needs to be hashed before being used by the HMAC algorithm."),
]
# The published results of cases 1 and 7, so the reference itself is pinned too.
RFC4231_CASE1 = "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
RFC4231_CASE7 = "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"
KEY = bytes(range(32))


def reference(key, msg):
    return hmac.new(key, msg, "sha256").hexdigest()


def test_reference_is_rfc4231():
    assert reference(*RFC4231[0]) == RFC4231_CASE1
    assert reference(*RFC4231[5]) == RFC4231_CASE7


@pytest.mark.parametrize("key,msg", RFC4231)
def test_own_hmac_matches_cpython_hmac(key, msg):
    assert auth.hmac_sha256_py(key, msg).hex() == reference(key, msg)
    assert auth.hmac_sha256(key, msg).hex() == reference(key, msg)


@pytest.mark.parametrize("tier", ["micropython", "micropython32"])
def test_own_hmac_on_micropython_matches_cpython_hmac(tier):
    """The firmware's HMAC as each MicroPython tier runs it (no hmac module there), on every vector,
    plus the exchange's own messages."""
    require_runtime(tier)
    ok, argv = micropython_status(tier)
    vectors = RFC4231 + [(KEY, auth.DEVICE_LABEL + b"s" * 16 + b"d" * 16 + b"dev-1"), (b"k" * 64, b"")]
    script = (
        "import sys\nsys.path.insert(0, %r)\n"
        "from hbkeep import auth\n"
        "try:\n import hmac\n print('has_hmac')\nexcept ImportError:\n print('no_hmac')\n"
        "print(auth.hmac_sha256 is auth.hmac_sha256_py)\n"
        "for k, m in %r:\n print(''.join('%%02x' %% b for b in auth.hmac_sha256(k, m)))\n"
    ) % (hostrun.FIRMWARE_DIR, vectors)
    out = subprocess.run(argv + ["-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == "no_hmac" and lines[1] == "True"  # the hand-written HMAC is what ran
    assert lines[2:] == [reference(k, m) for k, m in vectors]


def test_equal_compares_whole_values():
    a = bytes(32)
    assert auth.equal(a, bytes(32))
    assert not auth.equal(a, bytes(31) + b"\x01")
    assert not auth.equal(a, b"\x01" + bytes(31))
    assert not auth.equal(a, bytes(31))


def _server_side(keys, snonce, frame_bytes):
    return auth_host.verify_auth(keys, snonce, frame_bytes[8:])


def test_a_whole_exchange_and_its_wire_format():
    dev = DeviceAuth("dev-1", KEY, urandom=lambda n: b"D" * n)
    snonce = b"S" * 16
    frame = dev.answer(auth.frame(CHALLENGE, snonce))
    assert auth.header(frame) == (AUTH, 16 + 32 + 5)
    assert bytes(frame[8:24]) == b"D" * 16
    assert bytes(frame[24:56]) == hmac.new(KEY, b"hb1-device" + snonce + b"D" * 16 + b"dev-1", "sha256").digest()
    assert bytes(frame[56:]) == b"dev-1"
    dev_id, dnonce, welcome = _server_side({b"dev-1": KEY}, snonce, frame)
    assert dev_id == b"dev-1" and dnonce == b"D" * 16
    assert auth.header(welcome) == (WELCOME, 32)
    assert bytes(welcome[8:]) == hmac.new(KEY, b"hb1-server" + b"D" * 16 + snonce + b"dev-1", "sha256").digest()
    dev.check_welcome(welcome)  # no exception: the server proved the key


def test_server_refuses_wrong_key_unknown_id_and_bad_lengths():
    dev = DeviceAuth("dev-1", KEY)
    frame = dev.answer(auth.frame(CHALLENGE, b"S" * 16))
    with pytest.raises(AuthError, match="bad_mac"):
        _server_side({b"dev-1": bytes(32)}, b"S" * 16, frame)
    with pytest.raises(AuthError, match="bad_mac"):  # the mac was made for another snonce
        _server_side({b"dev-1": KEY}, b"T" * 16, frame)
    with pytest.raises(AuthError, match="unknown_id"):
        _server_side({b"dev-2": KEY}, b"S" * 16, frame)
    with pytest.raises(AuthError, match="bad_frame"):
        auth_host.verify_auth({b"dev-1": KEY}, b"S" * 16, bytes(48))  # no id
    with pytest.raises(AuthError, match="bad_frame"):
        auth_host.verify_auth({b"dev-1": KEY}, b"S" * 16, bytes(48 + 65))  # id too long


def test_device_refuses_a_wrong_proof_and_anything_but_welcome():
    dev = DeviceAuth("dev-1", KEY)
    snonce = b"S" * 16
    frame = dev.answer(auth.frame(CHALLENGE, snonce))
    _, _, welcome = _server_side({b"dev-1": KEY}, snonce, frame)
    bad = bytearray(welcome)
    bad[-1] ^= 1
    with pytest.raises(AuthError, match="bad_proof"):
        dev.check_welcome(bad)
    with pytest.raises(AuthError, match="bad_proof"):  # a server with another key
        dev.check_welcome(auth.frame(WELCOME, auth.server_proof(bytes(32), dev.dnonce, snonce, b"dev-1")))
    with pytest.raises(AuthError, match="expected_welcome"):
        dev.check_welcome(auth.frame(0, b"") + bytes(32))  # a HEART
    with pytest.raises(AuthError, match="expected_challenge"):
        DeviceAuth("dev-1", KEY).answer(auth.frame(WELCOME, bytes(16)))


def test_fresh_dnonce_per_answer():
    dev = DeviceAuth("dev-1", KEY)
    a = bytes(dev.answer(auth.frame(CHALLENGE, b"S" * 16)))
    b = bytes(dev.answer(auth.frame(CHALLENGE, b"S" * 16)))
    assert a[8:24] != b[8:24]


# -- the `auth` config section ----------------------------------------------------------------------------

def test_config_auth_section():
    cfg = Config({"auth": {"id": "dev-1", "key": KEY.hex()}})
    assert cfg.auth_id == "dev-1" and cfg.auth_key == KEY and cfg.auth_timeout_ms == 5000
    assert Config({}).auth_id is None


@pytest.mark.parametrize("section,error", [
    ({"id": "dev-1"}, "auth.key: required"),
    ({"id": "", "key": KEY.hex()}, "auth.id"),
    ({"id": "x" * 65, "key": KEY.hex()}, "auth.id: expected 1 to 64 bytes"),
    ({"id": "dev-1", "key": "ab" * 15}, "auth.key: expected an even number of hex digits from 32 to 128, got 30"),
    ({"id": "dev-1", "key": "zz" * 16}, "auth.key: expected hex digits only"),
    ({"id": "dev-1", "key": KEY.hex(), "colour": 1}, "auth.colour: unknown key"),
])
def test_config_auth_errors_name_the_key_never_its_value(section, error):
    with pytest.raises(ConfigError) as e:
        Config({"auth": section})
    assert error in str(e.value)
    if "key" in section:
        assert section["key"] not in str(e.value)


def test_config_auth_needs_framed_mode():
    with pytest.raises(ConfigError, match="auth: needs \"mode\": \"framed\""):
        Config({"mode": "raw", "auth": {"id": "d", "key": KEY.hex()}})


def test_keys_file_errors_name_the_device_not_the_key(tmp_path):
    from tools.hbserver.gate import load_keys

    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"dev-1": KEY.hex(), "dev-2": "0123456789abcdef0123456789abcdeX"}))
    with pytest.raises(ValueError) as e:
        load_keys(str(path))
    assert "dev-2" in str(e.value) and "hex digits only" in str(e.value)
    assert "0123456789abcdef" not in str(e.value)
    path.write_text(json.dumps({"dev-1": KEY.hex()}))
    assert load_keys(str(path)) == {b"dev-1": KEY}


@pytest.mark.parametrize("raw, words", [
    (b'{"dev-1": "0011QZ\xe9\xff"}', "not UTF-8 text (at line 1 column 18)"),  # a stray byte inside a key
    (b'{"dev-1":\n QZ0011}', "not valid JSON (Expecting value: line 2 column 2"),  # left unquoted
    (b'{"dev-1": "0011QZ\tQZ"}', "not valid JSON (Invalid control character at: line 1 column 18"),
    (b'{"dev-1": "0011QZ\\qQZ"}', "not valid JSON (Invalid \\escape: line 1 column 18"),
    (b'{"dev-1": "0011QZ', "not valid JSON (Unterminated string starting at: line 1 column 11"),
])
def test_keys_file_syntax_errors_say_where_not_what(tmp_path, raw, words):
    # The server's --auth-keys file: like the device's config, a fault inside a key is named by its place.
    from tools.hbserver.gate import load_keys

    path = tmp_path / "keys.json"
    path.write_bytes(raw)
    with pytest.raises(ValueError) as e:
        load_keys(str(path))
    text = str(e.value).replace(str(path), "")
    assert words in text, text
    assert "Q" not in text and "Z" not in text and "0x" not in text and "\\x" not in text, text
