"""Where the firmware's heap goes after start, module by module. Prints key=value lines.

    python3 -m tools.build.heapmap                    # 32-bit MicroPython, x86 .mpy files, framed mode
    python3 -m tools.build.heapmap --romfs            # the same .mpy files run in place from a romfs image
    python3 -m tools.build.heapmap --mode raw --runtime micropython

How: the firmware is started as main.py starts it (tools/fwbench.py's start()) against a loopback server
and, once connected, the modules it brought into sys.modules are listed (nothing here names them, so a
module added to or removed from the firmware shows up by itself). Each is then imported alone in a fresh
interpreter to learn what it pulls in, which orders them dependencies first. A last run imports them in
that order, one at a time, measuring the heap (after a collection) and the interned-name pool
(`micropython.qstr_info()`) around each import, then starts the firmware, which finds them loaded, and
connects. The rows add up to the firmware's share of the heap:

  entry_bytes                         the interpreter and the measuring program (tools/fwheapmap.py),
                                      before the first firmware import: not in the firmware's share
  module_<name>_bytes, _qstrs, _qstr_bytes   each module's import: its code (bytecode, or with romfs only
                                      the objects its code creates), globals, classes, and the names it
                                      interned; modules that only load together share a row (a+b)
  start_bytes, _qstrs, _qstr_bytes    runner.prepare(): the board table, the config's values, the client
                                      and its buffers, and the names the start-up code and the config
                                      validator interned before they left the heap
  connect_bytes                       connecting: the tasks, the socket and its poller
  buffer_<path>_bytes, _length        each bytearray the client holds (path through its attributes)
  buffers_bytes                       their sum (part of start_bytes)
  firmware_bytes, firmware_qstrs, firmware_qstr_bytes, firmware_qstr_text_bytes   the firmware's share:
                                      the sum of the rows; the last, the text of its names
  qstrs, qstr_bytes, qstr_text_bytes, qstr_pools   the whole interned-name pool once connected (the
                                      interpreter's own names included) as qstr_info() reports it. Its
                                      bytes count the names' text, which with --romfs stays in the image
                                      (flash): there only qstr_bytes - qstr_text_bytes (the pools' tables)
                                      is heap

A figure can move by a few hundred bytes with the order of imports: the name pool grows by doubling, so
whichever module overflows a pool pays for the next one. The firmware_bytes figure is within about 2 KB of
`python3 -m tools.bench`'s heap_after_start_firmware_bytes for the same reason (a different measuring
program, with names of its own in the pool).
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile

from tools import bench
from tools.hostrun import runtime_argv

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(os.path.dirname(HERE), "fwheapmap.py")
QSTR_LINE = re.compile(r"qstr pool: n_pool=(\d+), n_qstr=(\d+), n_str_data_bytes=(\d+), n_total_bytes=(\d+)")


class HeapmapError(RuntimeError):
    pass


def emit(key, value):
    print("%s=%s" % (key, value), flush=True)


class Child:
    """Runs tools/fwheapmap.py with a firmware, config and board; a server socket takes its connection."""

    def __init__(self, runtime, firmware, cfg_path, board_path, timeout_s):
        self.argv = runtime_argv(runtime) + ["-X", "heapsize=4M", CHILD, firmware, cfg_path, board_path]
        self.timeout_s = timeout_s

    def run(self, srv, *mode):
        child = subprocess.Popen(self.argv + list(mode), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
        conn = None
        try:
            if srv is not None:
                conn = bench.accept_while_alive(srv, child, self.timeout_s)
            text, _ = child.communicate(timeout=self.timeout_s)
        except (subprocess.TimeoutExpired, AssertionError) as e:
            child.kill()
            child.communicate()
            raise HeapmapError("fwheapmap %s: %s" % (" ".join(mode), e))
        finally:
            if conn is not None:
                conn.close()
        lines = text.splitlines()
        if child.returncode != 0 or "done=1" not in lines:
            raise HeapmapError("fwheapmap %s failed (rc=%s):\n%s" % (" ".join(mode), child.returncode, text[-3000:]))
        return lines


def values(lines, key):
    return [line.split("=", 1)[1] for line in lines if line.startswith(key + "=")]


def dependency_order(modules, deps):
    """Modules grouped where each brings in the other (a package and the submodule its __init__
    imports), groups ordered so that each comes after everything it imports: a module's dependencies
    are a strict subset of its own, so fewer first; ties by name."""
    groups = {}
    for name in modules:
        groups.setdefault(frozenset(deps[name]), []).append(name)
    ordered = sorted(groups.items(), key=lambda kv: (len(kv[0]), sorted(kv[1])))
    return [sorted(names, key=lambda n: (n.count("."), n)) for _, names in ordered]


def parse_map(lines):
    """[(label, heap bytes, (pools, qstrs, text bytes, total bytes))] in the order measured, and the
    buffers [(path, bytes, length)]."""
    steps = []
    pending = None
    for line in lines:
        if line.startswith("heap_at="):
            label, _, rest = line[len("heap_at="):].partition(" bytes=")
            pending = (label, int(rest))
        m = QSTR_LINE.match(line)
        if m and pending is not None:
            steps.append(pending + (tuple(int(g) for g in m.groups()),))
            pending = None
    buffers = []
    for value in values(lines, "buffer"):
        path, rest = value.split(" bytes=")
        nbytes, length = rest.split(" length=")
        buffers.append((path, int(nbytes), int(length)))
    return steps, buffers


def heap_map(runtime="micropython32", mode="framed", romfs=False, timeout_s=60, log=None, config_for=None):
    """Measure; return the key=value pairs as a list of (key, value), in print order. config_for(port),
    if given, returns the firmware's config for a server at 127.0.0.1:port (default: tools.bench's)."""
    log = log or (lambda msg: None)
    rows = [("runtime", runtime), ("deploy", "romfs" if romfs else ("mpy" if runtime == "micropython32" else "py")),
            ("mode", mode)]
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        with tempfile.TemporaryDirectory(prefix="heapmap-") as work:
            firmware = bench.firmware_for(runtime, work, romfs)
            cfg_path = os.path.join(work, "config.json")
            with open(cfg_path, "w") as f:
                port = srv.getsockname()[1]
                json.dump(config_for(port) if config_for else bench.bench_config(port, mode), f)
            child = Child(runtime, firmware, cfg_path, os.path.join(bench.BOARDS_DIR, "unix", "board.json"),
                          timeout_s)
            log("starting the firmware to list its modules")
            modules = values(child.run(srv, "loaded"), "module")
            if not modules:
                raise HeapmapError("the firmware started with no module of its own in sys.modules")
            deps = {}
            for i, name in enumerate(modules):
                log("what %s imports (%d/%d)" % (name, i + 1, len(modules)))
                deps[name] = values(child.run(None, "deps", name), "dep")
            groups = dependency_order(modules, deps)
            log("measuring %d modules in that order, then the start" % len(modules))
            lines = child.run(srv, "map", ",".join(name for group in groups for name in group))
    finally:
        srv.close()
    steps, buffers = parse_map(lines)
    by_label = {label: (heap, q) for label, heap, q in steps}
    missing = [name for name in modules if name not in by_label]
    if missing or "entry" not in by_label or "connected" not in by_label:
        raise HeapmapError("the map run did not measure every step (missing: %s):\n%s" % (
            ", ".join(missing) or "entry/connected", "\n".join(lines[-40:])))
    entry_heap, entry_q = by_label["entry"]
    image = int(values(lines, "romfs_buffer_bytes")[-1])  # stands for flash: no part of any figure
    rows += [("entry_bytes", entry_heap - image), ("entry_qstrs", entry_q[1])]
    prev_heap, prev_q = entry_heap, entry_q

    def row(name, label):
        nonlocal prev_heap, prev_q
        heap, q = by_label[label]
        rows.extend([(name + "_bytes", heap - prev_heap), (name + "_qstrs", q[1] - prev_q[1]),
                     (name + "_qstr_bytes", q[3] - prev_q[3])])
        prev_heap, prev_q = heap, q

    for group in groups:
        row("module_" + "+".join(group), group[-1])  # the last of a group's imports brought them all
    row("start", "prepared")
    row("connect", "connected")
    for path, nbytes, length in buffers:
        rows += [("buffer_%s_bytes" % path, nbytes), ("buffer_%s_length" % path, length)]
    rows.append(("buffers_bytes", sum(nbytes for _, nbytes, _ in buffers)))
    end_heap, end_q = by_label["connected"]
    rows += [("firmware_bytes", end_heap - entry_heap), ("firmware_qstrs", end_q[1] - entry_q[1]),
             ("firmware_qstr_bytes", end_q[3] - entry_q[3]),
             ("firmware_qstr_text_bytes", end_q[2] - entry_q[2]),
             ("qstrs", end_q[1]), ("qstr_bytes", end_q[3]), ("qstr_text_bytes", end_q[2]), ("qstr_pools", end_q[0])]
    if romfs:
        rows.append(("romfs_buffer_bytes", image))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m tools.build.heapmap", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtime", default="micropython32", choices=bench.MICROPYTHONS,
                    help="micropython32 (default: a board's word size, .mpy files for x86) or micropython (64-bit, sources)")
    ap.add_argument("--mode", default="framed", choices=("framed", "raw"), help="the config's mode (default framed)")
    ap.add_argument("--romfs", action="store_true", help="run the .mpy files in place from a romfs image (micropython32)")
    args = ap.parse_args(argv)
    if args.romfs and args.runtime != "micropython32":
        ap.error("--romfs: the image holds x86 .mpy files, which only --runtime micropython32 runs")
    try:
        for key, value in heap_map(args.runtime, args.mode, args.romfs,
                                   log=lambda msg: print("heapmap: " + msg, file=sys.stderr, flush=True)):
            emit(key, value)
    except (HeapmapError, RuntimeError, OSError) as e:
        print("heapmap: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
