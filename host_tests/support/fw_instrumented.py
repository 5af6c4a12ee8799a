# The firmware's real Client, instrumented from inside, for the fault and leak tests. Runs on the
# MicroPython unix port and on CPython, as a process (possibly inside a network namespace); started by
# support/faultkit.py's InstrumentedFwProc:
#
#     <python> host_tests/support/fw_instrumented.py FIRMWARE_DIR CONFIG BOARD WATCH EVERY
#
# It prints the firmware's own event lines, and after every EVERY-th event whose name is in WATCH (a
# comma-separated list, e.g. "disconnected,connect_failed") one more line, synchronously at that point:
#
#     <ms> probe after=disconnected n=1000 heap=12345 fds=4
#
# heap: bytes in use after gc.collect() (MicroPython; 0 on CPython, whose heap is not a board's);
# fds: entries of /proc/self/fd (-1 where there is no /proc). The process itself cannot be introspected
# from outside, hence this harness -- the same idea as tools/fwbench.py.
import sys

sys.path.insert(0, sys.argv[1])

import os  # noqa: E402

from hbkeep import compat  # noqa: E402
from hbkeep.client import Client  # noqa: E402  (compiled first, while the heap is emptiest: the biggest module)
from hbkeep.config import load  # noqa: E402
from hbkeep.events import Events  # noqa: E402


def open_fds():
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


class ProbingEvents(Events):
    def __init__(self, watch, every, verbose):
        Events.__init__(self, verbose=verbose)
        self.watch = watch
        self.every = every
        self.counts = {}

    def emit(self, name, *kv):
        Events.emit(self, name, *kv)
        if name in self.watch:
            n = self.counts.get(name, 0) + 1
            self.counts[name] = n
            if n % self.every == 0:
                compat.collect()
                heap = compat.mem_alloc()
                Events.emit(self, "probe", "after", name, "n", n, "heap", heap, "fds", open_fds())


class CountingNet(compat.Net):
    """Real sockets, counting writes the kernel took only part of (the client's writes backing up)."""

    short_writes = 0
    writes = 0

    def try_write(self, sock, buf, off, n):
        k = compat.try_write(sock, buf, off, n)
        CountingNet.writes += 1
        if k < n:
            CountingNet.short_writes += 1
        return k


async def main():
    cfg = load(sys.argv[2])
    board = compat.load_json(sys.argv[3])
    watch = sys.argv[4].split(",") if len(sys.argv) > 4 else []
    every = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    client = Client(cfg, board, CountingNet(), ProbingEvents(watch, every, cfg.verbose))
    CLIENT.append(client)
    compat.collect()
    client.ev.emit("probe", "after", "start", "n", 0, "heap", compat.mem_alloc(), "fds", open_fds())
    await client.run()


def final_lines():
    if CLIENT:
        client = CLIENT[0]
        client.emit_stats()
        client.ev.emit("writes", "total", CountingNet.writes, "short", CountingNet.short_writes)


CLIENT = []


try:
    compat.run(main())
except KeyboardInterrupt:
    # SIGINT (EventProc.stop): on MicroPython it arrives in the scheduler, outside any task, so the final
    # lines are printed here rather than in a finally inside main().
    compat.write_line("%d stopped reason=interrupt" % compat.ticks_ms())
    final_lines()
