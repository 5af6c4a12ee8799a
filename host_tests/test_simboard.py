"""tools.simboard: the MicroPython unix port looks like a board on a serial port.

Each test writes a small main.py onto the simulated flash and watches the board through its pty, as a
user's terminal or mpremote does: power-on runs main.py, Ctrl-C interrupts it, mpremote enters the raw
REPL and survives its soft reset (no main.py afterwards), the machine stand-ins (watchdog, resets, pins,
unique id) behave as a board's, and the power-cycle control works."""
import os
import signal

from support.simboard_proc import SimBoardProc

TICKER = """\
import time, machine
print("boot cause=%d" % machine.reset_cause())
i = 0
while True:
    print("tick", i)
    i += 1
    time.sleep_ms(50)
"""


def flash_with(tmp_path, main_py, **files):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text(main_py)
    for name, text in files.items():
        (flash / name).write_text(text)
    return flash


def test_power_on_runs_main_and_ctrl_c_interrupts_it(tmp_path):
    with SimBoardProc(flash_with(tmp_path, TICKER)) as sb:
        con = sb.console()
        con.expect(b"boot cause=1\r\n")  # output is cooked as a board's: \r\n
        con.expect(b"tick 3\r\n")
        con.write(b"\x03")
        out = con.expect(b">>> ", timeout=10)
        assert b"KeyboardInterrupt" in out
        # The friendly REPL runs in the board's filesystem, with main.py's globals.
        con.write(b"import os; print(os.getcwd(), i > 3)\r")
        con.expect(("%s True" % sb.flash).encode())
        # Ctrl-D there is a soft reset: the line, then main.py again.
        con.write(b"\x04")
        con.expect(b"MPY: soft reboot\r\n")
        con.expect(b"boot cause=5\r\n")
        con.expect(b"tick 1\r\n")


def test_mpremote_takes_the_raw_repl_from_a_running_program_and_survives_its_soft_reset(tmp_path):
    with SimBoardProc(flash_with(tmp_path, TICKER)) as sb:
        con = sb.console()
        con.expect(b"tick 2\r\n")
        con.close()
        after = len(sb.drain_notes())
        r = sb.mpremote("exec", "import sys; print('path', sys.path[0] == '', 'mpy', sys.implementation._mpy >> 10)")
        assert r.returncode == 0, r.stderr + r.stdout
        assert "path True mpy 2" in r.stdout  # x64: the architecture the deploy compiles for
        sb.wait_note("soft reset", after=after)
        # The soft reset from the raw REPL came back without main.py: nothing ticks any more.
        r = sb.mpremote("eval", "'i' in globals()")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "False"
        # Files written by mpremote land in the flash directory.
        src = tmp_path / "hello.txt"
        src.write_text("hello flash\n")
        r = sb.mpremote("fs", "cp", str(src), ":hello.txt")
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "flash" / "hello.txt").read_text() == "hello flash\n"
        r = sb.mpremote("fs", "ls")  # sizes as a board's filesystem reports them
        assert r.returncode == 0, r.stderr
        assert "12 hello.txt" in r.stdout and "%d main.py" % len(TICKER) in r.stdout


def test_machine_reset_and_the_power_control_run_main_again(tmp_path):
    link = tmp_path / "ttySIM0"
    with SimBoardProc(flash_with(tmp_path, TICKER), "--link", str(link)) as sb:
        assert os.path.realpath(link) == sb.port  # a stable name for the port, for scripts
        con = sb.console()
        con.expect(b"boot cause=1\r\n")
        sb.command("power")
        con.expect(b"boot cause=1\r\n")
        sb.proc.send_signal(signal.SIGUSR1)  # the same, from outside
        con.expect(b"boot cause=1\r\n")
        r = sb.mpremote("reset")  # exec machine.reset() in the raw REPL, as mpremote does for a board
        assert r.returncode == 0, r.stderr
        con.expect(b"boot cause=2\r\n")  # HARD_RESET
        con.expect(b"tick 1\r\n")
    assert not os.path.lexists(link)  # removed when the simulator stops


def test_watchdog_expiry_power_cycles_the_board(tmp_path):
    main_py = """\
import time, machine
cause = machine.reset_cause()
print("cause", cause)
if cause != machine.WDT_RESET:
    wdt = machine.WDT(timeout=300)
    for _ in range(5):
        wdt.feed()
        time.sleep_ms(100)
    print("hanging")
    while True:
        time.sleep_ms(1000)
"""
    with SimBoardProc(flash_with(tmp_path, main_py)) as sb:
        con = sb.console()
        con.expect(b"cause 1\r\n")
        con.expect(b"hanging\r\n")
        con.expect(b"cause 3\r\n", timeout=10)  # WDT_RESET: fed 5 times, then not for 300 ms
        sb.wait_note("watchdog expired")


