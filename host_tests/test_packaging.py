"""The two ways to ship the firmware besides tools.deploy: package.json for `mpremote mip install`, tried
from the local file against the simulated board; and firmware/manifest.py for freezing into an image,
run against stand-ins of MicroPython's manifest functions (package(), module(), require()...)."""
import glob
import json
import os
import subprocess
import sys

import pytest

from support.simboard_proc import SimBoardProc

from tools.build import mpycompile, packagejson
from tools.deploy import plan
from tools.paths import HOST_ONLY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRMWARE = os.path.join(ROOT, "firmware")
# What a board loads: the package less its host-only modules (tools/paths.py HOST_ONLY).
PACKAGE_FILES = sorted(os.path.relpath(p, FIRMWARE) for p in mpycompile.sources() if os.path.basename(p) != "main.py")


def test_package_json_is_current_and_lists_every_module():
    out = subprocess.run([sys.executable, "-m", "tools.build.packagejson", "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    with open(os.path.join(ROOT, "package.json")) as f:
        pkg = json.load(f)
    assert sorted(dest for dest, _ in pkg["urls"]) == PACKAGE_FILES
    for dest, url in pkg["urls"]:
        assert os.path.isfile(os.path.join(ROOT, url)), url  # relative to package.json, as mip reads it
        assert url == "firmware/" + dest
    assert not [d for d, _ in pkg["urls"] if os.path.basename(d) in HOST_ONLY]
    assert pkg["deps"] == []


def test_package_json_check_fails_when_stale(tmp_path, monkeypatch):
    monkeypatch.setattr(packagejson, "PATH", str(tmp_path / "package.json"))
    (tmp_path / "package.json").write_text('{"urls": []}\n')
    assert packagejson.main(["--check"]) == 1
    assert packagejson.main([]) == 0
    assert packagejson.main(["--check"]) == 0


def test_mip_install_from_the_local_package_json_lands_on_the_flash(tmp_path):
    with SimBoardProc(tmp_path / "flash") as sb:
        r = sb.mpremote("mip", "install", os.path.join(ROOT, "package.json"), timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        lib = tmp_path / "flash" / "lib"  # the board's /lib: mip's default target
        got = sorted(os.path.relpath(p, lib) for p in glob.glob(str(lib / "**" / "*"), recursive=True)
                     if os.path.isfile(p))
        assert got == PACKAGE_FILES
        for rel in PACKAGE_FILES:
            with open(os.path.join(FIRMWARE, rel), "rb") as f:
                assert (lib / rel).read_bytes() == f.read()
        # And the board imports it from there.
        r = sb.mpremote("exec", "import hbkeep.protocol as p; print(p.__file__)")
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == str(lib / "hbkeep" / "protocol.py")


class Manifest:
    """Stand-ins for the functions MicroPython's manifest files call; they record what would be frozen,
    resolving paths as the real ones do (relative to the manifest's folder)."""

    def __init__(self, path, **options):
        self.dir = os.path.dirname(os.path.abspath(path))
        self.frozen = {}  # path in the image -> source file
        self.required = []
        self.meta = {}
        self.options = options
        with open(path) as f:
            code = compile(f.read(), path, "exec")
        exec(code, self._globals())

    def _globals(self):
        manifest = self

        class Options:
            def __init__(self):
                self.__dict__.update(manifest.options)

            def defaults(self, **kw):
                for k, v in kw.items():
                    self.__dict__.setdefault(k, v)

        return {"options": Options(), "package": self.package, "module": self.module, "require": self.require,
                "metadata": self.metadata, "include": self.include, "freeze": self.freeze}

    def _base(self, base_path):
        return os.path.normpath(os.path.join(self.dir, base_path))

    def package(self, package_path, files=None, base_path=".", opt=None):
        base = self._base(base_path)
        root = os.path.join(base, package_path)
        assert os.path.isdir(root), "package(%r): no folder %s" % (package_path, root)
        if files is None:
            files = [os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "**", "*.py"), recursive=True)]
        for name in files:
            self.frozen[package_path + "/" + name] = os.path.join(root, name)

    def module(self, module_path, base_path=".", opt=None):
        src = os.path.join(self._base(base_path), module_path)
        assert os.path.isfile(src), "module(%r): no file %s" % (module_path, src)
        self.frozen[os.path.basename(module_path)] = src

    def require(self, name, version=None, **kw):
        self.required.append(name)

    def metadata(self, **kw):
        self.meta.update(kw)

    def include(self, path, **kw):
        raise AssertionError("the firmware manifest includes nothing else (%s)" % path)

    def freeze(self, path, script=None, opt=None):
        raise AssertionError("freeze() is the old API; use package()/module()")


def test_manifest_freezes_every_shipped_module_and_nothing_host_only():
    m = Manifest(os.path.join(FIRMWARE, "manifest.py"))
    assert sorted(m.frozen) == PACKAGE_FILES
    for src in m.frozen.values():
        assert os.path.commonpath([src, os.path.join(FIRMWARE, "hbkeep")]) == os.path.join(FIRMWARE, "hbkeep")
        assert "__pycache__" not in src and "host_tests" not in src and "/tools/" not in src
    assert not [k for k in m.frozen if os.path.basename(k) in HOST_ONLY]
    assert m.required == []  # nothing from micropython-lib: the ports' own asyncio is used
    with open(os.path.join(ROOT, "package.json")) as f:
        assert m.meta.get("version") == json.load(f)["version"]


@pytest.mark.parametrize("main", [True, False])
def test_manifest_option_main_also_freezes_the_boot_files(main):
    m = Manifest(os.path.join(FIRMWARE, "manifest.py"), main=main)
    boot = [name for name in plan.BOOT_FILES if os.path.isfile(os.path.join(FIRMWARE, name))]
    assert "main.py" in boot
    # A board runs a frozen boot.py and main.py when its filesystem has none: every boot file the deploy
    # ships must be frozen with main=True, or the frozen firmware would start differently.
    assert sorted(k for k in m.frozen if k not in PACKAGE_FILES) == (sorted(boot) if main else [])
    assert sorted(k for k in m.frozen if k in PACKAGE_FILES) == PACKAGE_FILES
