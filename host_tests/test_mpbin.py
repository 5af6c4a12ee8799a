"""tools.build.mpbin: the MicroPython unix port is found and runs; MICROPYTHON and PATH come before the wheel."""
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


def _nothing_on_path(tmp_path, monkeypatch):
    """No MICROPYTHON=, no binary on PATH nor beside this Python, nothing resolved before; returns the
    empty directory standing for those places."""
    monkeypatch.delenv("MICROPYTHON", raising=False)
    monkeypatch.setattr(mpbin, "_resolved", {})
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("MPBIN_SCRIPTS_DIR", str(empty))
    return empty


def test_nothing_here_is_a_clear_error(tmp_path, monkeypatch):
    _nothing_on_path(tmp_path, monkeypatch)
    with pytest.raises(mpbin.MpbinError, match="no MicroPython here.*" + mpbin.WHEEL):
        mpbin.micropython_argv()


def test_another_python_than_the_repos_is_told_which_one_to_use(tmp_path, monkeypatch):
    """`python3 -m tools.simboard` after `make setup`: the wheel is in .venv, not beside this Python; the
    error names the .venv's Python rather than sending the user to run `make setup` again."""
    empty = _nothing_on_path(tmp_path, monkeypatch)
    venv_bin = tmp_path / "venv" / "bin"
    fake_micropython(venv_bin)
    monkeypatch.setattr(mpbin, "VENV_BIN", str(venv_bin))
    with pytest.raises(mpbin.MpbinError) as e:
        mpbin.micropython_argv()
    assert "run this with %s" % (venv_bin / "python") in str(e.value) and "make setup" not in str(e.value)
    # Where .venv has no MicroPython either, make setup is what to do.
    monkeypatch.setattr(mpbin, "_resolved", {})
    monkeypatch.setattr(mpbin, "VENV_BIN", str(empty))
    with pytest.raises(mpbin.MpbinError, match="make setup"):
        mpbin.micropython_argv()


def test_the_wheels_console_script_is_found_without_path(tmp_path, monkeypatch):
    """With nothing on PATH and no override, the pinned wheel's `micropython` beside this Python is used."""
    monkeypatch.delenv("MICROPYTHON", raising=False)
    monkeypatch.delenv("MPBIN_SCRIPTS_DIR", raising=False)
    monkeypatch.setattr(mpbin, "_resolved", {})
    script = mpbin.wheel_script()
    if script is None:
        skip_or_fail("HB_REQUIRE_MICROPYTHON", "the %s wheel" % mpbin.WHEEL,
                     "no micropython script in %s" % mpbin.scripts_dir())
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    argv = mpbin.micropython_argv()
    assert argv == [script]
    out = subprocess.run(argv + ["-c", "import sys; print(sys.implementation.version[:2], sys.maxsize > 2**32)"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    # The 64-bit tier: 1.29 (preview) from the pinned wheel, a 64-bit build.
    assert out.stdout.split() == ["(1,", "29)", "True"], out.stdout


def test_path_beats_the_wheel(tmp_path, monkeypatch):
    """A `micropython` on PATH that really is MicroPython takes precedence over the wheel's script."""
    monkeypatch.delenv("MICROPYTHON", raising=False)
    monkeypatch.setattr(mpbin, "_resolved", {})
    fake = tmp_path / "bin" / "micropython"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho micropython\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent) + os.pathsep + "/usr/bin:/bin")
    assert mpbin.micropython_argv() == [str(fake)]

    # One that answers as something else is ignored (with a note), and the search goes on to the wheel.
    fake.write_text("#!/bin/sh\necho cpython\n")
    monkeypatch.setattr(mpbin, "_resolved", {})
    empty = tmp_path / "scripts"
    empty.mkdir()
    monkeypatch.setenv("MPBIN_SCRIPTS_DIR", str(empty))
    with pytest.raises(mpbin.MpbinError, match="no MicroPython here"):
        mpbin.micropython_argv()
