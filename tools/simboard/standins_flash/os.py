# `os` for a simulated board with a set flash size (tools/simboard --flash-size): everything is the unix
# port's own, except that statvfs() reports a flash of SIMBOARD_FLASH_SIZE bytes, of which the files in
# the board's filesystem (the current directory) are used. Writes are not limited by it.
from uos import *  # noqa: F401,F403
import uos

_BLOCK = 4096


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
    total = int(uos.getenv("SIMBOARD_FLASH_SIZE")) // _BLOCK
    free = max(0, total - _used(".") // _BLOCK)
    return (_BLOCK, _BLOCK, total, free, free, 0, 0, 0, 0, 255)
