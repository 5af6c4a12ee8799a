# Keeping the hardware watchdog fed while the user has the REPL.
#
# A started watchdog cannot be stopped (rp2, esp32), and a soft reset leaves it running. When the user
# interrupts the firmware (Ctrl-C in `mpremote repl`, or mpremote taking the board to copy files) the
# firmware "parks" the watchdog: it sets the board's longest timeout (`wdt_park_ms`) and feeds it from a
# machine.Timer, whose callback runs whatever the REPL is doing. A soft reset deletes that timer; boot.py
# then calls resume(), which parks again if the board table can tell that the watchdog is still running
# (`wdt_running_reg`: an address and a mask read with machine.mem32). When the firmware starts again its
# own feeder takes over (unpark). What each port does is described in docs/BOARD.md.

_timer = None  # the machine.Timer feeding the watchdog while parked
_wdt = None

FEED_EVERY_MAX_MS = 2000


def _feed(_t):
    # A soft IRQ callback: runs between bytecodes and while the REPL waits for input.
    if _wdt is not None:
        _wdt.feed()


def park(board, reason, say):
    """Longest timeout, fed from a timer; say(line) reports it. Returns the timeout set."""
    global _timer, _wdt
    import machine

    ms = board.get("wdt_park_ms") or board.get("wdt_max_ms")
    _wdt = machine.WDT(timeout=ms)
    _wdt.feed()
    if _timer is None:
        _timer = machine.Timer(-1)
    every = ms // 4 if ms // 4 < FEED_EVERY_MAX_MS else FEED_EVERY_MAX_MS
    _timer.init(mode=machine.Timer.PERIODIC, period=every, callback=_feed)
    say("watchdog state=parked reason=%s timeout_ms=%d feed_every_ms=%d" % (reason, ms, every))
    return ms


def unpark():
    """The firmware's own feeder takes over: the timer stops (the watchdog itself cannot)."""
    global _timer, _wdt
    if _timer is not None:
        _timer.deinit()
    _timer = None
    _wdt = None


def parked():
    return _timer is not None


def _print_line(body):
    import time

    print("%s %s" % (time.ticks_ms(), body))


def resume(board_path="board.json", say=_print_line):
    """From boot.py, after any reset: park again if our watchdog survived a soft reset."""
    import json

    try:
        with open(board_path) as f:
            board = json.load(f)
    except (OSError, ValueError):
        return False
    reg = board.get("wdt_running_reg")
    if not reg or not board.get("watchdog"):
        return False
    import machine

    if not machine.mem32[reg[0]] & reg[1]:
        return False  # not running: a power-on or a hardware reset, nothing to keep fed
    park(board, "soft_reset", say)
    return True
