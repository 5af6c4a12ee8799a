"""Build a romfs image of the firmware's .mpy files, as a board with a romfs partition would carry it.

    python3 -m tools.build.romfs                        # x86 .mpy -> build/romfs/x86.romfs
    python3 -m tools.build.romfs --arch armv6m --out /tmp/fw.romfs

MicroPython 1.25 and newer mount a read-only romfs image (`vfs.VfsRom`) and import .mpy files from it in
place: a function's bytecode, its constant strings and the text of the names it interns are referenced
from the image (on a board: from flash), not copied into the heap as they are from a file on a
filesystem. Only the objects the code creates, and one entry per new interned name in the interpreter's
name table, take heap. The unix port has VfsRom too, and mounts an image from a buffer, which is how
tools/bench.py and tools/build/heapmap.py measure it (`--romfs`).

The image is made by mpremote's own builder (`mpremote romfs build`, pinned in requirements-dev.txt) from
a tree of the .mpy files that tools/build/mpycompile.py compiles (`--no-mpy`: they are compiled already,
for the board's architecture, which mpremote's own compile step would not name). On a board the image
goes to its romfs partition with `mpremote romfs deploy` (ports that have one; see docs/BOARD.md).
"""
import argparse
import os
import subprocess
import sys
import tempfile

from tools.build import mpycompile

REPO = mpycompile.REPO
DEFAULT_OUT_DIR = os.path.join(REPO, "build", "romfs")
HEADER = b"\xd2\xcd\x31"  # the first bytes of every romfs image (MicroPython's extmod/vfs_rom.c)


class RomfsError(RuntimeError):
    pass


def build_image(tree, out_path):
    """Pack the directory `tree` into a romfs image at out_path with mpremote; return its size."""
    argv = [sys.executable, "-m", "mpremote", "romfs", "--no-mpy", "--output", out_path, "build", tree]
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0 or not os.path.isfile(out_path):
        raise RomfsError("mpremote romfs build failed for %s (rc=%d):\n%s" % (
            tree, p.returncode, (p.stderr or p.stdout).strip()[-2000:]))
    with open(out_path, "rb") as f:
        if f.read(len(HEADER)) != HEADER:
            raise RomfsError("%s does not start with the romfs header (mpremote changed its format?)" % out_path)
    return os.path.getsize(out_path)


def firmware_image(arch, out_path):
    """Compile the firmware for arch and pack it (main.mpy at the root, hbkeep/*.mpy) into out_path.
    Returns [(module file, size of its .mpy)] and the image's size."""
    with tempfile.TemporaryDirectory(prefix="romfs-tree-") as tree:
        done = mpycompile.compile_all(arch, tree)
        size = build_image(tree, out_path)
    return [(name, nbytes) for name, _, nbytes in done], size


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m tools.build.romfs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="x86",
                    help="mpy-cross -march value: x86 for the 32-bit unix port, or a board's mpy_arch "
                         "(xtensawin, armv6m); default x86")
    ap.add_argument("--out", help="image path (default build/romfs/ARCH.romfs)")
    args = ap.parse_args(argv)
    out = os.path.abspath(args.out or os.path.join(DEFAULT_OUT_DIR, args.arch + ".romfs"))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    try:
        modules, size = firmware_image(args.arch, out)
    except (RuntimeError, OSError) as e:
        print("romfs: error: %s" % e, file=sys.stderr)
        return 1
    print("%s: %d modules, %d bytes of .mpy, image %d bytes" % (
        out, len(modules), sum(n for _, n in modules), size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
