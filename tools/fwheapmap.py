# Where the firmware's heap goes, measured inside the firmware's process (MicroPython only). Run by
# tools/build/heapmap.py, which reads what it prints:
#
#     micropython tools/fwheapmap.py FIRMWARE CONFIG BOARD loaded
#     micropython tools/fwheapmap.py FIRMWARE CONFIG BOARD deps MODULE
#     micropython tools/fwheapmap.py FIRMWARE CONFIG BOARD map MODULE,MODULE,...
#
# FIRMWARE, CONFIG, BOARD: as for tools/fwbench.py (a directory or a .romfs image). `loaded` and `map`
# start the firmware as main.py does (fwbench.start) and wait until it has connected to the server in
# CONFIG.
#
# loaded: `module=NAME` for each module in sys.modules once connected that was not there before the
#         firmware started: the firmware's modules and what they import (asyncio's).
# deps:   imports MODULE alone: `dep=NAME` for each module that brought in, itself included.
# map:    imports the modules given, in that order, one at a time (the caller orders them so that each
#         comes after its dependencies: the heap taken by each import is then the module's own); then
#         starts the firmware, which finds them loaded, and connects. After each step: `heap_at=LABEL
#         bytes=N` and a `qstr_at=LABEL` line followed by micropython.qstr_info()'s own line (`qstr pool:
#         n_pool=...`). Then the client's buffers (`buffer=PATH bytes=N length=N`: each bytearray
#         reachable from the client through attributes, two levels deep, with its cost in the heap).
# Every mode ends with `done=1`.
import sys

import fwbench
import micropython

heap = fwbench.heap
out = fwbench.out


def mark(label):
    out("heap_at", "%s bytes=%d" % (label, heap()))
    out("qstr_at", label)
    micropython.qstr_info()


def names():
    return set(sys.modules)


def bytearray_cost(length):
    # With the collector off nothing is freed meanwhile: the difference is exactly the blocks of the
    # probe (its object and its data), the same as the buffer's of that length.
    gc = fwbench.gc
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    probe = bytearray(length)
    cost = gc.mem_alloc() - before
    gc.enable()
    del probe
    return cost


def buffers(client):
    found = []
    seen = []

    def walk(obj, path, depth):
        for attr in sorted(getattr(obj, "__dict__", {})):
            value = getattr(obj, attr)
            if isinstance(value, bytearray):
                if not any(value is s for s in seen):
                    seen.append(value)
                    found.append((path + "." + attr, len(value)))
            elif depth > 0 and hasattr(value, "__dict__") and not isinstance(value, type):
                walk(value, path + "." + attr, depth - 1)

    walk(client, "client", 2)
    return found


def report_loaded(at_entry):
    for name in sorted(names()):
        if name not in at_entry:
            out("module", name)


def report_connected(client):
    mark("connected")
    for path, length in buffers(client):
        out("buffer", "%s bytes=%d length=%d" % (path, bytearray_cost(length), length))


async def once_connected(client, task, report):
    await client.connected.wait()
    report()  # while the connection is up: what a running firmware holds
    task.cancel()


def run(argv):
    image = fwbench.reach(argv[1])
    mode = argv[4]
    at_entry = names()
    if mode == "deps":
        __import__(argv[5])
        for name in sorted(names()):
            if name not in at_entry:
                out("dep", name)
        out("done", 1)
        return
    if mode == "loaded":
        report = lambda: report_loaded(at_entry)  # noqa: E731
    else:
        mark("entry")
        for name in argv[5].split(","):
            __import__(name)
            mark(name)
        report = lambda: report_connected(client)  # noqa: E731
    from hbkeep import compat

    client, task = fwbench.start(compat, argv[2], argv[3])
    if mode == "map":
        mark("prepared")
    compat.run(once_connected(client, task, report))
    out("romfs_buffer_bytes", image)
    out("done", 1)


if len(sys.argv) < 5 or sys.argv[4] not in ("loaded", "deps", "map") or (sys.argv[4] != "loaded" and len(sys.argv) < 6):
    out("error", "usage:_fwheapmap.py_FIRMWARE_CONFIG_BOARD_loaded|deps_MODULE|map_MODULES")
    raise SystemExit(2)
run(sys.argv)
