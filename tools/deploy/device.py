"""The board end of a deploy, through mpremote's serial transport (the pinned mpremote, used as a library:
one session for the whole deploy instead of one process per file).

Every failure is a DeviceError whose message says what to check; nothing sent to the board is printed.
"""
import ast
import contextlib
import io
import os
import time

from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport

# Sent once after entering the raw REPL: what the board is, whether it can load .mpy, how much flash is
# free (statvfs of the current directory, which is the flash root on a board).
FACTS = """\
import sys, os
try:
    _m = sys.implementation._mpy
except AttributeError:
    _m = None
try:
    _s = os.statvfs('.')
    _f = (_s[1] or _s[0], _s[1] * _s[4] if _s[1] else _s[0] * _s[4])
except (AttributeError, OSError):
    _f = (None, None)
print(repr((sys.implementation.name, tuple(sys.implementation.version[:3]), sys.platform, _m) + _f))
del _m, _s, _f
"""

# Size and SHA-256 of each path (None when it is missing); hashlib is on both board ports.
HASHES = """\
import os
try:
    import hashlib, binascii
except ImportError:
    hashlib = None
def _h(p):
    try:
        n = os.stat(p)[6]
    except OSError:
        return None
    if hashlib is None:
        return (n, None)
    d = hashlib.sha256()
    b = bytearray(512)
    m = memoryview(b)
    with open(p, 'rb') as f:
        while True:
            k = f.readinto(b)
            if not k:
                break
            d.update(m[:k])
    return (n, binascii.hexlify(d.digest()).decode())
print(repr({p: _h(p) for p in %r}))
del _h
"""

LISTDIR = """\
import os
try:
    print(repr([e[0] for e in os.ilistdir(%r) if e[1] == 0x8000]))
except OSError:
    print('None')
"""


class DeviceError(Exception):
    pass


def _is_path(port):
    # /dev/ttyUSB0 or ./sim-port: a file that must exist. COM3 (Windows) and socket://, rfc2217:// URLs
    # are opened as they are.
    return "://" not in port and os.sep in port


