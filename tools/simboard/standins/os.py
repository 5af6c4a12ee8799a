# `os` for the simulated board (tools/simboard): the unix port's own, with two things as a board has them.
# - ilistdir() gives (name, type, inode, size) like a board's filesystems (the unix port leaves out the
#   size, and `mpremote fs ls` would show 0 for every file);
# - with SIMBOARD_FLASH_SIZE set (--flash-size), statvfs() reports a flash of that many bytes, of which the
#   files in the board's filesystem (the current directory) are used. Writes are not limited by it.
from uos import *  # noqa: F401,F403
import uos

_BLOCK = 4096
_FILE = 0x8000


def ilistdir(path="."):
    for entry in uos.ilistdir(path):
        if len(entry) >= 4:
            yield entry
            continue
        size = 0
        if entry[1] == _FILE:
            try:
                size = uos.stat(path + "/" + entry[0])[6]
            except OSError:
                pass
        yield (entry[0], entry[1], entry[2], size)


def _used(path):
    n = 0
    for entry in uos.ilistdir(path):
        name, kind = entry[0], entry[1]
        full = path + "/" + name
        if kind == 0x4000:
            n += _BLOCK + _used(full)
        else:
            n += (uos.stat(full)[6] + _BLOCK - 1) // _BLOCK * _BLOCK
    return n


def statvfs(path):
    size = uos.getenv("SIMBOARD_FLASH_SIZE")
    if not size:
        return uos.statvfs(path)
    total = int(size) // _BLOCK
    free = max(0, total - _used(".") // _BLOCK)
    return (_BLOCK, _BLOCK, total, free, free, 0, 0, 0, 0, 255)
