"""Event lines read back from a child process: the one parser, and the one way to start tools.hbserver.

The firmware prints `<ms> <name> key=value ...` (docs/EVENTS.md); tools.hbserver prints the same, or one
JSON object per line with --json (`{"t": <ms>, "ev": <name>, ...}`, docs/SERVER.md). `parse_line` reads
both. `EventProc` runs any such process with a reader thread and bounded waits on what it says (tests
synchronise on these lines, never on sleeps); `HbServerProc` starts tools.hbserver on a free port and
waits for its `listening` line. The demo, the server benchmark and the tests all use these.
"""
import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

from tools.hostrun import default_sigint
from tools.paths import REPO

# One parsed line. `ms` is the process's own clock (only differences within one process mean anything);
# `t` is time.monotonic() when the line was read here (None when parsed without a clock). A line that is
# not an event (a traceback, a warning) has ms None and name "_raw". Field values are strings for text
# lines and JSON values (numbers stay numbers) for JSON lines.
Event = collections.namedtuple("Event", "ms name fields line t")

RAW = "_raw"


def parse_line(line, t=None):
    line = line.rstrip("\r\n")
    if line.startswith("{"):
        try:
            d = json.loads(line)
        except ValueError:
            return Event(None, RAW, {}, line, t)
        if not isinstance(d, dict) or "ev" not in d:
            return Event(None, RAW, {}, line, t)
        fields = {k: v for k, v in d.items() if k not in ("t", "ev")}
        return Event(d.get("t"), d["ev"], fields, line, t)
    parts = line.split(" ")
    try:
        ms = int(parts[0])
    except ValueError:
        return Event(None, RAW, {}, line, t)
    if len(parts) < 2 or not parts[1]:
        return Event(None, RAW, {}, line, t)
    fields = {}
    for part in parts[2:]:
        key, sep, value = part.partition("=")
        if sep:
            fields[key] = value
    return Event(ms, parts[1], fields, line, t)


def follow(tag, stream, q):
    """Put (tag, line) on queue q for every line of stream, then (tag, None) at its end, from a thread."""

    def pump():
        for line in stream:
            q.put((tag, line.rstrip("\n")))
        q.put((tag, None))

    threading.Thread(target=pump, daemon=True).start()


class WaitFailed(AssertionError):
    """An awaited line did not come in time, or the process ended first. An AssertionError, so that in a
    test it reads as the failure it is; the message names the wait and quotes the last lines."""


