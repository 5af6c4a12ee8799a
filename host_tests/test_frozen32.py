"""tools.build.frozen32 (and debroot's source download), the parts that run without the build itself: the
manifest it composes, what makes a build stale, the checks that name what failed, and its command line.
The build (about a minute) is run by `make bench-frozen`, not by the tests."""
import os
import shutil
import stat
import sys

import pytest

from tools.build import debroot, frozen32
from tools.paths import FIRMWARE_DIR


# -- the manifest ----------------------------------------------------------------------------------
def fake_source(tmp_path, variant_text, port_shared_text):
    """A source tree holding only what compose_manifest reads: a unix port's variant manifest and the
    port's shared one (our own stand-ins, shaped as a port's manifests are)."""
    variants = tmp_path / "src" / "ports" / "unix" / "variants"
    (variants / "standard").mkdir(parents=True)
    (variants / "standard" / "manifest.py").write_text(variant_text)
    (variants / "manifest.py").write_text(port_shared_text)
    return str(tmp_path / "src")


def calls_of(manifest_text):
    """The manifest commands the composed text runs, in order, as (command, first argument)."""
    calls = []

    def recorder(name):
        return lambda *args, **kwargs: calls.append((name, args[0] if args else None))

    env = {name: recorder(name) for name in ("include", "require", "add_library", "module", "package",
                                             "freeze", "options")}
    exec(compile(manifest_text, "<composed manifest>", "exec"), env)
    return calls


def test_the_variant_is_included_less_micropython_lib_then_the_firmware(tmp_path):
    source = fake_source(
        tmp_path,
        'include("$(PORT_DIR)/variants/manifest.py")\n\ninclude("$(MPY_DIR)/extmod/asyncio")\n',
        'add_library("some-lib", "$(MPY_LIB_DIR)/some-lib")\nrequire("tool-a")\nrequire(\n    "tool-b"\n)\n')
    text = frozen32.compose_manifest(source, firmware_manifest="/fw/manifest.py")
    assert calls_of(text) == [("include", "$(MPY_DIR)/extmod/asyncio"), ("include", "/fw/manifest.py")]
    # What was left out is said, so a reader of the generated file sees it.
    for left_out in ('require("tool-a")', 'require(     "tool-b" )', 'add_library("some-lib"'):
        assert "# left out (micropython-lib, not in the tarball): " + left_out in text


def test_port_includes_are_followed_and_other_commands_kept(tmp_path):
    source = fake_source(
        tmp_path,
        'include("$(PORT_DIR)/variants")\nmodule("extra.py", base_path="$(PORT_DIR)")\n',
        'freeze("$(MPY_DIR)/somewhere", "m.py")\nrequire("tool-a")\n')
    text = frozen32.compose_manifest(source, firmware_manifest="/fw/manifest.py")
    # include() of a port folder means its manifest.py, expanded in place.
    assert calls_of(text) == [("freeze", "$(MPY_DIR)/somewhere"), ("module", "extra.py"),
                              ("include", "/fw/manifest.py")]


def test_the_default_firmware_manifest_is_the_repos(tmp_path):
    source = fake_source(tmp_path, 'include("$(MPY_DIR)/extmod/asyncio")\n', "")
    text = frozen32.compose_manifest(source)
    assert calls_of(text)[-1] == ("include", os.path.join(FIRMWARE_DIR, "manifest.py"))


def test_a_missing_variant_manifest_is_named(tmp_path):
    (tmp_path / "ports" / "unix").mkdir(parents=True)
    with pytest.raises(frozen32.Frozen32Error, match="variants/standard/manifest.py"):
        frozen32.compose_manifest(str(tmp_path), variant="standard")


def test_a_variant_manifest_that_does_not_parse_is_named(tmp_path):
    source = fake_source(tmp_path, "include(\n", "")
    with pytest.raises(frozen32.Frozen32Error, match="does not parse"):
        frozen32.compose_manifest(source)


