"""Unpack a few Debian packages into a private folder, without installing anything.

The shared machinery behind the MicroPython binaries the host tiers fetch from Debian: a private apt state
directory (its own sources.list, lists, cache and an empty dpkg status) naming one suite and one
architecture of the mirror this machine's apt already uses -- read from the machine's apt sources, so no
registry host is written into the repository, and signatures are checked with the machine's own keyrings
-- then `apt-get download` and `dpkg -x` into a fresh folder that is renamed into place only when the
caller's check of it passes. Nothing outside that cache folder is touched.

    root = debroot.fetch(cache, suites=("forky", "sid"), arch="i386", packages=[...], check=fn, log=print)
    files = debroot.download_source(cache, suites, "micropython", "1.26.1", out_dir, log=print)

download_source does the same for a source package (a `deb-src` line and `apt-get source --download-only`):
apt checks each file it downloads against the signed Sources index.

Failures raise DebrootError (a RuntimeError) that names every suite tried and why each failed.
"""
import contextlib
import fcntl
import glob
import os
import shlex
import shutil
import tempfile

from tools.build.probecmd import run

APT_SOURCES = "/etc/apt/sources.list"
APT_SOURCE_PARTS = "/etc/apt/sources.list.d"

# Suites of the Debian main archive; a mirror line naming one of these (bare or with -updates /
# -backports) is the mirror we reuse. -security lives on a different archive and is skipped.
DEBIAN_SUITES = {
    "buster", "bullseye", "bookworm", "trixie", "forky", "sid",
    "oldoldstable", "oldstable", "stable", "testing", "unstable",
}


class DebrootError(RuntimeError):
    pass


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


def find_mirror(override_env="MPBIN_DEBIAN_MIRROR"):
    """(uri, signed_by or None): the first Debian main-archive mirror in the machine's apt sources.

    The environment variable `override_env` overrides (for machines whose apt is not Debian's)."""
    override = os.environ.get(override_env)
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
    raise DebrootError(
        "no Debian mirror found in %s or %s/*.list|*.sources (looked for a 'deb' entry whose suite is a "
        "Debian release such as bookworm, not -security); set %s=<uri>" % (
            APT_SOURCES, APT_SOURCE_PARTS, override_env))


# -- the private apt state -------------------------------------------------------------------------
def _step(what, argv, cwd=None, timeout=900):
    """Run one provisioning command; on failure raise DebrootError naming `what`, with apt's own words."""
    rc, out, err = run(argv, timeout=timeout, cwd=cwd)
    if rc != 0:
        tail = "\n".join((err or out).strip().splitlines()[-15:])
        raise DebrootError("%s failed (rc=%d)\n  command: %s\n%s" % (what, rc, shlex.join(argv), tail))
    return out


