"""The simulated board (`python -m tools.simboard`) as a child process, for tests.

    with SimBoardProc(tmp_path / "flash") as sb:
        con = sb.console()                 # the board's serial port, opened like a board's
        con.expect(b"hello", timeout=10)
        sb.command("power")                # power-cycle
        sb.wait_note("power on", timeout=10)

Every wait is bounded and fails with what was seen. The simulator also gets --timeout, so it stops by
itself even if a test dies before tearing it down.
"""
import os
import queue
import subprocess
import sys
import threading
import time

import serial

from support.fwproc import micropython_status
from support.tiers import skip_or_fail
from tools.paths import FIRMWARE_DIR, HOST_ONLY, PACKAGE_DIR, REPO as ROOT
MPREMOTE = [sys.executable, "-m", "mpremote"]


def flash_firmware(flash, boot_py=False):
    """Fill the directory `flash` (a pathlib.Path) as a board's filesystem after a source deploy: the
    hbkeep package without the host-only modules (tools/paths.py HOST_ONLY), main.py, and boot.py if
    asked. The caller adds board.json and config.json."""
    import shutil

    (flash / "hbkeep").mkdir(parents=True)
    for name in os.listdir(PACKAGE_DIR):
        if name.endswith(".py") and name not in HOST_ONLY:
            shutil.copy(os.path.join(PACKAGE_DIR, name), str(flash / "hbkeep" / name))
    shutil.copy(os.path.join(FIRMWARE_DIR, "main.py"), str(flash / "main.py"))
    if boot_py:
        shutil.copy(os.path.join(FIRMWARE_DIR, "boot.py"), str(flash / "boot.py"))
    return flash


def require_micropython():
    ok, why = micropython_status()
    if not ok:
        skip_or_fail("HB_REQUIRE_MICROPYTHON", "MicroPython (the simulated board runs it)", why)


class Console:
    """The board's serial port as a user's terminal sees it."""

    def __init__(self, port):
        self.ser = serial.Serial(port, 115200, timeout=0.1)
        self.seen = b""

    def write(self, data):
        self.ser.write(data)

    def expect(self, marker, timeout=10.0):
        """Read until `marker` has arrived (in what came since the last expect); return that text."""
        deadline = time.monotonic() + timeout
        while marker not in self.seen:
            if time.monotonic() > deadline:
                raise AssertionError("no %r from the board in %ss; got: %r" % (marker, timeout, self.seen[-600:]))
            self.seen += self.ser.read(4096)
        before, _, self.seen = self.seen.partition(marker)
        return before + marker

    def close(self):
        self.ser.close()


class SimBoardProc:
    def __init__(self, flash, *args, timeout=240):
        require_micropython()
        self.flash = str(flash)
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "tools.simboard", "--flash", self.flash, "--timeout", str(timeout), *args],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.notes = []  # the simulator's stderr lines
        self._notes = queue.Queue()
        self._out = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self._notes), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._out), daemon=True).start()
        try:
            line = self._out.get(timeout=30)
        except queue.Empty:
            line = None
        if not line or not line.startswith("port="):
            self.close()
            raise AssertionError("the simulator printed no port: %r; notes: %s" % (line, self.notes))
        self.port = line[len("port="):].strip()
        self._consoles = []

    @staticmethod
    def _pump(stream, q):
        for raw in stream:
            q.put(raw.decode("utf-8", "replace").rstrip("\n"))
        q.put(None)

    def console(self):
        con = Console(self.port)
        self._consoles.append(con)
        return con

    def command(self, line):
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def wait_note(self, text, timeout=15.0, after=0):
        """The first note (stderr line) at index >= `after` containing `text`; returns its index."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(after, len(self.notes)):
                if text in self.notes[i]:
                    return i
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("simulator never said %r in %ss; notes: %s" % (text, timeout, self.notes[-12:]))
            try:
                line = self._notes.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError("simulator exited (rc=%s) before %r; notes: %s" % (
                    self.proc.poll(), text, self.notes[-12:]))
            self.notes.append(line)

    def drain_notes(self):
        while True:
            try:
                line = self._notes.get_nowait()
            except queue.Empty:
                return self.notes
            if line is None:
                return self.notes
            self.notes.append(line)

    def mpremote(self, *args, timeout=60):
        """Run the real mpremote against the board; returns CompletedProcess (text)."""
        return subprocess.run(MPREMOTE + ["connect", self.port, *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)

    def close(self):
        for con in getattr(self, "_consoles", []):
            con.close()
        if self.proc.poll() is None:
            try:
                self.command("quit")
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
