# The firmware's client under measurement. Runs on the MicroPython unix port and on CPython:
#
#     <python> tools/fwbench.py FIRMWARE_DIR CONFIG BOARD WARMUP_FRAMES MEASURE_FRAMES
#
# It starts the real Client from firmware/, waits until WARMUP_FRAMES have been echoed (steady state), then
# collects the heap, turns the collector off and counts heap bytes allocated over MEASURE_FRAMES more
# frames, with beats running. Results are `key=value` lines on stdout; tools/bench.py reads them.
# Deliberately not a test: figures are reported, not asserted.
import sys

sys.path.insert(0, sys.argv[1])

from hbkeep import compat  # noqa: E402
from hbkeep import runner  # noqa: E402
from hbkeep.events import Events  # noqa: E402


def out(key, value):
    compat.write_line("%s=%s" % (key, value))


async def monitor(client, warmup, measure):
    st = client.stats
    await client.connected.wait()
    compat.collect()
    out("heap_after_start_bytes", compat.mem_alloc())
    while st.frames_echoed < warmup:
        await compat.sleep_ms(5)
    compat.collect()
    if compat.MICROPYTHON:
        import gc

        gc.disable()  # every byte allocated from here on stays counted in mem_alloc()
    a0 = compat.mem_alloc()
    f0 = st.frames_echoed
    b0 = st.beats_sent
    t0 = compat.ticks_ms()
    while st.frames_echoed < f0 + measure:
        await compat.sleep_ms(5)
    a1 = compat.mem_alloc()
    frames = st.frames_echoed - f0
    if compat.MICROPYTHON:
        import gc

        gc.enable()
        out("alloc_bytes", a1 - a0)
        out("alloc_per_frame_bytes", "%.3f" % ((a1 - a0) / frames))
    out("measured_frames", frames)
    out("measured_ms", compat.ticks_diff(compat.ticks_ms(), t0))
    out("beats_during_measure", st.beats_sent - b0)
    out("done", 1)
    # Keep echoing until the server has what it wants and hangs up.
    while client.sock is not None:
        await compat.sleep_ms(20)


async def main():
    # Started as main.py starts it (hbkeep/runner.py): the validated config detached from the validator,
    # whose module then leaves the heap, and the client under the runner's services.
    cfg, board, client = runner.prepare(sys.argv[2], sys.argv[3])
    client.ev = Events(write=lambda s: None)  # no event lines in the figures
    task = compat.create_task(runner.Firmware(cfg, board, client).services())
    await monitor(client, int(sys.argv[4]), int(sys.argv[5]))
    task.cancel()


compat.run(main())
