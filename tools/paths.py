"""Where the repo's parts are, for host tools and tests.

The firmware is a package (`firmware/hbkeep/`) importable from the repo root as `firmware.hbkeep`;
on a board, and in the child processes that run `firmware/main.py`, the same package is `hbkeep`."""
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRMWARE_DIR = os.path.join(REPO, "firmware")
PACKAGE_DIR = os.path.join(FIRMWARE_DIR, "hbkeep")
BOARDS_DIR = os.path.join(REPO, "boards")
