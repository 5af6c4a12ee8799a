"""Provide the MicroPython unix binary for host tests and tools.

    python3 -m tools.build.mpbin            # print the command that runs MicroPython (one shell-quoted line)
    python3 -m tools.build.mpbin --check    # also run it once and print its version
    from tools.build.mpbin import micropython_argv   # -> ['micropython'] or [loader, '--library-path', lib, bin]

Where the binary comes from, first match wins:

1. the MICROPYTHON environment variable: a path (or a name looked up on PATH), used as given;
2. `micropython` on PATH, if it really is MicroPython and runs;
3. a private unpacked copy of Debian trixie's `micropython` package in <repo>/.cache/micropython/root
   (MPBIN_CACHE_DIR moves that cache; MPBIN_DEBIAN_MIRROR names the mirror when apt's sources do not).

Why (3) works and how: on Debian bookworm the trixie build needs glibc 2.38, so it is started through the
loader of a trixie libc6 unpacked next to it. The .debs come from `apt-get download` run against a private
apt state directory (its own sources.list, lists, cache and an empty dpkg status), naming the trixie suite of
the mirror this machine's apt already uses -- read from the machine's apt sources, so no registry host is
written into the repository, and signatures are checked with the machine's own keyrings. Nothing outside
.cache/micropython is touched: no package is installed, no system apt state is changed.

Failures raise MpbinError (a RuntimeError) naming the step that failed; the command line prints it and
exits non-zero. There is no silent fallback to anything else.
"""
import argparse
import contextlib
import fcntl
import glob
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CACHE_DIR = os.path.join(REPO, ".cache", "micropython")

SUITE = "trixie"
# The binary and the shared libraries it loads (Debian trixie's micropython 1.25 needs these beside glibc
# 2.38; docs/PORTS.md). `apt-get download` does not follow
# dependencies, so the set is explicit; a missing library shows up as a loader error in the run check.
PACKAGES = ("micropython", "libc6", "libffi8", "libmbedcrypto16", "libmbedtls21", "libmbedx509-7")
# Debian architecture name, multiarch triplet and loader name, per machine architecture.
ARCHES = {
    "x86_64": ("amd64", "x86_64-linux-gnu", "ld-linux-x86-64.so.2"),
}
# Suites of the Debian main archive; a mirror line naming one of these (bare or with -updates /
# -backports) is the mirror we reuse. -security lives on a different archive and is skipped.
DEBIAN_SUITES = {
    "buster", "bullseye", "bookworm", "trixie", "forky", "sid",
    "oldoldstable", "oldstable", "stable", "testing", "unstable",
}

APT_SOURCES = "/etc/apt/sources.list"
APT_SOURCE_PARTS = "/etc/apt/sources.list.d"

PROBE = "import sys; print(sys.implementation.name)"
VERSION = "import sys; print('MicroPython', '.'.join(str(n) for n in sys.implementation.version[:3]))"

_resolved = {}  # cache dir -> argv found by the automatic search (2 or 3), remembered for this process


class MpbinError(RuntimeError):
    pass


def log(msg):
    print("mpbin: " + msg, file=sys.stderr, flush=True)


