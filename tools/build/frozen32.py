"""Build a 32-bit MicroPython with the firmware frozen in, for `tools.bench --frozen`; print its path.

    python3 -m tools.build.frozen32              # build (or reuse) it; its path is the one line on stdout
    MICROPYTHON32="$(python3 -m tools.build.frozen32)" python3 -m tools.bench --runtimes micropython32 \\
        --heap-only --frozen                     # the heap with it: what `make bench-frozen` runs

What it builds: MicroPython 1.26.1's unix port, standard variant, for i386 (`-m32`: a board's 4-byte
object slots and 31-bit small ints), from the source of the same version as the 32-bit tier
(tools/build/mpbin32.py): the orig tarball of Debian's `micropython` source package, downloaded with the
machine's own apt (a private state, see tools/build/debroot.py), checked against the SHA-256 pinned in
this module (ORIG_SHA256), and unpacked into <repo>/.cache/frozen32 (FROZEN32_CACHE_DIR moves it). Frozen
in: what the standard variant freezes of MicroPython's own tree (asyncio) and firmware/manifest.py (the
hbkeep package).

Debian's tarball (version `+ds`) leaves out MicroPython's bundled third-party trees, so the build turns off
what needs them: micropython-lib (the variant's mip and ssl helpers; not frozen), Berkeley DB (btree),
mbedTLS (ssl), and the bundled libffi (ffi stays on only when the machine's i386 libffi links). None of
them is used by the firmware's start, which is what the heap figures measure.

Needs make and a C compiler that builds 32-bit x86 programs: on Debian or Ubuntu,
`sudo apt-get install gcc-multilib` (and `libffi-dev:i386` for the ffi module, optional). Takes about a
minute the first time on two cores; later runs reuse the build, and rebuild (incrementally) when a file
under firmware/ changes, since those files are frozen into the binary. Progress goes to stderr, and the
compiler's output to <cache>/build.log.
"""
import argparse
import ast
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import deque

from tools.build import debroot, mpbin32, probecmd
from tools.paths import FIRMWARE_DIR

REPO = mpbin32.REPO
DEFAULT_CACHE_DIR = os.path.join(REPO, ".cache", "frozen32")

# The source: Debian's repack of MicroPython 1.26.1, the 32-bit tier's version. The pin is the tarball's
# own checksum (the same in every Debian revision of 1.26.1+ds), so the build is of these exact bytes.
PACKAGE = "micropython"
UPSTREAM = "1.26.1"
ORIG_TARBALL = "micropython_1.26.1+ds.orig.tar.xz"
ORIG_SHA256 = "f5ad2ec89d3e921f753d448955af98b6005655f84ba26087dde6ba0e8d062f34"
SUITES = mpbin32.SUITES

VARIANT = "standard"
FIRMWARE_MANIFEST = os.path.join(FIRMWARE_DIR, "manifest.py")

# Ask the binary for what the bench needs: a 32-bit MicroPython of our version whose frozen modules
# (sys.path holding only the frozen entry) include asyncio and the firmware package.
PROBE = ("import sys; sys.path[:] = ['.frozen']; import asyncio, hbkeep.runner; "
         "print(sys.implementation.name, sys.maxsize, '.'.join(str(n) for n in sys.implementation.version[:3]))")
WANT = "micropython %d %s" % (2 ** 31 - 1, UPSTREAM)

INSTALL_HINT = ("install a compiler that builds 32-bit x86 programs: on Debian or Ubuntu, "
                "`sudo apt-get install gcc-multilib`")
BUILD_TIMEOUT_S = 1800  # a build that takes longer than this is stuck
PROGRESS_EVERY_S = 20
TAIL_LINES = 25


class Frozen32Error(RuntimeError):
    pass


def log(msg):
    print("frozen32: " + msg, file=sys.stderr, flush=True)


def cache_dir():
    return os.path.abspath(os.environ.get("FROZEN32_CACHE_DIR") or DEFAULT_CACHE_DIR)


# -- the toolchain ---------------------------------------------------------------------------------
def _links_32bit(cc, source, libs=()):
    """None when `cc -m32` compiles and links `source`, else its complaint."""
    with tempfile.TemporaryDirectory(prefix="frozen32-cc-") as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source)
        rc, out, err = probecmd.run(
            shlex.split(cc) + ["-m32", src, "-o", os.path.join(tmp, "probe")] + list(libs), timeout=120)
    if rc == 0:
        return None
    return (err or out).strip()[-400:] or "rc=%d" % rc


