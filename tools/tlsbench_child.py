# The firmware's TLS handshake under measurement, on the MicroPython unix port (or CPython):
#
#     <python> tools/tlsbench_child.py FIRMWARE_DIR CA_FILE PORT ROUNDS
#
# Each round: a blocking TCP connect to 127.0.0.1:PORT, then the firmware's own non-blocking handshake
# (hbkeep.tls.handshake, completed by a first 8-byte beat exactly as the client does), timed, with the
# MicroPython heap sampled after every step of the handshake. Figures are `key=value` lines on stdout;
# tools/tlsbench.py reads them. Not a test: figures are reported, not asserted.
import sys

sys.path.insert(0, sys.argv[1])

import gc  # noqa: E402
import socket  # noqa: E402

from hbkeep import compat, tls  # noqa: E402
from hbkeep.protocol import HEADER_SIZE, HEART, encode_header  # noqa: E402


def out(key, value):
    compat.write_line("%s=%s" % (key, value))


def rss_kib():
    # Process memory, for what the GC heap cannot see: the unix port's mbedTLS allocates with malloc
    # (a board's rp2 build allocates it on the MicroPython heap instead).
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def mem():
    return gc.mem_alloc() if compat.MICROPYTHON else 0


async def main(ca, port, rounds):
    beat = bytearray(HEADER_SIZE)
    encode_header(beat, 0, HEART, 0)
    gc.collect()
    base = mem()
    ctx = tls.context(tls.der_from_file(ca))
    gc.collect()
    out("heap_context_bytes", mem() - base)
    addr = socket.getaddrinfo("127.0.0.1", port)[0][-1]
    # Everything the loop keeps is allocated here, so what the heap holds after each round is the
    # handshake's own leftover, nothing of the bookkeeping.
    times = [0] * rounds
    peaks = [0] * rounds
    opens = [0] * rounds
    rss_open = [0] * rounds
    settled = [0] * rounds
    peak = [0]

    def probe():
        m = mem()
        if m > peak[0]:
            peak[0] = m

    rss_before = rss_kib()
    for i in range(rounds):
        s = socket.socket()
        s.connect(addr)
        s.setblocking(False)
        gc.collect()
        m0 = mem()
        peak[0] = m0
        t0 = compat.ticks_ms()
        w = tls.wrap(ctx, s, "localhost")
        await tls.handshake(w, beat, HEADER_SIZE, probe)
        times[i] = compat.ticks_diff(compat.ticks_ms(), t0)
        probe()
        peaks[i] = peak[0] - m0
        gc.collect()
        opens[i] = mem() - m0
        rss_open[i] = rss_kib() - rss_before
        w.close()
        s.close()
        w = s = None  # nothing of this connection left referenced
        gc.collect()
        settled[i] = mem()
    times.sort()
    out("runtime", compat.RUNTIME)
    out("rounds", rounds)
    out("handshake_ms_median", times[len(times) // 2])
    out("handshake_ms_max", times[-1])
    out("heap_peak_during_handshake_bytes", max(peaks))
    out("heap_held_by_open_tls_socket_bytes", max(opens))
    # Heap still held after a closed connection, per round, from the second round on (the first one
    # also loads what every connection shares): a leak would show here.
    out("heap_growth_per_round_bytes", (settled[-1] - settled[0]) // (rounds - 1) if rounds > 1 else 0)
    out("rss_growth_open_kib_max", max(rss_open))


compat.run(main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
