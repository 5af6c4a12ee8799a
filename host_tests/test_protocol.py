"""The wire format against the seed's C layout, and the incremental decoder under every split."""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from firmware.hbkeep import protocol
from firmware.hbkeep.protocol_host import encode
from firmware.hbkeep.protocol import DATA, HEART, Decoder


def decode_all(chunks, max_payload=1024):
    """Feed chunks one by one; return (frames, error) where error is (field, value, reason) or None."""
    dec = Decoder(max_payload)
    frames = []
    for chunk in chunks:
        buf = bytearray(chunk)
        pos = 0
        while pos < len(buf):
            pos = dec.feed(buf, pos, len(buf))
            if dec.event == protocol.ERROR:
                return frames, (dec.error_field, dec.error_value, dec.error_reason)
            if dec.event == protocol.FRAME_IN_PLACE:
                frames.append((dec.type, bytes(buf[dec.start + 8 : dec.start + 8 + dec.length])))
            elif dec.event == protocol.FRAME_ASSEMBLED:
                frames.append((dec.type, bytes(dec.frame[8 : 8 + dec.length])))
    return frames, None


def test_header_is_the_seeds_struct_byte_for_byte():
    # struct PACKET_HEAD { enum Type type; int length; } on a little-endian machine.
    assert encode(HEART) == struct.pack("<ii", 0, 0)
    assert encode(DATA, b"abc") == struct.pack("<ii", 1, 3) + b"abc"
    buf = bytearray(8)
    protocol.encode_header(buf, 0, 1, 70000)
    assert bytes(buf) == struct.pack("<ii", 1, 70000)
    protocol.encode_header(buf, 0, -2, -1)
    assert bytes(buf) == struct.pack("<ii", -2, -1)


@pytest.mark.parametrize("v", [0, 1, 255, 256, 70000, 2**31 - 1, -1, -(2**31), -12345])
def test_read_int32_matches_struct(v):
    assert protocol.read_int32(struct.pack("<i", v), 0) == v


def test_whole_frames_are_reported_in_place_without_copying():
    buf = bytearray(encode(DATA, b"xy") + encode(HEART))
    dec = Decoder(16)
    assert dec.feed(buf, 0, len(buf)) == 10
    assert (dec.event, dec.type, dec.length, dec.start) == (protocol.FRAME_IN_PLACE, DATA, 2, 0)
    assert dec.feed(buf, 10, len(buf)) == 18
    assert (dec.event, dec.type, dec.start) == (protocol.FRAME_IN_PLACE, HEART, 10)


def test_split_frame_is_assembled():
    data = encode(DATA, b"hello")
    frames, err = decode_all([data[:3], data[3:9], data[9:]])
    assert err is None and frames == [(DATA, b"hello")]


def test_one_byte_at_a_time():
    stream = encode(DATA, b"a") + encode(HEART) + encode(DATA, b"") + encode(DATA, b"zz")
    frames, err = decode_all([stream[i : i + 1] for i in range(len(stream))])
    assert err is None
    assert frames == [(DATA, b"a"), (HEART, b""), (DATA, b""), (DATA, b"zz")]


@pytest.mark.parametrize(
    "header,expected",
    [
        ((1, -1), ("length", -1, "negative")),
        ((1, -(2**31)), ("length", -(2**31), "negative")),
        ((1, 1025), ("length", 1025, "too_large")),
        ((2, 0), ("type", 2, "unknown")),
        ((-1, 0), ("type", -1, "unknown")),
        ((0, 1), ("length", 1, "heart_with_payload")),
    ],
)
def test_bad_headers_name_field_value_and_reason(header, expected):
    frames, err = decode_all([encode(DATA, b"ok") + struct.pack("<ii", *header) + b"rest"])
    assert frames == [(DATA, b"ok")]
    assert err == expected


def test_length_at_max_payload_is_accepted():
    frames, err = decode_all([encode(DATA, b"q" * 64)], max_payload=64)
    assert err is None and frames == [(DATA, b"q" * 64)]


def test_decoder_stays_broken_after_an_error_until_reset():
    dec = Decoder(8)
    bad = bytearray(struct.pack("<ii", 9, 0))
    dec.feed(bad, 0, 8)
    assert dec.event == protocol.ERROR
    good = bytearray(encode(HEART))
    assert dec.feed(good, 0, 8) == 0 and dec.event == protocol.ERROR
    dec.reset()
    assert dec.feed(good, 0, 8) == 8 and dec.event == protocol.FRAME_IN_PLACE


frame_st = st.one_of(
    st.just((HEART, b"")),
    st.tuples(st.just(DATA), st.binary(max_size=300)),
)


def split(data, cuts):
    points = sorted(set(c % (len(data) + 1) for c in cuts)) if data else []
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(frame_st, max_size=20), st.lists(st.integers(0, 10**6), max_size=30))
def test_any_split_gives_the_same_frames(frames, cuts):
    stream = b"".join(encode(t, p) for t, p in frames)
    got, err = decode_all(split(stream, cuts), max_payload=300)
    assert err is None
    assert got == frames


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(0, 10**6), max_size=20))
def test_garbage_gives_frames_or_a_clean_error_and_splits_do_not_matter(data, cuts):
    whole = decode_all([data], max_payload=64)
    pieces = decode_all(split(data, cuts), max_payload=64)
    assert whole == pieces  # same frames, same error (or none), whatever the split
    frames, err = whole
    assert all(len(p) <= 64 for _, p in frames)
    if err is not None:
        assert err[0] in ("type", "length")
