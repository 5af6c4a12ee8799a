"""The watchdog on CPython, on a virtual clock, with a scripted `machine` (support/board/machine.py):
fed while the client makes progress, starved when one of its tasks hangs, parked (kept fed from a
timer) when the user interrupts the firmware, and parked again by boot.py after a soft reset.
The same sequences run on the MicroPython unix port in test_boot_micropython.py."""
import asyncio
import json
import os
import signal

import pytest

from firmware.hbkeep import compat, runner, watchdog, wdtpark
from firmware.hbkeep.client import Client
from firmware.hbkeep.config import Config
from firmware.hbkeep.events import Events
from support.fwproc import FwProc
from support.scripted_server import ScriptedServer
from support import fake_machine, vloop
from support.boards import board
from support.fake_machine import machine  # noqa: F401  (fixture)
from support.fake_sockets import FakeConn, FakeNet
from tools.eventlines import parse_line
from tools.paths import FIRMWARE_DIR


class Rig:
    """A client on a scripted network, with the firmware's services around it."""

    def __init__(self, board_table, plans=None, **cfg):
        cfg.setdefault("stats_ms", 0)
        cfg.setdefault("beat_ms", 1000)
        self.lines = []
        self.cfg = Config(cfg)
        self.board = board_table
        self.net = FakeNet(plans or [])
        self.client = Client(self.cfg, board_table, self.net, Events(write=self.lines.append))
        self.fw = runner.Firmware(self.cfg, board_table, self.client)

    def events(self, name):
        return [ev.fields for ev in map(parse_line, self.lines) if ev.name == name]

    def watchdog_states(self):
        return [e["state"] for e in self.events("watchdog")]


def run_for(rig, seconds, during=None):
    async def main():
        task = asyncio.create_task(rig.fw.services())
        if during is not None:
            await during(rig)
        await asyncio.sleep(seconds)
        task.cancel()

    vloop.run(main())


def max_gap(times):
    return max(b - a for a, b in zip(times, times[1:]))


def test_fed_while_connected_and_while_retrying(machine):
    conn = FakeConn()
    # Connected for a while (the server answers beats), then refused attempts with a long backoff.
    rig = Rig(board("rp2_pico_w", wifi=False), [conn], wdt_ms=2000, retry_ms=100, backoff_max_ms=60000)

    async def server(rig):
        await rig.client.wait_connected()
        for _ in range(20):
            await conn.wait_tx(8)
            conn.take_tx(8)
            conn.send(b"\0" * 8)  # a HEART back
        conn.eof()

    run_for(rig, 300, server)
    wdt = machine.WDT.current
    assert wdt.timeout == 2000
    assert rig.watchdog_states() == ["on"]
    # Fed all along, never late: the feeder runs every timeout/4 and the client's long backoff
    # sleeps are sliced into pulses that count as progress.
    assert len(wdt.feeds) > 300 * 1000 // 500 - 5
    assert max_gap(wdt.feeds) <= 500
    assert rig.events("connect_failed"), "the run never reached the backoff phase"


def run_with_a_hung_client(rig, monkeypatch, seconds=30):
    """Run the rig `seconds` with a client whose supervisor never comes back once connected; returns
    [the tick at which it connected, and so hung]."""
    async def hang(sock):
        await asyncio.get_running_loop().create_future()  # a supervisor that never comes back

    monkeypatch.setattr(rig.client, "_supervise", hang)
    hung_at = []

    async def mark(rig):
        await rig.client.wait_connected()
        hung_at.append(compat.ticks_ms())

    run_for(rig, seconds, mark)
    return hung_at


def test_not_fed_when_a_client_task_hangs(machine, monkeypatch):
    rig = Rig(board("rp2_pico_w", wifi=False), [FakeConn()], wdt_ms=2000, connect_timeout_ms=1000)
    hung_at = run_with_a_hung_client(rig, monkeypatch)
    wdt = machine.WDT.current
    last = wdt.feeds[-1]
    quiet_max = 1000 + 500  # connect_timeout_ms + one feeding period
    assert last - hung_at[0] <= quiet_max
    assert wdt.expired(last + 2001), "the board would not reset"
    starving = rig.events("watchdog")[-1]
    assert starving["state"] == "starving"


def test_a_hung_client_is_not_hidden_by_another_service_restarting(machine, monkeypatch):
    # Only the client's own loop is progress: another service's pause before its restart (an application
    # failing over and over) must not keep feeding a watchdog whose client hangs.
    rig = Rig(board("rp2_pico_w", wifi=False), [FakeConn()], wdt_ms=2000, connect_timeout_ms=1000)
    starts = []

    async def app(client):
        starts.append(compat.ticks_ms())
        raise RuntimeError("sensor unplugged")

    rig.fw.app = app
    hung_at = run_with_a_hung_client(rig, monkeypatch)
    wdt = machine.WDT.current
    assert len(starts) >= 4, "the application was not restarting"
    assert wdt.feeds[-1] - hung_at[0] <= 1000 + 500, "fed on after the client hung"  # connect_timeout_ms + a period
    assert rig.events("watchdog")[-1]["state"] == "starving"


