# What a board runs at power-on (firmware/main.py calls main()), and the entry point for an application
# of one's own on top of the link (docs/APP.md): main(app=..., on_data=...).
#
# Order: the stop switches (a `noboot` file, a pin held at boot) before anything can fail; then the
# board table and the config (a bad one is one line and the end, with the REPL free); then the services
# -- Wi-Fi, watchdog, status LED, the application, the client -- each restarted after an exception with
# a pause that grows while it keeps failing. Only an interrupt (Ctrl-C, mpremote) ends the firmware.
from . import compat
from .events import describe

NOBOOT_FILE = "noboot"  # at the root of the board's flash: main.py starts nothing
PAUSE_FIRST_MS = 1000
PAUSE_MAX_MS = 60000
STEADY_MS = 60000  # a service that ran this long before failing starts again from the first pause

# Exit codes for host runs (a board ignores them)
OK = 0
BAD_FILE = 2


def next_pause(pause):
    return PAUSE_FIRST_MS if pause == 0 else (pause * 2 if pause * 2 < PAUSE_MAX_MS else PAUSE_MAX_MS)


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
    """The validated config as plain attributes, free of the validator's class and module."""


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
    return cfg


def main(config_path="config.json", board_path="board.json", app=None, on_data=None):
    """Run the firmware until interrupted. app: an async function taking the Client, run beside it;
    on_data: the handler for received DATA payloads (default: the upper-case echo). Returns the exit
    code of a host run: 0 after an interrupt or a stop switch, 2 for a bad board or config file."""
    if _exists(NOBOOT_FILE):
        _line("autostart state=off reason=noboot_file")
        return OK
    try:
        board = compat.load_json(board_path)
    except (OSError, ValueError) as e:
        _line("board_error path=%s error=%s" % (board_path, str(e).replace(" ", "_")))
        return BAD_FILE
    if boot_hold(board):
        _line("autostart state=off reason=boot_hold_pin pin=%s" % board["boot_hold_pin"])
        return OK
    try:
        cfg = load_settings(config_path)
    except ValueError as e:  # config.ConfigError
        _line("config_error %s" % str(e).replace("\n", " "))
        return BAD_FILE
    from .client import Client  # after the config is known good: less heap on a failed start

    client = Client(cfg, board, compat.Net(board))  # the port's socket answers from the board table
    if on_data is not None:
        client.on_data = on_data
    return Firmware(cfg, board, client, app).run()


class Firmware:
    def __init__(self, cfg, board, client, app=None):
        self.cfg = cfg
        self.board = board
        self.client = client
        self.ev = client.ev
        self.app = app
        self.feeder = None

    def run(self):
        pause = 0
        try:
            while True:
                try:
                    compat.run(self.services())
                except Exception as e:  # escaped the event loop itself
                    pause = next_pause(pause)
                    self.ev.emit("crash", "task", "loop", "error", describe(e), "restart_ms", pause)
                    compat.block_ms(pause)
                    compat.new_loop()
        except KeyboardInterrupt:
            self.interrupted()
        return OK

    def interrupted(self):
        # First keep the board alive under the user; the lines can wait a moment.
        if self.feeder is not None:
            self.feeder.park(self.board, "interrupt")
        self.ev.emit("stopped", "reason", "interrupt")
        self.client.emit_stats()

    async def services(self):
        cfg = self.cfg
        board = self.board
        client = self.client
        # Each only where the board table has it: the unix board has no Wi-Fi, watchdog or LED.
        if board.get("wifi") and cfg.wifi_ssid:
            from . import wifi

            station = wifi.Station(cfg, board, client.ev)
            client.net.link_up = station.up  # no DNS or connect while the station has no IP
            compat.create_task(self.keep("wifi", station.keep))
        if cfg.wdt_ms:
            from . import watchdog

            ms = watchdog.timeout_for(cfg, board, self.ev)
            if ms:
                self.feeder = watchdog.Feeder(client, ms, self.ev)
                compat.create_task(self.keep("watchdog", self.feeder.run))
        if board.get("led_pin") is not None and compat.machine_has("Pin"):
            from .led import StatusLed

            led = StatusLed(board)
            compat.create_task(self.keep("led", lambda: led.show(client)))
        if self.app is not None:
            compat.create_task(self.keep("app", lambda: self.app(client)))
        await self.keep("client", client.run)

    async def keep(self, name, start):
        """Run start() again after each exception, pausing longer while it keeps failing."""
        pause = 0
        while True:
            t0 = compat.ticks_ms()
            try:
                await start()
                return  # ended by itself (an application that is done)
            except compat.CancelledError:
                raise
            except Exception as e:
                if compat.ticks_diff(compat.ticks_ms(), t0) >= STEADY_MS:
                    pause = 0
                pause = next_pause(pause)
                self.ev.emit("crash", "task", name, "error", describe(e), "restart_ms", pause)
            # Sliced so that the watchdog sees a deliberate wait, not a hang.
            await self.client.pause(pause)
