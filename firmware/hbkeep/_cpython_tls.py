# TLS on CPython: the host side of tls.py (which see), for host tools and tests. No board ships it.
import ssl

from . import compat
from .compat import wait_readable, wait_writable
# tls.py defines these before it imports this module, so the cycle is safe.
from .tls import CLOSED, ERROR, EXPIRED, HOSTNAME, NOT_YET_VALID, REJECTED, UNTRUSTED

_VERIFY = {
    10: (EXPIRED, "certificate_expired"),
    9: (NOT_YET_VALID, "certificate_not_yet_valid"),
    62: (HOSTNAME, "name_mismatch"),
    64: (HOSTNAME, "ip_mismatch"),
    2: (UNTRUSTED, "unknown_ca"),
    18: (UNTRUSTED, "self_signed"),
    19: (UNTRUSTED, "self_signed_in_chain"),
    20: (UNTRUSTED, "unknown_ca"),
    21: (UNTRUSTED, "unknown_ca"),
}


def context(cadata):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    ctx.load_verify_locations(cadata=cadata)
    return ctx


def wrap(ctx, sock, hostname):
    return ctx.wrap_socket(sock, server_hostname=hostname, do_handshake_on_connect=False)


async def handshake(sock, buf, n_out, probe=None):
    while True:
        try:
            sock.do_handshake()
            break
        except ssl.SSLWantReadError:
            await wait_readable(sock)
        except ssl.SSLWantWriteError:
            await wait_writable(sock)
    off = 0
    while off < n_out:  # the same first transfer as on MicroPython, so the session starts alike
        k = compat.try_write(sock, buf, off, n_out - off)
        if k:
            off += k
        else:
            await wait_writable(sock)
    return n_out if n_out else -1


def failure(e):
    if isinstance(e, ssl.SSLCertVerificationError):
        return _VERIFY.get(e.verify_code, (REJECTED, (e.verify_message or "verify_failed")[:60]))
    if isinstance(e, (ssl.SSLEOFError, ConnectionError)):
        return CLOSED, compat.errno_name(e) if not isinstance(e, ssl.SSLError) else "eof"
    if isinstance(e, ssl.SSLError):
        return ERROR, (e.reason or "ssl_error").lower()
    return CLOSED, compat.errno_name(e)