def check_toolchain(cc="gcc"):
    """Raise Frozen32Error naming what is missing and what to install; return True when the machine's
    i386 libffi links (the ffi module can stay on), else False."""
    if shutil.which("make") is None:
        raise Frozen32Error("make not found: install it (on Debian or Ubuntu: `sudo apt-get install make`)")
    if shutil.which(shlex.split(cc)[0]) is None:
        raise Frozen32Error("C compiler %r not found; %s" % (cc, INSTALL_HINT))
    why = _links_32bit(cc, "#include <stdio.h>\nint main(void) { puts(\"32\"); return 0; }\n")
    if why is not None:
        raise Frozen32Error("`%s -m32` cannot build a 32-bit x86 program (%s); %s" % (cc, why, INSTALL_HINT))
    return _links_32bit(cc, "#include <ffi.h>\nint main(void) { ffi_cif c; (void)c; return 0; }\n",
                        ["-lffi"]) is None


def make_args(source, build_dir, manifest, no_mpy_lib, ffi, jobs):
    """The `make` command line that builds the unix port with `manifest` frozen in."""
    return [
        "make", "-C", os.path.join(source, "ports", "unix"), "-j%d" % jobs,
        "VARIANT=" + VARIANT,
        "BUILD=" + build_dir,
        "PYTHON=" + sys.executable,
        "MICROPY_FORCE_32BIT=1",               # -m32 for the compiler and the linker
        "FROZEN_MANIFEST=" + manifest,
        # The frozen firmware has native (viper) code: compile it for the binary's architecture.
        "MPY_CROSS_FLAGS=-march=x86",
        # micropython-lib is not in Debian's tarball; the manifest takes nothing from it, but the build
        # insists on finding its README.md: point it at an empty stand-in.
        "MPY_LIB_DIR=" + no_mpy_lib,
        "MICROPY_PY_BTREE=0",                  # Berkeley DB is not in the tarball
        "MICROPY_PY_SSL=0",                    # nor mbedTLS
        "MICROPY_PY_FFI=%d" % (1 if ffi else 0),
        # As Debian builds it for i386: gcc refuses _Float16 on i386 without SSE2.
        "CFLAGS_EXTRA=-DMICROPY_FLOAT_USE_NATIVE_FLT16=0",
    ]


# -- the manifest ----------------------------------------------------------------------------------
def _manifest_path(path, port_dir, mpy_dir):
    path = path.replace("$(PORT_DIR)", port_dir).replace("$(MPY_DIR)", mpy_dir)
    return os.path.join(path, "manifest.py") if os.path.isdir(path) else path


def _variant_lines(path, port_dir, mpy_dir, depth=0):
    """The statements of the variant's manifest at `path`, the port's own manifests it includes expanded
    in place; what comes from micropython-lib (require, add_library) becomes a comment."""
    if depth > 8:
        raise Frozen32Error("manifest includes nest too deep at %s" % path)
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise Frozen32Error("cannot read the variant's manifest %s: %s" % (path, e))
    try:
        tree = ast.parse(text, path)
    except SyntaxError as e:
        raise Frozen32Error("the variant's manifest %s does not parse: %s" % (path, e))
    lines = ["# from %s" % os.path.relpath(path, mpy_dir)]
    for node in tree.body:
        segment = ast.get_source_segment(text, node)
        call = node.value if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) else None
        name = call.func.id if call is not None and isinstance(call.func, ast.Name) else None
        if name in ("require", "add_library"):
            lines.append("# left out (micropython-lib, not in the tarball): " + segment.replace("\n", " "))
        elif (name == "include" and call.args and isinstance(call.args[0], ast.Constant)
              and str(call.args[0].value).startswith("$(PORT_DIR)")):
            lines += _variant_lines(_manifest_path(call.args[0].value, port_dir, mpy_dir), port_dir, mpy_dir,
                                    depth + 1)
        else:
            lines.append(segment)
    return lines


def compose_manifest(source, firmware_manifest=FIRMWARE_MANIFEST, variant=VARIANT):
    """The manifest frozen into the binary: the variant's own (as the port composes it: its manifest
    includes the port's shared one, variants/manifest.py) less micropython-lib, then the firmware's."""
    port_dir = os.path.join(source, "ports", "unix")
    variant_manifest = os.path.join(port_dir, "variants", variant, "manifest.py")
    lines = ["# Written by tools/build/frozen32.py: what the unix port's %s variant freezes, then the firmware."
             % variant]
    lines += _variant_lines(variant_manifest, port_dir, source)
    lines.append("# the firmware")
    lines.append("include(%r)" % os.path.abspath(firmware_manifest))
    return "\n".join(lines) + "\n"


