"""What main.py runs (hbkeep/runner.py): the stop switches, bad files, restarts after exceptions with a
growing pause, the status LED, and no password in any line. CPython with a virtual clock and a scripted
`machine`; the process tests at the end run main.py itself on both runtimes."""
import asyncio
import json
import os
import re
import subprocess

import pytest

from firmware.hbkeep import compat, runner, start
from firmware.hbkeep.client import Client
from firmware.hbkeep.config import Config
from firmware.hbkeep.events import Events
from support import vloop
from support.boards import board
from support.fake_machine import machine  # noqa: F401  (fixture)
from support.fake_sockets import FakeConn, FakeNet
from tools import hostrun
from tools.eventlines import name_fields as fields, parse_line
from tools.paths import BOARDS_DIR, FIRMWARE_DIR


@pytest.fixture
def flash(tmp_path, monkeypatch):
    """A board's flash: the current directory, with config.json and board.json."""
    monkeypatch.chdir(tmp_path)

    def write(cfg, board_table):
        (tmp_path / "config.json").write_text(json.dumps(cfg))
        (tmp_path / "board.json").write_text(json.dumps(board_table))

    return tmp_path, write


def run_main(capsys, **kw):
    rc = runner.main(**kw)
    return rc, [x for x in capsys.readouterr().out.splitlines() if x]


# -- stop switches and bad files -----------------------------------------------------------------
def test_a_noboot_file_stops_autostart_before_anything(flash, machine, capsys):
    root, write = flash
    write({"port": 1}, board("rp2_pico_w"))
    (root / "noboot").write_text("")
    rc, lines = run_main(capsys)
    assert rc == 0 and [fields(x) for x in lines] == [("autostart", {"state": "off", "reason": "noboot_file"})]
    assert machine.LOG == []  # no pin read, no watchdog, nothing


@pytest.mark.parametrize("level,reads,held", [(0, 0, True), (0, 1, False), (1, 1, True), (1, 0, False)])
def test_the_boot_hold_pin_stops_autostart_when_held(flash, machine, capsys, level, reads, held):
    root, write = flash
    write({"port": 1, "wdt_ms": 1000}, board("rp2_pico_w", boot_hold_level=level))
    machine.INPUTS[22] = reads
    if not held:
        (root / "config.json").write_text('{"beat_ms": "x"}')  # so that a started run ends at once
    rc, lines = run_main(capsys)
    pull = machine.Pin.PULL_UP if level == 0 else machine.Pin.PULL_DOWN
    assert ("Pin", 22, machine.Pin.IN, pull) in machine.LOG
    if held:
        assert rc == 0 and [fields(x) for x in lines] == [
            ("autostart", {"state": "off", "reason": "boot_hold_pin", "pin": "22"})]
        assert machine.WDT.current is None
    else:
        assert rc == 2 and fields(lines[0])[0] == "config_error"


def test_a_board_without_a_hold_pin_reads_no_pin(flash, machine, capsys):
    root, write = flash
    write({"beat_ms": "x"}, board("unix"))
    rc, lines = run_main(capsys)
    assert rc == 2 and machine.LOG == []


def test_a_bad_board_file_is_one_line(flash, capsys):
    root, write = flash
    write({}, {})
    (root / "board.json").write_text("{not json")
    rc, lines = run_main(capsys)
    assert rc == 2 and len(lines) == 1
    name, f = fields(lines[0])
    assert name == "board_error" and f["path"] == "board.json" and "JSONDecodeError" in f["error"]


@pytest.mark.parametrize("table, words", [
    ([], "expected a JSON object"),
    ("esp32", "expected a JSON object"),
    ({"name": "x", "socket": 5}, "key=socket"),
    ({"name": "x", "socket": {"port": "linux", "pending": 5}}, "key=socket"),
    ({"name": "x", "socket": {"port": "linux", "errno_names": {"one": "EPERM"}}}, "key=socket"),
    ({"name": "x", "wifi_refusals": [211]}, "key=wifi_refusals error=expected an object"),
    ({"name": "x", "wifi_refusals": {"21l": "no_ap_authmode_threshold"}}, "key=wifi_refusals error=code '21l'"),
    ({"name": "x", "wifi_refusals": {"0211": "no_ap_authmode_threshold"}}, "key=wifi_refusals error=code '0211'"),
    ({"name": "x", "wifi_refusals": {"211": "no ap"}}, "key=wifi_refusals error=name 'no ap' of code 211"),
    ({"name": "x", "wifi_refusals": {"211": 7}}, "key=wifi_refusals error=name 7 of code 211"),
])
def test_a_board_table_of_the_wrong_shape_is_one_line(flash, capsys, table, words):
    # Valid JSON, but not a table the firmware can read: one board_error line, never a traceback, and
    # never blamed on the config.
    root, write = flash
    write({"port": 1}, table)
    rc, lines = run_main(capsys)
    assert rc == 2 and len(lines) == 1 and lines[0].split(" ")[1:3] == ["board_error", "path=board.json"], lines
    assert words in lines[0], lines


def test_a_boot_hold_pin_the_board_lacks_is_one_line(flash, machine, capsys, monkeypatch):
    root, write = flash
    write({"port": 1}, board("rp2_pico_w", boot_hold_pin=99))

    def no_such_pin(self, id, *args):
        raise ValueError("invalid pin")

    monkeypatch.setattr(machine.Pin, "__init__", no_such_pin)
    rc, lines = run_main(capsys)
    assert rc == 2 and len(lines) == 1 and lines[0].split(" ")[1:3] == ["board_error", "path=board.json"], lines
    assert "ValueError: invalid pin" in lines[0] and machine.WDT.current is None


def test_a_config_error_never_prints_the_wifi_password(flash, capsys):
    root, write = flash
    write({"wifi": {"ssid": "lab", "password": "hunter2", "pasword": "hunter2"}}, board("unix"))
    rc, lines = run_main(capsys)
    assert rc == 2 and "wifi.pasword" in lines[0] and "hunter2" not in "\n".join(lines)


# -- what stays on the heap after start -------------------------------------------------------------
def test_prepare_hands_on_only_the_board_entries_read_after_start(flash):
    root, write = flash
    full = board("unix", socket=dict(board("unix")["socket"], pending=[7, 8]))
    write({"port": 1}, full)
    cfg, table, client = runner.prepare("config.json", "board.json")
    assert client.board is table
    assert "about" in full and "about" not in table and "socket" not in table
    assert sorted(table) == sorted(k for k in start.RUNNING_KEYS if k in full)
    assert table["name"] == "unix" and table["sockopts"] == full["sockopts"]
    # What the start-up read from the dropped entries is in force all the same: the port's socket answers.
    assert client.net.pending == (7, 8)


def test_the_esp32_table_and_its_raw_refusal_codes_are_accepted_and_kept_after_start(flash, machine):
    root, write = flash
    full = board("esp32")
    write({"port": 1}, full)
    cfg, table, client = runner.prepare("config.json", "board.json")
    # wifi.py reads them once the client exists: the running table keeps them.
    assert table["wifi_refusals"] == full["wifi_refusals"] and "211" in table["wifi_refusals"]


def board_keys_read(path):
    with open(path) as f:
        return set(re.findall(r"""board(?:\.get\(|\[)["'](\w+)["']""", f.read()))


def test_every_board_key_the_package_reads_after_start_is_kept():
    package = os.path.join(FIRMWARE_DIR, "hbkeep")
    running, start_only = set(start.RUNNING_KEYS), set(start.START_KEYS)
    assert not running & start_only
    seen = set()
    for name in sorted(os.listdir(package)):
        if not name.endswith(".py"):
            continue
        keys = board_keys_read(os.path.join(package, name))
        seen |= keys
        # start.py and wdtpark.resume (boot.py) read the table before the client exists; the client's and
        # compat.Net's one-time set-up (clientsetup.py) reads "socket" only while the client is built (in
        # start.prepare).
        if name in ("start.py", "wdtpark.py"):
            allowed = running | start_only
        elif name in ("client.py", "compat.py", "clientsetup.py"):
            allowed = running | {"socket"}
        else:
            allowed = running
        assert keys <= allowed, "%s reads %s, dropped from the table after start" % (name, sorted(keys - allowed))
    assert {"name", "sockopts", "led_pin", "wdt_park_ms", "socket", "boot_hold_pin"} <= seen  # the regex finds reads
    for name in os.listdir(BOARDS_DIR):
        table = board(name)
        assert set(table) <= running | start_only, "%s: unclassified keys %s" % (name, sorted(set(table) - running - start_only))


