"""Tie a child process's life to its parent's (Linux): tools that fork workers must not leave them running
when they are killed without a chance to clean up."""
import ctypes
import ctypes.util
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(sig=signal.SIGTERM):
    """Ask the kernel to send `sig` to this process when its parent dies. A no-op where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass
