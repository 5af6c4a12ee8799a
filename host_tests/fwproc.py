"""The firmware as a child process, for loopback tests on both host runtimes.

    with FwProc(runtime, {"port": srv.port, "beat_ms": 100}) as fw:
        ev = fw.wait_event("connected", timeout=10)
        assert ev.fields["lacking"] == "-"

A reader thread parses every output line (stdout, with stderr folded in so that a traceback shows up
in failure messages) into an Event and queues it. `wait_event` blocks on that queue with a deadline:
tests synchronise on what the firmware says, never on bare sleeps. Every wait is bounded.

The `runtime` fixture runs a test on CPython and on the MicroPython unix port. When the MicroPython
binary cannot be had the test is skipped with the reason -- unless HB_REQUIRE_MICROPYTHON is set (CI),
in which case it fails: CI must never go green by silently skipping half the matrix.
"""
import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time

import pytest

from tiers import skip_or_fail

from tools import hostrun

RUNTIMES = ("cpython", "micropython")
# The 32-bit MicroPython (a board's int and tick widths) joins where the brief is a board's behaviour:
# the loopback scenarios, the port models. Mandatory in CI through HB_REQUIRE_MICROPYTHON32.
ALL_RUNTIMES = RUNTIMES + ("micropython32",)
REQUIRE_ENV = {"micropython": "HB_REQUIRE_MICROPYTHON", "micropython32": "HB_REQUIRE_MICROPYTHON32"}

# One parsed line. `t` is time.monotonic() when the line was read (host clock); `ms` is the firmware's
# own clock (only differences within one process mean anything). Lines that are not events (a
# traceback, a warning) have ms None and name "_raw".
Event = collections.namedtuple("Event", "ms name fields line t")


def parse_line(line, t=None):
    line = line.rstrip("\r\n")
    parts = line.split(" ")
    try:
        ms = int(parts[0])
    except ValueError:
        return Event(None, "_raw", {}, line, t)
    if len(parts) < 2 or not parts[1]:
        return Event(None, "_raw", {}, line, t)
    fields = {}
    for part in parts[2:]:
        key, sep, value = part.partition("=")
        if sep:
            fields[key] = value
    return Event(ms, parts[1], fields, line, t)


# -- which runtimes can run here ---------------------------------------------------------------
_mp_status = {}  # runtime -> (ok, argv or reason), probed once


def micropython_status(runtime="micropython"):
    """(True, argv) when that MicroPython binary runs here, else (False, reason). Probed once."""
    if runtime not in _mp_status:
        try:
            argv = hostrun.runtime_argv(runtime)
        except ImportError as e:
            _mp_status[runtime] = (False, "the provisioning module is not importable: %s" % e)
        except (RuntimeError, OSError) as e:
            _mp_status[runtime] = (False, "no MicroPython binary: %s" % e)
        else:
            try:
                out = subprocess.run(
                    argv + ["-c", "import asyncio, socket, select; print('ok')"],
                    capture_output=True, text=True, timeout=30,
                )
            except (OSError, subprocess.TimeoutExpired) as e:
                _mp_status[runtime] = (False, "MicroPython binary %r does not run: %s" % (argv, e))
            else:
                if out.returncode != 0 or out.stdout.strip() != "ok":
                    _mp_status[runtime] = (False, "MicroPython binary %r failed its probe (rc=%d): %s" % (
                        argv, out.returncode, (out.stderr or out.stdout).strip()[-500:]))
                else:
                    _mp_status[runtime] = (True, argv)
    return _mp_status[runtime]


def require_runtime(runtime):
    if runtime not in REQUIRE_ENV:
        return
    ok, why = micropython_status(runtime)
    if ok:
        return
    skip_or_fail(REQUIRE_ENV[runtime], "MicroPython" if runtime == "micropython" else "32-bit MicroPython", why)


@pytest.fixture(params=RUNTIMES)
def runtime(request):
    """Both host runtimes; see the module docstring for what happens when MicroPython is missing."""
    require_runtime(request.param)
    return request.param


@pytest.fixture(params=ALL_RUNTIMES)
def any_runtime(request):
    """Both host runtimes and the 32-bit MicroPython."""
    require_runtime(request.param)
    return request.param


