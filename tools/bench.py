"""Speed and memory of the firmware, measured on this machine (`make bench`). Prints key=value lines.

    python3 -m tools.bench [--mib N] [--runtimes micropython,micropython32,cpython] [--modes raw,framed]

For each runtime and mode, a loopback server pushes data at the firmware's client as fast as TCP takes it,
in 1 KiB chunks (framed: DATA frames with 1024-byte payloads), and checks every echoed byte: upper-cased,
complete, in order (beats, which run throughout, are skipped over). Throughput is echoed payload bytes per
second over the steady part of the run (after the first 10%). On MicroPython the client also reports heap
bytes allocated per echoed frame with the collector off over at least 10,000 frames, and the heap in use
after start-up. `micropython32` is the unix port built for i386 (tools/build/mpbin32.py): a board's 4-byte
object slots and 31-bit small ints, so its heap figures are the ones to compare with a board; it runs the
firmware deployed as a board gets it, compiled to .mpy with `mpy-cross -march=x86`. Last, the total size of
the firmware compiled to .mpy for each board architecture and for x86.
"""
import argparse
import glob
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from firmware.hbkeep.protocol import DATA
from firmware.hbkeep.protocol_host import encode
from tools.build import mpycompile
from tools.paths import BOARDS_DIR, FIRMWARE_DIR
from tools.hostrun import runtime_argv

HERE = os.path.dirname(os.path.abspath(__file__))
PAYLOAD = 1024
PATTERN_FRAMES = 64  # distinct payloads, so a reordered or repeated frame is caught
MICROPYTHONS = ("micropython", "micropython32")
TAGS = {"micropython": "unix", "micropython32": "unix32", "cpython": "cpython"}


def emit(key, value):
    print("%s=%s" % (key, value), flush=True)


def make_pattern(mode):
    payloads = []
    for i in range(PATTERN_FRAMES):
        body = (b"frame %05d mixed Case abc xyz \xe9\xff " % i) * 40
        payloads.append(body[:PAYLOAD])
    if mode == "raw":
        sent = b"".join(payloads)
        return sent, sent.upper(), payloads
    sent = b"".join(encode(DATA, p) for p in payloads)
    return sent, None, [p.upper() for p in payloads]


class Verifier:
    """Checks the echo stream incrementally; counts payload bytes verified."""

    def __init__(self, mode, expected_raw, expected_payloads):
        self.mode = mode
        self.raw = expected_raw
        self.payloads = expected_payloads
        self.pos = 0  # raw: position in the pattern
        self.frame_index = 0
        self.pending = bytearray()
        self.verified = 0
        self.hearts = 0

    def feed(self, data):
        if self.mode == "raw":
            mv = memoryview(data)
            n = len(self.raw)
            while len(mv):
                k = min(len(mv), n - self.pos)
                if mv[:k] != self.raw[self.pos : self.pos + k]:
                    raise AssertionError("raw echo differs at pattern offset %d" % self.pos)
                self.pos = (self.pos + k) % n
                mv = mv[k:]
                self.verified += k
            return
        buf = self.pending
        buf += data
        off = 0
        while len(buf) - off >= 8:
            ftype, length = struct.unpack_from("<ii", buf, off)
            if ftype == 0 and length == 0:
                self.hearts += 1
                off += 8
                continue
            if ftype != 1 or length != PAYLOAD:
                raise AssertionError("bad echoed header type=%d length=%d" % (ftype, length))
            if len(buf) - off < 8 + PAYLOAD:
                break
            want = self.payloads[self.frame_index % PATTERN_FRAMES]
            if memoryview(buf)[off + 8 : off + 8 + PAYLOAD] != want:
                raise AssertionError("echoed frame %d differs" % self.frame_index)
            self.frame_index += 1
            self.verified += PAYLOAD
            off += 8 + PAYLOAD
        del buf[:off]