# -- running a candidate ---------------------------------------------------------------------------
def _run(argv, timeout=30, cwd=None):
    """Run argv; return (returncode, stdout, stderr). A command that cannot be started reports rc 127."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except OSError as e:
        return 127, "", str(e)
    except subprocess.TimeoutExpired:
        return 124, "", "timed out after %d s" % timeout
    return p.returncode, p.stdout, p.stderr


def probe(argv):
    """None when argv starts MicroPython and runs a statement, else a short reason why not."""
    rc, out, err = _run(list(argv) + ["-c", PROBE])
    if rc == 0 and out.strip() == "micropython":
        return None
    return "rc=%d, output: %s" % (rc, (err or out).strip()[-300:] or "(none)")


# -- the machine's apt mirror ----------------------------------------------------------------------
def _one_line_entries(text):
    """(uri, [suites], options) of each `deb` line of a one-line-style sources file."""
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        rest = line[4:].strip()
        options = {}
        if rest.startswith("["):
            opts, _, rest = rest[1:].partition("]")
            for opt in opts.split():
                key, _, value = opt.partition("=")
                options[key.lower()] = value
        fields = rest.split()
        if len(fields) >= 2:
            yield fields[0], [fields[1]], options


def _deb822_entries(text):
    """(uri, [suites], options) of each enabled `Types: deb` stanza of a deb822 .sources file."""
    for stanza in text.split("\n\n"):
        fields = {}
        key = None
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and key:  # continuation line
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        options = {"signed-by": fields["signed-by"]} if "signed-by" in fields else {}
        for uri in fields.get("uris", "").split():
            yield uri, fields.get("suites", "").split(), options


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def find_mirror():
    """(uri, signed_by or None): the first Debian main-archive mirror in the machine's apt sources.

    MPBIN_DEBIAN_MIRROR overrides (for machines whose apt is not Debian's, e.g. a local mirror)."""
    override = os.environ.get("MPBIN_DEBIAN_MIRROR")
    if override:
        return override.rstrip("/"), None
    files = [(APT_SOURCES, _one_line_entries)]
    files += [(p, _one_line_entries) for p in sorted(glob.glob(os.path.join(APT_SOURCE_PARTS, "*.list")))]
    files += [(p, _deb822_entries) for p in sorted(glob.glob(os.path.join(APT_SOURCE_PARTS, "*.sources")))]
    for path, parse in files:
        for uri, suites, options in parse(_read(path)):
            for suite in suites:
                base = suite.split("-", 1)[0]
                if base in DEBIAN_SUITES and not suite.endswith("-security") and not suite.startswith("/"):
                    return uri.rstrip("/"), options.get("signed-by")
    raise MpbinError(
        "no Debian mirror found in %s or %s/*.list|*.sources (looked for a 'deb' entry whose suite is a "
        "Debian release such as bookworm, not -security); set MPBIN_DEBIAN_MIRROR=<uri> or put "
        "micropython on PATH / set MICROPYTHON=<path>" % (APT_SOURCES, APT_SOURCE_PARTS))


# -- the private Debian copy -----------------------------------------------------------------------
def _arch():
    machine = platform.machine()
    if machine not in ARCHES:
        raise MpbinError(
            "machine architecture %r is not supported for fetching Debian's micropython (supported: %s); "
            "put micropython on PATH or set MICROPYTHON=<path>" % (machine, ", ".join(sorted(ARCHES))))
    return ARCHES[machine]


def cache_dir():
    return os.path.abspath(os.environ.get("MPBIN_CACHE_DIR") or DEFAULT_CACHE_DIR)


def root_dir():
    return os.path.join(cache_dir(), "root")


def root_argv(root=None):
    """The command that runs the unpacked binary through the unpacked (newer) glibc's own loader."""
    root = root or root_dir()
    _, triplet, loader = _arch()
    libdir = os.path.join(root, "usr", "lib", triplet)
    return [os.path.join(libdir, loader), "--library-path", libdir, os.path.join(root, "usr", "bin", "micropython")]


def _step(what, argv, cwd=None, timeout=900):
    """Run one provisioning command; on failure raise MpbinError naming `what`, with apt's own words."""
    rc, out, err = _run(argv, timeout=timeout, cwd=cwd)
    if rc != 0:
        tail = "\n".join((err or out).strip().splitlines()[-15:])
        raise MpbinError("%s failed (rc=%d)\n  command: %s\n%s" % (what, rc, shlex.join(argv), tail))
    return out


def _apt_options(apt_dir, arch):
    """apt-get options that keep all apt state inside apt_dir and ignore the machine's sources and pins.

    apt.conf.d still applies on purpose: a proxy or mirror setting the machine needs is needed here too."""
    status = os.path.join(apt_dir, "status")
    return [
        "-o", "Dir::State=" + os.path.join(apt_dir, "state"),
        "-o", "Dir::State::status=" + status,  # empty: nothing counts as installed
        "-o", "Dir::Cache=" + os.path.join(apt_dir, "cache"),
        "-o", "Dir::Etc::SourceList=" + os.path.join(apt_dir, "sources.list"),
        "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", "Dir::Etc::Preferences=/dev/null",
        "-o", "Dir::Etc::PreferencesParts=/dev/null",
        "-o", "APT::Architecture=" + arch,
        "-o", "APT::Architectures=" + arch,
        "-o", "Acquire::Languages=none",
        "-q",
    ]


def _prepare_apt_dir(apt_dir, mirror, signed_by, arch):
    for sub in ("state/lists/partial", "cache/archives/partial"):
        os.makedirs(os.path.join(apt_dir, sub), exist_ok=True)
    open(os.path.join(apt_dir, "status"), "a").close()
    opts = "arch=%s" % arch
    if signed_by and not signed_by.lstrip().startswith("-----"):  # a keyring path; inline keys are not copied
        opts += " signed-by=%s" % signed_by
    with open(os.path.join(apt_dir, "sources.list"), "w") as f:
        f.write("# written by tools/build/mpbin.py: the machine's own mirror, suite %s\n" % SUITE)
        f.write("deb [%s] %s %s main\n" % (opts, mirror, SUITE))


def provision():
    """Fetch and unpack Debian's micropython into root_dir() (if not already there); return its argv."""
    arch, _, _ = _arch()
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise MpbinError(
                "%s not found: cannot fetch Debian's micropython here; put micropython on PATH or set "
                "MICROPYTHON=<path>" % tool)
    cache, root = cache_dir(), root_dir()
    os.makedirs(cache, exist_ok=True)
    with _lock(os.path.join(cache, "lock")):
        # Another process may have finished while we waited for the lock.
        if os.path.isdir(root):
            if probe(root_argv()) is None:
                return root_argv()
            log("cached copy in %s does not run; fetching it again" % root)
            shutil.rmtree(root)
        mirror, signed_by = find_mirror()
        apt_dir = os.path.join(cache, "apt")
        _prepare_apt_dir(apt_dir, mirror, signed_by, arch)
        apt = ["apt-get"] + _apt_options(apt_dir, arch)

        log("reading the %s package lists from %s (private apt state in %s)" % (SUITE, mirror, apt_dir))
        # Plain `apt-get update` exits 0 when a fetch fails (it only warns); make that an error.
        _step("apt-get update (suite %s of %s)" % (SUITE, mirror),
              apt + ["-o", "APT::Update::Error-Mode=any", "update"])
        if not glob.glob(os.path.join(apt_dir, "state", "lists", "*_Packages*")):
            raise MpbinError("apt-get update of suite %s from %s gave no package lists" % (SUITE, mirror))

        debs = os.path.join(cache, "debs")
        shutil.rmtree(debs, ignore_errors=True)
        os.makedirs(debs)
        download = list(apt)
        if os.geteuid() == 0:
            # As root, apt would try its _apt sandbox user, which cannot write here, warn, and then
            # download as root anyway; say so up front to keep the output clean.
            download += ["-o", "APT::Sandbox::User=root"]
        log("downloading %s" % " ".join(PACKAGES))
        _step("apt-get download of %s" % " ".join(PACKAGES), download + ["download"] + list(PACKAGES), cwd=debs)

        # Unpack into a fresh directory and rename it into place only when complete, so that a
        # half-unpacked tree is never mistaken for a usable one.
        tmp_root = tempfile.mkdtemp(prefix="root.tmp-", dir=cache)
        try:
            files = sorted(glob.glob(os.path.join(debs, "*.deb")))
            if len(files) < len(PACKAGES):
                raise MpbinError("apt-get download gave %d .deb files, expected %d: %s" % (
                    len(files), len(PACKAGES), ", ".join(os.path.basename(p) for p in files)))
            for deb in files:
                _step("dpkg -x %s" % os.path.basename(deb), ["dpkg", "-x", deb, tmp_root])
            why = probe(root_argv(tmp_root))
            if why is not None:
                raise MpbinError("the unpacked micropython does not run: %s\n  command: %s" % (
                    why, shlex.join(root_argv(tmp_root))))
            os.rename(tmp_root, root)
        finally:
            shutil.rmtree(tmp_root, ignore_errors=True)
        shutil.rmtree(debs, ignore_errors=True)  # the unpacked tree is what we keep
        log("unpacked into %s" % root)
    return root_argv()


@contextlib.contextmanager
def _lock(path):
    """An exclusive lock held across provisioning, so parallel callers fetch once and the rest wait."""
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("waiting for another process that is fetching micropython (lock %s)" % path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# -- the search ------------------------------------------------------------------------------------
def _override():
    value = os.environ.get("MICROPYTHON")
    if not value:
        return None
    path = value if os.sep in value else shutil.which(value)
    if not path or not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise MpbinError("MICROPYTHON=%s is not an executable file" % value)
    return [os.path.abspath(path)]


def micropython_argv(fetch=True):
    """The argv prefix that runs MicroPython: append a script path (or -c CODE) and its arguments.

    With fetch=False, only what is already here counts (the override, PATH, or the cached copy)."""
    override = _override()
    if override is not None:
        return override
    key = cache_dir()
    if key not in _resolved:
        _resolved[key] = _search(fetch)
    return list(_resolved[key])


def _search(fetch):
    on_path = shutil.which("micropython")
    if on_path:
        why = probe([on_path])
        if why is None:
            return [on_path]
        log("ignoring %s on PATH: it does not run as MicroPython (%s)" % (on_path, why))
    if os.path.isdir(root_dir()) and probe(root_argv()) is None:
        return root_argv()
    if not fetch:
        raise MpbinError("no MicroPython here (not on PATH, no working copy in %s); run "
                         "`python3 -m tools.build.mpbin` to fetch it" % root_dir())
    return provision()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m tools.build.mpbin", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="run the binary once and print its version")
    ap.add_argument("--no-fetch", action="store_true", help="fail instead of downloading when it is missing")
    args = ap.parse_args(argv)
    try:
        cmd = micropython_argv(fetch=not args.no_fetch)
    except MpbinError as e:
        print("mpbin: error: %s" % e, file=sys.stderr)
        return 1
    if args.check:
        rc, out, err = _run(cmd + ["-c", VERSION])
        if rc != 0 or not out.strip():
            print("mpbin: error: %s failed its check (rc=%d): %s" % (
                shlex.join(cmd), rc, (err or out).strip()[-500:]), file=sys.stderr)
            return 1
        print(out.strip())
        log("command: %s" % shlex.join(cmd))
    else:
        print(shlex.join(cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