# -- the process -------------------------------------------------------------------------------
class FwProc:
    def __init__(self, runtime, cfg, board="unix", board_table=None, keep=200, argv=None):
        """Start the firmware. `board` names a table in boards/; `board_table`, a dict, replaces it
        (written beside the config), for tables the repository does not ship. `argv(config, board)`,
        given with a board_table, returns the program and arguments to run instead of main.py."""
        self.runtime = runtime
        self.cfg = cfg
        self.events = []  # every Event seen, in order
        self._q = queue.Queue()
        self._tail = collections.deque(maxlen=keep)
        self._stopped = False
        if board_table is None:
            self.proc, self.workdir = hostrun.start(runtime, cfg, board=board, stderr=subprocess.STDOUT)
        else:
            import tempfile

            self.workdir = tempfile.mkdtemp(prefix="hostrun-")
            bpath = os.path.join(self.workdir, "board.json")
            with open(bpath, "w") as f:
                json.dump(board_table, f)
            cpath = hostrun.prepare(cfg, self.workdir)
            args = argv(cpath, bpath) if argv else [os.path.join(hostrun.FIRMWARE_DIR, "main.py"), cpath, bpath]
            argv = hostrun.runtime_argv(runtime) + args
            self.proc = subprocess.Popen(
                argv, cwd=hostrun.FIRMWARE_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, bufsize=1, preexec_fn=hostrun.default_sigint,
            )
        self._reader = threading.Thread(target=self._read, name="fwproc-reader", daemon=True)
        self._reader.start()

    def _read(self):
        try:
            for line in self.proc.stdout:
                ev = parse_line(line, time.monotonic())
                self.events.append(ev)
                self._tail.append(ev.line)
                self._q.put(ev)
        except (OSError, ValueError):
            pass
        finally:
            self._q.put(None)  # end of output

    # -- waiting -----------------------------------------------------------------------------
    def _describe(self, what, timeout):
        rc = self.proc.poll()
        lines = "\n    ".join(self._tail) or "(no output)"
        return "%s not seen within %.1fs (%s runtime, process %s); last lines:\n    %s" % (
            what, timeout, self.runtime, "running" if rc is None else "exited rc=%s" % rc, lines)

    def wait_event(self, name, timeout=10.0, where=None):
        """Consume events until one named `name` (and satisfying `where(fields)`) arrives; return it.

        Events consumed on the way stay in self.events. Raises AssertionError at the deadline or when
        the process ends first."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(self._describe("event %r" % name, timeout))
            try:
                ev = self._q.get(timeout=left)
            except queue.Empty:
                raise AssertionError(self._describe("event %r" % name, timeout))
            if ev is None:
                self._q.put(None)  # keep the end marker for later waits
                raise AssertionError(self._describe("event %r (output ended)" % name, timeout))
            if ev.name == name and (where is None or where(ev.fields)):
                return ev

    def expect_no_event(self, name, duration, where=None):
        """Watch for `duration` seconds; fail if `name` (matching `where`) shows up. Returns the events
        consumed meanwhile. Used for the things that must NOT happen (a disconnect, a reply)."""
        deadline = time.monotonic() + duration
        seen = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return seen
            try:
                ev = self._q.get(timeout=left)
            except queue.Empty:
                return seen
            if ev is None:
                self._q.put(None)
                raise AssertionError(self._describe("process ended while watching for %r" % name, duration))
            seen.append(ev)
            if ev.name == name and (where is None or where(ev.fields)):
                raise AssertionError("unexpected %r: %s\n  last lines:\n    %s" % (
                    name, ev.line, "\n    ".join(self._tail)))

    def count(self, name, where=None):
        return sum(1 for e in list(self.events) if e.name == name and (where is None or where(e.fields)))

    def output(self):
        return "\n".join(e.line for e in list(self.events))

    # -- stopping ----------------------------------------------------------------------------
    def stop(self, timeout=5.0):
        """SIGINT (the firmware prints `stopped` and its stats), then SIGKILL after `timeout`.
        Returns the exit code."""
        if self._stopped:
            return self.proc.returncode
        self._stopped = True
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        try:
            self.proc.stdout.close()
        except OSError:
            pass
        shutil.rmtree(self.workdir, ignore_errors=True)  # the config copy hostrun wrote
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False
