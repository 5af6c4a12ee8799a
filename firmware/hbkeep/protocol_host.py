# The host's half of the wire format (protocol.py): whole frames built as bytes, for the heartbeat
# server, the host tools and the tests. It allocates per frame, which a board must not, and no board
# needs it: tools/paths.py lists it as host-only, so it is neither compiled to .mpy nor deployed.
from .protocol import HEADER_SIZE, encode_header


def encode(ftype, payload=b""):
    """One frame: the 8-byte header for ftype and len(payload), then the payload."""
    buf = bytearray(HEADER_SIZE + len(payload))
    encode_header(buf, 0, ftype, len(payload))
    buf[HEADER_SIZE:] = payload
    return bytes(buf)
