"""What goes onto a board: the files, their bytes, and the checks that need no board.

Host-side only (no serial port here): validate the config with the firmware's own rules, read the board
table, compile the package with mpy-cross for the board's architecture (or take the sources), and
decide, from the hashes the board reports, what has to be copied.
"""
import glob
import hashlib
import json
import os
import tempfile

from firmware.hbkeep import config as fw_config
from tools.build import mpycompile
from tools.paths import BOARDS_DIR, FIRMWARE_DIR, PACKAGE_DIR

PACKAGE = "hbkeep"  # the folder on the board's flash

# sys.implementation._mpy: bits 0-7 the .mpy format version, 8-9 its sub-version (native code), 10+
# the native architecture (index into this table, py/persistentcode.h).
MPY_ARCHES = ("", "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp", "xtensa",
              "xtensawin", "rv32imc", "rv64imc")
# What mpy-cross (the pinned 1.29) emits: .mpy format 6, sub-version 3 for native code.
MPY_VERSION = 6
MPY_SUB_VERSION = 3


class PlanError(Exception):
    """Something on the host side is wrong: the config, the board name, a compile."""


def boards():
    return sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(BOARDS_DIR, "*", "board.json")))


def board_table(name):
    path = os.path.join(BOARDS_DIR, name, "board.json")
    if not os.path.isfile(path):
        raise PlanError("unknown board %r (known: %s)" % (name, ", ".join(boards())))
    with open(path) as f:
        return json.load(f)


def load_config(path):
    """The user's config as a dict, validated by the firmware's own rules (ConfigError names the key).

    Nothing of its content is printed, here or in any error: it may hold the Wi-Fi password."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise PlanError("config %s: cannot read it (%s)" % (path, e.strerror))
    try:
        # The board's own reader, not json.loads: it refuses what the board would (a key given twice,
        # NaN, a file too large, nesting too deep), so that no config is copied that the board then refuses.
        data = fw_config.parse(text, path)
    except fw_config.ConfigError as e:
        raise PlanError("config %s" % e)  # "PATH: not valid JSON (...)"
    try:
        fw_config.Config(data)
    except fw_config.ConfigError as e:
        raise PlanError("config %s: %s" % (path, e))
    tls = data.get("tls")
    if tls:
        # The TLS CA file goes onto the board too: found relative to the config file, as the firmware does.
        ca = os.path.join(os.path.dirname(os.path.abspath(path)), tls["ca"])
        if not os.path.isfile(ca):
            raise PlanError("config %s: tls.ca %s: no such file" % (path, ca))
        tls["ca"] = ca
    return data


def config_warnings(cfg, table):
    notes = []
    if table.get("wifi") and not (cfg.get("wifi") or {}).get("ssid"):
        notes.append("board %s has Wi-Fi but the config has no wifi.ssid: it will not join a network"
                     % table.get("name"))
    if cfg.get("host", "127.0.0.1") in ("127.0.0.1", "localhost") and table.get("wifi"):
        notes.append("the config's host is %s: on a board that is the board itself, not your computer"
                     % cfg.get("host", "127.0.0.1"))
    return notes


def decode_mpy(value):
    """sys.implementation._mpy -> (version, sub_version, arch name or '')."""
    arch = value >> 10
    return value & 0xFF, (value >> 8) & 3, MPY_ARCHES[arch] if arch < len(MPY_ARCHES) else "arch%d" % arch


def check_mpy(mpy, version):
    """Raise PlanError when a firmware reporting `mpy` (None: no _mpy at all) cannot load what mpy-cross
    1.29 makes; `version` is the firmware's (major, minor, micro) for the message."""
    shown = ".".join(str(n) for n in version)
    if mpy is None:
        raise PlanError("the board runs MicroPython %s, too old for .mpy files made by mpy-cross 1.29 (they need "
                        "1.23 or newer): flash a newer MicroPython, or deploy the sources with --source" % shown)
    ver, sub, arch = decode_mpy(mpy)
    if ver != MPY_VERSION:
        raise PlanError("the board's MicroPython %s loads .mpy format %d, mpy-cross 1.29 writes format %d: %s, "
                        "or deploy the sources with --source" % (
                            shown, ver, MPY_VERSION,
                            "flash MicroPython 1.23 or newer" if ver < MPY_VERSION else "use a matching mpy-cross"))
    if sub != MPY_SUB_VERSION:
        raise PlanError("the board's MicroPython %s loads native code of .mpy sub-version %d, mpy-cross 1.29 writes "
                        "%d (the viper module fastbuf needs it): flash MicroPython 1.23 or newer, or deploy with "
                        "--source" % (shown, sub, MPY_SUB_VERSION))
    if not arch:
        raise PlanError("the board's MicroPython %s has no native code emitter (no architecture in "
                        "sys.implementation._mpy), so it cannot load the viper module: deploy with --source" % shown)
    return arch


