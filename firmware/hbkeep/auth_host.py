# The server's side of device authentication (auth.py has the device's and the shared parts). Host-only:
# tools.hbserver uses it; no board ships it.
from .auth import (  # noqa: F401
    AUTH_MAX, AUTH_MIN, MAC_SIZE, NONCE_SIZE, WELCOME, AuthError, device_mac, equal, frame, server_proof,
)

# Server-side outcomes of one AUTH frame.
UNKNOWN_ID = "unknown_id"
BAD_MAC = "bad_mac"
BAD_FRAME = "bad_frame"
REPLAY = "replay"


def parse_auth(payload):
    """(dnonce, mac, id bytes) of an AUTH payload; AuthError(BAD_FRAME) when its length is wrong."""
    n = len(payload)
    if n < AUTH_MIN or n > AUTH_MAX:
        raise AuthError(BAD_FRAME)
    return (bytes(payload[:NONCE_SIZE]), bytes(payload[NONCE_SIZE : NONCE_SIZE + MAC_SIZE]),
            bytes(payload[NONCE_SIZE + MAC_SIZE :]))


def verify_auth(keys, snonce, payload):
    """The server's check of an AUTH payload against its keys (id bytes -> key bytes).

    Returns (id bytes, dnonce, WELCOME frame); raises AuthError(reason) otherwise. The mac is computed
    and compared in full even for an unknown id, so the answer's timing does not tell which ids exist."""
    dnonce, mac, dev_id = parse_auth(payload)
    key = keys.get(dev_id)
    want = device_mac(key if key is not None else b"\0" * 32, snonce, dnonce, dev_id)
    ok = equal(want, mac)
    if key is None:
        raise AuthError(UNKNOWN_ID)
    if not ok:
        raise AuthError(BAD_MAC)
    return dev_id, dnonce, frame(WELCOME, server_proof(key, dnonce, snonce, dev_id))
