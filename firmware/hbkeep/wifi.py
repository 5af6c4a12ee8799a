# Wi-Fi station on boards: join, report status changes, rejoin where the port does not, and back off when
# the network refuses us.
#
# Port facts this relies on (docs/PORTS.md): statuses are compared only with network.STAT_* names, since
# the numbers differ per port (rp2: GOT_IP 3; esp32: GOT_IP 1010, and raw ESP-IDF reason codes too). esp32
# rejoins by itself after connect() until disconnect(); rp2's cyw43 does not, and after an access point
# is lost its status() can stay at STAT_CONNECTING for good, so there a join that has not brought an IP
# within join_timeout_ms is started again whatever the status says. wlan.connect() can raise OSError on
# rp2: that is an event and a later retry, never the end of this task. A wrong password or an unknown
# network is an event and a slow retry (growing to wrong_retry_max_ms): hammering the access point does
# not fix a password. So is any raw code the board table's "wifi_refusals" ({"code": "name"}) lists: esp32
# passes some ESP-IDF reasons through unnamed (no access point with a security it can join, none within
# its auth-mode or RSSI threshold), which would otherwise read as a slow join and be retried every
# join_timeout_ms. The client asks up() before any DNS lookup or connect: no IP, no attempt.
# The SSID may be printed; the password is passed to connect() and never printed.
import network
from . import compat
TYPE_CHECKING = False
if TYPE_CHECKING:  # for mypy only: at run time the validator's module leaves the heap after start
    from .config import Config

POLL_MS = 500
JOIN_TIMEOUT_MS = 20000  # rp2: no IP this long after connect() -> connect() again
WRONG_RETRY_MS = 30000  # wrong password / unknown network: first retry after this, then doubling
WRONG_RETRY_MAX_MS = 300000
ERROR_RETRY_MS = 5000  # connect() raised


def _status_name(st, extra):
    # Called on a change of status only, never per poll. `extra` is the board's "wifi_refusals".
    for name in ("STAT_GOT_IP", "STAT_CONNECTING", "STAT_IDLE", "STAT_WRONG_PASSWORD", "STAT_NO_AP_FOUND",
                 "STAT_CONNECT_FAIL", "STAT_BEACON_TIMEOUT", "STAT_HANDSHAKE_TIMEOUT"):
        if st == getattr(network, name, None):
            return name[5:].lower()
    # e.g. rp2's unnamed 2 ("joined, no IP"), or a raw ESP-IDF reason the table does not name
    return extra.get(str(st)) or "code_%d" % st


def _refusals(extra):
    # The statuses that mean "this network will not have us" on this port: the named ones (a port lacking
    # a name lacks the status) and the board table's raw codes (start.py checked they are numbers).
    out = []
    for name in ("STAT_WRONG_PASSWORD", "STAT_NO_AP_FOUND"):
        st = getattr(network, name, None)
        if st is not None:
            out.append(st)
    for code in extra:
        out.append(int(code))
    return tuple(out)


class Station:
    cfg: "Config"  # declared for the type checker only, as in Client
    poll_ms = POLL_MS
    join_timeout_ms = JOIN_TIMEOUT_MS
    wrong_retry_ms = WRONG_RETRY_MS
    wrong_retry_max_ms = WRONG_RETRY_MAX_MS
    error_retry_ms = ERROR_RETRY_MS

    def __init__(self, cfg, board, events):
        self.cfg = cfg
        self.ev = events
        self.rejoins_itself = bool(board.get("wifi_rejoins"))
        self.names = board.get("wifi_refusals") or {}  # the table's own dict: no copy on the heap
        self.refusals = _refusals(self.names)
        self.wlan = network.WLAN(network.STA_IF)
        self.wlan.active(True)
        pm = board.get("wifi_pm")
        if pm is not None:
            self.wlan.config(pm=pm)  # Pico W power saving causes drop-outs
        self.last = None
        self.joins = 0
        self.wrong_in_row = 0

    def up(self):
        # Has an IP: the only state in which the client may resolve or connect.
        return self.wlan.status() == network.STAT_GOT_IP

    def ip(self):
        wlan = self.wlan
        if hasattr(wlan, "ipconfig"):  # 1.23+; ifconfig() is deprecated
            return wlan.ipconfig("addr4")[0]
        return wlan.ifconfig()[0]

    def join(self):
        """connect(); False when the port raised (the event says why)."""
        self.joins += 1
        self.ev.emit("wifi_join", "ssid", self.cfg.wifi_ssid, "attempt", self.joins)
        try:
            self.wlan.connect(self.cfg.wifi_ssid, self.cfg.wifi_password)
        except OSError as e:
            self.ev.emit("wifi_error", "op", "connect", "error", compat.errno_name(e), "retry_ms",
                         self.error_retry_ms)
            return False
        return True

    def _stop_port_retries(self):
        # esp32 keeps retrying a refused join by itself, every few seconds, until disconnect().
        try:
            self.wlan.disconnect()
        except OSError:
            pass

    async def keep(self):
        ticks_ms = compat.ticks_ms
        ticks_diff = compat.ticks_diff
        joined = self.join()
        held = False  # we stopped the port's own retries (esp32 after a refusal)
        since = ticks_ms()  # of the last join attempt, or of losing the IP
        wait_ms = self.join_timeout_ms if joined else self.error_retry_ms
        while True:
            st = self.wlan.status()
            now = ticks_ms()
            if st != self.last:
                was_up = self.last == network.STAT_GOT_IP
                self.last = st
                if st == network.STAT_GOT_IP:
                    self.wrong_in_row = 0
                    self.ev.emit("wifi", "status", "got_ip", "ip", self.ip())
                else:
                    name = _status_name(st, self.names)
                    self.ev.emit("wifi", "status", name)
                    if was_up:
                        since = now  # the join timeout runs from the loss (and a week-old tick would wrap)
                        wait_ms = self.join_timeout_ms
                    if st in self.refusals:
                        wait_ms = self._refused_wait()
                        self.ev.emit("wifi_failed", "reason", name, "ssid", self.cfg.wifi_ssid,
                                     "retry_ms", wait_ms)
                        if self.rejoins_itself:
                            self._stop_port_retries()
                            held = True
                        since = now
            if st != network.STAT_GOT_IP and ticks_diff(now, since) >= wait_ms:
                if not self.rejoins_itself or held or not joined:
                    # rp2: any status but GOT_IP may never change by itself (even STAT_CONNECTING); esp32:
                    # only once we stopped its retries, or when connect() itself raised.
                    self.ev.emit("wifi_rejoin", "status", _status_name(st, self.names), "waited_ms", ticks_diff(now, since))
                    if self.rejoins_itself:
                        self._stop_port_retries()
                    joined = self.join()
                    held = False
                    self.last = None  # report the status the new attempt brings, even if it is the same
                    since = ticks_ms()
                    wait_ms = self.join_timeout_ms if joined else self.error_retry_ms
            await compat.sleep_ms(self.poll_ms)

    def _refused_wait(self):
        # A slow retry, doubling per refusal in a row up to wrong_retry_max_ms: hammering an access point
        # does not fix a password.
        wait_ms = self.wrong_retry_ms
        n = self.wrong_in_row
        while n > 0 and wait_ms < self.wrong_retry_max_ms:
            wait_ms += wait_ms
            n -= 1
        if wait_ms > self.wrong_retry_max_ms:
            wait_ms = self.wrong_retry_max_ms
        self.wrong_in_row += 1
        return wait_ms
