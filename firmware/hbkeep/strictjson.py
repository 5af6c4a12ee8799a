# A strict JSON reader for the config file, the same on every runtime.
#
# Why not json.loads: MicroPython's parser is lenient where CPython's is strict (it accepts a trailing
# comma, a missing colon, a leading zero, a document cut short), CPython's accepts NaN where
# MicroPython's does not, and both recurse without limit (RecursionError on CPython, RuntimeError on
# MicroPython). A config that starts on the board but is refused by tools.hostrun, or the other way
# round, is a trap; so both paths parse with this one reader. It works on bytes (indexing a non-ASCII
# str is O(n) on MicroPython), limits nesting, and reports line and column of the first fault.
#
# Errors name where and what, never what the file holds there: the reader cannot tell which value is the
# Wi-Fi password or the auth key, so no character of a value (nor its code, nor which control character
# it is) is ever repeated. Keys are named: they are not secret.

from .compat import const

MAX_DEPTH = const(8)  # a valid config nests two levels ({"keepalive": {...}}); deeper is a mistake or an attack
_MAX_DIGITS = const(18)  # longer numbers are no setting anyone means, and would make big ints on a board
_ESCAPES = {0x22: '"', 0x5C: "\\", 0x2F: "/", 0x62: "\b", 0x66: "\f", 0x6E: "\n", 0x72: "\r", 0x74: "\t"}


class JSONError(ValueError):
    pass


def loads(data):
    """Parse `data` (bytes, UTF-8) into dicts, lists, str, int, float, bool and None.

    Raises JSONError("what, at line L column C"). Duplicate keys are an error: which value wins
    differs between readers, and a setting written twice is a mistake either way."""
    try:
        data.decode()
    except UnicodeError:
        raise JSONError("not UTF-8 text")
    p = _Parser(data)
    if data[:3] == b"\xef\xbb\xbf":  # what some editors put first; CPython's json refuses it too
        p.fail("a byte order mark (BOM)", 0, ": save the file as UTF-8 without one")
    p.ws()
    if p.i >= p.n:
        p.fail("empty document")
    v = p.value(0)
    p.ws()
    if p.i < p.n:
        p.fail("extra data after the JSON value")
    return v


