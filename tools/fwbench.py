# The firmware's client under measurement. Runs on the MicroPython unix port and on CPython:
#
#     <python> tools/fwbench.py FIRMWARE CONFIG BOARD echo WARMUP_FRAMES MEASURE_FRAMES
#     <python> tools/fwbench.py FIRMWARE CONFIG BOARD start
#     <python> tools/fwbench.py FIRMWARE CONFIG BOARD retry FAILED_CONNECTS
#
# FIRMWARE is a directory holding the hbkeep package (sources or .mpy files), or a romfs image
# (tools/build/romfs.py, a name ending in .romfs) mounted from a buffer, as a board mounts its romfs
# partition, so that .mpy code runs in place from the image, or `frozen`: the package frozen into the
# MicroPython binary running this.
#
# echo:  reports the heap once connected, waits until WARMUP_FRAMES have been echoed (steady state), then
#        turns the collector off and counts heap bytes allocated over MEASURE_FRAMES more frames, with
#        beats running.
# start: reports the heap once connected, and ends.
# retry: the config names a port where nothing listens: reports the heap after FAILED_CONNECTS failed
#        connects (the client retrying), and ends.
#
# Heap figures (MicroPython only; bytes in use after a collection):
#   heap_at_entry_bytes              before the first firmware import: the interpreter and this program
#   heap_after_start_bytes           once connected, all of the heap
#   heap_after_start_firmware_bytes  the same less heap_at_entry_bytes: the firmware's own share
#   heap_retrying_bytes, heap_retrying_firmware_bytes  likewise, while the client retries
#   heap_retrying_most_bytes         the most seen while it retries (a collection every ms)
#   romfs_buffer_bytes               (romfs image) the image's buffer: it stands for flash, so it is left
#                                    out of every figure above
# Results are `key=value` lines on stdout; tools/bench.py reads them. Deliberately not a test: figures are
# reported, not asserted.
#
# This program is kept small: its own code and names are in every absolute figure. What it touches of
# the firmware, whose internals change under it, is start() below (runner.prepare and the runner's
# services, as main.py starts them) and the client's `connected` event, `sock` and `stats` counters (those of the stats line).
import sys

MICROPYTHON = sys.implementation.name == "micropython"
if MICROPYTHON:
    import gc


def heap():
    if MICROPYTHON:
        gc.collect()
        return gc.mem_alloc()
    return 0  # CPython's heap is not a board's: no heap figures there


def out(key, value):
    sys.stdout.write("%s=%s\n" % (key, value))


def reach(location):
    """Put the firmware on the import path; return the heap it took that a board keeps in flash (the
    romfs image's buffer), else 0. `frozen`: the package is frozen into this MicroPython binary."""
    if location == "frozen":
        return 0
    if not location.endswith(".romfs"):
        sys.path.insert(0, location)
        return 0
    import os
    import vfs

    before = heap()
    image = bytearray(os.stat(location)[6])
    cost = heap() - before  # exactly the buffer's blocks: the object and its data
    with open(location, "rb") as f:
        f.readinto(image)
    vfs.mount(vfs.VfsRom(image), "/fwrom")
    sys.path.insert(0, "/fwrom")
    return cost


def start(compat, config, board):
    """The firmware started as main.py starts it (hbkeep/runner.py): the validated config detached from
    the validator, whose module then leaves the heap, and the client under the runner's services."""
    from hbkeep import runner

    got = runner.prepare(config, board)
    if isinstance(got, int):
        out("error", "the_firmware_did_not_start_rc_%d" % got)
        raise SystemExit(1)
    cfg, board, client = got
    client.ev.write = lambda line: None  # no event lines in the figures
    return client, compat.create_task(runner.Firmware(cfg, board, client).services())


async def measure(compat, argv, entry, image):
    client, task = start(compat, argv[2], argv[3])
    st = client.stats
    mode = argv[4]
    counts = [int(a) for a in argv[5:]]
    name = "heap_after_start"
    if mode == "retry":
        name = "heap_retrying"
        # Sampled every ms while the client retries (the most seen: an attempt in flight holds its
        # socket), then taken just after the last failure counted (the stats line's connect_failures), in
        # the pause before the next attempt: the same point of the retry cycle on every run.
        most = 0
        while sum(st.connect_failures.values()) < counts[0]:
            most = max(most, heap())
            await compat.sleep_ms(1)
        out("failed_connects", sum(st.connect_failures.values()))
        if MICROPYTHON:
            out("heap_retrying_most_bytes", most - image)
    else:
        await client.connected.wait()
    if MICROPYTHON:
        now = heap()
        out(name + "_bytes", now - image)
        out(name + "_firmware_bytes", now - entry)
    if mode == "echo":
        while st.frames_echoed < counts[0]:
            await compat.sleep_ms(5)
        a0 = heap()
        if MICROPYTHON:
            gc.disable()  # every byte allocated from here on stays counted in mem_alloc()
        f0 = st.frames_echoed
        b0 = st.beats_sent
        t0 = compat.ticks_ms()
        while st.frames_echoed < f0 + counts[1]:
            await compat.sleep_ms(5)
        frames = st.frames_echoed - f0
        if MICROPYTHON:
            a1 = gc.mem_alloc()
            gc.enable()
            out("alloc_bytes", a1 - a0)
            out("alloc_per_frame_bytes", "%.3f" % ((a1 - a0) / frames))
        out("measured_frames", frames)
        out("measured_ms", compat.ticks_diff(compat.ticks_ms(), t0))
        out("beats_during_measure", st.beats_sent - b0)
    out("done", 1)
    if mode == "echo":
        # Keep echoing until the server has what it wants and hangs up.
        while client.sock is not None:
            await compat.sleep_ms(20)
    task.cancel()


def main(argv):
    if len(argv) < 5 or argv[4] not in ("echo", "start", "retry"):
        out("error", "usage:_fwbench.py_FIRMWARE_CONFIG_BOARD_echo|start|retry_...")
        raise SystemExit(2)
    image = reach(argv[1])
    entry = heap()  # this program, the image's buffer, nothing of the firmware yet
    if MICROPYTHON:
        out("heap_at_entry_bytes", entry - image)
        if image:
            out("romfs_buffer_bytes", image)
    from hbkeep import compat  # the firmware's first import: its share starts here

    compat.run(measure(compat, argv, entry, image))


if __name__ == "__main__":  # tools/fwheapmap.py imports this program for reach() and start()
    main(sys.argv)
