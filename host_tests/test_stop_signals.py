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

import pytest

from tools.eventlines import EventProc, parse_line
from tools.paths import REPO
from tools import hostrun


@pytest.fixture
def runtime(any_runtime):
    """CPython, the MicroPython unix port and the 32-bit one (small ints end at 2^30 there, as on boards)."""
    return any_runtime

ROUNDS = {"micropython": 6, "micropython32": 4, "cpython": 3}
START = 30.0


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: every connect is refused at once
    return port


def start_job(argv, cwd=REPO):
    """A command started as a terminal starts a foreground job: leader of its own process group. Its
    stderr is kept apart (`job.err`), so that the last event lines are the program's own."""
    return EventProc(argv, os.path.basename(argv[-1]), cwd=cwd, stderr="apart", start_new_session=True)


def terminal_signal(job, sig, timeout=20):
    os.killpg(job.proc.pid, sig)  # the whole group, as the terminal driver does
    try:
        return job.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(job.proc.pid, signal.SIGKILL)
        job.proc.wait(5)
        raise AssertionError("still running %ds after the signal: %s" % (timeout, lines_of(job)[-5:]))


def lines_of(job):
    return [e.line for e in job.events]


def event_names(lines):
    return [parse_line(x).name for x in lines]


def assert_clean_stop(job, rc, reason="interrupt"):
    job.stop()  # it has ended: this waits for the rest of its output and closes the pipes
    lines = lines_of(job)
    text = "\n".join(lines + job.err)
    assert rc == 0, (rc, text[-2000:])
    assert "Traceback" not in text, text[-2000:]
    names = event_names(lines)
    assert names[-2:] == ["stopped", "stats"], lines[-5:]
    assert parse_line(lines[-2]).fields["reason"] == reason


@pytest.mark.timeout(180)
def test_ctrl_c_at_the_terminal_always_ends_with_stats_and_rc_0(runtime):
    port = closed_port()
    for _ in range(ROUNDS[runtime]):
        job = start_job([sys.executable, "-m", "tools.hostrun", "--runtime", runtime, "--set", "port=%d" % port,
                   "--set", "stats_ms=0"])
        job.wait_event("start", START)
        rc = terminal_signal(job, signal.SIGINT)
        assert_clean_stop(job, rc)


@pytest.mark.timeout(120)
def test_sigterm_to_hostrun_ends_with_stats_and_rc_0(runtime):
    job = start_job([sys.executable, "-m", "tools.hostrun", "--runtime", runtime, "--set", "port=%d" % closed_port()])
    job.wait_event("start", START)
    os.kill(job.proc.pid, signal.SIGTERM)  # a service manager stopping hostrun alone
    rc = job.proc.wait(20)
    assert_clean_stop(job, rc)


@pytest.mark.timeout(60)
def test_sigterm_to_the_firmware_itself_prints_the_final_stats(tmp_path):
    # CPython can catch SIGTERM; the MicroPython unix port has no signal module (hostrun converts instead).
    cfg = tmp_path / "config.json"
    cfg.write_text('{"port": %d, "stats_ms": 0}' % closed_port())
    job = start_job(hostrun.runtime_argv("cpython") + [os.path.join(hostrun.FIRMWARE_DIR, "main.py"), str(cfg),
                                                 hostrun.board_path("unix")], cwd=hostrun.FIRMWARE_DIR)
    job.wait_event("start", START)
    os.kill(job.proc.pid, signal.SIGTERM)
    rc = job.proc.wait(20)
    assert_clean_stop(job, rc, reason="terminate")


@pytest.mark.timeout(180)
def test_ctrl_c_on_make_run_stops_both_programs_cleanly(runtime):
    for _ in range(2):
        job = start_job([sys.executable, "-m", "tools.demo", "--runtime", runtime, "--beat-ms", "200"])
        job.wait_line(lambda x: x.startswith("[device]") and " connected " in x, START, "[device] connected")
        rc = terminal_signal(job, signal.SIGINT)
        job.stop()  # it has ended: the rest of its output, the pipes closed
        lines = lines_of(job)
        text = "\n".join(lines + job.err)
        assert rc == 0 and "Traceback" not in text, text[-3000:]
        dev = [x[len("[device] "):] for x in lines if x.startswith("[device] ")]
        srv = [x[len("[server] "):] for x in lines if x.startswith("[server] ")]
        assert event_names(dev)[-2:] == ["stopped", "stats"], dev[-5:]
        assert "stopped" in event_names(srv), srv[-5:]