# -- what a build depends on -----------------------------------------------------------------------
def firmware_digest(firmware_dir=FIRMWARE_DIR):
    """SHA-256 over every file under firmware_dir (its path and its bytes; caches left out): what is
    frozen in, so a change there means a rebuild."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(firmware_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".pyc"):
                continue
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, firmware_dir).encode() + b"\0")
            with open(path, "rb") as f:
                h.update(f.read())
            h.update(b"\0")
    return h.hexdigest()


def build_key(args, manifest_text, firmware_dir=FIRMWARE_DIR):
    """{"config": ..., "firmware": ...}: a build is reused when both match. A change of config (source,
    flags, manifest) starts the build afresh; a change of firmware alone rebuilds incrementally."""
    config = json.dumps({"orig_sha256": ORIG_SHA256, "make": [a for a in args if not a.startswith("-j")],
                         "manifest": manifest_text}, sort_keys=True)
    return {"config": hashlib.sha256(config.encode()).hexdigest(), "firmware": firmware_digest(firmware_dir)}


def _read_key(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def probe(binary):
    """None when binary is a 32-bit MicroPython with asyncio and the firmware frozen in, else why not."""
    rc, out, err = probecmd.run([binary, "-c", PROBE])
    if rc == 0 and out.strip() == WANT:
        return None
    return "said %r (rc=%d), want %r: %s" % (out.strip(), rc, WANT, (err or "").strip()[-300:])


# -- the source ------------------------------------------------------------------------------------
def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path, want=ORIG_SHA256):
    got = sha256_of(path)
    if got != want:
        raise Frozen32Error("checksum mismatch for %s: SHA-256 %s, expected %s (the tarball this build pins)"
                            % (path, got, want))


def fetch_tarball(cache):
    """<cache>/ORIG_TARBALL, downloaded from Debian when absent, checked against the pinned SHA-256."""
    tarball = os.path.join(cache, ORIG_TARBALL)
    if os.path.isfile(tarball) and sha256_of(tarball) == ORIG_SHA256:
        return tarball
    download = tempfile.mkdtemp(prefix="download.tmp-", dir=cache)
    try:
        try:
            version = debroot.download_source(cache, SUITES, PACKAGE, UPSTREAM, download, log)
        except debroot.DebrootError as e:
            raise Frozen32Error("download of the %s %s source failed: %s" % (PACKAGE, UPSTREAM, e))
        got = os.path.join(download, ORIG_TARBALL)
        if not os.path.isfile(got):
            raise Frozen32Error("the %s %s source package has no %s (it has: %s)" % (
                PACKAGE, version, ORIG_TARBALL, ", ".join(sorted(os.listdir(download)))))
        verify(got)
        os.replace(got, tarball)
    finally:
        shutil.rmtree(download, ignore_errors=True)
    return tarball


def unpack(cache, tarball):
    """<cache>/source: the tarball unpacked (once; a marker names the tarball it came from)."""
    source = os.path.join(cache, "source")
    marker = os.path.join(source, ".frozen32-unpacked")
    if os.path.isfile(marker) and open(marker).read().strip() == ORIG_SHA256:
        return source
    shutil.rmtree(source, ignore_errors=True)
    log("unpacking %s" % os.path.basename(tarball))
    tmp = tempfile.mkdtemp(prefix="unpack.tmp-", dir=cache)
    try:
        with tarfile.open(tarball) as tar:
            tops = {m.name.split("/", 1)[0] for m in tar.getmembers()}
            if len(tops) != 1:
                raise Frozen32Error("%s does not hold one top folder (it holds %s)" % (tarball, sorted(tops)))
            tar.extractall(tmp, filter="data")
        os.rename(os.path.join(tmp, tops.pop()), source)
    except (OSError, tarfile.TarError) as e:
        raise Frozen32Error("unpacking %s failed: %s" % (tarball, e))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with open(marker, "w") as f:
        f.write(ORIG_SHA256 + "\n")
    return source


# -- running the build -----------------------------------------------------------------------------
def run_step(what, argv, log_path, timeout_s=BUILD_TIMEOUT_S, progress=log):
    """Run one build step, its output appended to log_path; progress lines while it runs. On failure
    raise Frozen32Error naming the step, with the tail of its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    tail = deque(maxlen=TAIL_LINES)
    compiled = 0
    started = last = time.monotonic()
    with open(log_path, "a") as logf:
        logf.write("$ %s\n" % shlex.join(argv))
        try:
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                 start_new_session=True)  # its own group: a timeout stops the compilers too
        except OSError as e:
            raise Frozen32Error("%s failed to start: %s" % (what, e))
        timed_out = threading.Event()

        def stop():
            timed_out.set()
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended meanwhile
                pass

        timer = threading.Timer(timeout_s, stop)
        timer.start()
        try:
            for line in p.stdout:
                logf.write(line)
                tail.append(line.rstrip("\n"))
                if line.startswith(("CC ", "MPY ")):
                    compiled += 1
                now = time.monotonic()
                if now - last >= PROGRESS_EVERY_S:
                    progress("  ... %s: %d files compiled, %d s" % (what, compiled, now - started))
                    last = now
            rc = p.wait()
        finally:
            timer.cancel()
            if p.poll() is None:  # interrupted while reading: stop the compilers too
                stop()
                p.wait()
    if rc != 0:
        why = "timed out after %g s" % timeout_s if timed_out.is_set() else "rc=%d" % rc
        raise Frozen32Error("%s failed (%s)\n  command: %s\n  last lines of its output (all of it in %s):\n%s"
                            % (what, why, shlex.join(argv), log_path, "\n".join("    " + t for t in tail)))
    return time.monotonic() - started


