# Port models: stand-ins for the `socket`, `errno`, `network` and `machine` modules that answer as esp32 and rp2 do
# (docs/PORTS.md gives each behaviour and the source it comes from). Runs on MicroPython (unix port, 64-
# and 32-bit) and on CPython; host_tests/support/portmodel_run.py drives the firmware's real client through them.
#
# The numbers here are the model's own, written from the ports' sources, not read from boards/*.json:
# the tests check the firmware's board tables against them, so a wrong table fails.
import io
import time

try:
    ticks_ms = time.ticks_ms
    ticks_diff = time.ticks_diff
except AttributeError:  # CPython
    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

# MicroPython's errno module exports these names only (py/moderrno.c); EISCONN is not among them.
EXPORTED = ("EPERM", "ENOENT", "EIO", "EBADF", "EAGAIN", "ENOMEM", "EACCES", "EEXIST", "ENODEV", "EISDIR",
            "EINVAL", "EOPNOTSUPP", "EADDRINUSE", "ECONNABORTED", "ECONNRESET", "ENOBUFS", "ENOTCONN",
            "ETIMEDOUT", "ECONNREFUSED", "EHOSTUNREACH", "EALREADY", "EINPROGRESS")

# esp32: newlib's numbers (MICROPY_USE_INTERNAL_ERRNO 0); rp2: py/mperrno.h's own.
ERRNO = {
    "esp32": {"EPERM": 1, "ENOENT": 2, "EIO": 5, "EBADF": 9, "EAGAIN": 11, "ENOMEM": 12, "EACCES": 13,
              "EEXIST": 17, "ENODEV": 19, "EISDIR": 21, "EINVAL": 22, "EPIPE": 32, "EOPNOTSUPP": 95,
              "ECONNRESET": 104, "ENOBUFS": 105, "EADDRINUSE": 112, "ECONNREFUSED": 111, "ECONNABORTED": 113,
              "ETIMEDOUT": 116, "EHOSTUNREACH": 118, "EINPROGRESS": 119, "EALREADY": 120, "EISCONN": 127,
              "ENOTCONN": 128},
    "rp2": {"EPERM": 1, "ENOENT": 2, "EIO": 5, "EBADF": 9, "EAGAIN": 11, "ENOMEM": 12, "EACCES": 13,
            "EEXIST": 17, "ENODEV": 19, "EISDIR": 21, "EINVAL": 22, "EPIPE": 32, "EOPNOTSUPP": 95,
            "EADDRINUSE": 98, "ECONNABORTED": 103, "ECONNRESET": 104, "ENOBUFS": 105, "EISCONN": 106,
            "ENOTCONN": 107, "ETIMEDOUT": 110, "ECONNREFUSED": 111, "EHOSTUNREACH": 113, "EALREADY": 114,
            "EINPROGRESS": 115},
}

# network.STAT_* per port. esp32: ports/esp32/modnetwork_globals.h (ESP-IDF reason codes for failures);
# rp2: extmod/network_cyw43.c (CYW43_LINK_*; 2, "joined, no IP", has no name).
STAT = {
    "esp32": {"STAT_IDLE": 1000, "STAT_CONNECTING": 1001, "STAT_GOT_IP": 1010, "STAT_BEACON_TIMEOUT": 200,
              "STAT_NO_AP_FOUND": 201, "STAT_WRONG_PASSWORD": 202, "STAT_ASSOC_FAIL": 203,
              "STAT_CONNECT_FAIL": 203, "STAT_HANDSHAKE_TIMEOUT": 204},
    "rp2": {"STAT_IDLE": 0, "STAT_CONNECTING": 1, "STAT_GOT_IP": 3, "STAT_CONNECT_FAIL": -1,
            "STAT_NO_AP_FOUND": -2, "STAT_WRONG_PASSWORD": -3},
}

# The send buffer lwIP gives one TCP connection. rp2: extmod/lwip-include/lwipopts_common.h, 8 x TCP_MSS
# 800; esp32: ESP-IDF's default CONFIG_LWIP_TCP_SND_BUF_DEFAULT (4 x MSS 1436).
SNDBUF = {"esp32": 5744, "rp2": 6400}
# rp2: lwIP's TCP_SND_QUEUELEN for that buffer, (4 x TCP_SND_BUF + MSS - 1) / MSS: a tcp_write past it
# fails with ERR_MEM, which extmod/modlwip.c retries inside write() 200 x 50 ms.
RP2_QUEUELEN = (4 * 6400 + 799) // 800
RP2_ERRMEM_BLOCK_MS = 200 * 50

POLL = 3  # MP_STREAM_POLL
RD, WR, ERR, HUP = 0x1, 0x4, 0x8, 0x10

NEW, CONNECTING, CONNECTED, FAILED, CLOSED = "new", "connecting", "connected", "failed", "closed"
ACCEPT, REFUSE, HANG = "accept", "refuse", "hang"


class Namespace:
    pass


def make_errno(port):
    mod = Namespace()
    nums = ERRNO[port]
    mod.errorcode = {}
    for name in EXPORTED:
        setattr(mod, name, nums[name])
        mod.errorcode[nums[name]] = name
    return mod


