"""tools.deploy end to end against the simulated board, with the real (pinned) mpremote: the files on its
flash, a power cycle that boots main.py and beats to a local server, mpremote taking the REPL from the
running firmware, a second deploy that copies nothing, --run; and the clear errors (bad config before
anything is touched, no device, not a MicroPython REPL, too old a firmware, not enough flash)."""
import glob
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from support.simboard_proc import SimBoardProc
from tools.eventlines import EventProc, HbServerProc

from tools.deploy import plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "pa55-not-for-logs"


def deploy(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "tools.deploy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def write_config(tmp_path, cfg, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(cfg))
    return str(path)


def flash_files(flash):
    return sorted(os.path.relpath(p, flash) for p in glob.glob(os.path.join(flash, "**", "*"), recursive=True)
                  if os.path.isfile(p))


def test_deploy_power_cycle_repl_and_a_second_deploy(tmp_path):
    srv = HbServerProc("--tick-ms", "200", "--offline-ticks", "10", "--summary-ms", "0", "--verbose", as_json=True)
    try:
        cfg = {"host": "127.0.0.1", "port": srv.port, "beat_ms": 200, "stats_ms": 0,
               "wifi": {"ssid": "lab", "password": SECRET}}
        config = write_config(tmp_path, cfg)
        with SimBoardProc(tmp_path / "flash") as sb:
            r = deploy("--board", "unix", "--port", sb.port, "--config", config)
            assert r.returncode == 0, r.stderr + r.stdout
            assert SECRET not in r.stdout + r.stderr
            n = len(plan.package_sources()) + len(plan.boot_files()) + 2
            assert "%d to copy, 0 unchanged" % n in r.stdout and "[%d/%d]" % (n, n) in r.stdout  # progress

            # On its flash: main.py as source, the package as .mpy for the board's arch, the settings.
            flash = sb.flash
            modules = sorted(os.path.basename(p)[:-3] for p in plan.package_sources())
            assert "_cpython" not in modules and "protocol" in modules  # host-only modules stay off the board
            assert "main.py" in plan.boot_files()
            assert flash_files(flash) == sorted(plan.boot_files() + ["config.json", "board.json"] +
                                                ["hbkeep/%s.mpy" % m for m in modules])
            with open(os.path.join(ROOT, "firmware", "main.py"), "rb") as f:
                assert (tmp_path / "flash" / "main.py").read_bytes() == f.read()
            assert json.loads((tmp_path / "flash" / "config.json").read_text()) == cfg
            with open(os.path.join(ROOT, "boards", "unix", "board.json")) as f:
                assert json.loads((tmp_path / "flash" / "board.json").read_text()) == json.load(f)
            for m in modules:
                head = (tmp_path / "flash" / "hbkeep" / (m + ".mpy")).read_bytes()[:2]
                assert head == b"M\x06"

            # The reset at the end boots main.py, which beats to the server.
            first = srv.wait_event("online", timeout=30, past=True).fields
            srv.wait_event("beat", timeout=15, where=lambda e: e["client"] == first["client"], past=True)

            # A power cycle: the old connection goes, main.py boots again and beats from a new one.
            sb.command("power")
            srv.wait_event("offline", timeout=30, where=lambda e: e["client"] == first["client"], past=True)
            second = srv.wait_event("online", timeout=30, where=lambda e: e["client"] != first["client"],
                                    past=True).fields
            srv.wait_event("beat", timeout=15, where=lambda e: e["client"] == second["client"], past=True)

            # mpremote takes the REPL from the running firmware (Ctrl-C, raw REPL, soft reset).
            r = sb.mpremote("eval", "1 + 1")
            assert r.returncode == 0, r.stderr
            assert r.stdout.strip() == "2"
            srv.wait_event("offline", timeout=30, where=lambda e: e["client"] == second["client"], past=True)

            # A second deploy with nothing changed copies nothing (the files keep their times).
            before = {p: os.stat(os.path.join(flash, p)).st_mtime_ns for p in flash_files(flash)}
            r = deploy("--board", "unix", "--port", sb.port, "--config", config)
            assert r.returncode == 0, r.stderr + r.stdout
            assert "0 to copy, %d unchanged" % n in r.stdout and "[1/" not in r.stdout
            assert {p: os.stat(os.path.join(flash, p)).st_mtime_ns for p in flash_files(flash)} == before
            srv.wait_event("online", timeout=30, past=True,
                           where=lambda e: e["client"] not in (first["client"], second["client"]))
    finally:
        assert srv.stop() == 0


def test_run_stays_attached_and_prints_the_event_lines(tmp_path):
    srv = HbServerProc("--tick-ms", "200", "--offline-ticks", "10", "--summary-ms", "0", "--verbose", as_json=True)
    try:
        config = write_config(tmp_path, {"host": "127.0.0.1", "port": srv.port, "beat_ms": 200, "stats_ms": 0,
                                         "wifi": {"ssid": "lab", "password": SECRET}})
        with SimBoardProc(tmp_path / "flash") as sb:
            p = EventProc([sys.executable, "-u", "-m", "tools.deploy", "--board", "unix", "--port", sb.port,
                           "--config", config, "--source", "--run"], "deploy --run", cwd=ROOT)
            try:
                # After the deploy's own lines, the board's event lines: `<ms> <event> key=value...`.
                p.wait_event("connected", timeout=60)
                lines = [e.line for e in p.events]
                p.proc.send_signal(signal.SIGINT)
                p.proc.wait(timeout=30)
                rest = "\n".join(e.line for e in p.rest(timeout=30))  # the output up to its end
            finally:
                p.stop(timeout=10)
            assert p.proc.returncode == 0, rest
            assert "detached" in rest
            assert SECRET not in "".join(lines) + rest
            # --source put the package on as .py files.
            assert (tmp_path / "flash" / "hbkeep" / "client.py").exists()
            assert not glob.glob(str(tmp_path / "flash" / "hbkeep" / "*.mpy"))
    finally:
        assert srv.stop() == 0


def test_mpremote_right_after_a_deploy_takes_the_repl(tmp_path):
    # A user's next command after `make deploy` is often `mpremote repl`: it must find the board booted,
    # not still waiting out the reset (a Ctrl-C sent then is lost, and mpremote waits on a firmware that
    # goes on printing). The firmware here retries a closed port, printing all the while.
    config = write_config(tmp_path, {"host": "127.0.0.1", "port": 9, "retry_ms": 100, "stats_ms": 0,
                                     "verbose": True})
    with SimBoardProc(tmp_path / "flash") as sb:
        for _ in range(2):  # a deploy that copies everything, then one that copies nothing
            r = deploy("--board", "unix", "--port", sb.port, "--config", config)
            assert r.returncode == 0, r.stderr + r.stdout
            r = sb.mpremote("eval", "1 + 1", timeout=30)
            assert r.returncode == 0, r.stderr
            assert r.stdout.strip() == "2"


def test_a_bad_config_stops_before_the_board_is_touched(tmp_path):
    main_py = "print('untouched')\n"
    (tmp_path / "flash").mkdir()
    (tmp_path / "flash" / "main.py").write_text(main_py)
    with SimBoardProc(tmp_path / "flash") as sb:
        sb.wait_note("power on")
        for cfg, named in (({"beat_msx": 100, "wifi": {"ssid": "lab", "password": SECRET}}, "beat_msx"),
                           ({"beat_ms": 5, "wifi": {"ssid": "lab", "password": SECRET}}, "beat_ms"),
                           ({"wifi": {"ssid": "lab", "password": 12345}}, "wifi.password")):
            r = deploy("--board", "unix", "--port", sb.port, "--config", write_config(tmp_path, cfg))
            assert r.returncode == 2, r.stdout + r.stderr
            assert named in r.stderr and "connecting" not in r.stdout
            assert SECRET not in r.stdout + r.stderr and "12345" not in r.stderr
        assert flash_files(sb.flash) == ["main.py"]
        assert not [n for n in sb.drain_notes() if "soft reset" in n]  # nobody entered its raw REPL


@pytest.mark.parametrize("text, words", [
    ('{"port": 39002, "port": 39003}', "'port' given twice"),  # json.loads: the last one wins
    ('{"beat_ms": NaN}', "a value expected at line 1 column 13"),
    ('{"wifi": {"ssid": "lab", "password": "%s"}, "x": [[[[[[[[[1]]]]]]]]]}' % SECRET, "nested deeper"),
])
def test_a_config_the_board_would_refuse_is_refused_here(tmp_path, text, words):
    # Read as the board reads it (the firmware's strict reader), not as CPython's json does: a config the
    # deploy copies is one the board starts with.
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(plan.PlanError) as e:
        plan.load_config(str(path))
    assert str(e.value).startswith("config %s: not valid JSON (" % path) and words in str(e.value), str(e.value)
    assert SECRET not in str(e.value)
    path.write_text('{"port": 39002, "wifi": {"ssid": "lab", "password": "%s"}}' % SECRET)
    assert plan.load_config(str(path)) == {"port": 39002, "wifi": {"ssid": "lab", "password": SECRET}}


def test_no_device_at_that_port(tmp_path):
    config = write_config(tmp_path, {})
    r = deploy("--board", "esp32", "--port", str(tmp_path / "ttyUSB9"), "--config", config)
    assert r.returncode == 1
    assert "no device at %s" % (tmp_path / "ttyUSB9") in r.stderr


def test_something_that_is_not_a_micropython_repl(tmp_path):
    config = write_config(tmp_path, {})
    master, slave = os.openpty()  # a serial port whose other end never answers
    try:
        r = deploy("--board", "esp32", "--port", os.ttyname(slave), "--config", config, "--timeout", "2")
    finally:
        os.close(master)
        os.close(slave)
    assert r.returncode == 1
    assert "does not answer as a MicroPython REPL" in r.stderr
    # What the port sent is part of the error, not a bare b'' line that mpremote prints on its own.
    assert "it sent nothing" in r.stderr and "b''" not in r.stdout, r.stdout


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_a_bad_timeout_is_named_before_the_port_is_opened(tmp_path, value):
    config = write_config(tmp_path, {})
    master, slave = os.openpty()  # a port that exists: the value, not the port, must be what is named
    try:
        r = deploy("--board", "esp32", "--port", os.ttyname(slave), "--config", config, "--timeout=" + value,
                   timeout=30)
    finally:
        os.close(master)
        os.close(slave)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--timeout" in r.stderr and repr(value) in r.stderr and "Traceback" not in r.stderr
    assert "connecting" not in r.stdout


def test_a_python_without_mpremote_is_told_which_one_to_use(tmp_path):
    # As `python3 -m tools.deploy` from a Python that `make setup` did not install mpremote into.
    code = ("import runpy, sys; sys.modules['mpremote'] = None; sys.argv[0] = 'deploy'; "
            "runpy.run_module('tools.deploy', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code, "--board", "unix", "--port", str(tmp_path / "pts"),
                        "--config", write_config(tmp_path, {})], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert "has no mpremote" in r.stderr and "make setup" in r.stderr and ".venv/bin/python -m tools.deploy" in r.stderr


class InterruptedBoard:
    """Stands in for device.Board: a current board with nothing on it, whose third file write is cut by
    Ctrl-C (KeyboardInterrupt, as the user's Ctrl-C arrives in the middle of a copy)."""

    instances = []

    def __init__(self, port, timeout):
        self.written, self.closed, self.was_reset = [], False, False
        InterruptedBoard.instances.append(self)

    def enter(self):
        pass

    def facts(self):
        return {"name": "micropython", "version": (1, 29, 0), "platform": "linux", "mpy": 6 | (3 << 8) | (2 << 10),
                "block": 4096, "free": 1 << 30}

    def hashes(self, paths):
        return {}

    def listdir(self, path):
        return []

    def mkdir(self, path):
        pass

    def write(self, path, data):
        if len(self.written) == 2:
            raise KeyboardInterrupt
        self.written.append(path)

    def reset(self):
        self.was_reset = True

    def close(self):
        self.closed = True


def test_ctrl_c_during_the_copy_is_a_message_not_a_traceback(tmp_path, monkeypatch, capsys):
    import argparse
    import importlib

    cli = importlib.import_module("tools.deploy.__main__")
    monkeypatch.setattr(cli.dev, "Board", InterruptedBoard)
    InterruptedBoard.instances.clear()
    args = argparse.Namespace(board="unix", port="sim", config=write_config(tmp_path, {"host": "127.0.0.1"}),
                              timeout=5.0, source=True, run=False, no_reset=False)
    try:
        rc = cli.deploy(args, out=lambda msg: None)
    except KeyboardInterrupt:  # caught here, or it would stop the whole test run
        pytest.fail("Ctrl-C in the copy escaped the deploy: the user gets a traceback")
    assert rc == 130
    board, = InterruptedBoard.instances
    assert len(board.written) == 2 and board.closed and not board.was_reset
    err = capsys.readouterr().err
    assert "interrupted before the deploy finished" in err and "run it again" in err


def test_not_enough_flash(tmp_path):
    config = write_config(tmp_path, {"host": "127.0.0.1"})
    with SimBoardProc(tmp_path / "flash", "--flash-size", "16k") as sb:
        r = deploy("--board", "unix", "--port", sb.port, "--config", config)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "not enough flash" in r.stderr and "the board has 16384 free" in r.stderr
        assert flash_files(sb.flash) == []


class OldBoard:
    """A pty that answers mpremote's raw REPL protocol as MicroPython 1.18 on an ESP32 would (no raw-paste
    mode, .mpy format 5), running any code it is sent as the deploy's first question, and counting the
    code it receives: enough to see that the deploy reads sys.implementation._mpy before anything else."""

    FACTS = repr(("micropython", (1, 18, 0), "esp32", 5 | (10 << 10), 4096, 1 << 20)).encode()

    def __init__(self):
        self.master, self.slave = os.openpty()
        self.port = os.ttyname(self.slave)
        self.programs = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        import select

        code = None  # bytes of a program being received, None outside one
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self.master, 1024)
            except OSError:
                return
            i = 0
            while i < len(data):
                b = data[i:i + 1]
                i += 1
                if data[i - 1:i + 2] == b"\x05A\x01":
                    os.write(self.master, b"R\x00")  # raw-paste understood, not supported (as before 1.19)
                    i += 2
                    code = b""
                elif b == b"\x01":
                    os.write(self.master, b"raw REPL; CTRL-B to exit\r\n>")
                    code = b""
                elif b == b"\x04" and not code:
                    os.write(self.master, b"OK\r\nMPY: soft reboot\r\nraw REPL; CTRL-B to exit\r\n>")
                elif b == b"\x04":
                    self.programs.append(code)
                    out = self.FACTS if b"_mpy" in code else b""
                    os.write(self.master, b"OK" + out + b"\r\n\x04\x04>")
                    code = b""
                elif code is not None and b not in (b"\x02", b"\x03"):
                    code += b

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        os.close(self.master)
        os.close(self.slave)


