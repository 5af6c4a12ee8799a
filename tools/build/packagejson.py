"""Write package.json, the mip description of the firmware package, from what firmware/hbkeep/ holds.

    python3 -m tools.build.packagejson           # rewrite package.json at the repository root
    python3 -m tools.build.packagejson --check   # exit 1 when package.json is not what it would write

The package's modules are those a board loads (host-only ones are left out).
`mpremote mip install github:OWNER/REPO` reads package.json at the root of the repository's default
branch; `mpremote mip install path/to/package.json` reads it from disk. Either way each url is relative to
package.json's folder, and each file lands in the board's lib folder (/lib), where `import hbkeep` finds it.
The test suite runs --check, so a module added to the package without a new package.json fails there.
"""
import argparse
import json
import os
import sys

from tools.build.mpycompile import sources
from tools.paths import PACKAGE_DIR, REPO

PATH = os.path.join(REPO, "package.json")
VERSION = "0.1.0"


def build():
    urls = []
    # What a board loads (tools/build/mpycompile.py): the host-only modules stay out.
    for src in [p for p in sources() if os.path.dirname(p) == PACKAGE_DIR]:
        name = os.path.basename(src)
        urls.append(["hbkeep/" + name, os.path.relpath(src, REPO).replace(os.sep, "/")])
    return {"urls": urls, "deps": [], "version": VERSION}


def render():
    # One file per line: easy to read and to diff.
    pkg = build()
    lines = ",\n".join("    " + json.dumps(pair) for pair in pkg["urls"])
    return '{\n  "urls": [\n%s\n  ],\n  "deps": %s,\n  "version": %s\n}\n' % (
        lines, json.dumps(pkg["deps"]), json.dumps(pkg["version"]))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m tools.build.packagejson", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        try:
            with open(PATH) as f:
                same = f.read() == text
        except OSError:
            same = False
        if not same:
            print("packagejson: %s is out of date: run python3 -m tools.build.packagejson" % PATH, file=sys.stderr)
            return 1
        return 0
    with open(PATH, "w") as f:
        f.write(text)
    print("wrote %s (%d files)" % (PATH, len(build()["urls"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
