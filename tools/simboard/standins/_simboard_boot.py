# Run by the simulated board (tools/simboard) at the start of every VM, before its REPL, as a board's
# firmware does after a reset: boot.py always; main.py only after a power-on, a hard reset or a soft
# reset from the friendly REPL (SIMBOARD_BOOT=main), never after a soft reset from the raw REPL.
import sys
import os

sys.path[:] = [p for p in (os.getenv("SIMBOARD_PATH") or "").split(":")]
import machine  # the simulator's stand-in (standins/machine.py)

machine._send("up")


def _simboard_run(name):
    try:
        src = open(name).read()
    except OSError:
        return
    try:
        exec(compile(src, name, "exec"), globals())
    except SystemExit:
        # On a board a SystemExit from boot.py or main.py is a soft reset (and main.py runs again).
        machine.soft_reset()
    except BaseException as e:  # noqa: B036  (a board prints it and goes on to the REPL)
        sys.print_exception(e)


_simboard_run("boot.py")
if os.getenv("SIMBOARD_BOOT") == "main":
    _simboard_run("main.py")
del _simboard_run
