"""The firmware as a child process, for loopback tests on both host runtimes.

    with FwProc(runtime, {"port": srv.port, "beat_ms": 100}) as fw:
        ev = fw.wait_event("connected", timeout=10)
        assert ev.fields["lacking"] == "-"

FwProc is a tools.eventlines.EventProc: a reader thread parses every output line (stdout, with stderr
folded in so that a traceback shows up in failure messages) and `wait_event` blocks on what the firmware
says with a deadline -- never on bare sleeps. Every wait is bounded.

`require_runtime` backs the `runtime` fixture (conftest.py), which runs a test on CPython and on the
MicroPython unix port, and the `any_runtime` fixture, which adds the 32-bit MicroPython. When the MicroPython binary cannot be had the test is skipped with the reason --
unless HB_REQUIRE_MICROPYTHON is set (CI), in which case it fails: CI must never go green by silently
skipping half the matrix.
"""
import json
import os
import subprocess
import tempfile

from support.tiers import skip_or_fail
from tools import hostrun
from tools.eventlines import EventProc

RUNTIMES = ("cpython", "micropython")
# The 32-bit MicroPython (a board's int and tick widths) joins the tests of a board's behaviour:
# the loopback scenarios, the port models. Mandatory in CI through HB_REQUIRE_MICROPYTHON32.
ALL_RUNTIMES = RUNTIMES + ("micropython32",)
REQUIRE_ENV = {"micropython": "HB_REQUIRE_MICROPYTHON", "micropython32": "HB_REQUIRE_MICROPYTHON32"}


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


class FwProc(EventProc):
    """The firmware (firmware/main.py) as a child process, its config validated and written to a
    temporary directory that stop() removes."""

    def __init__(self, runtime, cfg, board="unix", board_table=None, keep=200, argv=None):
        """Start the firmware. `board` names a table in boards/; `board_table`, a dict, replaces it
        (written beside the config), for tables the repository does not ship. `argv(config, board)`,
        given with a board_table, returns the program and arguments to run instead of main.py."""
        workdir = tempfile.mkdtemp(prefix="hostrun-")
        if board_table is None:
            bpath = hostrun.board_path(board)
            argv = None  # as before: argv goes with a board_table only
        else:
            bpath = os.path.join(workdir, "board.json")
            with open(bpath, "w") as f:
                json.dump(board_table, f)
        cpath = hostrun.prepare(cfg, workdir)
        args = argv(cpath, bpath) if argv else [os.path.join(hostrun.FIRMWARE_DIR, "main.py"), cpath, bpath]
        super().__init__(hostrun.runtime_argv(runtime) + args, runtime, cwd=hostrun.FIRMWARE_DIR, workdir=workdir,
                         keep=keep)
        self.runtime = runtime
        self.cfg = cfg
