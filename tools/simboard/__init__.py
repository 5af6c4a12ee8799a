"""A simulated board: the MicroPython unix port behind a pty that mpremote opens like a USB serial port.

    python3 -m tools.simboard --flash DIR        # prints the port, e.g. /dev/pts/7; stop with Ctrl-C

See board.py for how it works and __main__.py (or --help) for the options."""
from .board import SimBoard  # noqa: F401
