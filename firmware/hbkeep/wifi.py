# Wi-Fi station on boards: join, report status changes, and rejoin where the port does not.
#
# esp32 rejoins by itself after connect() until disconnect(); rp2's cyw43 does not rejoin after the access
# point drops, so the board table's "wifi_rejoins" decides whether we call connect() again. Statuses are
# compared only with network.STAT_* names: the numbers differ per port (PORT_FACTS.md). The password is
# passed to connect() and never printed.
import network
from . import compat
TYPE_CHECKING = False
if TYPE_CHECKING:  # for mypy only: at run time the validator's module leaves the heap after start
    from .config import Config

REJOIN_AFTER_MS = 10000  # not connected and not connecting for this long: connect() again
POLL_MS = 500


def _status_name(st):
    for name in ("STAT_GOT_IP", "STAT_CONNECTING", "STAT_IDLE", "STAT_WRONG_PASSWORD", "STAT_NO_AP_FOUND",
                 "STAT_CONNECT_FAIL"):
        if st == getattr(network, name, None):
            return name[5:].lower()
    return "code_%d" % st  # e.g. rp2's unnamed 2 ("joined, no IP") or a raw ESP-IDF reason


class Station:
    cfg: "Config"  # declared for the type checker only, as in Client

    def __init__(self, cfg, board, events):
        self.cfg = cfg
        self.board = board
        self.ev = events
        self.wlan = network.WLAN(network.STA_IF)
        self.wlan.active(True)
        pm = board.get("wifi_pm")
        if pm is not None:
            self.wlan.config(pm=pm)  # Pico W power saving causes drop-outs
        self.last = None

    def up(self):
        return self.wlan.status() == network.STAT_GOT_IP

    def join(self):
        self.ev.emit("wifi_join", "ssid", self.cfg.wifi_ssid)
        self.wlan.connect(self.cfg.wifi_ssid, self.cfg.wifi_password)

    async def keep(self):
        self.join()
        since = compat.ticks_ms()
        while True:
            st = self.wlan.status()
            if st != self.last:
                self.last = st
                since = compat.ticks_ms()
                if st == network.STAT_GOT_IP:
                    self.ev.emit("wifi", "status", "got_ip", "ip", self.wlan.ifconfig()[0])
                else:
                    self.ev.emit("wifi", "status", _status_name(st))
            elif (
                st != network.STAT_GOT_IP
                and st != network.STAT_CONNECTING
                and not self.board.get("wifi_rejoins")
                and compat.ticks_diff(compat.ticks_ms(), since) >= REJOIN_AFTER_MS
            ):
                self.join()
                since = compat.ticks_ms()
            await compat.sleep_ms(POLL_MS)