class _Parser:
    def __init__(self, b):
        self.b = b
        self.n = len(b)
        self.i = 0

    def fail(self, what, i=-1, end=""):
        # At self.i unless told where (i); `end` (a hint) follows the position. Named `end`, a name the
        # runtime holds already: a new argument name would stay on the heap after this module is gone.
        if i < 0:
            i = self.i
        line = self.b.count(b"\n", 0, i) + 1
        col = i - (self.b.rfind(b"\n", 0, i) + 1) + 1
        raise JSONError("%s at line %d column %d%s" % (what, line, col, end))

    def ws(self):
        b = self.b
        n = self.n
        i = self.i
        while i < n and b[i] in b" \t\r\n":
            i += 1
        self.i = i

    def peek(self, what):
        if self.i >= self.n:
            self.fail("document ends early, %s expected (is the file complete?)" % what)
        return self.b[self.i]

    def value(self, depth):
        c = self.peek("a value")
        if c == 0x7B:  # {
            return self.obj(depth + 1)
        if c == 0x5B:  # [
            return self.arr(depth + 1)
        if c == 0x22:  # "
            return self.string()
        if c == 0x2D or 0x30 <= c <= 0x39:
            return self.number()
        for word, v in ((b"true", True), (b"false", False), (b"null", None)):
            if self.b[self.i : self.i + len(word)] == word:
                self.i += len(word)
                return v
        # Not the character found: it may be the first of an unquoted password.
        self.fail("a value expected", -1, " (a string in double quotes, a number, true, false, null, {...} or [...])")

    def obj(self, depth):
        if depth > MAX_DEPTH:
            self.fail("nested deeper than %d levels" % MAX_DEPTH)
        self.i += 1
        out: dict = {}
        self.ws()
        if self.peek("a key or }") == 0x7D:
            self.i += 1
            return out
        while True:
            self.ws()
            c = self.peek("a key")
            if c != 0x22:
                self.fail("trailing comma" if c == 0x7D else "a key in double quotes expected")
            k0 = self.i
            key = self.string()
            self.ws()
            if self.peek("':'") != 0x3A:
                # Not echoed: with its key forgotten (`{"ssid": "lab", "hunter2"}`) this "key" is a value,
                # maybe the Wi-Fi password or the auth key. Line and column say where.
                self.fail("':' expected after a key")
            if key in out:  # only now known to be a key, and so fit to be named
                self.fail("key %r given twice" % key, k0)
            self.i += 1
            self.ws()
            out[key] = self.value(depth)
            self.ws()
            c = self.peek("',' or '}'")
            self.i += 1
            if c == 0x7D:
                return out
            if c != 0x2C:
                self.i -= 1
                self.fail("',' or '}' expected")

    def arr(self, depth):
        if depth > MAX_DEPTH:
            self.fail("nested deeper than %d levels" % MAX_DEPTH)
        self.i += 1
        out: list = []
        self.ws()
        if self.peek("a value or ]") == 0x5D:
            self.i += 1
            return out
        while True:
            self.ws()
            if self.peek("a value") == 0x5D:
                self.fail("trailing comma")
            out.append(self.value(depth))
            self.ws()
            c = self.peek("',' or ']'")
            self.i += 1
            if c == 0x5D:
                return out
            if c != 0x2C:
                self.i -= 1
                self.fail("',' or ']' expected")

    def string(self):
        b = self.b
        n = self.n
        s0 = self.i  # an unclosed string is named where it starts: there its closing quote is missing
        self.i += 1
        parts = []
        start = self.i
        while True:
            if self.i >= n:
                self.fail("document ends inside the string that starts", s0,
                          " (its closing quote missing, or the file cut short?)")
            c = b[self.i]
            if c == 0x22:
                parts.append(b[start : self.i].decode())
                self.i += 1
                return "".join(parts)
            if c < 0x20:
                # Which one is not said (a tab or a line break may be part of the password), nor where in
                # the string.
                self.fail("control character inside the string that starts", s0,
                          " (its closing quote missing? a tab or line break in a string is written \\t or \\n)")
            if c != 0x5C:
                self.i += 1
                continue
            parts.append(b[start : self.i].decode())
            self.i += 1
            e = self.peek("an escape")
            if e == 0x75:  # \uXXXX, with UTF-16 surrogate pairs
                u0 = self.i - 1
                cp = self.hex4()
                if 0xD800 <= cp < 0xDC00 and b[self.i : self.i + 2] == b"\\u":
                    self.i += 1
                    lo = self.hex4()
                    if not 0xDC00 <= lo < 0xE000:
                        self.fail("invalid surrogate pair", u0)
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                if 0xD800 <= cp < 0xE000:  # its digits are not repeated: they are part of the value
                    self.fail("lone surrogate in a \\u escape", u0, " (half of a UTF-16 pair)")
                parts.append(chr(cp))
            elif e in _ESCAPES:
                parts.append(_ESCAPES[e])
                self.i += 1
            else:
                self.fail("invalid escape", self.i - 1, " (after a backslash: \" \\ / b f n r t or u and 4 hex digits; "
                          "a backslash itself is written \\\\)")
            start = self.i

    def hex4(self):
        # self.i is at the 'u'
        h = self.b[self.i + 1 : self.i + 5]
        if len(h) < 4:
            self.fail("document ends inside a \\u escape")
        v = 0
        for c in h:
            d = b"0123456789abcdef".find(bytes((c,)).lower())
            if d < 0:
                self.fail("invalid \\u escape")
            v = v * 16 + d
        self.i += 5
        return v

    def number(self):
        b = self.b
        n = self.n
        start = self.i
        i = start
        if b[i] == 0x2D:
            i += 1
        d0 = i
        while i < n and 0x30 <= b[i] <= 0x39:
            i += 1
        if i == d0:
            self.i = i
            self.fail("digit expected")
        if b[d0] == 0x30 and i - d0 > 1:
            self.i = d0
            self.fail("leading zero in a number")
        frac = False
        if i < n and b[i] == 0x2E:
            i += 1
            f0 = i
            while i < n and 0x30 <= b[i] <= 0x39:
                i += 1
            if i == f0:
                self.i = i
                self.fail("digit expected after '.'")
            frac = True
        if i < n and b[i] in b"eE":
            i += 1
            if i < n and b[i] in b"+-":
                i += 1
            e0 = i
            while i < n and 0x30 <= b[i] <= 0x39:
                i += 1
            if i == e0:
                self.i = i
                self.fail("digit expected in the exponent")
            frac = True
        if i - start > _MAX_DIGITS:
            self.fail("number longer than %d characters" % _MAX_DIGITS)
        self.i = i
        text = b[start:i]
        return float(text.decode()) if frac else int(text.decode())
