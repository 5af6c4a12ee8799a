# The seed's heartbeat wire format, sans-IO. See docs/PROTOCOL.md.
#
# A frame is an 8-byte header -- two little-endian signed 32-bit ints, `type` then `length` -- and then
# `length` payload bytes. HEART (0) has length 0; DATA (1) carries its payload.
#
# The decoder is incremental and allocates nothing per frame, which matters on a board where the heap is
# a few dozen KiB: a frame lying whole inside the caller's buffer is reported where it lies (zero copy);
# a frame split across reads is assembled in one buffer allocated once.

from .compat import const, copy_bytes

# const(): written as numbers into this module's code; still importable by name from elsewhere.
HEART = const(0)
DATA = const(1)
HEADER_SIZE = const(8)

# Decoder.event after feed()
NEED_MORE = const(0)  # every byte given was consumed; a partial frame may be held
FRAME_IN_PLACE = const(1)  # a whole frame lies at buf[start:start + 8 + length]
FRAME_ASSEMBLED = const(2)  # a whole frame lies at decoder.frame[0:8 + length]
ERROR = const(3)  # the stream is broken; see error_field, error_value, error_reason


def encode_header(buf, off, ftype, length):
    # Written byte by byte: struct.pack_into would do, but this also runs unchanged where struct is
    # trimmed out of a port, and it never allocates.
    buf[off] = ftype & 0xFF
    buf[off + 1] = (ftype >> 8) & 0xFF
    buf[off + 2] = (ftype >> 16) & 0xFF
    buf[off + 3] = (ftype >> 24) & 0xFF
    buf[off + 4] = length & 0xFF
    buf[off + 5] = (length >> 8) & 0xFF
    buf[off + 6] = (length >> 16) & 0xFF
    buf[off + 7] = (length >> 24) & 0xFF


def read_int32(b, o):
    # Sign handled from the top byte so that valid headers stay small ints on 32-bit boards, where
    # anything at or above 2**30 would be a heap-allocated big int.
    top = b[o + 3]
    v = b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | ((top & 0x7F) << 24)
    if top & 0x80:
        v -= 0x80000000
    return v


class Decoder:
    def __init__(self, max_payload):
        self.max_payload = max_payload
        self.frame = self._buffer(max_payload)
        self.reset()

    def _buffer(self, max_payload):
        # The firmware holds one frame buffer for life, allocated here once: nothing per frame.
        return bytearray(HEADER_SIZE + max_payload)

    def _room(self, total, need):
        """The buffer a split frame of `total` bytes is assembled in, holding at least its first `need`
        bytes (the `have` already held are kept).

        Here the one preallocated buffer; a server with many idle clients overrides this to allocate
        only while a frame is actually split, and only as much as has arrived (tools/hbserver/conn.py)."""
        return self.frame

    def reset(self):
        self.have = 0  # bytes of a split frame held in self.frame
        self.type = 0
        self.length = 0
        self.start = 0
        self.event = NEED_MORE
        self.error_field = None
        self.error_value = 0
        self.error_reason = None

    def _check(self, ftype, length):
        # Returns True when the header is acceptable; otherwise records why. The reasons are string
        # constants of the code: reporting one allocates nothing.
        field = "length"
        if ftype != HEART and ftype != DATA:
            field = "type"
            length = ftype
            reason = "unknown"
        elif length < 0:
            reason = "negative"
        elif length > self.max_payload:
            reason = "too_large"
        elif ftype == HEART and length != 0:
            reason = "heart_with_payload"
        else:
            self.type = ftype
            self.length = length
            return True
        self.error_field = field
        self.error_value = length
        self.error_reason = reason
        self.event = ERROR
        return False

    def feed(self, buf, pos, end):
        """Consume buf[pos:end] up to the end of at most one frame; return the new position.

        Afterwards self.event says what happened. Call again with the returned position until it
        equals end. After ERROR the decoder stays broken until reset()."""
        if self.event == ERROR:
            return pos
        have = self.have
        if have == 0 and end - pos >= HEADER_SIZE:
            # At a frame boundary with a whole header in hand: the common, zero-copy case.
            if not self._check(read_int32(buf, pos), read_int32(buf, pos + 4)):
                return pos
            total = HEADER_SIZE + self.length
            if end - pos >= total:
                self.start = pos
                self.event = FRAME_IN_PLACE
                return pos + total
            copy_bytes(self._room(total, end - pos), 0, buf, pos, end - pos)
            self.have = end - pos
            self.event = NEED_MORE
            return end
        frame = self.frame
        if have < HEADER_SIZE:
            k = HEADER_SIZE - have
            if k > end - pos:
                k = end - pos
            copy_bytes(frame, have, buf, pos, k)
            pos += k
            have += k
            self.have = have
            if have < HEADER_SIZE:
                self.event = NEED_MORE
                return pos
            if not self._check(read_int32(frame, 0), read_int32(frame, 4)):
                return pos
        total = HEADER_SIZE + self.length
        k = total - have
        if k > end - pos:
            k = end - pos
        if k:
            frame = self._room(total, have + k)
            copy_bytes(frame, have, buf, pos, k)
            pos += k
            have += k
        if have == total:
            self.have = 0
            self.event = FRAME_ASSEMBLED
        else:
            self.have = have
            self.event = NEED_MORE
        return pos
