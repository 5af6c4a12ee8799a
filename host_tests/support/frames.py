"""Wire frames for the tests, built and decoded with the firmware's own protocol module.

Building goes through `protocol.encode_header`, which takes any two int32 values, so a test can write a
header the decoder must refuse (a negative length, an unknown type). Decoding a captured byte stream uses
`protocol.Decoder`. (test_protocol.py alone packs headers with `struct`: there they are the independent
reference the encoder is checked against.)"""
from firmware.hbkeep import protocol
from firmware.hbkeep.protocol import DATA, HEADER_SIZE, HEART  # noqa: F401  (re-exported for tests)


def header(ftype, length):
    """An 8-byte header with any two int32 values, valid or not."""
    buf = bytearray(HEADER_SIZE)
    protocol.encode_header(buf, 0, ftype, length)
    return bytes(buf)


def frame(ftype, payload=b"", length=None):
    """A whole frame; `length` overrides the header's length field (for malformed frames)."""
    return header(ftype, len(payload) if length is None else length) + bytes(payload)


def read_header(data):
    """(type, length) of the header at the start of data."""
    return protocol.read_int32(data, 0), protocol.read_int32(data, 4)


def decode(data, max_payload=1024):
    """(frames, error, leftover): frames as (type, payload bytes); error as (field, reason) or None;
    leftover = bytes of an incomplete frame at the end (or after the error)."""
    dec = protocol.Decoder(max_payload)
    out = []
    pos = 0
    while pos < len(data):
        pos = dec.feed(data, pos, len(data))
        if dec.event == protocol.ERROR:
            return out, (dec.error_field, dec.error_reason), len(data) - pos
        if dec.event == protocol.FRAME_IN_PLACE:
            s = dec.start + HEADER_SIZE
            out.append((dec.type, bytes(data[s : s + dec.length])))
        elif dec.event == protocol.FRAME_ASSEMBLED:
            out.append((dec.type, bytes(dec.frame[HEADER_SIZE : HEADER_SIZE + dec.length])))
    return out, None, dec.have
