# Start-up, run once by runner.main and then forgotten, so that its code leaves the heap: the stop
# switches, the board table, the config, the client; then, loaded once more by runner.Firmware, the
# services around the client.
from . import compat
from .compat import const
from .runner import OK

_BAD_FILE = const(2)  # exit code of a host run with a bad board or config file (a board ignores it)

# The board table's entries read once the client exists: by the services set up below, the client
# (name, sockopts) and the watchdog's parking (wdt_*). Only these stay on the heap; the rest -- the
# description, the socket section (compat.Net has copied what it needs), the boot-hold pin -- is read
# before and dropped. host_tests/test_runner.py fails naming any key the package reads that is in
# neither list.
RUNNING_KEYS = ("name", "sockopts", "wifi", "wifi_pm", "wifi_rejoins", "wifi_refusals", "watchdog", "wdt_max_ms",
                "wdt_park_ms", "rtc", "led_pin", "led_active_low")
START_KEYS = ("about", "mpy_arch", "boot_hold_pin", "boot_hold_level", "socket", "wdt_running_reg")


def _line(body):
    compat.write_line("%s %s" % (compat.ticks_ms(), body))


def _exists(path):
    import os

    try:
        os.stat(path)
        return True
    except OSError:
        return False


def boot_hold(board):
    """True when the board's boot_hold_pin is at boot_hold_level (default 0: pulled up, held to GND)."""
    pin = board.get("boot_hold_pin")
    if pin is None:
        return False
    if not compat.machine_has("Pin"):
        _line("autostart hold_pin=%s state=unreadable reason=no_pins_on_this_runtime" % pin)
        return False
    import machine

    level = board.get("boot_hold_level", 0)
    pull = machine.Pin.PULL_UP if level == 0 else machine.Pin.PULL_DOWN
    return machine.Pin(pin, machine.Pin.IN, pull).value() == level


class Settings:
    """The validated config as plain attributes, free of the validator's class and module. A class
    without methods refers to nothing of this module: its instance outlives the module's code."""


def detach(cfg):
    s = Settings()
    for name in dir(cfg):
        if name[0] != "_":
            v = getattr(cfg, name)
            if not callable(v):
                setattr(s, name, v)
    return s


def load_settings(path):
    """The validated config (config.ConfigError, a ValueError, when it is not); the validator's module
    then leaves the heap, since nothing needs it again."""
    from .config import load

    cfg = detach(load(path))
    compat.forget_module("config")
    compat.forget_module("strictjson")  # the config file's reader, used by nothing else
    return cfg


def _fail(kind, text):
    _line("%s %s" % (kind, str(text).replace("\n", " ")))
    return _BAD_FILE


def prepare(config_path, board_path):
    """(cfg, board, client) ready to run, or the exit code when nothing is to start. Whatever the files
    hold, this ends in one line (`autostart`, `board_error`, `config_error`) or a client: never a traceback."""
    if _exists("noboot"):  # at the root of the board's flash: main.py starts nothing
        _line("autostart state=off reason=noboot_file")
        return OK
    try:
        board = compat.load_json(board_path)
        if not isinstance(board, dict):
            raise ValueError("expected a JSON object at the top level")
        held = boot_hold(board)  # a pin this board does not have raises
    except Exception as e:
        return _fail("board_error", "path=%s error=%s" % (board_path, compat.exc_text(e)))
    if held:
        _line("autostart state=off reason=boot_hold_pin pin=%s" % board["boot_hold_pin"])
        return OK
    try:
        cfg = load_settings(config_path)
    except ValueError as e:  # config.ConfigError
        return _fail("config_error", e)
    except Exception as e:  # MemoryError on a tiny heap, or anything the validator did not foresee
        return _fail("config_error", "%s: %s" % (config_path, compat.exc_text(e)))
    try:
        net = compat.Net(board)  # the port's socket answers, from the table's "socket" section
    except Exception as e:
        return _fail("board_error", "path=%s key=socket error=%s" % (board_path, compat.exc_text(e)))
    try:
        check_refusals(board.get("wifi_refusals"))
    except ValueError as e:
        return _fail("board_error", "path=%s key=wifi_refusals error=%s" % (board_path, e))
    try:
        from .client import Client  # after the config is known good: less heap on a failed start

        client = Client(cfg, board, net)
    except ValueError as e:  # an unreadable TLS CA file (tls.CaError): named like any config error
        return _fail("config_error", str(e).replace(" ", "_"))
    except MemoryError:
        # The ranges in the config are the protocol's; what fits is the heap's. A buffer that cannot be
        # allocated is the config's fault, and the key that sized it is named.
        compat.collect()
        return _fail("config_error", "%s: %s" % (config_path, buffer_hint(cfg)))
    board = client.board = running_table(board)
    return cfg, board, client