class World:
    """Everything outside the board: the server's side of each connection, the access point, counters."""

    def __init__(self, port, old_poll=False):
        self.port = port  # "esp32" or "rp2"
        self.e = ERRNO[port]
        self.old_poll = old_poll  # rp2 before 1.25.0: a connecting socket polls writable at once
        self.plans = []  # what the next connect attempts meet: ACCEPT, REFUSE or HANG
        self.connect_delay_ms = 20
        self.sockets = []
        self.ap_present = True
        self.station = None
        self.dns_lookups = 0
        self.dns_without_ip = 0
        self.connects_without_ip = 0
        self.ealready = 0  # second connect() calls answered EALREADY
        self.errmem_blocks = 0  # rp2 writes that would have blocked 10 s inside write()
        self.max_write = 0
        self.max_queued = 0
        self.warnings = []

    def has_ip(self):
        return self.station is None or self.station.got_ip()

    def err(self, name):
        return OSError(self.e[name], name)


class ModelSocket(io.IOBase):
    def __init__(self, world):
        self.w = world
        self.state = NEW
        self.plan = None
        self.due = 0
        self.rx = []  # bytes the server sent, not yet read
        self.peer_eof = False
        self.peer_reset = False
        self.tx = bytearray()  # everything the board sent
        self.acking = True  # the server's stack acknowledges (and its application reads) what we send
        self.sndbuf_used = 0
        self.queued = 0  # rp2: pbufs waiting for an acknowledgement
        self.dead = False  # the path is gone (access point lost): nothing comes, nothing is acknowledged
        world.sockets.append(self)

    # -- the server's side ---------------------------------------------------------------------------
    def send(self, data):
        self.rx.append(bytes(data))

    def reset(self):
        self.peer_reset = True

    def take(self):
        out = bytes(self.tx)
        self.tx = bytearray()
        return out

    def _update(self):
        if self.state == CONNECTING and self.plan != HANG and ticks_diff(ticks_ms(), self.due) >= 0:
            self.state = CONNECTED if self.plan == ACCEPT else FAILED
        if self.state == CONNECTED and self.acking and not self.dead:
            self.sndbuf_used = 0
            self.queued = 0

    # -- the board's side ----------------------------------------------------------------------------
    def setblocking(self, flag):
        self.blocking = flag

    def setsockopt(self, level, opt, value):
        # Both ports print a warning for an option they lack and carry on (no exception).
        known = {"esp32": ((6, 1),), "rp2": ((None, 0x40),)}[self.w.port]
        for lv, op in known:
            if op == opt and (lv is None or lv == level):
                return
        self.w.warnings.append((level, opt))

    def connect(self, addr):
        w = self.w
        if not isinstance(addr, tuple):
            raise TypeError("address must be a tuple")
        if self.state == NEW:
            if not w.has_ip():
                w.connects_without_ip += 1
            self.plan = w.plans.pop(0) if w.plans else REFUSE
            self.due = ticks_ms() + w.connect_delay_ms
            self.state = CONNECTING
            raise w.err("EINPROGRESS")
        self._update()
        if self.state == CLOSED:
            raise w.err("EBADF")
        if self.state == CONNECTED:
            raise w.err("EISCONN")  # esp32 127 (newlib), rp2 106: never a plain return
        if self.state == CONNECTING:
            w.ealready += 1
            raise w.err("EALREADY")
        # FAILED: esp32's netconn is closed (ERR_CLSD -> ENOTCONN); rp2's pcb was freed (EBADF).
        raise w.err("ENOTCONN" if w.port == "esp32" else "EBADF")

    def readinto(self, buf):
        self._update()
        if self.state == CLOSED:
            raise self.w.err("EBADF")
        if self.peer_reset:
            raise self.w.err("ECONNRESET")
        if self.state != CONNECTED or self.dead:
            return None
        if not self.rx:
            return 0 if self.peer_eof else None
        item = self.rx[0]
        n = min(len(item), len(buf))
        buf[:n] = item[:n]
        if n == len(item):
            self.rx.pop(0)
        else:
            self.rx[0] = item[n:]
        return n

    def write(self, buf, off=0, n=None):
        w = self.w
        self._update()
        if n is None:
            n = len(buf) - off
        if self.state == CLOSED:
            raise w.err("EBADF")
        if self.peer_reset:
            raise w.err("ECONNRESET")
        if self.state != CONNECTED:
            return None  # rp2: no send space while connecting; esp32: EINPROGRESS, read as EAGAIN
        free = SNDBUF[w.port] - self.sndbuf_used
        if free <= 0:
            return None
        k = n if n <= free else free
        if w.port == "rp2":
            if self.queued + 1 > RP2_QUEUELEN:
                # extmod/modlwip.c: tcp_write() gives ERR_MEM, retried 200 x 50 ms inside the call, then
                # ENOMEM. The model does not make the test wait 10 s; it counts the block.
                w.errmem_blocks += 1
                raise w.err("ENOMEM")
            self.queued += 1
            if self.queued > w.max_queued:
                w.max_queued = self.queued
        if k > w.max_write:
            w.max_write = k
        self.tx += bytes(memoryview(buf)[off:off + k])
        self.sndbuf_used += k
        self._update()
        return k

    def close(self):
        self.state = CLOSED

    def ioctl(self, req, arg):
        if req != POLL:
            return -1  # e.g. MP_STREAM_GET_FILENO: no file descriptor behind this stream
        self._update()
        st = self.state
        ret = 0
        if st == CONNECTED:
            if self.rx or self.peer_eof or self.peer_reset:
                ret |= RD
            if self.peer_reset or (not self.dead and self.sndbuf_used < SNDBUF[self.w.port]):
                ret |= WR
        elif st == CONNECTING:
            if self.w.old_poll:
                ret |= WR  # rp2 < 1.25.0: the poll ioctl did not check STATE_CONNECTING
        elif st == FAILED:
            ret |= RD | WR | ERR | HUP
        elif st == CLOSED:
            ret |= 0x20  # NVAL
        return ret & (arg | ERR | HUP | 0x20)