# Files a board runs by name at reset, from its filesystem: always as source, at the flash root.
BOOT_FILES = ("boot.py", "main.py")


def boot_files():
    return [name for name in BOOT_FILES if os.path.isfile(os.path.join(FIRMWARE_DIR, name))]


def package_sources():
    """The package modules a board loads (not the host-only ones), as paths under firmware/hbkeep/."""
    return [p for p in mpycompile.sources() if os.path.dirname(p) == PACKAGE_DIR]


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def files(board, cfg, source=False, arch=None):
    """{path on the board: bytes} of one deploy. `arch` (mpy-cross -march) is needed unless `source`."""
    table = board_table(board)
    out = {name: _read(os.path.join(FIRMWARE_DIR, name)) for name in boot_files()}
    modules = package_sources()
    if source:
        for src in modules:
            out["%s/%s" % (PACKAGE, os.path.basename(src))] = _read(src)
    else:
        if not arch:
            raise PlanError("no mpy-cross architecture for board %s" % board)
        binary = mpycompile.mpy_cross_binary()
        with tempfile.TemporaryDirectory(prefix="deploy-mpy-") as tmp:
            for src in modules:
                try:
                    dst = mpycompile.compile_one(src, arch, tmp, binary)
                except RuntimeError as e:
                    raise PlanError(str(e))
                out["%s/%s" % (PACKAGE, os.path.basename(dst))] = _read(dst)
    tls = cfg.get("tls")
    if tls:  # the CA certificate beside config.json, which names it by its file name
        name = os.path.basename(tls["ca"])
        out[name] = _read(tls["ca"])
        cfg = dict(cfg, tls=dict(tls, ca=name))
    # Stable bytes for the same settings, so that an unchanged config is not copied again.
    out["board.json"] = (json.dumps(table, indent=1, sort_keys=True) + "\n").encode()
    out["config.json"] = (json.dumps(cfg, indent=1, sort_keys=True) + "\n").encode()
    return out


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def changes(wanted, on_board):
    """(to_copy, unchanged): paths of `wanted` whose bytes differ from what the board holds.

    `on_board` maps a path to (size, sha256 hex or None); a path missing there is not on the board."""
    to_copy, unchanged = [], []
    for path in sorted(wanted, key=_copy_order):
        have = on_board.get(path)
        if have is not None and have[1] == sha256(wanted[path]):
            unchanged.append(path)
        else:
            to_copy.append(path)
    return to_copy, unchanged


def _copy_order(path):
    # The package first, the boot files after it, the settings last: a deploy cut short leaves the old
    # settings with new code rather than new settings with half the code.
    return (0 if path.startswith(PACKAGE + "/") else 1 if path in BOOT_FILES else 2, path)


def stale(wanted, package_listing):
    """Files in the board's package folder that this deploy does not ship (a module compiled before as
    .mpy and now shipped as .py, or the other way round, would shadow the new one: .py loads first)."""
    keep = {p.split("/", 1)[1] for p in wanted if p.startswith(PACKAGE + "/")}
    return sorted("%s/%s" % (PACKAGE, name) for name in package_listing if name not in keep)


def bytes_needed(to_copy, wanted, on_board, block):
    """Flash the copy takes beyond what the files it replaces free, in whole blocks of `block` bytes."""
    def blocks(n):
        return (n + block - 1) // block * block

    need = 0
    for path in to_copy:
        need += blocks(len(wanted[path]))
        if path in on_board:
            need -= blocks(on_board[path][0])
    return need