def apt_options(apt_dir, arch):
    """apt-get options that keep all apt state inside apt_dir and ignore the machine's sources and pins.

    apt.conf.d still applies on purpose: a proxy or mirror setting the machine needs is needed here too."""
    return [
        "-o", "Dir::State=" + os.path.join(apt_dir, "state"),
        "-o", "Dir::State::status=" + os.path.join(apt_dir, "status"),  # empty: nothing counts as installed
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


def _prepare_apt_dir(apt_dir, mirror, signed_by, arch, suite, kind="deb"):
    """A private apt state in apt_dir whose one source is `<kind> mirror suite main` (kind: deb, deb-src)."""
    shutil.rmtree(os.path.join(apt_dir, "state", "lists"), ignore_errors=True)  # another suite's lists
    for sub in ("state/lists/partial", "cache/archives/partial"):
        os.makedirs(os.path.join(apt_dir, sub), exist_ok=True)
    open(os.path.join(apt_dir, "status"), "a").close()
    opts = "arch=%s" % arch
    if signed_by and not signed_by.lstrip().startswith("-----"):  # a keyring path; inline keys are not copied
        opts += " signed-by=%s" % signed_by
    with open(os.path.join(apt_dir, "sources.list"), "w") as f:
        f.write("# written by tools/build/debroot.py: the machine's own mirror, suite %s\n" % suite)
        f.write("%s [%s] %s %s main\n" % (kind, opts, mirror, suite))


@contextlib.contextmanager
def lock(path, log):
    """An exclusive lock held across provisioning, so parallel callers fetch once and the rest wait."""
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("waiting for another process that is fetching into %s (lock %s)" % (os.path.dirname(path), path))
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _update(apt_dir, mirror, signed_by, arch, suite, kind, log):
    """Point the private apt state at one suite (binary or source lists) and read its lists; return the
    apt-get argv prefix that uses that state."""
    _prepare_apt_dir(apt_dir, mirror, signed_by, arch, suite, kind)
    apt = ["apt-get"] + apt_options(apt_dir, arch)
    what = "source" if kind == "deb-src" else arch
    log("reading the %s/%s package lists from %s (private apt state in %s)" % (suite, what, mirror, apt_dir))
    # Plain `apt-get update` exits 0 when a fetch fails (it only warns); make that an error.
    _step("apt-get update (suite %s, %s, mirror %s)" % (suite, what, mirror),
          apt + ["-o", "APT::Update::Error-Mode=any", "update"])
    lists = "*_Sources*" if kind == "deb-src" else "*_Packages*"
    if not glob.glob(os.path.join(apt_dir, "state", "lists", lists)):
        raise DebrootError("apt-get update of suite %s from %s gave no %s lists" % (suite, mirror, what))
    return apt


def _as_root(apt):
    if os.geteuid() == 0:
        # As root, apt would try its _apt sandbox user, which cannot write here, warn, and then download
        # as root anyway; say so up front to keep the output clean.
        return apt + ["-o", "APT::Sandbox::User=root"]
    return list(apt)


def _fetch_suite(cache, suite, arch, packages, check, log, mirror, signed_by):
    """Download and unpack `packages` of one suite into a fresh folder; return it once check() passes."""
    apt_dir = os.path.join(cache, "apt")
    apt = _update(apt_dir, mirror, signed_by, arch, suite, "deb", log)
    debs = os.path.join(cache, "debs")
    shutil.rmtree(debs, ignore_errors=True)
    os.makedirs(debs)
    download = _as_root(apt)
    log("downloading %s (%s, %s)" % (" ".join(packages), suite, arch))
    _step("apt-get download of %s (suite %s)" % (" ".join(packages), suite),
          download + ["download"] + list(packages), cwd=debs)
    tmp_root = tempfile.mkdtemp(prefix="root.tmp-", dir=cache)
    try:
        files = sorted(glob.glob(os.path.join(debs, "*.deb")))
        if len(files) < len(packages):
            raise DebrootError("apt-get download gave %d .deb files, expected %d: %s" % (
                len(files), len(packages), ", ".join(os.path.basename(p) for p in files)))
        for deb in files:
            _step("dpkg -x %s" % os.path.basename(deb), ["dpkg", "-x", deb, tmp_root])
        why = check(tmp_root)
        if why is not None:
            raise DebrootError("the unpacked packages of %s do not work: %s" % (suite, why))
    except BaseException:
        shutil.rmtree(tmp_root, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(debs, ignore_errors=True)  # the unpacked tree is what we keep
    return tmp_root


def fetch(cache, suites, arch, packages, check, log):
    """Unpack `packages` for `arch` into <cache>/root, trying `suites` in order; return that root.

    check(root) returns None when an unpacked tree works, else a reason. A root already there that passes
    check() is reused. When every suite fails, the DebrootError lists each suite with its failure."""
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise DebrootError("%s not found: cannot fetch Debian packages on this machine" % tool)
    os.makedirs(cache, exist_ok=True)
    root = os.path.join(cache, "root")
    with lock(os.path.join(cache, "lock"), log):
        if os.path.isdir(root):  # another process may have finished while we waited for the lock
            if check(root) is None:
                return root
            log("cached copy in %s does not work; fetching it again" % root)
            shutil.rmtree(root)
        mirror, signed_by = find_mirror()
        tried = []
        for suite in suites:
            try:
                tmp_root = _fetch_suite(cache, suite, arch, packages, check, log, mirror, signed_by)
            except DebrootError as e:
                log("suite %s failed: %s" % (suite, str(e).splitlines()[0]))
                tried.append("- suite %s: %s" % (suite, e))
                continue
            os.rename(tmp_root, root)
            log("unpacked %s/%s into %s" % (suite, arch, root))
            return root
        raise DebrootError("could not fetch %s for %s from %s; tried, in order:\n%s" % (
            " ".join(packages), arch, mirror, "\n".join(tried)))


# -- source packages -------------------------------------------------------------------------------
def source_versions(showsrc):
    """The `Version:` of each stanza of `apt-cache showsrc` output, in order."""
    return [line.split(":", 1)[1].strip() for line in showsrc.splitlines() if line.startswith("Version:")]


def upstream_version(version):
    """The upstream part of a Debian version: '1.26.1' of '1.26.1+ds-1' (epoch, Debian revision and a
    repack suffix such as +ds or +dfsg dropped)."""
    version = version.split(":", 1)[-1]
    if "-" in version:
        version = version.rsplit("-", 1)[0]
    return version.split("+", 1)[0].split("~", 1)[0]


def download_source(cache, suites, package, upstream, out_dir, log, arch="i386"):
    """Download the Debian source package `package` of upstream version `upstream` (its .dsc, the orig
    tarball and Debian's own changes) into out_dir, trying `suites` in order; return the Debian version.

    The private apt state lives in <cache>/apt. apt checks every file it downloads against the suite's
    Sources index, whose signature it checks with the machine's keyrings. When no suite has that version,
    the DebrootError names each suite and what it has instead."""
    for tool in ("apt-get", "apt-cache"):
        if shutil.which(tool) is None:
            raise DebrootError("%s not found: cannot fetch Debian source packages on this machine" % tool)
    os.makedirs(out_dir, exist_ok=True)
    mirror, signed_by = find_mirror()
    apt_dir = os.path.join(cache, "apt")
    tried = []
    for suite in suites:
        try:
            apt = _update(apt_dir, mirror, signed_by, arch, suite, "deb-src", log)
            showsrc = _step("apt-cache showsrc %s (suite %s)" % (package, suite),
                            ["apt-cache"] + apt[1:] + ["showsrc", package])
            versions = source_versions(showsrc)
            wanted = [v for v in versions if upstream_version(v) == upstream]
            if not wanted:
                raise DebrootError("suite %s has %s %s, not %s" % (
                    suite, package, ", ".join(versions) or "(none)", upstream))
            version = wanted[0]
            log("downloading the %s %s source package (%s)" % (package, version, suite))
            _step("apt-get source --download-only %s=%s (suite %s)" % (package, version, suite),
                  _as_root(apt) + ["source", "--download-only", "%s=%s" % (package, version)], cwd=out_dir)
            return version
        except DebrootError as e:
            log("suite %s failed: %s" % (suite, str(e).splitlines()[0]))
            tried.append("- suite %s: %s" % (suite, e))
    raise DebrootError("could not download the %s %s source package from %s; tried, in order:\n%s" % (
        package, upstream, mirror, "\n".join(tried)))
