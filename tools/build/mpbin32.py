"""Provide a 32-bit MicroPython (the unix port built for i386) for the host tests and tools.

    python3 -m tools.build.mpbin32            # print the command that runs it (one shell-quoted line)
    python3 -m tools.build.mpbin32 --check    # also run it once and print its version and word size
    from tools.build.mpbin32 import micropython32_argv

Why a 32-bit build: a board's MicroPython has 31-bit small ints (an int past 2^30 - 1 is a heap object),
a millisecond tick that wraps at 2^30, and 4-byte object slots, so heap figures and counter or clock
behaviour measured on a 64-bit build are not a board's. The i386 unix port has all three.

Where it comes from, first match wins:

1. the MICROPYTHON32 environment variable: a path (or a name on PATH) used as given;
2. a private unpacked copy of Debian's `micropython` package for i386 in <repo>/.cache/micropython32/root
   (MPBIN32_CACHE_DIR moves it), fetched with tools/build/debroot.py from the suites in SUITES, in order,
   and started through its own i386 loader: ROOT/usr/lib/ld-linux.so.2 --library-path
   ROOT/usr/lib/i386-linux-gnu ROOT/usr/bin/micropython. The machine needs to run i386 binaries (an
   x86_64 Linux kernel does, unless built without IA32 emulation); nothing is installed system-wide.

A copy that does not run, or runs but is not 32-bit, is refused with the reason. Failures raise
DebrootError naming every suite tried and what went wrong with each.
"""
import os
import platform
import sys

from tools.build import debroot, probecmd

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CACHE_DIR = os.path.join(REPO, ".cache", "micropython32")

# forky and sid carry 1.26.x; trixie's (1.25) is the fallback. Tried in this order.
SUITES = ("forky", "sid", "trixie")
ARCH = "i386"
TRIPLET = "i386-linux-gnu"
# The binary and the shared libraries it loads; `apt-get download` does not follow dependencies.
PACKAGES = ("micropython", "libc6", "libffi8", "libmbedcrypto16", "libmbedtls21", "libmbedx509-7")
# Machines whose kernels run i386 binaries.
HOSTS = ("x86_64", "i686", "i386")

PROBE = "import sys; print(sys.implementation.name, sys.maxsize)"
WANT = "micropython %d" % (2 ** 31 - 1)
VERSION = ("import sys; print('MicroPython', '.'.join(str(n) for n in sys.implementation.version[:3]), "
           "'maxsize=%d' % sys.maxsize)")

DebrootError = debroot.DebrootError
_resolved = {}


def log(msg):
    print("mpbin32: " + msg, file=sys.stderr, flush=True)


def cache_dir():
    return os.path.abspath(os.environ.get("MPBIN32_CACHE_DIR") or DEFAULT_CACHE_DIR)


def root_argv(root):
    libdir = os.path.join(root, "usr", "lib", TRIPLET)
    return [os.path.join(root, "usr", "lib", "ld-linux.so.2"), "--library-path", libdir,
            os.path.join(root, "usr", "bin", "micropython")]


def probe(argv):
    """None when argv runs a 32-bit MicroPython, else the reason it does not."""
    rc, out, err = probecmd.run(list(argv) + ["-c", PROBE])
    if rc == 0 and out.strip() == WANT:
        return None
    if rc == 0:
        return "it runs but is not a 32-bit MicroPython (said %r, want %r)" % (out.strip(), WANT)
    return "rc=%d, output: %s" % (rc, (err or out).strip()[-300:] or "(none)")


def provision():
    if platform.machine() not in HOSTS:
        raise DebrootError("this machine (%s) cannot run i386 binaries; set MICROPYTHON32=<path> to a 32-bit "
                           "MicroPython that runs here" % platform.machine())
    root = debroot.fetch(cache_dir(), SUITES, ARCH, PACKAGES, lambda r: probe(root_argv(r)), log)
    return root_argv(root)


def micropython32_argv(fetch=True):
    """The argv prefix that runs the 32-bit MicroPython; fetches it on first use unless fetch=False."""
    override = probecmd.env_override("MICROPYTHON32", DebrootError)
    if override is not None:
        return override
    key = cache_dir()
    if key not in _resolved:
        root = os.path.join(key, "root")
        if os.path.isdir(root) and probe(root_argv(root)) is None:
            _resolved[key] = root_argv(root)
        elif not fetch:
            raise DebrootError("no 32-bit MicroPython here (no working copy in %s); run "
                               "`python3 -m tools.build.mpbin32` to fetch it" % root)
        else:
            _resolved[key] = provision()
    return list(_resolved[key])


def main(argv=None):
    return probecmd.main("mpbin32", __doc__, micropython32_argv, VERSION, DebrootError, log, argv, can_fetch=True)


if __name__ == "__main__":
    sys.exit(main())
