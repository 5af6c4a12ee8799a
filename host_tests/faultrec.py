"""Measurements of the fault matrix (issue 4), one JSON line per (row, case, runtime).

    faultrec.record(row=1, case="server absent at boot", runtime="micropython",
                    expected="<= 100 ms retry + 250 ms tolerance", measured="12 ms", ok=True)

Records are appended to build/faults/results.jsonl; tools/build/faulttable.py turns them into docs/FAULTS.md
(the newest record for each row/case/runtime wins, so running a subset of the tests updates its rows and
keeps the others). Tests record *before* asserting, so a figure outside its bound shows up in the table as
FAIL instead of vanishing with the failed test.
"""
import json
import os
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "build", "faults", "results.jsonl")
TABLE = os.path.join(ROOT, "docs", "FAULTS.md")

_recorded = False  # set once this process recorded something: the session hook then rewrites the table


def record(row, case, runtime, expected, measured, ok, **extra):
    global _recorded
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    rec = {"row": row, "case": case, "runtime": runtime, "expected": expected, "measured": measured,
           "ok": bool(ok), "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    rec.update(extra)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")
    _recorded = True
    return ok


def write_table_if_recorded():
    """Called from the session-finish hook in conftest.py: regenerate docs/FAULTS.md."""
    if not _recorded:
        return
    from tools.build import faulttable

    faulttable.write(RESULTS, TABLE)