def run_echo(runtime, mode, total, warmup_frames, measure_frames, timeout_s=120):
    sent, raw_expected, payloads = make_pattern(mode)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    tmp = tempfile.TemporaryDirectory(prefix="bench-")
    work = tmp.name
    cfg = {
        "port": port, "mode": mode, "beat_ms": 100, "peer_timeout": "off", "stats_ms": 0,
        "rx_buf": 1024 if mode == "raw" else 2048, "max_payload": PAYLOAD,
    }
    cfg_path = os.path.join(work, "config.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    argv = runtime_argv(runtime)
    firmware = FIRMWARE_DIR
    if runtime in MICROPYTHONS:
        argv = argv + ["-X", "heapsize=4M"]
    if runtime == "micropython32":
        # As deployed on a board: .mpy files for this VM's architecture, not sources compiled at import.
        firmware = os.path.join(work, "mpy")
        mpycompile.compile_all("x86", firmware)
    argv += [os.path.join(HERE, "fwbench.py"), firmware, cfg_path,
             os.path.join(BOARDS_DIR, "unix", "board.json"), str(warmup_frames), str(measure_frames)]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    results = {}

    def read_child():
        for line in child.stdout:
            k, _, v = line.strip().partition("=")
            if _:
                results[k] = v

    reader = threading.Thread(target=read_child, daemon=True)
    reader.start()
    srv.settimeout(timeout_s)
    conn, _ = srv.accept()
    srv.close()
    stop = threading.Event()

    def send():
        try:
            while not stop.is_set():
                conn.sendall(sent)
        except OSError:
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    v = Verifier(mode, raw_expected, payloads)
    buf = bytearray(1 << 16)
    t_start = None
    mark = total // 10
    deadline = time.monotonic() + timeout_s
    try:
        while v.verified < total or "done" not in results:
            if time.monotonic() > deadline:
                raise AssertionError("bench run timed out (%d of %d bytes verified)" % (v.verified, total))
            n = conn.recv_into(buf)
            if n == 0:
                raise AssertionError("client closed the connection")
            v.feed(memoryview(buf)[:n])
            if t_start is None and v.verified >= mark:
                t_start, b_start = time.monotonic(), v.verified
            if v.verified >= total and "t_end" not in results:
                results["t_end"] = time.monotonic()
                results["b_end"] = v.verified
    finally:
        stop.set()
        conn.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
        reader.join(timeout=5)
        tmp.cleanup()
    mb_s = (results["b_end"] - b_start) / (results["t_end"] - t_start) / 1e6
    results["mb_s"] = "%.1f" % mb_s
    results["hearts_seen"] = v.hearts
    return results


def mpy_sizes():
    try:
        for arch in ("xtensawin", "armv6m", "x86"):
            with tempfile.TemporaryDirectory(prefix="mpy-") as out:
                emit("mpy_total_bytes_" + arch, sum(size for _, _, size in mpycompile.compile_all(arch, out)))
    except RuntimeError as e:
        emit("mpy_error", str(e).split("\n")[0].replace(" ", "_"))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m tools.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=256, help="MiB echoed per run (default 256)")
    ap.add_argument("--runtimes", default="micropython,micropython32,cpython",
                    help="comma-separated, of micropython, micropython32, cpython (default: all three)")
    ap.add_argument("--modes", default="raw,framed", help="comma-separated (default: both)")
    ap.add_argument("--frames", type=int, default=10000, help="frames measured for heap figures (>= 10000)")
    args = ap.parse_args(argv)
    emit("machine_cores", os.cpu_count())
    emit("chunk_bytes", PAYLOAD)
    runtimes = args.runtimes.split(",")
    for runtime in runtimes:
        if runtime not in TAGS:
            ap.error("--runtimes: unknown runtime %r (known: %s)" % (runtime, ", ".join(TAGS)))
    for runtime in runtimes:
        for mode in args.modes.split(","):
            # Enough data for the warm-up and the heap window in frames (raw: reads of up to 1 KiB).
            total = max(args.mib << 20, (2000 + args.frames) * PAYLOAD * 2)
            r = run_echo(runtime, mode, total, 2000, args.frames)
            tag = "%s_%s" % (mode, TAGS[runtime])
            emit(tag + "_mb_s", r["mb_s"])
            emit(tag + "_beats_seen", r["hearts_seen"])
            if runtime in MICROPYTHONS:
                unit = "frame" if mode == "framed" else "read"
                emit("%s_alloc_per_%s_bytes" % (tag, unit), r.get("alloc_per_frame_bytes", "n/a"))
                emit("%s_alloc_window_%ss" % (tag, unit), r.get("measured_frames", "n/a"))
                emit("%s_heap_after_start_bytes" % tag, r.get("heap_after_start_bytes", "n/a"))
    mpy_sizes()
    return 0


if __name__ == "__main__":
    sys.exit(main())