class EventProc:
    """A child process printing event lines (stderr folded into stdout, so a traceback shows up in
    failure messages), read by a thread into `events` (every line, in order) and a queue that the waits
    consume. Every wait is bounded.

    `popen` are more subprocess.Popen arguments (e.g. process_group=0). `tee=(queue, tag)` also puts (tag, line) on that queue for every line, and (tag, None) at the end,
    for a caller that merges several processes' output; such a caller may set `record` to False once it
    no longer waits here, so that a long run does not keep every line twice. `workdir` is removed by
    stop()."""

    def __init__(self, argv, label, cwd=None, workdir=None, tee=None, stop_signal=signal.SIGINT, keep=200,
                 **popen):
        self.label = label
        self.argv = list(argv)
        self.workdir = workdir
        self.stop_signal = stop_signal
        self.events = []
        self.record = True  # keep lines in `events` and for the waits
        self._q = queue.Queue()
        self._tail = collections.deque(maxlen=keep)
        self._tee = tee
        self._stopped = False
        self.proc = subprocess.Popen(
            self.argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            preexec_fn=default_sigint,  # stoppable with SIGINT even if we inherited it ignored
            **popen)
        self._reader = threading.Thread(target=self._read, name="eventproc-" + label, daemon=True)
        self._reader.start()

    def _read(self):
        try:
            for line in self.proc.stdout:
                ev = parse_line(line, time.monotonic())
                self._tail.append(ev.line)
                if self.record:
                    self.events.append(ev)
                    self._q.put(ev)
                if self._tee is not None:
                    self._tee[0].put((self._tee[1], ev.line))
        except (OSError, ValueError):
            pass
        finally:
            self._q.put(None)  # end of output
            if self._tee is not None:
                self._tee[0].put((self._tee[1], None))

    # -- waiting -----------------------------------------------------------------------------------
    def _describe(self, what, timeout):
        rc = self.proc.poll()
        lines = "\n    ".join(self._tail) or "(no output)"
        return "%s not seen within %.1fs (%s, process %s); last lines:\n    %s" % (
            what, timeout, self.label, "running" if rc is None else "exited rc=%s" % rc, lines)

    def wait_event(self, name, timeout=10.0, where=None, past=False):
        """Consume events until one named `name` (and satisfying `where(fields)`) arrives; return it.
        With `past`, the first such event read so far, consumed or not, is returned at once if there is one.

        Events consumed on the way stay in self.events. Raises WaitFailed at the deadline or when the
        process ends first."""
        if past:
            for ev in list(self.events):
                if ev.name == name and (where is None or where(ev.fields)):
                    return ev
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitFailed(self._describe("event %r" % name, timeout))
            try:
                ev = self._q.get(timeout=left)
            except queue.Empty:
                raise WaitFailed(self._describe("event %r" % name, timeout))
            if ev is None:
                self._q.put(None)  # keep the end marker for later waits
                raise WaitFailed(self._describe("event %r (output ended)" % name, timeout))
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
                raise WaitFailed(self._describe("process ended while watching for %r" % name, duration))
            seen.append(ev)
            if ev.name == name and (where is None or where(ev.fields)):
                raise WaitFailed("unexpected %r: %s\n  last lines:\n    %s" % (
                    name, ev.line, "\n    ".join(self._tail)))

    def rest(self, timeout=10.0):
        """Wait for the output to end (the process closing stdout); return the events not yet consumed."""
        deadline = time.monotonic() + timeout
        out = []
        while True:
            left = deadline - time.monotonic()
            try:
                ev = self._q.get(timeout=max(0.0, left))
            except queue.Empty:
                raise WaitFailed(self._describe("end of output", timeout))
            if ev is None:
                self._q.put(None)
                return out
            out.append(ev)

    def count(self, name, where=None):
        return sum(1 for e in list(self.events) if e.name == name and (where is None or where(e.fields)))

    def output(self):
        return "\n".join(e.line for e in list(self.events))

    def raw_lines(self):
        """Output lines that are not events: a traceback, a MemoryError, a warning."""
        return [e.line for e in list(self.events) if e.name == RAW and e.line.strip()]

    def fd_count(self):
        """Open descriptors of the process, read from outside (-1 once it is gone)."""
        try:
            return len(os.listdir("/proc/%d/fd" % self.proc.pid))
        except OSError:
            return -1

    # -- stopping ----------------------------------------------------------------------------------
    def stop(self, timeout=5.0):
        """stop_signal (SIGINT: the firmware prints `stopped` and its stats), then SIGKILL after
        `timeout`. Returns the exit code."""
        if self._stopped:
            return self.proc.returncode
        self._stopped = True
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(self.stop_signal)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        try:
            self.proc.stdout.close()
        except OSError:
            pass
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


class HbServerProc(EventProc):
    """`python3 -m tools.hbserver` as a child process, started on `host` (127.0.0.1) and `port` (0: a free
    one), with `args` appended; returns once its `listening` line is read, `port` then being the bound
    port; `as_json` adds --json. Raises WaitFailed (after killing the process) when no `listening` line comes within
    `listen_timeout`. `prefix` is put before the command (e.g. `ip netns exec NS`). Stopped with SIGTERM."""

    def __init__(self, *args, host="127.0.0.1", port=0, as_json=False, prefix=(), tee=None, listen_timeout=15.0,
                 **popen):
        argv = list(prefix) + [sys.executable, "-u", "-m", "tools.hbserver", "--host", host, "--port", str(port)]
        if as_json:
            argv.append("--json")
        argv += [str(a) for a in args]
        super().__init__(argv, "hbserver", cwd=REPO, tee=tee, stop_signal=signal.SIGTERM, **popen)
        try:
            self.listening = self.wait_event("listening", timeout=listen_timeout)
        except WaitFailed:
            self.proc.kill()
            self.stop()
            raise
        self.port = int(self.listening.fields["port"])