class Board:
    def __init__(self, port, timeout=10.0):
        self.port = port
        self.timeout = timeout
        if _is_path(port) and not os.path.exists(port):
            raise DeviceError("no device at %s: is the board plugged in, and is that its port? (`mpremote devs` "
                              "lists serial ports; a simulated board prints its own)" % port)
        try:
            self.t = SerialTransport(port, baudrate=115200)
        except TransportError as e:
            raise DeviceError("cannot open %s: %s (a wrong port name, or another program such as `mpremote repl` "
                              "has it open)" % (port, e))
        except Exception as e:  # pyserial raises its own types for a path that is not a serial port
            raise DeviceError("cannot open %s as a serial port: %s" % (port, e))

    def enter(self):
        """Interrupt whatever runs, soft-reset into the raw REPL (as mpremote does), or say why not."""
        # mpremote reads a pty one blocking byte at a time: without a read timeout a silent device would
        # hang it for ever. Short while probing; afterwards long enough for any board to answer.
        self.t.serial.timeout = min(1.0, self.timeout)
        # mpremote prints what it got instead of a prompt (a bare b'...' line): caught, it goes into the error.
        said = io.StringIO()
        try:
            with contextlib.redirect_stdout(said):
                self.t.enter_raw_repl(soft_reset=True, timeout_overall=self.timeout)
            self.t.serial.timeout = self.timeout
        except (TransportError, OSError) as e:
            got = said.getvalue().strip().splitlines()
            got = got[-1] if got else ""
            raise DeviceError(
                "%s does not answer as a MicroPython REPL (no raw REPL prompt within %g s: %s; %s). Is MicroPython "
                "flashed on it, and is it this board's port? A board busy in a loop that ignores Ctrl-C needs a "
                "reset first." % (self.port, self.timeout, e,
                                  "it sent nothing" if got in ("", "b''") else "it sent %s" % got[-120:]))

    def _eval(self, code):
        try:
            out = self.t.exec(code)
        except TransportError as e:
            raise DeviceError("the board failed running a deploy step: %s" % (_tail(e),))
        try:
            return ast.literal_eval(out.decode().strip().splitlines()[-1])
        except (ValueError, SyntaxError, IndexError):
            raise DeviceError("unexpected answer from the board: %r" % out[-200:])

    def facts(self):
        """dict: name, version, platform, mpy (None if absent), block, free (bytes; None if unknown)."""
        name, version, platform, mpy, block, free = self._eval(FACTS)
        return {"name": name, "version": version, "platform": platform, "mpy": mpy, "block": block or 4096,
                "free": free}

    def hashes(self, paths):
        return {p: v for p, v in self._eval(HASHES % (list(paths),)).items() if v is not None}

    def listdir(self, path):
        return self._eval(LISTDIR % path) or []

    def mkdir(self, path):
        if not self.t.fs_exists(path):
            self.t.fs_mkdir(path)

    def write(self, path, data, progress=None):
        try:
            self.t.fs_writefile(path, data, chunk_size=1024, progress_callback=progress)
        except TransportError as e:
            raise DeviceError("writing %s failed: %s" % (path, _tail(e)))

    def remove(self, path):
        try:
            self.t.fs_rmfile(path)
        except TransportError as e:
            raise DeviceError("removing %s failed: %s" % (path, _tail(e)))

    def reset(self, wait_s=None):
        """Hard reset: the board starts again and runs main.py, as after power-on.

        With `wait_s`, return once the board shows it has started again: the first line main.py prints
        (`<ms> <event> ...`) or the REPL's prompt, read on the same port (a native-USB port that goes away
        is opened again). Returns that line, or None when the board said nothing of the kind in time.
        Without the wait, a command run at once (`mpremote repl`) can send its Ctrl-C into the reset's
        delay, where it is lost, and then wait for a prompt while the firmware goes on printing."""
        self.t.exec_raw_no_follow("import time, machine; time.sleep_ms(100); machine.reset()")
        if not wait_s:
            self.close()
            return None
        ser, self.t.serial = self.t.serial, None  # kept open: what the board prints at boot is not lost
        ser.timeout = 0.2
        self.t = None  # no exit from the raw REPL: the board is resetting
        return watch(self.port, lambda line: None, stop_after=wait_s, reopen_s=wait_s, until=_booted, ser=ser)

    def close(self):
        if self.t is None:
            return
        try:
            if self.t.in_raw_repl:
                self.t.exit_raw_repl()
        except OSError:
            pass
        self.t.close()
        self.t = None


def _booted(text):
    """A line (or the unfinished last one) that shows a board running again: an event line of main.py,
    `<ms> <event>`, or the REPL's prompt (main.py stopped at once: `noboot`, a config error)."""
    head = text.split(" ", 2)
    return (len(head) > 1 and head[0].isdigit() and head[1][:1].isalpha()) or text.startswith(">>> ")


def watch(port, out, stop_after=None, reopen_s=15.0, until=None, ser=None):
    """Print what the board says, line by line, until Ctrl-C (or `stop_after` seconds). A board whose USB
    port goes away on reset (native USB) is waited for up to `reopen_s` seconds. With `until`, stop at
    the first line (or unfinished last line, for a prompt) it accepts and return it; None at the end of
    `stop_after`. `ser` is a port already open."""
    import serial

    end = time.monotonic() + stop_after if stop_after else None
    buf = b""
    gone_since = None
    try:
        while end is None or time.monotonic() < end:
            if ser is None:
                try:
                    ser = serial.serial_for_url(port, baudrate=115200, timeout=0.2)
                    gone_since = None
                except (serial.SerialException, OSError):
                    gone_since = gone_since or time.monotonic()
                    if time.monotonic() - gone_since > reopen_s:
                        raise DeviceError("%s went away after the reset and did not come back in %.0f s"
                                          % (port, reopen_s))
                    time.sleep(0.2)  # waiting for the OS to bring a device node back: nothing to wait on
                    continue
            try:
                chunk = ser.read(256)
            except (serial.SerialException, OSError):
                ser.close()
                ser = None
                continue
            buf += chunk
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                text = line.rstrip(b"\r").decode("utf-8", "replace")
                out(text)
                if until is not None and until(text):
                    return text
            if until is not None and buf and until(buf.decode("utf-8", "replace")):
                return buf.decode("utf-8", "replace")
        return None
    finally:
        if ser is not None:
            ser.close()


def _tail(e):
    text = " ".join(str(a) for a in e.args)
    return text.strip().splitlines()[-1] if text.strip() else repr(e)
