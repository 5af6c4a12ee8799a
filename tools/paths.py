"""Where the repo's parts are, for host tools and tests.

The firmware is a package (`firmware/hbkeep/`) importable from the repo root as `firmware.hbkeep`;
on a board, and in the child processes that run `firmware/main.py`, the same package is `hbkeep`."""
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRMWARE_DIR = os.path.join(REPO, "firmware")
PACKAGE_DIR = os.path.join(FIRMWARE_DIR, "hbkeep")
BOARDS_DIR = os.path.join(REPO, "boards")

# Modules of the package that only hosts use: CPython's side of compat and of tls, the frame builder and
# the AUTH checks of the server and tests. No board imports them, so they are not compiled to .mpy (tools/build/mpycompile.py), not
# deployed, and not type-checked against the board stubs (tools/build/typecheck.py).
HOST_ONLY = ("_cpython.py", "_cpython_tls.py", "protocol_host.py", "auth_host.py")
