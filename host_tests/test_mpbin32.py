"""tools.build.mpbin32 (and the shared tools.build.debroot): a 32-bit MicroPython is provided, or the
failure names every Debian suite tried and why."""
import os
import stat
import subprocess

import pytest

from support.tiers import skip_or_fail

from tools.build import debroot, mpbin32


def test_provides_a_32_bit_micropython(monkeypatch):
    monkeypatch.delenv("MICROPYTHON32", raising=False)
    try:
        argv = mpbin32.micropython32_argv()
    except debroot.DebrootError as e:
        skip_or_fail("HB_REQUIRE_MICROPYTHON32", "32-bit MicroPython", e)
    out = subprocess.run(argv + ["-c", "import sys, time; print(sys.maxsize, time.ticks_add(0, -1) + 1)"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(2 ** 31 - 1), str(2 ** 30)]  # 31-bit small ints, a 2^30 ms tick
    assert mpbin32.probe(argv) is None


def test_a_64_bit_binary_is_refused_with_the_reason(tmp_path, monkeypatch):
    fake = tmp_path / "micropython"
    fake.write_text("#!/bin/sh\necho 'micropython 9223372036854775807'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    why = mpbin32.probe([str(fake)])
    assert why and "not a 32-bit" in why


def test_override_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROPYTHON32", str(tmp_path / "nope"))
    with pytest.raises(debroot.DebrootError, match="MICROPYTHON32="):
        mpbin32.micropython32_argv()


def test_every_suite_tried_is_named_when_all_fail(tmp_path, monkeypatch):
    tried = []

    def failing(cache, suite, arch, packages, check, log, mirror, signed_by):
        tried.append(suite)
        raise debroot.DebrootError("apt-get update (suite %s) failed: File has unexpected size" % suite)

    monkeypatch.setattr(debroot, "_fetch_suite", failing)
    monkeypatch.setattr(debroot, "find_mirror", lambda: ("http://mirror.example/debian", None))
    with pytest.raises(debroot.DebrootError) as info:
        debroot.fetch(str(tmp_path), ("forky", "sid", "trixie"), "i386", ("micropython",), lambda r: None,
                      lambda msg: None)
    msg = str(info.value)
    assert tried == ["forky", "sid", "trixie"]
    for suite in tried:
        assert "suite %s: apt-get update (suite %s) failed" % (suite, suite) in msg
    assert "i386" in msg and "mirror.example" in msg
    assert not os.path.exists(os.path.join(str(tmp_path), "root"))