# -- what makes a build stale ----------------------------------------------------------------------
@pytest.fixture
def firmware_copy(tmp_path):
    dest = tmp_path / "firmware"
    shutil.copytree(FIRMWARE_DIR, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_the_key_changes_when_a_firmware_file_changes(firmware_copy):
    args = ["make", "-j2", "VARIANT=standard"]
    before = frozen32.build_key(args, "manifest", str(firmware_copy))
    assert frozen32.build_key(args, "manifest", str(firmware_copy)) == before  # unchanged: reused
    link = firmware_copy / "hbkeep" / "link.py"
    link.write_text(link.read_text() + "\n# one more line\n")
    after = frozen32.build_key(args, "manifest", str(firmware_copy))
    assert after["firmware"] != before["firmware"]
    assert after["config"] == before["config"]  # a firmware change alone: an incremental rebuild


def test_a_renamed_or_added_firmware_file_changes_the_key(firmware_copy):
    before = frozen32.firmware_digest(str(firmware_copy))
    os.rename(firmware_copy / "hbkeep" / "led.py", firmware_copy / "hbkeep" / "led2.py")
    renamed = frozen32.firmware_digest(str(firmware_copy))
    assert renamed != before
    (firmware_copy / "hbkeep" / "new.py").write_text("")
    assert frozen32.firmware_digest(str(firmware_copy)) not in (before, renamed)


def test_compiled_caches_do_not_change_the_key(firmware_copy):
    before = frozen32.firmware_digest(str(firmware_copy))
    (firmware_copy / "hbkeep" / "__pycache__").mkdir()
    (firmware_copy / "hbkeep" / "__pycache__" / "link.cpython-311.pyc").write_bytes(b"\0" * 16)
    (firmware_copy / "stray.pyc").write_bytes(b"\1")
    assert frozen32.firmware_digest(str(firmware_copy)) == before


def test_flags_and_manifest_change_the_config_key_but_the_job_count_does_not(firmware_copy):
    base = frozen32.build_key(["make", "-j2", "MICROPY_PY_FFI=0"], "m", str(firmware_copy))["config"]
    assert frozen32.build_key(["make", "-j1", "MICROPY_PY_FFI=0"], "m", str(firmware_copy))["config"] == base
    assert frozen32.build_key(["make", "-j2", "MICROPY_PY_FFI=1"], "m", str(firmware_copy))["config"] != base
    assert frozen32.build_key(["make", "-j2", "MICROPY_PY_FFI=0"], "m2", str(firmware_copy))["config"] != base


def test_make_args_build_for_i386_with_the_manifest_and_ffi_as_found():
    args = frozen32.make_args("/src", "/b", "/m.py", "/nolib", ffi=False, jobs=3)
    assert args[:3] == ["make", "-C", "/src/ports/unix"]
    for want in ("-j3", "VARIANT=standard", "BUILD=/b", "MICROPY_FORCE_32BIT=1", "FROZEN_MANIFEST=/m.py",
                 "MPY_CROSS_FLAGS=-march=x86", "MPY_LIB_DIR=/nolib", "MICROPY_PY_FFI=0"):
        assert want in args
    assert "MICROPY_PY_FFI=1" in frozen32.make_args("/src", "/b", "/m.py", "/nolib", ffi=True, jobs=1)


# -- checks that name what failed ------------------------------------------------------------------
def test_a_checksum_mismatch_names_the_file_and_both_sums(tmp_path):
    bad = tmp_path / frozen32.ORIG_TARBALL
    bad.write_bytes(b"not the tarball")
    with pytest.raises(frozen32.Frozen32Error) as info:
        frozen32.verify(str(bad))
    msg = str(info.value)
    assert str(bad) in msg and frozen32.ORIG_SHA256 in msg and frozen32.sha256_of(str(bad)) in msg


def test_a_downloaded_tarball_with_the_wrong_checksum_is_refused_and_not_kept(tmp_path, monkeypatch):
    def download(cache, suites, package, upstream, out_dir, log):
        assert (package, upstream) == ("micropython", "1.26.1")
        with open(os.path.join(out_dir, frozen32.ORIG_TARBALL), "wb") as f:
            f.write(b"tampered")
        return "1.26.1+ds-1"

    monkeypatch.setattr(debroot, "download_source", download)
    with pytest.raises(frozen32.Frozen32Error, match="checksum mismatch"):
        frozen32.fetch_tarball(str(tmp_path))
    assert os.listdir(tmp_path) == []  # neither the bad tarball nor the download folder stays


def test_a_failed_download_is_named(tmp_path, monkeypatch):
    def download(cache, suites, package, upstream, out_dir, log):
        raise debroot.DebrootError("apt-get update (suite forky) failed (rc=100)")

    monkeypatch.setattr(debroot, "download_source", download)
    with pytest.raises(frozen32.Frozen32Error, match=r"download of the micropython 1\.26\.1 source failed: "
                                                     r"apt-get update \(suite forky\) failed"):
        frozen32.fetch_tarball(str(tmp_path))


def test_a_failed_build_step_names_the_step_with_the_tail_of_its_output(tmp_path):
    log_path = str(tmp_path / "build.log")
    script = "for i in $(seq 1 60); do echo line$i; done; echo 'boom: no such header' >&2; exit 3"
    with pytest.raises(frozen32.Frozen32Error) as info:
        frozen32.run_step("building the unix port for i386", ["sh", "-c", script], log_path,
                          progress=lambda msg: None)
    msg = str(info.value)
    assert msg.startswith("building the unix port for i386 failed (rc=3)")
    assert "boom: no such header" in msg and "line60" in msg
    assert "line1\n" not in msg and "line10\n" not in msg  # the tail, not all of it
    assert log_path in msg
    with open(log_path) as f:
        logged = f.read()
    assert "line1\n" in logged and "boom" in logged  # all of it is in the log


def test_a_step_that_cannot_start_is_named(tmp_path):
    with pytest.raises(frozen32.Frozen32Error, match="building mpy-cross failed to start"):
        frozen32.run_step("building mpy-cross", [str(tmp_path / "no-such-make")], str(tmp_path / "log"))


def test_a_stuck_step_is_stopped(tmp_path):
    with pytest.raises(frozen32.Frozen32Error, match=r"building mpy-cross failed \(timed out after 0\.3 s\)"):
        frozen32.run_step("building mpy-cross", ["sleep", "60"], str(tmp_path / "log"), timeout_s=0.3)


def test_progress_counts_the_files_compiled(tmp_path, monkeypatch):
    monkeypatch.setattr(frozen32, "PROGRESS_EVERY_S", 0)
    said = []
    frozen32.run_step("building", ["sh", "-c", "echo 'CC a.c'; echo 'MPY b.py'; echo 'LINK x'"],
                      str(tmp_path / "log"), progress=said.append)
    assert said and "2 files compiled" in said[-1]


def fake_cc(tmp_path, body):
    cc = tmp_path / "fakecc"
    cc.write_text("#!/bin/sh\n" + body)
    cc.chmod(cc.stat().st_mode | stat.S_IXUSR)
    return str(cc)


def test_a_compiler_without_32_bit_support_is_named_with_what_to_install(tmp_path):
    cc = fake_cc(tmp_path, "echo '/usr/bin/ld: cannot find crt1.o' >&2; exit 1\n")
    with pytest.raises(frozen32.Frozen32Error) as info:
        frozen32.check_toolchain(cc)
    msg = str(info.value)
    assert "-m32" in msg and "cannot find crt1.o" in msg and "gcc-multilib" in msg


def test_a_missing_compiler_is_named_with_what_to_install(tmp_path):
    with pytest.raises(frozen32.Frozen32Error, match="not found.*gcc-multilib"):
        frozen32.check_toolchain(str(tmp_path / "no-such-gcc"))


def test_ffi_is_on_only_when_an_i386_libffi_links(tmp_path):
    # A compiler that builds 32-bit programs but finds no libffi: the build goes on with ffi off.
    cc = fake_cc(tmp_path, 'case "$*" in *-lffi*) echo "cannot find -lffi" >&2; exit 1;; esac\nexit 0\n')
    assert frozen32.check_toolchain(cc) is False
    assert frozen32.check_toolchain(fake_cc(tmp_path, "exit 0\n")) is True


# -- the command line ------------------------------------------------------------------------------
def test_help_says_what_it_builds_and_what_it_needs(capsys):
    with pytest.raises(SystemExit) as info:
        frozen32.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for what in ("gcc-multilib", "1.26.1", "firmware/manifest.py", "FROZEN32_CACHE_DIR", "--frozen", "--jobs"):
        assert what in out


@pytest.mark.parametrize("argv, complaint", [(["--jobs", "0"], "--jobs: must be at least 1, not 0"),
                                             (["--jobs", "two"], "invalid int value: 'two'"),
                                             (["--fast"], "unrecognized arguments: --fast")])
def test_bad_arguments_are_named(argv, complaint, capsys):
    with pytest.raises(SystemExit) as info:
        frozen32.main(argv)
    assert info.value.code == 2
    assert complaint in capsys.readouterr().err


def test_a_failed_build_is_reported_without_a_path_on_stdout(monkeypatch, capsys):
    def failing(jobs, rebuild):
        raise frozen32.Frozen32Error("`gcc -m32` cannot build a 32-bit x86 program")

    monkeypatch.setattr(frozen32, "build", failing)
    assert frozen32.main([]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "frozen32: error: `gcc -m32` cannot build" in err


def test_the_binary_path_is_the_one_line_on_stdout(monkeypatch, capsys):
    seen = {}

    def built(jobs, rebuild):
        seen.update(jobs=jobs, rebuild=rebuild)
        return "/cache/build/micropython"

    monkeypatch.setattr(frozen32, "build", built)
    assert frozen32.main(["--jobs", "1", "--rebuild"]) == 0
    assert capsys.readouterr().out == "/cache/build/micropython\n"
    assert seen == {"jobs": 1, "rebuild": True}


# -- debroot: the source package -------------------------------------------------------------------
@pytest.mark.parametrize("version, upstream", [("1.26.1+ds-1", "1.26.1"), ("1.26.1+ds-2", "1.26.1"),
                                               ("2:1.20.0-3", "1.20.0"), ("1.25.0-1", "1.25.0"),
                                               ("1.27.0~rc1+dfsg-1", "1.27.0"), ("1.26.1", "1.26.1")])
def test_upstream_version(version, upstream):
    assert debroot.upstream_version(version) == upstream


def fake_apt(monkeypatch, versions_by_suite):
    """debroot's apt steps replaced: each suite offers the given versions; returns the commands run."""
    ran = []
    current = {}

    def update(apt_dir, mirror, signed_by, arch, suite, kind, log):
        assert kind == "deb-src"
        current["suite"] = suite
        return ["apt-get", "-o", "Dir::State=" + apt_dir]

    def step(what, argv, cwd=None, timeout=900):
        ran.append(argv)
        if "showsrc" in argv:
            return "".join("Package: micropython\nVersion: %s\n\n" % v for v in versions_by_suite[current["suite"]])
        return ""

    monkeypatch.setattr(debroot, "_update", update)
    monkeypatch.setattr(debroot, "_step", step)
    monkeypatch.setattr(debroot, "find_mirror", lambda: ("http://mirror.example/debian", None))
    return ran


def test_the_first_suite_with_the_upstream_version_is_used(tmp_path, monkeypatch):
    ran = fake_apt(monkeypatch, {"forky": ["1.27.0+ds-1"], "sid": ["1.27.0+ds-1", "1.26.1+ds-2"]})
    version = debroot.download_source(str(tmp_path), ("forky", "sid"), "micropython", "1.26.1",
                                      str(tmp_path / "out"), lambda msg: None)
    assert version == "1.26.1+ds-2"
    assert ran[-1][-3:] == ["source", "--download-only", "micropython=1.26.1+ds-2"]


def test_when_no_suite_has_the_version_each_is_named_with_what_it_has(tmp_path, monkeypatch):
    fake_apt(monkeypatch, {"forky": ["1.27.0+ds-1"], "trixie": []})
    with pytest.raises(debroot.DebrootError) as info:
        debroot.download_source(str(tmp_path), ("forky", "trixie"), "micropython", "1.26.1",
                                str(tmp_path / "out"), lambda msg: None)
    msg = str(info.value)
    assert "micropython 1.26.1 source package from http://mirror.example/debian" in msg
    assert "suite forky has micropython 1.27.0+ds-1, not 1.26.1" in msg
    assert "suite trixie has micropython (none), not 1.26.1" in msg


def test_source_lists_are_written_as_deb_src(tmp_path):
    debroot._prepare_apt_dir(str(tmp_path), "http://mirror.example/debian", None, "i386", "forky", "deb-src")
    with open(tmp_path / "sources.list") as f:
        assert "deb-src [arch=i386] http://mirror.example/debian forky main" in f.read()


# -- reuse: the build's decisions, its steps replaced --------------------------------------------
@pytest.fixture
def fake_build(tmp_path, monkeypatch, firmware_copy):
    """build() with the download, the toolchain check and the make steps replaced: returns the list of
    steps each build ran (a step 'builds' by creating its output, as make would)."""
    source = fake_source(tmp_path, 'include("$(MPY_DIR)/extmod/asyncio")\n', "")
    monkeypatch.setenv("FROZEN32_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(frozen32, "FIRMWARE_DIR", str(firmware_copy))
    monkeypatch.setattr(frozen32, "check_toolchain", lambda cc="gcc": False)
    monkeypatch.setattr(frozen32, "fetch_tarball", lambda cache: "/unused.tar.xz")
    monkeypatch.setattr(frozen32, "unpack", lambda cache, tarball: source)
    monkeypatch.setattr(frozen32, "probe", lambda binary: None if os.path.isfile(binary) else "missing")
    steps = []

    def run_step(what, argv, log_path, timeout_s=None, progress=None):
        steps.append(what)
        if "mpy-cross" in what:
            out = os.path.join(source, "mpy-cross", "build", "mpy-cross")
        else:
            out = os.path.join([a[len("BUILD="):] for a in argv if a.startswith("BUILD=")][0], "micropython")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        open(out, "w").close()
        return 1.0

    monkeypatch.setattr(frozen32, "run_step", run_step)
    return steps


def test_a_second_build_with_the_same_firmware_is_reused(fake_build):
    binary = frozen32.build()
    assert fake_build == ["building mpy-cross", "building the unix port for i386"]
    del fake_build[:]
    assert frozen32.build() == binary
    assert fake_build == []  # nothing rebuilt


def test_a_firmware_change_rebuilds_in_place(fake_build, firmware_copy):
    binary = frozen32.build()
    sentinel = os.path.join(os.path.dirname(binary), "object.o")
    open(sentinel, "w").close()
    del fake_build[:]
    client = firmware_copy / "hbkeep" / "client.py"
    client.write_text(client.read_text() + "\n# changed\n")
    assert frozen32.build() == binary
    assert fake_build == ["building the unix port for i386"]  # mpy-cross is kept too
    assert os.path.exists(sentinel)  # the earlier objects stay: make rebuilds what changed
    del fake_build[:]
    assert frozen32.build() == binary and fake_build == []


def test_rebuild_starts_afresh(fake_build):
    binary = frozen32.build()
    sentinel = os.path.join(os.path.dirname(binary), "object.o")
    open(sentinel, "w").close()
    del fake_build[:]
    frozen32.build(rebuild=True)
    assert fake_build == ["building the unix port for i386"]
    assert not os.path.exists(sentinel)


def test_a_build_that_failed_is_not_reused(fake_build, monkeypatch, firmware_copy):
    frozen32.build()
    main_py = firmware_copy / "main.py"
    main_py.write_text(main_py.read_text() + "\n")

    def failing(what, argv, log_path, timeout_s=None, progress=None):
        raise frozen32.Frozen32Error("%s failed (rc=2)" % what)

    real = frozen32.run_step
    monkeypatch.setattr(frozen32, "run_step", failing)
    with pytest.raises(frozen32.Frozen32Error, match="building the unix port for i386 failed"):
        frozen32.build()
    monkeypatch.setattr(frozen32, "run_step", real)
    del fake_build[:]
    frozen32.build()
    assert fake_build == ["building the unix port for i386"]  # tried again, not taken for done
