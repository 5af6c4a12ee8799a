# What a board runs at power-on (firmware/main.py calls main()), and the entry point for an application
# of one's own on top of the link (docs/APP.md): main(app=..., on_data=...).
#
# Order: the stop switches (a `noboot` file, a pin held at boot) before anything can fail; then the
# board table and the config (a bad one is one line and the end, with the REPL free); then the services
# -- Wi-Fi, watchdog, status LED, the application, the client -- each restarted after an exception with a
# pause that grows while it keeps failing. Only an interrupt (Ctrl-C, mpremote) ends the firmware.
# Whatever runs once (checks, parsing, setting up) is in start.py, which leaves the heap once done: what
# stays here is what runs for as long as the firmware does.
from . import compat
from .compat import const

_PAUSE_FIRST_MS = const(1000)
_PAUSE_MAX_MS = const(60000)
STEADY_MS = const(60000)  # a service that ran this long before failing starts again from the first pause
OK = const(0)  # exit code of a host run after an interrupt (a board ignores it)


def next_pause(pause):
    return _PAUSE_FIRST_MS if pause == 0 else (pause * 2 if pause * 2 < _PAUSE_MAX_MS else _PAUSE_MAX_MS)


def prepare(config_path, board_path):
    """start.prepare(): (cfg, board, client), or the exit code when nothing is to start. The start-up
    module is forgotten when it returns (no frame of ours holds it any more), so its code leaves the heap."""
    from . import start

    got = start.prepare(config_path, board_path)
    compat.forget_module("start")
    return got


def main(config_path="config.json", board_path="board.json", app=None, on_data=None):
    """Run the firmware until interrupted. app: an async function taking the Client, run beside it;
    on_data: the handler for received DATA payloads (default: the upper-case echo). Returns the exit
    code of a host run: 0 after an interrupt or a stop switch, 2 for a bad board or config file."""
    got = prepare(config_path, board_path)
    if isinstance(got, int):
        return got
    cfg, board, client = got
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
        self.feeder = None  # the watchdog's, once set up: interrupted() parks it
        self.jobs = None  # (name, coroutine function, arguments) of each service, once set up

    def run(self):
        pause = 0
        reason = compat.STOP_INTERRUPT
        try:
            compat.on_terminate()  # SIGTERM, where the runtime can catch it, stops us like Ctrl-C
            while True:
                try:
                    compat.run(self.services())
                except Exception as e:  # escaped the event loop itself
                    pause = next_pause(pause)
                    self.crashed("loop", e, pause)
                    compat.block_ms(pause)
                    compat.new_loop()
        except KeyboardInterrupt:
            reason = compat.stop_reason()
        self.interrupted(reason)
        return OK

    def interrupted(self, reason=compat.STOP_INTERRUPT):
        # First keep the board alive under the user; the lines can wait a moment.
        if self.feeder is not None:
            self.feeder.park(self.board, reason)
        # An interrupt that stopped us may be followed by another (a terminal and a parent both sending
        # SIGINT); it must not cut the last two lines short: each is retried until written.
        compat.ignore_interrupts()
        for line in (0, 1):
            for _ in range(3):
                try:
                    if line == 0:
                        self.ev.emit("stopped", "reason", reason)
                    else:
                        self.client.emit_stats()
                    break
                except KeyboardInterrupt:
                    pass

    async def services(self):
        # Set up once (start.py, which then leaves the heap again); after a crash of the loop itself the
        # same services start again. The last one, the client, runs in this task.
        jobs = self.jobs
        if jobs is None:
            jobs = self.jobs = self.set_up()
        last = len(jobs) - 1
        for i in range(last):
            compat.create_task(self.keep(*jobs[i]))
        await self.keep(*jobs[last])

    def set_up(self):
        # Not inside services(): its frame lives as long as the firmware, and would keep start.py alive.
        from . import start

        jobs = start.services(self)
        compat.forget_module("start")
        return jobs

    def crashed(self, name, e, pause):
        # The line may fail where the service did: a MemoryError formats no text on a full heap. The
        # restart must not depend on it -- an exception here would end a service for good, or, from the
        # loop, the firmware.
        try:
            self.ev.emit("crash", "task", name, "error", compat.exc_text(e), "restart_ms", pause)
        except Exception:
            pass

    async def keep(self, name, start, args):
        """Run start(*args) again after each exception, pausing longer while it keeps failing."""
        pause = 0
        while True:
            t0 = compat.ticks_ms()
            try:
                await start(*args)
                return  # ended by itself (an application that is done)
            except compat.CancelledError:
                raise
            except Exception as e:
                if compat.ticks_diff(compat.ticks_ms(), t0) >= STEADY_MS:
                    pause = 0
                pause = next_pause(pause)
                self.crashed(name, e, pause)
            if name == "client":
                # Sliced so that the watchdog sees a deliberate wait, not a hang.
                await self.client.pause(pause)
            else:
                # Not client progress: another service restarting must not hide a client that hangs.
                await compat.sleep_ms(pause)
