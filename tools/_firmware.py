"""Make the firmware's flat modules importable from host tools and tests.

On a board the firmware files sit at the root of the filesystem and import each other by bare name
(`import protocol`); the host does the same by putting firmware/ on sys.path."""
import os
import sys

FIRMWARE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "firmware")
BOARDS_DIR = os.path.join(os.path.dirname(FIRMWARE_DIR), "boards")
if FIRMWARE_DIR not in sys.path:
    sys.path.insert(0, FIRMWARE_DIR)