# -- restarts ------------------------------------------------------------------------------------
class Rig:
    def __init__(self, board_table, plans=(), app=None, **cfg):
        cfg.setdefault("stats_ms", 0)
        self.lines = []
        self.cfg = Config(cfg)
        self.client = Client(self.cfg, board_table, FakeNet(plans), Events(write=self.lines.append,
                                                                            secret=self.cfg.wifi_password))
        self.fw = runner.Firmware(self.cfg, board_table, self.client, app)

    def events(self, name):
        return [(ev.ms, ev.fields) for ev in map(parse_line, self.lines) if ev.name == name]


def run_services(rig, seconds):
    async def main():
        task = asyncio.create_task(rig.fw.services())
        await asyncio.sleep(seconds)
        task.cancel()

    vloop.run(main())


def failing_app(error):
    """An application that raises `error` at once, every time it is started; returns (app, start ticks)."""
    starts = []

    async def app(client):
        starts.append(compat.ticks_ms())
        raise error

    return app, starts


def test_a_failing_service_restarts_with_a_pause_that_grows_and_the_rest_runs_on():
    app, starts = failing_app(RuntimeError("sensor unplugged"))
    rig = Rig(board("unix"), [FakeConn()], app=app)
    run_services(rig, 200)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps[:7] == [1000, 2000, 4000, 8000, 16000, 32000, 60000]
    crashes = rig.events("crash")
    assert crashes[0][1] == {"task": "app", "error": "RuntimeError:_sensor_unplugged", "restart_ms": "1000"}
    assert [c[1]["restart_ms"] for c in crashes[:8]] == ["1000", "2000", "4000", "8000", "16000", "32000",
                                                         "60000", "60000"]
    # The link was not touched (the one disconnect is the test stopping everything).
    assert rig.events("connected") and [e[1]["reason"] for e in rig.events("disconnected")] == ["stop"]


def loop_runs_with(monkeypatch, run, paused):
    """The firmware's loop run by `run(coro)` in place of compat.run, its pauses recorded in `paused`
    instead of blocking, and no signal handlers or interrupt switches touched in the test process."""
    monkeypatch.setattr(compat, "run", run)
    monkeypatch.setattr(compat, "block_ms", paused.append)
    monkeypatch.setattr(compat, "on_terminate", lambda: None)
    monkeypatch.setattr(compat, "ignore_interrupts", lambda: None)


def test_a_crash_of_the_loop_itself_is_an_event_and_the_same_services_start_again(monkeypatch):
    # Services are set up once (start.py, then forgotten): a new loop after a crash of the loop itself
    # starts the same ones again, with the pause, until an interrupt ends the firmware.
    apps = []

    async def app(client):
        apps.append(client)
        await asyncio.sleep(3600)

    rig = Rig(board("unix"), [FakeConn(), FakeConn()], app=app)
    jobs_seen, paused = [], []

    def run(coro):
        async def main():
            task = asyncio.create_task(coro)
            await asyncio.sleep(1)
            task.cancel()

        vloop.run(main())
        jobs_seen.append(rig.fw.jobs)
        if len(jobs_seen) == 1:
            raise RuntimeError("the loop broke")
        raise KeyboardInterrupt

    loop_runs_with(monkeypatch, run, paused)
    assert rig.fw.run() == runner.OK
    assert rig.events("crash")[0][1] == {"task": "loop", "error": "RuntimeError:_the_loop_broke", "restart_ms": "1000"}
    assert paused == [1000]
    assert jobs_seen[0] is jobs_seen[1] and [job[0] for job in jobs_seen[0]] == ["app", "client"]
    assert apps == [rig.client, rig.client] and len(rig.events("connected")) == 2
    assert [e[1]["reason"] for e in rig.events("stopped")] == ["interrupt"]


def crash_lines_fail(rig):
    # A full heap: the line about a crash cannot be formatted (the rest still prints).
    def write(line):
        if " crash " in line:
            raise MemoryError("memory allocation failed")
        rig.lines.append(line)

    rig.fw.ev.write = write


def test_a_crash_that_cannot_be_reported_still_restarts_the_service():
    app, starts = failing_app(MemoryError("memory allocation failed"))
    rig = Rig(board("unix"), [FakeConn()], app=app)
    crash_lines_fail(rig)
    run_services(rig, 20)
    assert [b - a for a, b in zip(starts, starts[1:])] == [1000, 2000, 4000, 8000]
    assert rig.events("connected") and not rig.events("crash")


