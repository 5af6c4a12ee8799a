# The client's side of device authentication on the wire: the CHALLENGE / AUTH / WELCOME exchange that
# follows a connect when the config has an "auth" object (the frames and checks themselves, sans-IO, are
# auth.py's). Imported only then, so that a device without authentication does not carry this code.
from . import compat
from .protocol import HEADER_SIZE
from .auth import AuthError


async def authenticate(client, auth, sock, pre):
    """The exchange before the session starts; pre: bytes of the CHALLENGE already read (by a TLS
    handshake). None once the server proved the key; else what went wrong (`bad_proof`, `closed`,
    `timeout`, an errno name...), for the caller's `disconnected reason=auth` (dial.connect)."""
    try:
        await compat.wait_for_ms(_exchange(client.net, auth, sock, pre), client.cfg.auth_timeout_ms)
    except AuthError as e:
        return e.args[0]
    except compat.TimeoutError:
        return "timeout"
    except OSError as e:
        return compat.errno_name(e)
    except compat.CancelledError:
        client.net.close(sock)
        raise
    return None


async def _exchange(net, auth, sock, pre):
    view = auth.challenge_view()
    await _read_exactly(net, sock, view, pre)
    frame = auth.answer(view)
    off = 0
    while off < len(frame):
        k = net.try_write(sock, frame, off, len(frame) - off)
        if k:
            off += k
        else:
            await net.wait_writable(sock)
    view = auth.welcome_view()
    await _read_exactly(net, sock, view[:HEADER_SIZE], 0)
    if auth.welcome_header_ok(view):  # only then is the rest a proof; else stop at the header
        await _read_exactly(net, sock, view, HEADER_SIZE)
    auth.check_welcome(view)


async def _read_exactly(net, sock, view, got):
    # Reads never go past the frame: what follows WELCOME belongs to the session's decoder.
    need = len(view)
    while got < need:
        n = net.try_read(sock, view[got:])
        if n < 0:
            await net.wait_readable(sock)
        elif n == 0:
            raise AuthError("closed")
        else:
            got += n
