"""tools/bench.py's heap figures (taken by tools/fwbench.py inside the firmware's process): all of the heap
and the firmware's own share after start, while retrying, and with the firmware in a romfs image.
Figures are checked for sense (one against another), never against a limit."""
import os
import subprocess
import sys

import pytest

from support.fwproc import micropython_status, require_runtime

from tools import bench
from tools.paths import BOARDS_DIR, REPO

HEAP_KEYS = ("heap_after_start_bytes", "heap_after_start_firmware_bytes", "heap_retrying_bytes",
             "heap_retrying_firmware_bytes")
ROMFS_KEYS = ("romfs_buffer_bytes", "heap_after_start_romfs_bytes", "heap_after_start_romfs_firmware_bytes")


@pytest.fixture(scope="module")
def heap_only():
    require_runtime("micropython32")
    require_runtime("micropython")
    p = subprocess.run([sys.executable, "-m", "tools.bench", "--runtimes", "micropython32,micropython,cpython",
                        "--heap-only", "--failures", "5"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stderr
    return dict(line.split("=", 1) for line in p.stdout.splitlines())


@pytest.mark.parametrize("mode", ["raw", "framed"])
def test_heap_figures_are_printed_for_both_micropythons_and_romfs_for_the_32_bit_one(heap_only, mode):
    for tag in ("unix32", "unix"):
        for key in HEAP_KEYS:
            assert int(heap_only["%s_%s_%s" % (mode, tag, key)]) > 0, key
    assert int(heap_only["%s_unix32_heap_retrying_most_bytes" % mode]) > 0
    for key in ROMFS_KEYS:
        assert int(heap_only["%s_unix32_%s" % (mode, key)]) > 0, key
    assert not any(k.startswith(mode + "_unix_") and "romfs" in k for k in heap_only)
    assert not any(k.startswith(mode + "_cpython_") for k in heap_only)  # no heap figures on CPython


@pytest.mark.parametrize("tag", ["unix32", "unix"])
@pytest.mark.parametrize("mode", ["raw", "framed"])
def test_the_firmware_share_is_the_heap_less_what_was_there_before_it(heap_only, mode, tag):
    for what in ("after_start", "retrying"):
        whole = int(heap_only["%s_%s_heap_%s_bytes" % (mode, tag, what)])
        share = int(heap_only["%s_%s_heap_%s_firmware_bytes" % (mode, tag, what)])
        # Before the firmware: the interpreter's start-up and the benchmark program, a few KB.
        assert 0 < whole - share < 8192, (what, whole, share)
        if tag == "unix":  # 64-bit objects are bigger than 32-bit ones
            assert share > int(heap_only["%s_unix32_heap_%s_firmware_bytes" % (mode, what)]), what


@pytest.mark.parametrize("mode", ["raw", "framed"])
def test_romfs_keeps_the_code_out_of_the_heap(heap_only, mode):
    p = "%s_unix32_" % mode
    assert int(heap_only[p + "heap_after_start_romfs_bytes"]) < int(heap_only[p + "heap_after_start_bytes"]) * 0.8
    assert (int(heap_only[p + "heap_after_start_romfs_firmware_bytes"])
            < int(heap_only[p + "heap_after_start_firmware_bytes"]) * 0.8)
    # The image's buffer (about the size of the .mpy files) is left out, not counted.
    assert int(heap_only[p + "romfs_buffer_bytes"]) > int(heap_only[p + "heap_after_start_romfs_bytes"])


def test_framed_mode_holds_more_than_raw_its_frame_buffer(heap_only):
    # bench config: framed adds a 1032-byte frame buffer and a 1 KiB larger read buffer.
    for key in ("unix32_heap_after_start_firmware_bytes", "unix32_heap_after_start_romfs_firmware_bytes"):
        assert int(heap_only["framed_" + key]) - int(heap_only["raw_" + key]) > 2048, key


def test_retry_run_counts_the_refused_connects():
    require_runtime("micropython32")
    r = bench.run_retry("micropython32", "framed", failures=3)
    assert int(r["failed_connects"]) >= 3
    assert int(r["heap_retrying_firmware_bytes"]) < int(r["heap_retrying_bytes"])
    assert int(r["heap_at_entry_bytes"]) == int(r["heap_retrying_bytes"]) - int(r["heap_retrying_firmware_bytes"])
    # Sampled over the retries, before the last failure: the firmware was loaded, so well above the entry.
    assert int(r["heap_retrying_most_bytes"]) > int(r["heap_retrying_bytes"]) - 1024 > int(r["heap_at_entry_bytes"])


def test_fwbench_refuses_an_unknown_mode_by_name(tmp_path):
    require_runtime("micropython32")
    p = subprocess.run(micropython_status("micropython32")[1] + [os.path.join(REPO, "tools", "fwbench.py"), str(tmp_path), "c.json",
                               os.path.join(BOARDS_DIR, "unix", "board.json"), "sprint"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert p.stdout.startswith("error=usage:") and "echo|start|retry" in p.stdout


def test_bench_refuses_fewer_than_one_failure():
    p = subprocess.run([sys.executable, "-m", "tools.bench", "--runtimes", "cpython", "--heap-only",
                        "--failures", "0"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 2 and "--failures" in p.stderr


def test_frozen_on_a_binary_without_the_package_frozen_in_says_so():
    # The stock 32-bit MicroPython has no hbkeep frozen in: the frozen run fails, naming what it tried.
    require_runtime("micropython32")
    with pytest.raises(AssertionError, match=r"frozen\) ended without its figures"):
        bench.run_start("micropython32", "framed", frozen=True)