def test_not_fed_when_the_scheduler_is_blocked(machine):
    rig = Rig(board("rp2_pico_w", wifi=False), [FakeConn()], wdt_ms=2000)

    async def block(rig):
        await rig.client.wait_connected()
        await asyncio.sleep(1)
        rig.blocked_at = compat.ticks_ms()
        asyncio.get_running_loop().advance(10)  # ten seconds pass with no task running

    run_for(rig, 5, block)
    wdt = machine.WDT.current
    # Fed from the event loop (not from a timer interrupt): nothing fed it while the loop was blocked.
    before = [t for t in wdt.feeds if t <= rig.blocked_at][-1]
    after = [t for t in wdt.feeds if t > rig.blocked_at][0]
    assert after - before >= 10000 > wdt.timeout


def test_timeout_is_clamped_to_the_board_limit_with_an_event(machine):
    rig = Rig(board("rp2_pico_w", wifi=False), [FakeConn()], wdt_ms=20000)
    run_for(rig, 1)
    assert machine.WDT.current.timeout == 8388
    clamped = rig.events("watchdog")[0]
    assert clamped == {"state": "clamped", "asked_ms": "20000", "timeout_ms": "8388"}


def test_a_board_without_a_watchdog_starts_none(machine):
    rig = Rig(board("unix"), [FakeConn()], wdt_ms=5000)
    run_for(rig, 5)
    assert machine.WDT.current is None and machine.LOG == []
    assert rig.events("watchdog") == [{"state": "absent", "board": "unix"}]


def test_interrupt_parks_the_watchdog_on_a_timer_and_the_board_stays_alive(machine):
    rig = Rig(board("rp2_pico_w", wifi=False), [FakeConn()], wdt_ms=2000)
    run_for(rig, 3)
    rig.fw.interrupted()  # what Firmware.run does on KeyboardInterrupt
    wdt = machine.WDT.current
    assert wdt.timeout == 8388  # the board's longest
    assert [t for t in machine.Timer.live if t.mode == machine.Timer.PERIODIC]
    timer = machine.Timer.live[0]
    assert timer.period == 2000
    # The REPL is in use for a minute: the timer's callback keeps feeding; no expiry at any point.
    t = wdt.last_feed
    for i in range(30):
        t += timer.period
        machine.clock = lambda t=t: t
        assert not wdt.expired()
        timer.fire()
    assert wdt.last_feed == t
    assert rig.events("watchdog")[-1] == {
        "state": "parked", "reason": "interrupt", "timeout_ms": "8388", "feed_every_ms": "2000"}
    assert [e["reason"] for e in rig.events("stopped")] == ["interrupt"]


def test_esp32_parks_with_its_long_timeout(machine):
    rig = Rig(board("esp32", wifi=False), [FakeConn()], wdt_ms=5000)
    run_for(rig, 2)
    rig.fw.interrupted()
    assert machine.WDT.current.timeout == 86400000
    assert machine.Timer.live[0].period == wdtpark.FEED_EVERY_MAX_MS


def test_no_watchdog_means_nothing_to_park(machine):
    rig = Rig(board("rp2_pico_w", wifi=False), [FakeConn()])
    run_for(rig, 1)
    rig.fw.interrupted()
    assert machine.WDT.current is None
    assert [x for x in machine.LOG if x[0] in ("WDT", "Timer", "Timer.init")] == []


@pytest.mark.parametrize("running", [True, False])
def test_boot_py_parks_again_after_a_soft_reset_only_if_the_watchdog_runs(machine, tmp_path, running):
    b = board("rp2_pico_w")
    path = tmp_path / "board.json"
    path.write_text(json.dumps(b))
    addr, mask = b["wdt_running_reg"]
    machine.MEM[addr] = mask if running else 0
    said = []
    assert wdtpark.resume(str(path), said.append) is running
    if running:
        assert machine.WDT.current.timeout == 8388 and machine.Timer.live
        assert said == ["watchdog state=parked reason=soft_reset timeout_ms=8388 feed_every_ms=2000"]
    else:
        assert machine.WDT.current is None and not machine.Timer.live and said == []


def test_the_firmware_takes_over_from_the_parked_timer(machine):
    wdtpark.park(board("rp2_pico_w"), "soft_reset", lambda s: None)
    timer = machine.Timer.live[0]
    rig = Rig(board("rp2_pico_w", wifi=False), [FakeConn()], wdt_ms=3000)
    run_for(rig, 2)
    assert not machine.Timer.live and ("Timer.deinit",) in machine.LOG
    assert timer.callback is not None and machine.WDT.current.timeout == 3000


