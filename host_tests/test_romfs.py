"""tools/build/romfs.py: the firmware's .mpy files packed in a romfs image that MicroPython mounts, and
whose code then runs in place (not copied into the heap)."""
import hashlib
import os
import subprocess
import sys

import pytest

from support.fwproc import micropython_status, require_runtime

from tools.build import mpycompile, romfs

# Mounts the image from a buffer (as tools/fwbench.py does) and prints each file as `path size sha256`.
LIST_IMAGE = r"""
import sys, os, vfs, hashlib, binascii
with open(sys.argv[1], "rb") as f:
    image = f.read()
vfs.mount(vfs.VfsRom(image), "/img")
def walk(d):
    for name in sorted(os.listdir(d)):
        p = d + "/" + name
        if os.stat(p)[0] & 0x4000:
            walk(p)
        else:
            with open(p, "rb") as f:
                data = f.read()
            print(p[len("/img/"):], len(data), binascii.hexlify(hashlib.sha256(data).digest()).decode())
walk("/img")
"""

# The heap an import of hbkeep.client (and all it pulls in) takes, from a directory or a romfs image.
IMPORT_HEAP = r"""
import sys, gc, os
where = sys.argv[1]
if where.endswith(".romfs"):
    import vfs
    image = bytearray(os.stat(where)[6])
    with open(where, "rb") as f:
        f.readinto(image)
    vfs.mount(vfs.VfsRom(image), "/img")
    where = "/img"
sys.path.insert(0, where)
gc.collect()
before = gc.mem_alloc()
import hbkeep.client
gc.collect()
print(gc.mem_alloc() - before)
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    require_runtime("micropython32")
    work = tmp_path_factory.mktemp("romfs")
    tree = str(work / "mpy")
    done = mpycompile.compile_all("x86", tree)
    image = str(work / "fw.romfs")
    size = romfs.build_image(tree, image)
    return tree, image, size, done


def _mp32(tmp_path, program, *args):
    script = tmp_path / "prog.py"
    script.write_text(program)
    argv = micropython_status("micropython32")[1]
    p = subprocess.run(argv + ["-X", "heapsize=4M", str(script)] + list(args), capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr + p.stdout
    return p.stdout


def test_the_image_holds_every_firmware_module_byte_for_byte(built, tmp_path):
    tree, image, size, done = built
    with open(image, "rb") as f:
        assert f.read(3) == romfs.HEADER
    assert size == os.path.getsize(image)
    seen = {}
    for line in _mp32(tmp_path, LIST_IMAGE, image).splitlines():
        path, nbytes, digest = line.split()
        seen[path] = (int(nbytes), digest)
    want = {}
    for name, mpy, nbytes in done:
        with open(mpy, "rb") as f:
            want[os.path.splitext(name)[0] + ".mpy"] = (nbytes, hashlib.sha256(f.read()).hexdigest())
    assert seen == want
    assert "hbkeep/client.mpy" in seen and "main.mpy" in seen


def test_code_runs_in_place_from_the_image(built, tmp_path):
    # From a filesystem each function's bytecode is copied into the heap; from the image it is not. The
    # saving on importing the client (and everything it imports) is a large part of those .mpy files.
    tree, image, _, done = built
    from_files = int(_mp32(tmp_path, IMPORT_HEAP, tree))
    from_image = int(_mp32(tmp_path, IMPORT_HEAP, image))
    assert 0 < from_image < from_files
    client_mpy = dict((name, nbytes) for name, _, nbytes in done)["hbkeep/client.py"]
    assert from_files - from_image > client_mpy // 2, (from_files, from_image, client_mpy)


def test_the_command_writes_an_image_and_says_what_is_in_it(tmp_path):
    out = tmp_path / "x.romfs"
    p = subprocess.run([sys.executable, "-m", "tools.build.romfs", "--out", str(out)], capture_output=True,
                       text=True, timeout=120, cwd=mpycompile.REPO)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes()[:3] == romfs.HEADER
    modules = len(mpycompile.sources())
    assert p.stdout.strip() == "%s: %d modules, %d bytes of .mpy, image %d bytes" % (
        out, modules, sum(os.path.getsize(f) for f in _mpy_files(tmp_path, modules)), out.stat().st_size)


def _mpy_files(tmp_path, modules):
    done = mpycompile.compile_all("x86", str(tmp_path / "again"))
    assert len(done) == modules
    return [mpy for _, mpy, _ in done]


def test_a_tree_that_is_not_there_is_an_error_naming_it(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(romfs.RomfsError, match="nope"):
        romfs.build_image(missing, str(tmp_path / "out.romfs"))
