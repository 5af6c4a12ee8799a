# The firmware's runner on a scripted board, for the watchdog and recovery tests on both runtimes:
#
#     <python> host_tests/boardharness.py FIRMWARE_DIR SHIM_DIR SCENARIO CONFIG BOARD
#
# SHIM_DIR holds the `machine` stand-in (support/board/machine.py); it goes first on the module path. The
# harness runs hbkeep.runner.main with a monitor as the application, which prints a `sim` line when the
# stand-in watchdog has gone unfed past its timeout (on a board: the reset). SCENARIO:
#   run   the firmware as it is
#   hang  the client's supervisor never comes back (a hung task while the scheduler runs on)
# After an interrupt (SIGINT) it plays the REPL being used for three parked timeouts, firing the parked
# timer as the hardware would, then a soft reset (the timer is gone, the watchdog still runs) and boot.py.
import sys

sys.path.insert(0, sys.argv[2])
sys.path.insert(0, sys.argv[1])

import time  # noqa: E402

import machine  # noqa: E402  (the stand-in)
from hbkeep import compat, runner  # noqa: E402
from hbkeep import client as client_mod  # noqa: E402

SCENARIO = sys.argv[3]
CONFIG = sys.argv[4]
BOARD = sys.argv[5]


def say(body):
    compat.write_line("%d sim %s" % (compat.ticks_ms(), body))


async def monitor(client):
    await client.wait_connected()
    # Running, its watchdog fed: the parking module is not on the heap (forgotten where the runtime can).
    compat.write_line("%d harness what=running parking_loaded=%d" % (
        compat.ticks_ms(), "hbkeep.wdtpark" in sys.modules))
    while True:
        w = machine.WDT.current
        if w is not None and w.expired():
            say("what=wdt_expired unfed_ms=%d timeout_ms=%d" % (machine.now() - w.last_feed, w.timeout))
            return
        await compat.sleep_ms(20)


async def hang(self, sock):
    await compat.Event().wait()  # never set


def main():
    machine.clock = compat.ticks_ms
    if SCENARIO == "hang":
        client_mod.Client._supervise = hang
    rc = runner.main(CONFIG, BOARD, app=monitor)
    led = [v for _, v in machine.Pin.outputs.get("LED", [])]
    say("what=led changes=%d lit=%d dark=%d" % (len(led), led.count(1), led.count(0)))
    w = machine.WDT.current
    # The firmware loads hbkeep.wdtpark to park and forgets it in between: the one parked is the one
    # in sys.modules now.
    wdtpark = sys.modules.get("hbkeep.wdtpark")
    if w is None or wdtpark is None or not wdtpark.parked():
        say("what=ended rc=%d parked=0" % rc)
        return
    timer = machine.Timer.live[0]
    expired = 0
    end = machine.now() + 3 * w.timeout
    while machine.now() < end:
        # The REPL is in use; the hardware timer fires every period (this sleep is that period passing).
        time.sleep(timer.period / 1000)
        if w.expired():
            expired += 1
        timer.fire()
    say("what=repl_alive ms=%d expired=%d feeds=%d" % (3 * w.timeout, expired, len(w.feeds)))
    # A soft reset (mpremote before copying files): timers are deleted, Python state is gone, the
    # watchdog runs on -- the register says so -- and boot.py runs.
    wdtpark.unpark()
    with open(BOARD) as f:
        import json

        reg = json.load(f)["wdt_running_reg"]
    machine.MEM[reg[0]] = reg[1]
    resumed = wdtpark.resume(BOARD, lambda body: compat.write_line("%d %s" % (compat.ticks_ms(), body)))
    say("what=soft_reset resumed=%d timers=%d" % (resumed, len(machine.Timer.live)))


main()
