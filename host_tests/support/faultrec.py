"""Measurements of the fault matrix, one JSON line per (row, case, runtime).

    faultrec.record(row=1, case="server absent at boot", runtime="micropython",
                    expected="<= 100 ms retry + 250 ms tolerance", measured="12 ms", ok=True)

Records are appended to build/faults/results.jsonl, never to a tracked file: a test run leaves the tree as
it found it. `make faults-table` runs the fault tests and turns their records into the committed
docs/FAULTS.md (tools/build/faulttable.py; the newest record for each row/case/runtime wins). Tests record
*before* asserting, so a figure outside its bound shows up in the table as FAIL instead of vanishing with
the failed test.
"""
import json
import os
import time

from tools.paths import REPO

RESULTS = os.path.join(REPO, "build", "faults", "results.jsonl")


def record(row, case, runtime, expected, measured, ok, **extra):
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    rec = {"row": row, "case": case, "runtime": runtime, "expected": expected, "measured": measured,
           "ok": bool(ok), "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    rec.update(extra)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")
    return ok
