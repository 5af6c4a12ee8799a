"""Every stop ends the same way: `stopped`, the final `stats`, exit code 0, no traceback.

A Ctrl-C at a terminal goes to the whole foreground process group. The tests reproduce exactly that:
each tool is started as the leader of a process group of its own (what a shell does for a foreground
job) and the group is sent SIGINT with killpg, as the terminal driver does. Before the fix the firmware
got two SIGINTs (the terminal's and the one hostrun forwards) and about one stop in three on MicroPython
ended in a traceback with no stats."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tools.eventlines import parse_line
from tools import hostrun


@pytest.fixture
def runtime(any_runtime):
    """CPython, the MicroPython unix port and the 32-bit one (small ints end at 2^30 there, as on boards)."""
    return any_runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = {"micropython": 6, "micropython32": 4, "cpython": 3}
START = 30.0


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: every connect is refused at once
    return port


class Job:
    """A command started as a terminal starts a foreground job: leader of its own process group."""

    def __init__(self, argv, cwd=ROOT):
        self.p = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True, preexec_fn=None)
        self.lines = []
        self.err = []
        self._seen = threading.Condition()
        self.pumps = [threading.Thread(target=self._pump, args=(f, out), daemon=True)
                      for f, out in ((self.p.stdout, self.lines), (self.p.stderr, self.err))]
        for t in self.pumps:
            t.start()

    def drained(self):
        for t in self.pumps:
            t.join(10)  # they end at EOF, once every process holding the pipes has gone

    def _pump(self, f, out):
        for line in f:
            with self._seen:
                out.append(line.rstrip("\n"))
                self._seen.notify_all()

    def wait_line(self, pred, timeout):
        end = time.monotonic() + timeout
        with self._seen:
            while not any(pred(x) for x in self.lines):
                left = end - time.monotonic()
                assert left > 0 and self.p.poll() is None, "not seen in %.0fs: %s %s" % (
                    timeout, self.lines[-5:], self.err[-5:])
                self._seen.wait(left)

    def terminal_signal(self, sig, timeout=20):
        os.killpg(self.p.pid, sig)  # the whole group, as the terminal driver does
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(5)
            raise AssertionError("still running %ds after the signal: %s" % (timeout, self.lines[-5:]))


def event_names(lines):
    return [parse_line(x).name for x in lines]


def assert_clean_stop(job, rc, reason="interrupt"):
    job.drained()
    text = "\n".join(job.lines + job.err)
    assert rc == 0, (rc, text[-2000:])
    assert "Traceback" not in text, text[-2000:]
    names = event_names(job.lines)
    assert names[-2:] == ["stopped", "stats"], job.lines[-5:]
    assert parse_line(job.lines[-2]).fields["reason"] == reason


@pytest.mark.timeout(180)
def test_ctrl_c_at_the_terminal_always_ends_with_stats_and_rc_0(runtime):
    port = closed_port()
    for _ in range(ROUNDS[runtime]):
        job = Job([sys.executable, "-m", "tools.hostrun", "--runtime", runtime, "--set", "port=%d" % port,
                   "--set", "stats_ms=0"])
        job.wait_line(lambda x: " start " in x, START)
        rc = job.terminal_signal(signal.SIGINT)
        assert_clean_stop(job, rc)


@pytest.mark.timeout(120)
def test_sigterm_to_hostrun_ends_with_stats_and_rc_0(runtime):
    job = Job([sys.executable, "-m", "tools.hostrun", "--runtime", runtime, "--set", "port=%d" % closed_port()])
    job.wait_line(lambda x: " start " in x, START)
    os.kill(job.p.pid, signal.SIGTERM)  # a service manager stopping hostrun alone
    rc = job.p.wait(20)
    assert_clean_stop(job, rc)


@pytest.mark.timeout(60)
def test_sigterm_to_the_firmware_itself_prints_the_final_stats(tmp_path):
    # CPython can catch SIGTERM; the MicroPython unix port has no signal module (hostrun converts instead).
    cfg = tmp_path / "config.json"
    cfg.write_text('{"port": %d, "stats_ms": 0}' % closed_port())
    job = Job(hostrun.runtime_argv("cpython") + [os.path.join(hostrun.FIRMWARE_DIR, "main.py"), str(cfg),
                                                 hostrun.board_path("unix")], cwd=hostrun.FIRMWARE_DIR)
    job.wait_line(lambda x: " start " in x, START)
    os.kill(job.p.pid, signal.SIGTERM)
    rc = job.p.wait(20)
    assert_clean_stop(job, rc, reason="terminate")


@pytest.mark.timeout(180)
def test_ctrl_c_on_make_run_stops_both_programs_cleanly(runtime):
    for _ in range(2):
        job = Job([sys.executable, "-m", "tools.demo", "--runtime", runtime, "--beat-ms", "200"])
        job.wait_line(lambda x: x.startswith("[device]") and " connected " in x, START)
        rc = job.terminal_signal(signal.SIGINT)
        job.drained()
        text = "\n".join(job.lines + job.err)
        assert rc == 0 and "Traceback" not in text, text[-3000:]
        dev = [x[len("[device] "):] for x in job.lines if x.startswith("[device] ")]
        srv = [x[len("[server] "):] for x in job.lines if x.startswith("[server] ")]
        assert event_names(dev)[-2:] == ["stopped", "stats"], dev[-5:]
        assert "stopped" in event_names(srv), srv[-5:]
