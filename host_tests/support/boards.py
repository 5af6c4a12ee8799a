"""The board tables of boards/<name>/board.json, as the firmware receives them, for tests that build a
client or a runner in-process. `changes` overrides top-level keys (a test's own boot-hold pin, say)."""
import json
import os

from tools.paths import BOARDS_DIR


def board(name="unix", **changes):
    with open(os.path.join(BOARDS_DIR, name, "board.json")) as f:
        table = json.load(f)
    table.update(changes)
    return table