def test_a_crash_of_the_loop_that_cannot_be_reported_does_not_end_the_firmware(monkeypatch):
    rig = Rig(board("unix"), [FakeConn(), FakeConn()])
    crash_lines_fail(rig)
    runs, paused = [], []

    def run(coro):
        coro.close()
        runs.append(1)
        if len(runs) < 3:
            raise MemoryError("memory allocation failed")
        raise KeyboardInterrupt

    loop_runs_with(monkeypatch, run, paused)
    assert rig.fw.run() == runner.OK
    assert paused == [1000, 2000] and len(runs) == 3
    assert [e[1]["reason"] for e in rig.events("stopped")] == ["interrupt"]


def test_a_service_that_ran_steadily_starts_again_from_the_first_pause():
    starts = []

    async def app(client):
        starts.append(compat.ticks_ms())
        await asyncio.sleep(0 if len(starts) < 3 else runner.STEADY_MS / 1000)
        raise ValueError("again")

    rig = Rig(board("unix"), [FakeConn()], app=app)
    run_services(rig, 140)
    pauses = [c[1]["restart_ms"] for c in rig.events("crash")]
    assert pauses[:4] == ["1000", "2000", "1000", "1000"]


def test_a_client_that_ends_by_an_exception_is_an_event_and_a_restart(monkeypatch):
    # What the client does not catch itself (it catches what happens inside a connection attempt)
    # ends its task: the runner says so and starts it again after the pause.
    conns = [FakeConn()]
    rig = Rig(board("unix"), conns)
    real = Client.run
    calls = []

    async def broken_once(self):
        calls.append(compat.ticks_ms())
        if len(calls) == 1:
            raise TypeError("a bug")
        return await real(self)

    monkeypatch.setattr(Client, "run", broken_once)
    run_services(rig, 5)
    crash = rig.events("crash")
    assert [c[1]["task"] for c in crash] == ["client"] and crash[0][1]["restart_ms"] == "1000"
    assert crash[0][1]["error"] == "TypeError:_a_bug"
    assert len(calls) == 2 and calls[1] - calls[0] == 1000
    assert len(rig.events("connected")) == 1


def test_an_exception_inside_a_connection_ends_only_that_connection(monkeypatch):
    conns = [FakeConn(), FakeConn()]
    rig = Rig(board("unix"), conns, beat_ms=100)
    real = Client._supervise
    calls = []

    async def broken_once(self, sock):
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("beat")
        return await real(self, sock)

    monkeypatch.setattr(Client, "_supervise", broken_once)
    run_services(rig, 2)
    assert not rig.events("crash")  # the client caught it itself
    assert [e[1]["where"] for e in rig.events("client_error")] == ["supervisor"]
    assert rig.events("disconnected")[0][1]["reason"] == "error"
    assert len(rig.events("connected")) == 2 and conns[1].tx  # beating on the new connection


def test_no_line_carries_the_password_whatever_the_path(machine):
    pw = "s3cret-pw"

    async def app(client):
        raise OSError("join failed for lab/%s" % pw)  # a message that happens to contain it

    rig = Rig(board("unix"), [FakeConn()], app=app, wifi={"ssid": "lab", "password": pw}, stats_ms=1000)
    run_services(rig, 3)
    rig.fw.interrupted()
    text = "\n".join(rig.lines)
    assert "crash" in text and "lab/***" in text and pw not in text


# -- status LED ----------------------------------------------------------------------------------
def led_levels(machine, pin):
    return machine.Pin.outputs[pin]