def test_firmware_too_old_for_the_mpy_files_stops_before_anything_is_copied(tmp_path):
    board = OldBoard()
    try:
        r = deploy("--board", "esp32", "--port", board.port, "--config", write_config(tmp_path, {}), "--timeout", "5")
    finally:
        board.close()
    assert r.returncode == 2, r.stdout + r.stderr
    assert "MicroPython 1.18.0 loads .mpy format 5" in r.stderr and "--source" in r.stderr
    # One program ran on the board: the question about its version; nothing was hashed, written or reset.
    assert len(board.programs) == 1 and b"sys.implementation._mpy" in board.programs[0]


@pytest.mark.parametrize("mpy, version, words", [
    (None, (1, 11, 0), "1.11.0, too old"),
    (5, (1, 18, 0), "loads .mpy format 5"),
    (6 | (2 << 8) | (10 << 10), (1, 22, 2), "sub-version 2"),
    (6 | (3 << 8), (1, 24, 0), "no native code emitter"),
])
def test_firmware_too_old_for_the_mpy_files_is_named(mpy, version, words):
    with pytest.raises(plan.PlanError, match="--source") as e:
        plan.check_mpy(mpy, version)
    assert words in str(e.value)


def test_a_current_firmware_gives_its_architecture():
    assert plan.check_mpy(6 | (3 << 8) | (10 << 10), (1, 29, 0)) == "xtensawin"
    assert plan.check_mpy(6 | (3 << 8) | (4 << 10), (1, 23, 0)) == "armv6m"


def test_changes_and_space_are_decided_from_the_boards_hashes():
    wanted = {"main.py": b"m" * 10, "hbkeep/a.mpy": b"a" * 5000, "config.json": b"{}"}
    on_board = {"main.py": (10, plan.sha256(b"m" * 10)), "hbkeep/a.mpy": (100, "0" * 64)}
    to_copy, unchanged = plan.changes(wanted, on_board)
    assert to_copy == ["hbkeep/a.mpy", "config.json"] and unchanged == ["main.py"]  # package first, settings last
    # 5000 bytes take 2 blocks of 4096, replacing 1 block; config.json takes 1 more.
    assert plan.bytes_needed(to_copy, wanted, on_board, 4096) == 2 * 4096
    assert plan.stale({"hbkeep/a.mpy": b""}, ["a.py", "a.mpy", "old.mpy"]) == ["hbkeep/a.py", "hbkeep/old.mpy"]


def test_help_lists_the_boards():
    r = deploy("--help", timeout=30)
    assert r.returncode == 0
    for name in ("esp32", "rp2_pico_w", "unix", "--source", "--run"):
        assert name in r.stdout