# -- the same sequences as processes, on CPython and on the MicroPython unix port ------------------
HERE = os.path.dirname(os.path.abspath(__file__))


def scripted_board():
    # The Pico W's table on a Linux host: its watchdog and pins (played by the stand-in), the host's
    # socket options, no Wi-Fi, and a short parked timeout so that "the REPL in use for three parked
    # timeouts" takes two seconds.
    b = board("rp2_pico_w", wifi=False, wdt_park_ms=600)
    b["sockopts"] = board("unix")["sockopts"]
    return b


def harness(scenario):
    def argv(config, board_path):
        return [os.path.join(HERE, "support", "boardharness.py"), FIRMWARE_DIR, fake_machine.BOARD_SHIM_DIR, scenario,
                config, board_path]

    return argv


def fw_cfg(srv):
    return {"port": srv.port, "beat_ms": 100, "stats_ms": 0, "wdt_ms": 400, "connect_timeout_ms": 300}


def test_process_fed_while_running_and_parked_through_interrupt_and_soft_reset(any_runtime):
    with ScriptedServer() as srv:
        fw = FwProc(any_runtime, fw_cfg(srv), board_table=scripted_board(), argv=harness("run"))
        with fw:
            srv.accept(timeout=20).start_discard()
            fw.wait_event("connected", timeout=20)
            on = [e.fields for e in fw.events if e.name == "watchdog"]
            assert on == [{"state": "on", "timeout_ms": "400", "quiet_max_ms": "400"}]
            # The feeder forgets the parking module until an interrupt needs it (CPython keeps modules).
            running = fw.wait_event("harness", timeout=10).fields
            assert running == {"what": "running", "parking_loaded": "1" if any_runtime == "cpython" else "0"}
            # Two seconds (five timeouts) of beating: never unfed past the timeout.
            fw.expect_no_event("sim", 2.0)
            fw.proc.send_signal(signal.SIGINT)  # Ctrl-C, as mpremote sends it
            parked = fw.wait_event("watchdog", timeout=10, where=lambda f: f["state"] == "parked")
            assert parked.fields == {"state": "parked", "reason": "interrupt", "timeout_ms": "600",
                                     "feed_every_ms": "150"}
            led = fw.wait_event("sim", timeout=10).fields  # the status LED ran too: lit, a dark blink per beat
            assert led["what"] == "led" and int(led["lit"]) >= 5 and int(led["dark"]) >= 5, led
            alive = fw.wait_event("sim", timeout=10)
            assert alive.fields["what"] == "repl_alive" and alive.fields["expired"] == "0"
            assert int(alive.fields["feeds"]) >= 10
            again = fw.wait_event("watchdog", timeout=10, where=lambda f: f["state"] == "parked")
            assert again.fields["reason"] == "soft_reset"
            assert fw.wait_event("sim", timeout=10).fields == {"what": "soft_reset", "resumed": "1", "timers": "1"}
            assert fw.proc.wait(timeout=10) == 0


def test_process_a_hung_task_starves_the_watchdog(any_runtime):
    with ScriptedServer() as srv:
        with FwProc(any_runtime, fw_cfg(srv), board_table=scripted_board(), argv=harness("hang")) as fw:
            srv.accept(timeout=20).start_discard()
            fw.wait_event("connected", timeout=20)
            starving = fw.wait_event("watchdog", timeout=10, where=lambda f: f["state"] == "starving")
            assert int(starving.fields["quiet_ms"]) >= 400
            reset = fw.wait_event("sim", timeout=10)
            assert reset.fields["what"] == "wdt_expired" and int(reset.fields["unfed_ms"]) > 400
            assert fw.count("disconnected") == 0  # nothing else noticed: only the watchdog does


def test_a_boards_table_on_a_runtime_without_a_watchdog_runs_without_one(monkeypatch):
    # CPython has no `machine`: a board's table run on the host must not crash-loop the feeder.
    monkeypatch.delitem(__import__("sys").modules, "machine", raising=False)
    rig = Rig(board("rp2_pico_w", wifi=False), [FakeConn()], wdt_ms=2000)
    run_for(rig, 2)
    assert rig.events("watchdog") == [{"state": "absent", "board": "rp2_pico_w", "reason": "no_machine_WDT"}]
    assert not rig.events("crash")


