"""tools.build.mpbin: the MicroPython unix binary is found (or fetched) and runs; MICROPYTHON overrides."""
import os
import shlex
import stat
import subprocess
import sys

import pytest

from support.tiers import skip_or_fail

from tools.build import mpbin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(args, env_updates):
    env = dict(os.environ, **env_updates)
    return subprocess.run([sys.executable, "-m", "tools.build.mpbin"] + args, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def fake_micropython(directory):
    """An executable that answers like `micropython -c ...` would, whatever it is asked to run."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "micropython"
    path.write_text("#!/bin/sh\necho 'MicroPython 9.9.9'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_finds_a_working_binary(monkeypatch):
    monkeypatch.delenv("MICROPYTHON", raising=False)
    try:
        argv = mpbin.micropython_argv()
    except mpbin.MpbinError as e:
        skip_or_fail("HB_REQUIRE_MICROPYTHON", "MicroPython", e)
    assert isinstance(argv, list) and argv
    out = subprocess.run(argv + ["-c", "print(1+1)"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"
    # and it really is MicroPython, not some other interpreter that happens to add numbers
    assert mpbin.probe(argv) is None


def test_override_is_used_as_given(tmp_path, monkeypatch):
    fake = fake_micropython(tmp_path / "dir with space")
    monkeypatch.setenv("MICROPYTHON", str(fake))
    assert mpbin.micropython_argv() == [str(fake)]

    # The command line prints it shell-quoted, and --check runs it and prints what it says.
    out = run_cli([], {"MICROPYTHON": str(fake)})
    assert out.returncode == 0, out.stderr
    assert shlex.split(out.stdout) == [str(fake)]
    out = run_cli(["--check"], {"MICROPYTHON": str(fake)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "MicroPython 9.9.9"


def test_override_that_is_not_there_is_an_error(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    monkeypatch.setenv("MICROPYTHON", str(missing))
    with pytest.raises(mpbin.MpbinError, match="MICROPYTHON="):
        mpbin.micropython_argv()
    out = run_cli([], {"MICROPYTHON": str(missing)})
    assert out.returncode != 0
    assert "MICROPYTHON=" in out.stderr and out.stdout == ""


def test_no_fetch_fails_clearly_when_nothing_is_here(tmp_path, monkeypatch):
    monkeypatch.delenv("MICROPYTHON", raising=False)
    monkeypatch.setenv("MPBIN_CACHE_DIR", str(tmp_path / "cache"))
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(mpbin.MpbinError, match="no MicroPython here"):
        mpbin.micropython_argv(fetch=False)


def test_other_architectures_are_named_in_the_error(monkeypatch):
    monkeypatch.setattr(mpbin.platform, "machine", lambda: "riscv64")
    with pytest.raises(mpbin.MpbinError, match="riscv64"):
        mpbin.root_argv("/nonexistent")


def test_mirror_is_read_from_the_machines_apt_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("MPBIN_DEBIAN_MIRROR", raising=False)
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (tmp_path / "sources.list").write_text("# nothing here\n")
    (parts / "other.list").write_text("deb https://vendor.example/apt cloud-sdk main\n")
    (parts / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    monkeypatch.setattr(mpbin, "APT_SOURCES", str(tmp_path / "sources.list"))
    monkeypatch.setattr(mpbin, "APT_SOURCE_PARTS", str(parts))
    assert mpbin.find_mirror() == ("http://mirror.example/debian",
                                   "/usr/share/keyrings/debian-archive-keyring.gpg")

    # One-line format, with options, in the main sources.list: it comes first.
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64 signed-by=/k.gpg] http://other.example/debian bookworm main\n")
    assert mpbin.find_mirror() == ("http://other.example/debian", "/k.gpg")

    # No Debian entry at all: a clear error, not a guess.
    (tmp_path / "sources.list").write_text("")
    (parts / "debian.sources").unlink()
    with pytest.raises(mpbin.MpbinError, match="no Debian mirror"):
        mpbin.find_mirror()
