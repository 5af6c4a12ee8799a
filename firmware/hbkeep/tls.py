# TLS for the client: the runtime seam for it (compat.py's TLS half) and the handshake driver.
# Imported only when the config has a "tls" object, so a plain device never loads mbedTLS bindings; and
# forgotten with the connect path while a session runs (the client keeps only tls.settings()' values).
#
# Where the runtimes differ:
# - MicroPython (boards, unix port) has the C module `tls` (`ssl` is a thin Python wrapper around it on
#   builds that freeze one, absent on others). Its sockets have no do_handshake(): with
#   do_handshake_on_connect=False the handshake advances inside readinto()/write() on the non-blocking
#   socket, which answer None ("would block") until it is over and data moves. So the handshake is
#   driven by the first transfer of the session itself -- the device's first beat, or the first bytes
#   of the server's CHALLENGE when authentication is on -- and waits on asyncio's poller in between
#   (the socket's poll tells it which direction mbedTLS needs). The event loop never blocks on it.
# - CPython has ssl.SSLSocket.do_handshake(), driven with the same waits.
# - mbedTLS builds differ in which CA encodings they parse (some take PEM, all take DER): the CA file is
#   handed over as DER always, PEM being decoded here.
# - A refused certificate is a ValueError with mbedTLS's verify text on MicroPython, an
#   SSLCertVerificationError with an OpenSSL verify code on CPython; failure() maps both to one reason.
from . import compat
from .compat import MICROPYTHON, wait_readable, wait_writable

# connect_failed reasons (docs/EVENTS.md)
UNTRUSTED = "tls_untrusted"  # not signed by the configured CA (or self-signed)
HOSTNAME = "tls_hostname"  # valid, but for another name than server_hostname
EXPIRED = "tls_expired"  # validity ended
NOT_YET_VALID = "tls_not_yet_valid"  # validity not started (often: the board's clock is not set)
REJECTED = "tls_rejected"  # the certificate was refused for another reason (detail says which)
TIMEOUT = "tls_timeout"  # no handshake within handshake_timeout_ms
CLOSED = "tls_closed"  # the server closed or reset the connection during the handshake
ERROR = "tls_error"  # the handshake failed otherwise (detail: the TLS library's error name)


class CaError(ValueError):
    pass


