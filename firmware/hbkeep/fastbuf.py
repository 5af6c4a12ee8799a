# Hot byte loops compiled to machine code by MicroPython's viper emitter.
#
# Kept in a module of their own: a port built without the viper emitter rejects the whole file at
# compile time (SyntaxError), and compat.py then falls back to plain Python. CPython never imports
# this file successfully (no `micropython` module), by design.
import micropython


@micropython.viper
def upcase(buf, start: int, end: int):
    # In place, a-z only: C's toupper() in the C locale, as the seed does.
    p = ptr8(buf)  # noqa: F821 (viper builtin)
    i = start
    while i < end:
        c = p[i]
        if c >= 97 and c <= 122:
            p[i] = c - 32
        i += 1


@micropython.viper
def copy_bytes(dst, doff: int, src, soff: int, n: int):
    # memmove for non-overlapping buffers without slicing (a slice or memoryview would allocate).
    d = ptr8(dst)  # noqa: F821
    s = ptr8(src)  # noqa: F821
    i = 0
    while i < n:
        d[doff + i] = s[soff + i]
        i += 1