def check_refusals(table):
    """The board's "wifi_refusals", {"code": "name"}: the raw status codes that mean the network will not
    have us (wifi.py), each with the name its events give. Checked here, once, so that the station can
    trust it: a code is a status() number written as JSON allows an object key, a name is one event word."""
    if table is None:
        return
    if not isinstance(table, dict):
        raise ValueError("expected an object of status codes to names, got %s" % type(table).__name__)
    word = "abcdefghijklmnopqrstuvwxyz0123456789_"  # a name's characters; word[26:36], a code's (literals
    # of up to 10 characters would be interned, and stay on the heap of a board that loads .mpy files)
    for code in table:
        if not code or [c for c in code if c not in word[26:36]] or (code[0] == "0" and code != "0"):
            raise ValueError("code %r is not a status number (decimal digits, no leading zero)" % code)
        name = table[code]
        if not isinstance(name, str) or not name or [c for c in name if c not in word]:
            raise ValueError("name %r of code %s is not a word of a-z, 0-9 and _" % (name, code))


def running_table(board):
    return {key: board[key] for key in RUNNING_KEYS if key in board}


def buffer_hint(cfg):
    # Mirrors Client's sizing: the read buffer and, in framed mode, the decoder's frame buffer.
    need = cfg.rx_buf
    key = "rx_buf"
    if cfg.mode == "framed":
        frame = 8 + cfg.max_payload
        key = "max_payload" if frame >= cfg.rx_buf else "rx_buf"
        need = max(cfg.rx_buf, frame) + frame
    return "%s=%d: buffers of %d bytes do not fit in the heap (%d bytes free); lower %s" % (
        key, getattr(cfg, key), need, compat.mem_free(), key)


def services(fw):
    """The services around the client, each where the board table has it (the unix board has no Wi-Fi,
    watchdog or LED), as (name, coroutine function, arguments) for runner.Firmware.keep; the client last.
    Bound methods and module functions only: a closure made here would keep this module on the heap."""
    cfg = fw.cfg
    board = fw.board
    client = fw.client
    ev = client.ev
    jobs: list = []  # (name, coroutine function, its arguments): each of its own kind
    if board.get("wifi") and cfg.wifi_ssid:
        from .wifi import Station

        station = Station(cfg, board, ev)
        client.net.link_up = station.up  # no DNS or connect while the station has no IP
        jobs.append(("wifi", station.keep, ()))
    ms = watchdog_timeout(cfg, board, ev)
    if ms:
        from .watchdog import Feeder  # only where there is a watchdog to feed

        fw.feeder = Feeder(client, ms, ev)
        jobs.append(("watchdog", fw.feeder.run, ()))
    if cfg.tls_ca and board.get("rtc"):
        # Certificate dates are checked against the RTC, which a board starts at its epoch: set it.
        from . import sntp

        jobs.append(("sntp", sntp.keep, (cfg.tls_ntp_host, ev, client.net.link_up)))
    if board.get("led_pin") is not None and compat.machine_has("Pin"):
        from .led import StatusLed

        jobs.append(("led", StatusLed(board).show, (client,)))
    if fw.app is not None:
        jobs.append(("app", fw.app, (client,)))
    jobs.append(("client", client.run, ()))
    return jobs


def watchdog_timeout(cfg, board, ev):
    """The timeout to start the hardware watchdog (watchdog.py) with: cfg.wdt_ms clamped to the board's
    limit; 0 for none."""
    ms = cfg.wdt_ms
    if not ms:
        return 0
    if not board.get("watchdog"):
        ev.emit("watchdog", "state", "absent", "board", board.get("name"))
        return 0
    if not compat.machine_has("WDT"):  # a board's table run on the host
        ev.emit("watchdog", "state", "absent", "board", board.get("name"), "reason", "no_machine_WDT")
        return 0
    limit = board.get("wdt_max_ms")
    if limit and ms > limit:
        ev.emit("watchdog", "state", "clamped", "asked_ms", ms, "timeout_ms", limit)
        ms = limit
    return ms