def der_from_file(path):
    """The first certificate of a PEM or DER file, as DER bytes."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CaError("tls.ca: cannot read %s (%s)" % (path, compat.errno_name(e)))
    begin = data.find(b"-----BEGIN CERTIFICATE-----")
    if begin < 0:
        if data[:1] != b"\x30":  # a DER certificate starts with an ASN.1 SEQUENCE
            raise CaError("tls.ca: %s is neither a PEM certificate nor a DER one" % path)
        return data
    import binascii

    start = data.find(b"\n", begin) + 1
    end = data.find(b"-----END CERTIFICATE-----", start)
    if start <= 0 or end < 0:
        raise CaError("tls.ca: %s: PEM certificate without its END line" % path)
    try:
        return binascii.a2b_base64(data[start:end].replace(b"\r", b"").replace(b"\n", b""))
    except ValueError:
        raise CaError("tls.ca: %s: the PEM certificate is not valid base64" % path)


if MICROPYTHON:
    try:
        import tls as _tls  # the C module (1.23+)
    except ImportError:
        import ssl as _tls  # type: ignore[no-redef]  # a build that only names it ssl

    def context(cadata):
        ctx = _tls.SSLContext(_tls.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = _tls.CERT_REQUIRED  # type: ignore[attr-defined]  # real, but not in the board stubs
        ctx.load_verify_locations(cadata)
        return ctx

    def wrap(ctx, sock, hostname):
        # Also sets SNI; with CERT_REQUIRED mbedTLS checks the certificate's names against it.
        return ctx.wrap_socket(sock, server_hostname=hostname, do_handshake_on_connect=False)

    async def handshake(sock, buf, n_out, probe=None):
        """Complete the handshake by moving the session's first bytes: write buf[0:n_out] when
        n_out > 0 and return n_out; else read into buf and return how many bytes came (0: the server
        closed; -1, CPython only: the handshake is over and nothing was read yet).
        probe(), when given, is called after every step (the TLS benchmark samples the heap there)."""
        if n_out:
            off = 0
            while off < n_out:
                k = sock.write(buf, off, n_out - off)
                if probe:
                    probe()
                if k:
                    off += k
                else:
                    await wait_writable(sock)
            return n_out
        while True:
            n = sock.readinto(buf)
            if probe:
                probe()
            if n is not None:
                return n
            await wait_readable(sock)

    def failure(e):
        """(reason, detail) for an exception raised during the handshake."""
        if isinstance(e, ValueError):  # mbedTLS's verify text, one line per problem found
            text = str(e)
            if "expired" in text:
                return EXPIRED, "certificate_expired"
            if "future" in text:
                return NOT_YET_VALID, "certificate_not_yet_valid"
            if "CN" in text:
                return HOSTNAME, "name_mismatch"
            if "trusted CA" in text or "not trusted" in text:
                return UNTRUSTED, "unknown_ca"
            return REJECTED, text.strip().split("\n")[0][:60]
        n = e.args[0] if e.args else 0
        if n == _CONN_EOF:
            return CLOSED, "eof"
        if isinstance(n, int) and n < -256:  # an mbedTLS error code: its name where the build has them
            return ERROR, (e.args[1] if len(e.args) > 1 else _MBEDTLS.get(n, "-0x%x" % -n))
        return CLOSED, compat.errno_name(e)

    _CONN_EOF = -0x7280  # MBEDTLS_ERR_SSL_CONN_EOF: the peer closed during the handshake
    # Builds without MBEDTLS_ERROR_C raise the bare number: the few a device meets, by name.
    _MBEDTLS = {
        -0x7780: "fatal_alert",  # the server refused the handshake (e.g. no common cipher or version)
        -0x7200: "invalid_record",  # not TLS at the other end
        -0x6C00: "internal_error",
        -0x7F00: "alloc_failed",
    }

else:
    # CPython (host tools and tests): kept in a module no board ships.
    from ._cpython_tls import context, wrap, handshake, failure  # noqa: F401


def settings(cfg):
    """What the client keeps for TLS, made once: (context, name to check and send as SNI, handshake timeout
    in ms). The context holds the parsed CA. Plain values rather than an object of this module's, so
    that this module leaves the heap with the connect path while a session runs (dial.py)."""
    hostname = cfg.tls_server_hostname or cfg.host
    return context(der_from_file(cfg.tls_ca)), hostname, cfg.tls_handshake_timeout_ms


async def start(client, raw, t0, auth=None):
    """The client's TLS step of a connect: wrap and handshake. Returns (TLS socket, bytes of the
    CHALLENGE already read) or (None, 0) after a connect_failed event. The handshake completes with the
    session's first transfer (see above): the CHALLENGE's first bytes with authentication, else a first
    beat. auth: the connection's auth.DeviceAuth, or None. Kept here rather than in client.py, so that a
    device without TLS does not carry its code."""
    from .protocol import HEADER_SIZE
    from . import dial  # the connect path, which runs this

    net = client.net
    ctx, hostname, timeout_ms = client.tls
    sock = None
    reason = None
    detail = None
    n = 0
    try:
        sock = wrap(ctx, raw, hostname)
        if auth is not None:
            n = await compat.wait_for_ms(handshake(sock, auth.challenge_view(), 0), timeout_ms)
            if n == 0:
                reason, detail = CLOSED, "eof"
        else:
            await compat.wait_for_ms(handshake(sock, client.beat, HEADER_SIZE), timeout_ms)
            client.stats.beats_sent += 1
    except compat.TimeoutError:
        reason, detail = TIMEOUT, "%dms" % timeout_ms
    except (OSError, ValueError) as e:
        reason, detail = failure(e)
    except compat.CancelledError:
        net.close(sock if sock is not None else raw)
        net.close(raw)
        raise
    now = compat.ticks_ms()
    if reason is None:
        client.ev.emit("tls_ready", "took_ms", compat.ticks_diff(now, t0), "server_hostname", hostname)
        return sock, n if n > 0 else 0
    if sock is not None:
        net.close(sock)
    net.close(raw)  # a failed MicroPython handshake detaches the TLS socket from it: close it too
    client.stats.connect_failed(reason)
    client.link.connect_failed()
    if dial.failed(client, now, reason):  # a server with a bad certificate fails every attempt: summarised too
        client.ev.emit(
            "connect_failed", "attempt", client.stats.attempts, "reason", reason, "detail", detail,
            "took_ms", compat.ticks_diff(now, t0),
        )
    return None, 0