# -- on the simulated board (tools.simboard), with the real mpremote --------------------------------
def simboard_flash(tmp_path, port, with_boot_py):
    """A flash holding the firmware (sources), a board table with a watchdog, and a config that starts it.

    The simulator's mem32 reads all ones at any address while its watchdog runs, so wdt_running_reg
    [0, 1] is the simulated board's version of the Pico W's control register."""
    from support.simboard_proc import flash_firmware

    flash = flash_firmware(tmp_path / "flash", boot_py=with_boot_py)
    table = board("unix", watchdog=True, wdt_max_ms=8388, wdt_park_ms=1500, wdt_running_reg=[0, 1])
    (flash / "board.json").write_text(json.dumps(table))
    cfg = {"port": port, "beat_ms": 200, "stats_ms": 0, "wdt_ms": 1000, "peer_timeout": "off"}
    (flash / "config.json").write_text(json.dumps(cfg))
    return flash


def watch_notes(sb, text, seconds, after):
    """Notes containing `text` that the simulator printed within `seconds` (a bounded watch)."""
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            sb.wait_note(text, timeout=max(0.05, end - time.monotonic()), after=after)
            return True
        except AssertionError:
            continue
    return False


@pytest.mark.parametrize("with_boot_py", [True, False])
def test_simulated_board_stays_alive_when_mpremote_takes_it_over(tmp_path, with_boot_py):
    # mpremote interrupts the firmware (Ctrl-C: it parks the watchdog on a timer), enters the raw REPL
    # and soft-resets (the timer is gone, the watchdog runs on; boot.py parks it again), runs a command,
    # and leaves the board at its REPL. Without boot.py the board resets under the user: the check can fail.
    from support.simboard_proc import SimBoardProc

    with ScriptedServer() as srv:
        with SimBoardProc(simboard_flash(tmp_path, srv.port, with_boot_py)) as sb:
            con = sb.console()
            con.expect(b"watchdog state=on timeout_ms=1000", timeout=30)
            con.close()
            srv.accept(timeout=30).start_discard()  # main.py ran at power-on and connected
            after = len(sb.drain_notes())
            # boot.py shares its namespace with the REPL: it must leave no name there that holds the
            # module (which stays only while its timer runs).
            r = sb.mpremote("exec", "import sys; print('parked', 'hbkeep.wdtpark' in sys.modules, "
                                    "'left', sorted(n for n in globals() if 'wdt' in n or 'hbkeep' in n))")
            assert r.returncode == 0, r.stderr
            assert r.stdout.split() == ["parked", "True" if with_boot_py else "False", "left", "[]"]
            sb.wait_note("soft reset", after=after)
            # Three parked timeouts at the REPL.
            expired = watch_notes(sb, "watchdog expired", 4.5, after)
            assert expired is not with_boot_py, sb.notes[after:]


def test_simulated_board_stays_alive_at_the_repl_after_ctrl_c(tmp_path):
    # Ctrl-C in `mpremote repl`: the firmware parks the watchdog on a timer and the user keeps the REPL.
    from support.simboard_proc import SimBoardProc

    with ScriptedServer() as srv:
        with SimBoardProc(simboard_flash(tmp_path, srv.port, with_boot_py=True)) as sb:
            con = sb.console()
            con.expect(b"watchdog state=on timeout_ms=1000", timeout=30)
            srv.accept(timeout=30).start_discard()
            after = len(sb.drain_notes())
            con.write(b"\x03")
            con.expect(b"watchdog state=parked reason=interrupt timeout_ms=1500 feed_every_ms=375", timeout=10)
            con.expect(b"stopped reason=interrupt")
            con.expect(b">>> ", timeout=10)
            assert not watch_notes(sb, "watchdog expired", 4.5, after), sb.notes[after:]
            con.write(b"print(6 * 7)\r")
            con.expect(b"42\r\n", timeout=10)


def test_a_second_interrupt_while_parking_still_parks(machine, monkeypatch):
    # Ctrl-C pressed twice: the second lands while the first is parking the watchdog.
    rig = Rig(board("rp2_pico_w", wifi=False), [FakeConn()], wdt_ms=2000)
    run_for(rig, 1)
    real = wdtpark.park
    calls = []

    def interrupted_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(wdtpark, "park", interrupted_once)
    try:
        rig.fw.interrupted()
    except KeyboardInterrupt:
        pytest.fail("the second interrupt escaped with the watchdog not parked: the board would reset")
    assert len(calls) == 2 and wdtpark.parked() and machine.WDT.current.timeout == 8388
    assert rig.watchdog_states()[-1] == "parked"
    assert [e["reason"] for e in rig.events("stopped")] == ["interrupt"]


def test_a_park_that_fails_is_an_event_and_the_repl_stays_free(machine, monkeypatch):
    rig = Rig(board("rp2_pico_w", wifi=False), [FakeConn()], wdt_ms=2000)
    run_for(rig, 1)

    def broken(self, id=-1):
        raise OSError(12, "ENOMEM")

    monkeypatch.setattr(machine.Timer, "__init__", broken)
    rig.fw.interrupted()  # no exception escapes to the REPL
    assert rig.watchdog_states()[-1] == "park_failed"
    assert [e["reason"] for e in rig.events("stopped")] == ["interrupt"]