def make_socket_module(world):
    mod = Namespace()
    mod.AF_INET = 2
    mod.SOCK_STREAM = 1
    mod.IPPROTO_TCP = 6
    mod.SOL_SOCKET = 0xFFF if world.port == "esp32" else 1
    mod.TCP_NODELAY = 1 if world.port == "esp32" else 0x40

    def socket(af=2, kind=1, proto=0):
        return ModelSocket(world)

    def getaddrinfo(host, port, af=0, kind=0, proto=0, flags=0):
        world.dns_lookups += 1
        if not world.has_ip():
            world.dns_without_ip += 1  # rp2 would busy-wait seconds here
        return [(2, 1, 6, "", ("192.0.2.10", port))]

    mod.socket = socket
    mod.getaddrinfo = getaddrinfo
    return mod


class ModelWLAN:
    """network.WLAN(STA_IF) as each port behaves when its access point comes and goes."""

    join_ms = 30

    def __init__(self, world, stat):
        self.w = world
        self.S = stat
        self.state = "idle"  # idle, joining, up, lost, stuck
        self.t = 0
        self.connects = 0
        self.disconnects = 0
        self.configured = {}
        self.password_ok = True  # False: the access point refuses our key
        world.station = self

    def active(self, on=None):
        return True

    def config(self, **kw):
        self.configured.update(kw)

    def connect(self, ssid, password):
        self.connects += 1
        self.state = "joining"
        self.t = ticks_ms()

    def disconnect(self):
        self.disconnects += 1
        self.state = "idle"

    def _update(self):
        w = self.w
        if self.state == "joining" and w.ap_present and ticks_diff(ticks_ms(), self.t) >= self.join_ms:
            # A refused key: esp32 reports WIFI_REASON_AUTH_FAIL and keeps retrying by itself until
            # disconnect(); rp2's cyw43 reports CYW43_LINK_BADAUTH and stays there.
            self.state = "up" if self.password_ok else "refused"
        if self.state == "up" and not w.ap_present:
            # esp32 goes on rejoining by itself (STAT_CONNECTING while it does); rp2's cyw43 reports link
            # join, STAT_CONNECTING, and stays there without rejoining.
            self.state = "joining" if w.port == "esp32" else "stuck"

    def got_ip(self):
        self._update()
        return self.state == "up"

    def status(self):
        self._update()
        s = self.state
        if s == "up":
            return self.S["STAT_GOT_IP"]
        if s in ("joining", "stuck"):
            return self.S["STAT_CONNECTING"]
        if s == "refused":
            return self.S["STAT_WRONG_PASSWORD"]
        return self.S["STAT_IDLE"]

    def ipconfig(self, key):
        return ("192.0.2.7", "255.255.255.0")

    def ifconfig(self):
        return ("192.0.2.7", "255.255.255.0", "192.0.2.1", "192.0.2.1")


def make_network_module(world):
    mod = Namespace()
    mod.STA_IF = 0
    stat = STAT[world.port]
    for k in stat:
        setattr(mod, k, stat[k])

    def WLAN(iface):
        return ModelWLAN(world, stat)

    mod.WLAN = WLAN
    return mod


# machine.WDT: rp2 refuses a timeout above WDT_TIMEOUT_MAX 8388 ms (ports/rp2/machine_wdt.c, a 24-bit counter
# of microseconds, halved); esp32 checks only for a positive one (ports/esp32/machine_wdt.c).
WDT_MAX_MS = {"esp32": None, "rp2": 8388}


def make_machine_module(port):
    mod = Namespace()

    class WDT:
        def __init__(self, id=0, timeout=5000):
            limit = WDT_MAX_MS[port]
            if timeout <= 0:
                raise ValueError("WDT timeout too short")
            if limit is not None and timeout > limit:
                raise ValueError("timeout exceeds %d" % limit)
            self.timeout = timeout
            self.feeds = 0

        def feed(self):
            self.feeds += 1

    mod.WDT = WDT
    return mod
