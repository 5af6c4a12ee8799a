"""A stand-in for MicroPython's `network` module: a station whose status() the test scripts.

Status numbers are deliberately not any port's real ones: the firmware must compare only with the
STAT_* names (docs/PORTS.md), and odd numbers here catch a comparison with a literal."""
import types

STA_IF = 0


def make_module():
    mod = types.ModuleType("network")
    mod.STA_IF = STA_IF
    mod.STAT_IDLE = 900
    mod.STAT_CONNECTING = 901
    mod.STAT_WRONG_PASSWORD = 902
    mod.STAT_NO_AP_FOUND = 903
    mod.STAT_CONNECT_FAIL = 904
    mod.STAT_GOT_IP = 905

    class WLAN:
        instances = []

        def __init__(self, iface):
            self.iface = iface
            self.active_state = False
            self.configured = {}
            self.connects = []
            self.disconnects = 0
            self.connect_errors = []  # OSErrors the next connect() calls raise, in order
            self.statuses = [mod.STAT_IDLE]  # scripted: status() pops until one is left
            WLAN.instances.append(self)

        def active(self, on):
            self.active_state = on

        def config(self, **kw):
            self.configured.update(kw)

        def connect(self, ssid, password):
            self.connects.append((ssid, password))
            if self.connect_errors:
                raise self.connect_errors.pop(0)

        def disconnect(self):
            self.disconnects += 1

        def status(self):
            if len(self.statuses) > 1:
                return self.statuses.pop(0)
            return self.statuses[0]

        def ipconfig(self, key):
            assert key == "addr4"
            return ("192.0.2.7", "255.255.255.0")

        def ifconfig(self):
            return ("192.0.2.7", "255.255.255.0", "192.0.2.1", "192.0.2.1")

    mod.WLAN = WLAN
    return mod
