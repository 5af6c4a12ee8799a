# `machine` for the simulated board (tools/simboard). The unix port's own `machine` has no watchdog,
# no reset and no pins; this module stands in for them and tells the simulator what the firmware asked
# for, one line per request, on the control pipe the simulator gave this VM (SIMBOARD_CTL_FD):
#   wdt MS / feed      the simulator keeps the watchdog's deadline and power-cycles the board at expiry
#   reset / soft       a hard reset (main.py runs) / a soft reset (like the board's)
#   pin ID VALUE       an output pin changed (the status LED)
#   Timer              a thread of the VM calls the callback every period, whatever the main program
#                      does (a board runs it as a soft interrupt, also while the REPL waits for input);
#                      a soft reset ends it, as a board's soft reset deletes its timers
#   mem8/16/32         no registers here: every address reads as "the watchdog is running" (all ones)
#                      or not (0), what a check for a watchdog that survived a soft reset needs
# The firmware uses it exactly as it uses a board's `machine`; it never asks where it runs.
import os
import sys
import time

from umachine import *  # noqa: F401,F403  (idle, mem8..., the unix port's own)

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_fd = os.getenv("SIMBOARD_CTL_FD")
_wdt_running = os.getenv("SIMBOARD_WDT_RUNNING") == "1"  # it survived the soft reset that started this VM
_ctl = open("/dev/fd/" + _fd, "w") if _fd else None


def _send(line):
    if _ctl is not None:
        _ctl.write(line + "\n")


def _halt():
    # A reset never returns on a board: wait here until the simulator replaces this VM.
    while True:
        try:
            time.sleep_ms(1000)
        except KeyboardInterrupt:
            pass


def reset():
    _send("reset")
    _halt()


def soft_reset():
    _send("soft")
    _halt()


def reset_cause():
    return int(os.getenv("SIMBOARD_RESET_CAUSE") or PWRON_RESET)


def unique_id():
    uid = os.getenv("SIMBOARD_UID") or "51b0a2d000"
    return bytes(int(uid[i : i + 2], 16) for i in range(0, len(uid), 2))


def freq(hz=None):
    return 160000000 if hz is None else None


class WDT:
    def __init__(self, id=0, timeout=5000):
        global _wdt_running
        if timeout < 1:
            raise ValueError("timeout")
        _send("wdt %d" % timeout)
        _wdt_running = True

    def feed(self):
        _send("feed")


class Timer:
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id=-1, mode=PERIODIC, period=-1, callback=None, freq=-1):
        self._run_id = 0
        if callback is not None:
            self.init(mode=mode, period=period, callback=callback, freq=freq)

    def init(self, mode=PERIODIC, period=-1, callback=None, freq=-1):
        import _thread

        if freq > 0:
            period = 1000 // freq
        if period < 1:
            raise ValueError("period")
        self._run_id += 1
        _thread.start_new_thread(self._run, (self._run_id, mode, period, callback))

    def _run(self, run_id, mode, period, callback):
        while True:
            time.sleep_ms(period)
            if self._run_id != run_id:
                return  # deinit() or init() again
            if callback is not None:
                try:
                    callback(self)
                except Exception as e:  # as a board reports an exception in a callback, and goes on
                    sys.print_exception(e)
            if mode == self.ONE_SHOT:
                return

    def deinit(self):
        self._run_id += 1


class _Mem:
    def __init__(self, bits):
        self._all = (1 << bits) - 1

    def __getitem__(self, addr):
        return self._all if _wdt_running else 0

    def __setitem__(self, addr, value):
        pass


mem8 = _Mem(8)
mem16 = _Mem(16)
mem32 = _Mem(32)


def _held_levels():
    # SIMBOARD_PINS="0=0,5=1": pins held at a level by the simulator (a button pressed at boot).
    levels = {}
    spec = os.getenv("SIMBOARD_PINS") or ""
    for item in spec.split(","):
        if "=" in item:
            name, level = item.split("=")
            levels[name] = int(level)
    return levels


_HELD = _held_levels()


class Pin:
    IN = 0
    OUT = 1
    OPEN_DRAIN = 2
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_FALLING = 4
    IRQ_RISING = 8

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self._id = str(id)
        self._mode = self.IN
        self._pull = None
        self._out = 0
        self.init(mode, pull, value)

    def init(self, mode=-1, pull=-1, value=None):
        if mode != -1:
            self._mode = mode
        if pull != -1:
            self._pull = pull
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            if self._mode == self.OUT:
                return self._out
            if self._id in _HELD:
                return _HELD[self._id]
            return 1 if self._pull == self.PULL_UP else 0
        v = 1 if v else 0
        if v != self._out or self._mode != self.OUT:
            _send("pin %s %d" % (self._id, v))
        self._out = v

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def toggle(self):
        self.value(1 - self._out)

    def irq(self, handler=None, trigger=0):
        return None
