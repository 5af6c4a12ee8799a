"""Decode a whole captured byte stream into frames, with the firmware's own decoder (for assertions)."""
from firmware.hbkeep import protocol


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
            s = dec.start + protocol.HEADER_SIZE
            out.append((dec.type, bytes(data[s : s + dec.length])))
        elif dec.event == protocol.FRAME_ASSEMBLED:
            out.append((dec.type, bytes(dec.frame[protocol.HEADER_SIZE : protocol.HEADER_SIZE + dec.length])))
    return out, None, dec.have
