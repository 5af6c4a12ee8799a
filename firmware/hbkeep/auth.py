# Device authentication, sans-IO: HMAC-SHA256, the three frames (docs/PROTOCOL.md, "Authentication")
# and the checks on both sides. Imported only when a config or a server turns authentication on, so
# the plain protocol pays nothing for it on a board.
#
# The exchange, on the usual 8-byte header:
#   server -> device  CHALLENGE  snonce (16 random bytes, fresh per connection), at once on accept
#   device -> server  AUTH       dnonce (16) | mac (32) | id (UTF-8, 1..64 bytes)
#                                mac   = HMAC-SHA256(key, b"hb1-device" | snonce | dnonce | id)
#   server -> device  WELCOME    proof = HMAC-SHA256(key, b"hb1-server" | dnonce | snonce | id)
# Both sides prove they hold the key; each side's nonce makes the other's answer useless elsewhere.
# Nothing here prints, and no error text carries a key, a nonce or a mac.
import hashlib

from .protocol import HEADER_SIZE, encode_header, read_int32

CHALLENGE = 2
AUTH = 3
WELCOME = 4

NONCE_SIZE = 16
MAC_SIZE = 32
ID_MAX = 64
AUTH_MIN = NONCE_SIZE + MAC_SIZE + 1
AUTH_MAX = NONCE_SIZE + MAC_SIZE + ID_MAX
KEY_HEX_MIN = 32
KEY_HEX_MAX = 128

DEVICE_LABEL = b"hb1-device"
SERVER_LABEL = b"hb1-server"

_BLOCK = 64  # SHA-256's block size, in bytes


class AuthError(Exception):
    """A failed exchange. args[0] is a short reason for event lines (never secret material)."""


def hmac_sha256_py(key, msg):
    # RFC 2104 in a few lines, for ports without an `hmac` module: hashlib.sha256 is on every port.
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    pad = bytearray(_BLOCK)
    pad[: len(key)] = key
    ipad = bytearray(_BLOCK)
    opad = bytearray(_BLOCK)
    for i in range(_BLOCK):
        ipad[i] = pad[i] ^ 0x36
        opad[i] = pad[i] ^ 0x5C
    inner = hashlib.sha256(ipad)
    inner.update(msg)
    outer = hashlib.sha256(opad)
    outer.update(inner.digest())
    return outer.digest()


try:
    from hmac import digest as _digest  # type: ignore[import-not-found]  # CPython only: C speed

    def hmac_sha256(key, msg):
        return _digest(key, msg, "sha256")

except ImportError:  # MicroPython ports have no hmac module
    hmac_sha256 = hmac_sha256_py


def equal(a, b):
    """Compare two macs in time that depends only on their length, not on where they first differ."""
    if len(a) != len(b):
        return False
    d = 0
    for i in range(len(a)):
        d |= a[i] ^ b[i]
    return d == 0


def device_mac(key, snonce, dnonce, dev_id):
    return hmac_sha256(key, DEVICE_LABEL + snonce + dnonce + dev_id)


def server_proof(key, dnonce, snonce, dev_id):
    return hmac_sha256(key, SERVER_LABEL + dnonce + snonce + dev_id)


def check_id(dev_id):
    """The id as bytes; ValueError naming what is wrong (ids are not secret)."""
    if not isinstance(dev_id, str):
        raise ValueError("id: expected a string")  # not shown: an object or a list may hold the key
    b = dev_id.encode()
    if not 1 <= len(b) <= ID_MAX:
        raise ValueError("id: expected 1 to %d bytes of UTF-8, got %d" % (ID_MAX, len(b)))
    return b


def parse_key(text):
    """A hex key (32 to 128 hex digits) as bytes. The error never repeats the value: it is a secret."""
    if not isinstance(text, str):
        raise ValueError("key: expected a string of hex digits")
    n = len(text)
    if n < KEY_HEX_MIN or n > KEY_HEX_MAX or n % 2:
        raise ValueError("key: expected an even number of hex digits from %d to %d, got %d characters"
                         % (KEY_HEX_MIN, KEY_HEX_MAX, n))
    try:
        return bytes(int(text[i : i + 2], 16) for i in range(0, n, 2))
    except ValueError:
        raise ValueError("key: expected hex digits only (0-9, a-f)")


def frame(ftype, payload):
    buf = bytearray(HEADER_SIZE + len(payload))
    encode_header(buf, 0, ftype, len(payload))
    buf[HEADER_SIZE:] = payload
    return buf


def header(buf):
    """(type, length) of the 8-byte header at buf[0:8]."""
    return read_int32(buf, 0), read_int32(buf, 4)


class DeviceAuth:
    """The device's side. The driver reads the CHALLENGE frame (8 + 16 bytes), hands it to answer(),
    writes the AUTH frame returned, reads 8 + 32 bytes and hands them to check_welcome()."""

    CHALLENGE_FRAME = HEADER_SIZE + NONCE_SIZE
    WELCOME_FRAME = HEADER_SIZE + MAC_SIZE

    def __init__(self, dev_id, key, urandom=None):
        self.id = check_id(dev_id)
        self.key = key
        if urandom is None:
            from os import urandom  # on every port that has networking, and on CPython
        self.urandom = urandom
        self.snonce = None
        self.dnonce = None
        # One buffer for both frames the device reads (the client makes one DeviceAuth per connection).
        self.buf = bytearray(max(self.CHALLENGE_FRAME, self.WELCOME_FRAME))

    def challenge_view(self):
        return memoryview(self.buf)[: self.CHALLENGE_FRAME]

    def welcome_view(self):
        return memoryview(self.buf)[: self.WELCOME_FRAME]

    def welcome_header_ok(self, welcome):
        t, n = header(welcome)
        return t == WELCOME and n == MAC_SIZE

    def answer(self, challenge):
        """challenge: the whole CHALLENGE frame. Returns the AUTH frame to send."""
        t, n = header(challenge)
        if t != CHALLENGE or n != NONCE_SIZE:
            raise AuthError("expected_challenge")
        self.snonce = bytes(challenge[HEADER_SIZE : HEADER_SIZE + NONCE_SIZE])
        self.dnonce = self.urandom(NONCE_SIZE)
        mac = device_mac(self.key, self.snonce, self.dnonce, self.id)
        return frame(AUTH, self.dnonce + mac + self.id)

    def check_welcome(self, welcome):
        """welcome: the 8 header bytes and, when the header is WELCOME's, the 32 after. Raises AuthError
        unless it is a WELCOME carrying the right proof."""
        if not self.welcome_header_ok(welcome):
            raise AuthError("expected_welcome")
        proof = server_proof(self.key, self.dnonce, self.snonce, self.id)
        if not equal(proof, welcome[HEADER_SIZE : HEADER_SIZE + MAC_SIZE]):
            raise AuthError("bad_proof")