@pytest.mark.parametrize("active_low", [False, True])
def test_led_blinks_slowly_while_connecting_then_lit_with_a_blink_per_beat(machine, active_low):
    conn = FakeConn()
    # Two refused attempts a second apart, then a connection.
    from support.fake_sockets import REFUSE

    rig = Rig(board("esp32", wifi=False, led_active_low=active_low), [REFUSE, REFUSE, conn],
              retry_ms=1000, beat_ms=1000)
    run_services(rig, 5.5)  # beats at 3, 4 and 5 s; the LED looks every 100 ms
    lit = 0 if active_low else 1
    out = [(t, 1 if v == lit else 0) for t, v in led_levels(machine, 2)]
    connected_at = rig.events("connected")[0][0]
    before = [x for x in out if x[0] < connected_at]
    # Connecting: lit and dark in turn, every 500 ms.
    assert [v for _, v in before[1:5]] == [1, 0, 1, 0]
    assert {b[0] - a[0] for a, b in zip(before[1:], before[2:])} == {500}
    # Connected: lit, and dark for 80 ms once per beat (one beat a second).
    after = [x for x in out if x[0] >= connected_at]
    darks = [t for t, v in after if v == 0]
    beats = rig.client.stats.beats_sent
    assert beats >= 2 and len(darks) == beats
    for t in darks:
        assert (t + 80, 1) in after


def test_pico_w_led_is_the_pin_named_LED(machine):
    rig = Rig(board("rp2_pico_w", wifi=False), [FakeConn()])
    run_services(rig, 1)
    assert ("Pin", "LED", machine.Pin.OUT, -1) in machine.LOG


def test_no_led_where_the_board_has_none(machine):
    rig = Rig(board("unix"), [FakeConn()])
    run_services(rig, 3)
    assert machine.LOG == []


# -- main.py as a process ------------------------------------------------------------------------
def test_on_a_board_a_config_error_returns_to_the_repl_without_sys_exit(any_runtime, tmp_path):
    # A board runs main.py with no arguments: no exit code, since sys.exit would soft-reset the board
    # and run main.py again. Run it like that, with the files in the current directory.
    (tmp_path / "config.json").write_text('{"beat_ms": -5}')
    with open(os.path.join(BOARDS_DIR, "unix", "board.json")) as f:
        (tmp_path / "board.json").write_text(f.read())
    code = ("import sys; sys.path.insert(0, %r); del sys.argv[1:]; "
            "exec(open(%r).read()); print('0 repl_free')" % (FIRMWARE_DIR, os.path.join(FIRMWARE_DIR, "main.py")))
    r = subprocess.run(hostrun.runtime_argv(any_runtime) + ["-c", code], cwd=str(tmp_path), capture_output=True,
                       text=True, timeout=60)
    lines = r.stdout.splitlines()
    assert r.returncode == 0, r.stdout + r.stderr
    assert [fields(x)[0] for x in lines] == ["config_error", "repl_free"]


def test_a_host_run_keeps_its_exit_code(any_runtime, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text('{"beat_ms": -5}')
    r = subprocess.run(hostrun.command(any_runtime, str(cfg)), cwd=FIRMWARE_DIR, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and fields(r.stdout.splitlines()[0])[0] == "config_error"


# -- the stop switches on the simulated board (tools.simboard), with the real mpremote ---------------
def test_simulated_board_stop_switches_leave_the_repl_free(tmp_path):
    from support.scripted_server import ScriptedServer
    from support.simboard_proc import SimBoardProc, flash_firmware

    flash = flash_firmware(tmp_path / "flash")
    with ScriptedServer() as srv:
        (flash / "board.json").write_text(json.dumps(board("unix", boot_hold_pin=4)))
        (flash / "config.json").write_text(json.dumps({"port": srv.port, "stats_ms": 0}))
        with SimBoardProc(flash) as sb:
            con = sb.console()
            con.expect(b" connected ", timeout=30)  # not held, no file: the firmware starts
            srv.accept(timeout=30).start_discard()
            # The file: put there by mpremote over the running firmware, then a power cycle.
            con.close()
            r = sb.mpremote("fs", "touch", ":noboot")
            assert r.returncode == 0, r.stderr
            con = sb.console()
            sb.command("power")
            con.expect(b"autostart state=off reason=noboot_file\r\n", timeout=30)
            con.write(b"print(6 * 7)\r")
            con.expect(b"42\r\n", timeout=10)
            con.close()
            r = sb.mpremote("fs", "rm", ":noboot")
            assert r.returncode == 0, r.stderr
            # The pin: held to its level (0, against the pull-up) while the board starts.
            con = sb.console()
            sb.command("hold 4=0")
            sb.command("power")
            con.expect(b"autostart state=off reason=boot_hold_pin pin=4\r\n", timeout=30)
            con.write(b"print(6 * 7)\r")
            con.expect(b"42\r\n", timeout=10)
            assert srv.accept_times[1:] == [], "the firmware started although it was told not to"
