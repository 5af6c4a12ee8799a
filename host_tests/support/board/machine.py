# A scripted stand-in for MicroPython's `machine` module (WDT, Timer, Pin, mem32), for the watchdog,
# recovery, boot-switch and LED tests. Plain Python that runs unchanged on CPython and on the MicroPython
# unix port (which has no WDT or Timer): a test puts this folder first on the module path (MicroPython)
# or installs the module as sys.modules["machine"] (CPython, see support/fake_machine.py).
#
# Everything the firmware does is recorded in LOG as tuples; the test plays the hardware: which level an
# input pin reads (INPUTS), which words mem32 holds (MEM), and when the watchdog would have reset the
# board (WDT.expired(now)). Times come from `clock`, which a test may point at its own clock.
import time

try:
    clock = time.ticks_ms  # MicroPython
except AttributeError:
    clock = None  # CPython: the test sets clock (the virtual loop's ticks)

LOG = []
INPUTS = {}  # pin id -> level an input reads
MEM = {}  # address -> 32-bit word
RESETS = []  # times at which an expired watchdog was noticed (see WDT.expired)


def now():
    return clock() if clock is not None else 0


class WDT:
    current = None  # the one hardware watchdog: a new WDT() reconfigures it, as on the ports

    def __init__(self, id=0, timeout=5000):
        LOG.append(("WDT", timeout))
        self.timeout = timeout
        self.last_feed = now()
        self.feeds = []
        WDT.current = self

    def feed(self):
        t = now()
        self.feeds.append(t)
        self.last_feed = t

    def expired(self, t=None):
        # True when more than `timeout` passed since the last feed: the board would have reset.
        t = now() if t is None else t
        return t - self.last_feed > self.timeout


class Timer:
    PERIODIC = 1
    ONE_SHOT = 0
    live = []

    def __init__(self, id=-1):
        self.id = id
        self.callback = None
        self.period = None
        LOG.append(("Timer", id))

    def init(self, mode=1, period=-1, callback=None):
        self.mode = mode
        self.period = period
        self.callback = callback
        if self not in Timer.live:
            Timer.live.append(self)
        LOG.append(("Timer.init", mode, period))

    def deinit(self):
        if self in Timer.live:
            Timer.live.remove(self)
        LOG.append(("Timer.deinit",))

    def fire(self):
        # The test stands in for the hardware: one period elapsed.
        self.callback(self)


class Pin:
    IN = 0
    OUT = 1
    PULL_UP = 1
    PULL_DOWN = 2
    outputs = {}  # pin id -> [(time, level), ...]

    def __init__(self, id, mode=-1, pull=-1):
        self.id = id
        self.mode = mode
        LOG.append(("Pin", id, mode, pull))
        if mode == Pin.OUT:
            Pin.outputs[id] = []

    def value(self, v=None):
        if v is None:
            return INPUTS.get(self.id, 1)
        Pin.outputs[self.id].append((now(), v))
        return None


class ADC:
    reading = 1234  # what read_u16() returns

    def __init__(self, id):
        LOG.append(("ADC", id))

    def read_u16(self):
        return ADC.reading


class _Mem32:
    def __getitem__(self, addr):
        LOG.append(("mem32", addr))
        return MEM.get(addr, 0)


mem32 = _Mem32()


def reset_state():
    # A fresh board: nothing recorded, no watchdog, no timers.
    del LOG[:]
    INPUTS.clear()
    MEM.clear()
    del RESETS[:]
    WDT.current = None
    del Timer.live[:]
    Pin.outputs.clear()