def build(jobs=2, rebuild=False, cc="gcc"):
    """Build (or reuse) the binary; return its path."""
    ffi = check_toolchain(cc)
    cache = cache_dir()
    os.makedirs(cache, exist_ok=True)
    with debroot.lock(os.path.join(cache, "lock"), log):
        source = unpack(cache, fetch_tarball(cache))
        no_mpy_lib = os.path.join(cache, "no-micropython-lib")
        os.makedirs(no_mpy_lib, exist_ok=True)
        with open(os.path.join(no_mpy_lib, "README.md"), "w") as f:
            f.write("An empty stand-in for micropython-lib (not in Debian's tarball): see tools/build/frozen32.py.\n")
        build_dir = os.path.join(cache, "build")
        manifest = os.path.join(cache, "frozen_manifest.py")
        manifest_text = compose_manifest(source)
        args = make_args(source, build_dir, manifest, no_mpy_lib, ffi, jobs)
        key = build_key(args, manifest_text, FIRMWARE_DIR)
        key_path = os.path.join(build_dir, "frozen32-key.json")
        binary = os.path.join(build_dir, "micropython")
        old = _read_key(key_path)
        if not rebuild and old == key and os.path.isfile(binary) and probe(binary) is None:
            log("reusing %s (firmware unchanged)" % binary)
            return binary
        fresh = rebuild or old is None or old.get("config") != key["config"] or not os.path.isfile(binary)
        if fresh:
            shutil.rmtree(build_dir, ignore_errors=True)
        else:
            log("the firmware changed since the last build: rebuilding what freezes it (seconds)")
        os.makedirs(build_dir, exist_ok=True)
        if os.path.exists(key_path):
            os.remove(key_path)  # a build that fails half-way is not reused
        with open(manifest, "w") as f:
            f.write(manifest_text)
        log_path = os.path.join(cache, "build.log")
        open(log_path, "w").close()
        mpy_cross = os.path.join(source, "mpy-cross", "build", "mpy-cross")
        if not os.path.isfile(mpy_cross):
            log("building mpy-cross (MicroPython's compiler, for the host; under a minute)")
            took = run_step("building mpy-cross", ["make", "-C", os.path.join(source, "mpy-cross"),
                                                   "-j%d" % jobs, "PYTHON=" + sys.executable], log_path)
            log("mpy-cross built in %d s" % took)
        if fresh:
            log("building the unix port (%s variant, i386, ffi %s) with the firmware frozen in: about a "
                "minute on two cores" % (VARIANT, "on" if ffi else "off: no i386 libffi"))
        took = run_step("building the unix port for i386", args, log_path)
        log("built in %d s" % took)
        why = probe(binary)
        if why is not None:
            raise Frozen32Error("the built %s does not have what the bench needs: %s" % (binary, why))
        with open(key_path, "w") as f:
            json.dump(key, f)
        return binary


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m tools.build.frozen32", description=__doc__.split("\n\n")[0],
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="compilers run at once (default %(default)s)")
    ap.add_argument("--rebuild", action="store_true", help="build afresh, ignoring a build already there")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs: must be at least 1, not %d" % args.jobs)
    try:
        binary = build(jobs=args.jobs, rebuild=args.rebuild)
    except Frozen32Error as e:
        print("frozen32: error: %s" % e, file=sys.stderr)
        return 1
    print(binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