def test_the_watchdog_keeps_running_when_mpremote_interrupts_the_firmware(tmp_path):
    """As on a board: Ctrl-C and the soft reset of the raw REPL do not stop a watchdog. Whoever stops the
    firmware without a reset has to keep it fed; here nothing does, and the board resets."""
    main_py = """\
import time, machine
print("cause", machine.reset_cause())
wdt = machine.WDT(timeout=5000)
print("armed")
while True:
    wdt.feed()
    time.sleep_ms(100)
"""
    with SimBoardProc(flash_with(tmp_path, main_py)) as sb:
        con = sb.console()
        con.expect(b"armed\r\n")
        con.close()
        after = len(sb.drain_notes())
        r = sb.mpremote("exec", "print('in')")  # well within the 5 s the last feed bought
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "in"
        sb.wait_note("soft reset", after=after)
        sb.wait_note("watchdog expired", after=after, timeout=15)
        sb.wait_note("watchdog reset", after=after)


def test_a_timer_feeds_the_watchdog_while_the_repl_waits_and_boot_py_can_take_over(tmp_path):
    """The parking pattern: a machine.Timer callback feeds the watchdog while the REPL is idle; a soft reset
    ends the timer but not the watchdog, which mem32 then reports as running to boot.py, which can feed it
    again. boot.py's output shows between "soft reboot" and the raw REPL banner, as on a board."""
    main_py = """\
import machine
print("running before", machine.mem32[0])
wdt = machine.WDT(timeout=1500)
n = 0
def feed(t):
    global n
    wdt.feed()
    n += 1
    if n % 10 == 0:
        print("fed", n)
timer = machine.Timer(-1)
timer.init(mode=machine.Timer.PERIODIC, period=50, callback=feed)
print("running after", machine.mem32[0] & 1)
"""
    boot_py = """\
import machine
if machine.mem32[0] & 1:
    _w = machine.WDT(timeout=1500)
    _t = machine.Timer(-1)
    _t.init(mode=machine.Timer.PERIODIC, period=50, callback=lambda t: _w.feed())
    print("boot.py parked the watchdog")
"""
    with SimBoardProc(flash_with(tmp_path, main_py, **{"boot.py": boot_py})) as sb:
        con = sb.console()
        con.expect(b"running before 0\r\n")
        con.expect(b"running after 1\r\n")
        # main.py has ended: the REPL waits for input, and the timer keeps feeding for over 2 timeouts.
        con.expect(b"fed 80\r\n", timeout=20)
        assert not [n for n in sb.drain_notes() if "watchdog expired" in n]
        # The raw REPL and a soft reset, as mpremote does them, by hand to see what the board prints.
        con.write(b"\r\x01")
        con.expect(b"raw REPL; CTRL-B to exit\r\n>")
        con.write(b"\x04")
        con.expect(b"OK\r\nMPY: soft reboot\r\n")
        out = con.expect(b"raw REPL; CTRL-B to exit\r\n>")
        assert out == b"boot.py parked the watchdog\r\nraw REPL; CTRL-B to exit\r\n>"  # no unix banner
        # In the raw REPL the board stays fed for over 2 timeouts: a program that prints after 4 s.
        con.write(b"import time; time.sleep_ms(4000); print('still here')\x04")
        con.expect(b"OK")
        con.expect(b"still here\r\n\x04\x04>", timeout=15)
        assert not [n for n in sb.drain_notes() if "watchdog expired" in n]


def test_pins_unique_id_and_flash_size(tmp_path):
    main_py = """\
import machine, os
from machine import Pin
print("hold", Pin(0, Pin.IN, Pin.PULL_UP).value(), "free", Pin(4, Pin.IN, Pin.PULL_UP).value(),
      "low", Pin(5, Pin.IN).value())
led = Pin(2, Pin.OUT)
led.on()
print("led", led.value(), "uid", machine.unique_id().hex())
s = os.statvfs("/")
print("flash", s[0] * s[2])
"""
    with SimBoardProc(flash_with(tmp_path, main_py), "--hold-pin", "0", "--uid", "a1b2c3", "--flash-size", "64k") as sb:
        con = sb.console()
        con.expect(b"hold 0 free 1 low 0\r\n")
        con.expect(b"led 1 uid a1b2c3\r\n")
        con.expect(b"flash 65536\r\n")
        sb.command("release 0")
        # A level that is not 0 or 1 is named and changes nothing; the simulator goes on.
        for bad in ("4=x", "4=7"):
            sb.command("hold " + bad)
            sb.wait_note("got %r; nothing changed" % bad)
        sb.command("power")
        con.expect(b"hold 1 free 1 low 0\r\n")


def test_help_and_bad_options_name_the_value(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "tools.simboard", "--help"], cwd=root, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and "--flash" in out.stdout and "power" in out.stdout
    out = subprocess.run([sys.executable, "-m", "tools.simboard", "--flash", str(tmp_path), "--hold-pin", "0=7"],
                         cwd=root, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "0=7" in out.stderr
