# The connect path: what the client runs while no session is up -- the lookup, the
# non-blocking connect with its bounded wait, the socket options, the TLS and authentication steps, and the
# lines that report failures -- and the body of compat.LwipNet's connect-side methods.
#
# Why a module of its own: the client loads it when it starts and whenever a session ends, and forgets it
# (with the modules only it uses) as soon as a session runs, so that on a board its code is in the heap
# during an outage and not while connected. For that, nothing that outlives an attempt may hold one of its
# functions or objects: the client keeps only plain data (the address, the failure run's counters).
import errno

from . import compat
from .compat import const, ticks_ms, ticks_diff, sleep_ms
from .client import R_AUTH

TYPE_CHECKING = const(False)  # const: MicroPython compiles the block below away, names and all
if TYPE_CHECKING:  # for mypy only
    from .client import Client

# Modules only the connect path uses, forgotten with it once a session runs.
_CONNECT_ONLY = ("dial", "sockopts", "eai", "auth", "authio", "tls")


async def attempt(client: "Client"):
    """One attempt, the link being up: a connected socket (TLS and authentication done where configured)
    ready for a session, or None once the failure is reported and the link told. A socket returned means
    the connect path is forgotten: the caller holds no reference to this module through the session."""
    if client.addr is None:
        run = client.failing
        left = run.lookup_left(ticks_ms()) if run is not None else 0
        if left > 0:  # failed lookups back off (repeats.py): wait out the rest
            await client.pause(left)
            if not client.net.link_up():
                return None
        if not resolve(client):
            return None
    sock = await connect(client)
    if sock is not None:
        for name in _CONNECT_ONLY:
            compat.forget_module(name)
        if client.failing is None:
            # No run of failures, no probation: neither module is needed. Else the run's object holds its
            # class, and probation.settle its code, through the probation: forgotten now, they would be
            # loaded a second time at the session's end. probation.settle forgets them once it is over.
            compat.forget_module("repeats")
            compat.forget_module("probation")
    return sock


def say(client: "Client", line):
    """Print an event line of the connection being made (a tuple: name, then keys and values), or hold
    it back with the connection's `connected` line (probation.py)."""
    run = client.failing
    if run is not None and run.held is not None:
        run.held.append(line)
    else:
        client.ev.emit(*line)


def resolve(client: "Client"):
    cfg = client.cfg
    net = client.net
    try:
        client.addr = net.resolve(cfg.host, cfg.port)
    except OSError as e:
        client.stats.connect_failed("resolve")
        name = compat.errno_name(e)
        now = ticks_ms()
        from .repeats import failing, failed

        wait = failing(client).lookup_failed(now, cfg.retry_ms)
        if failed(client, now, name):
            client.ev.emit("resolve_failed", "host", cfg.host, "error", name, "retry_ms", wait)
        return False
    run = client.failing
    if run is not None:
        run.lookup_ms = 0  # the next failed lookup starts again from retry_ms
    client.ev.emit("resolved", "host", cfg.host, "addr", net.addr_str(client.addr))
    return True


async def connect(client: "Client"):
    st = client.stats
    st.attempts += 1
    net = client.net
    cfg = client.cfg
    addr = client.addr
    t0 = ticks_ms()
    if client.ev.verbose:
        client.ev.emit("connecting", "attempt", st.attempts)
    sock = None
    reason = None
    try:
        sock = net.open(addr)
        net.connect_start(sock, addr)
        await compat.wait_for_ms(net.connect_finish(sock, addr), cfg.connect_timeout_ms)
    except compat.TimeoutError:
        reason = "timeout"
    except OSError as e:
        reason = compat.errno_name(e)
    except compat.CancelledError:
        if sock is not None:
            net.close(sock)  # stopped mid-connect: no descriptor left behind
        raise
    if reason is not None:
        if sock is not None:
            net.close(sock)  # the seed leaks one descriptor per failed attempt; we do not
        st.connect_failed(reason)
        client.link.connect_failed()
        now = ticks_ms()
        from .repeats import failed

        if failed(client, now, reason):
            client.ev.emit(
                "connect_failed", "attempt", st.attempts, "reason", reason, "took_ms", ticks_diff(now, t0),
            )
        return None
    run = client.failing
    if run is not None:
        # A run of failures goes on through the connection's probation (probation.py). Its lines either wait
        # with it, or come now: the failures not yet reported first, then this connection's lines.
        # (Set either way: an earlier attempt that raised half-way may have left a list behind.)
        run.held = [] if run.holds() else None
        if run.held is None and run.count > run.reported:
            client.ev.emit("connect_failing", *run.summary(ticks_ms()))
    from . import sockopts

    applied, lacking, failed_opts = sockopts.apply(net, sock, client.board.get("sockopts", {}), cfg)
    auth = None
    if cfg.auth_id:
        # Made for each connection rather than once: then auth.py, like the rest of the connect path, is not
        # in the heap while a session runs. Its first read may be the TLS handshake's (tls.start).
        from .auth import DeviceAuth

        auth = DeviceAuth(cfg.auth_id, cfg.auth_key)
    pre = 0
    if client.tls is not None:  # after the socket options: a TLS socket has no setsockopt
        client._bump()  # each bounded wait of a connect counts on its own for the watchdog feeder
        from . import tls  # the handshake's driver: loaded only by a device that has TLS

        sock, pre = await tls.start(client, sock, t0, auth)
        if sock is None:
            if run is not None:
                run.held = None  # a failed connect: nothing of it is printed but its failure
            return None
    st.connects += 1
    say(client, (
        "connected", "addr", net.addr_str(addr), "attempt", st.attempts,
        "took_ms", ticks_diff(ticks_ms(), t0), "applied", ",".join(applied),
        "lacking", ",".join(lacking), "failed", ",".join(failed_opts),
    ))
    if auth is not None:
        client._bump()
        from . import authio  # the exchange's driver: loaded only by a device that authenticates

        t1 = ticks_ms()
        detail = await authio.authenticate(client, auth, sock, pre)
        now = ticks_ms()
        if detail is not None:
            # The server did not prove the key: a connection lost before its session began.
            net.close(sock)
            client.link.connect_failed()
            st.disconnected(R_AUTH)
            from .probation import lost

            lost(client, now, R_AUTH, detail, ticks_diff(now, t1))
            return None
        say(client, ("authenticated", "id", cfg.auth_id, "took_ms", ticks_diff(now, t1)))
    if run is not None:
        # The session starts as soon as this returns; its probation ends the run once it has lasted a beat.
        from .probation import settle

        run.task = compat.create_task(settle(client, run, st.connects))
    return sock


# -- compat.LwipNet's connect side ---------------------------------------------------------------------
_CONNECT_POLL_MS = const(20)  # between checks of a connect the port still reports in progress


class ResolveError(OSError):
    """A failed lookup; args[0] is the failure's name (EAI_NONAME...), as errno_name reports it."""


def resolve_error_name(e):
    # The table of names lives in eai.py, loaded at the first failed lookup: a device whose server name
    # resolves never carries it.
    from .eai import name

    return name(e)


def resolve_addr(host, port):
    # Blocking on every port (rp2 busy-polls, seconds per DNS server): the client calls this only while
    # the link is up, once, and caches the result. Failures are raised as ResolveError, with one name
    # for one failure on every runtime.
    import socket

    try:
        ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    except OSError as e:
        raise ResolveError(resolve_error_name(e))
    except ValueError:
        # CPython's IDNA codec refuses a label over 63 characters (UnicodeError) where the C
        # resolver answers "no such name": the same answer, whatever the runtime.
        raise ResolveError("EAI_NONAME")
    return (ai[0], ai[1], ai[2], ai[-1])


def open_socket(addr):
    import socket

    s = socket.socket(addr[0], addr[1], addr[2])
    s.setblocking(False)
    return s


def addr_str(addr):
    sa = addr[3]
    if isinstance(sa, tuple):
        return "%s:%d" % (sa[0], sa[1])
    if len(sa) >= 8 and sa[0] == 2:
        # MicroPython unix: a raw struct sockaddr_in (family, port big-endian, IPv4 address).
        return "%d.%d.%d.%d:%d" % (sa[4], sa[5], sa[6], sa[7], (sa[2] << 8) | sa[3])
    return str(sa)


def connect_start(net, sock, addr):
    try:
        sock.connect(addr[3])
    except OSError as e:
        if e.args[0] not in net.pending:
            raise


async def connect_finish(net, sock, addr):
    # No port has getsockopt(SO_ERROR) from Python: a second connect() reports the outcome. The caller
    # bounds the whole wait (connect_timeout_ms).
    while True:
        await net.wait_writable(sock)
        try:
            sock.connect(addr[3])
            return  # the unix port, like Linux, answers success once
        except OSError as e:
            n = e.args[0]
            if n in net.isconn:
                return
            if n in net.refused:
                raise OSError(errno.ECONNREFUSED, compat.errno_name(e))
            if n not in net.already:
                raise
        await sleep_ms(_CONNECT_POLL_MS)  # still connecting, and the poller may say so at once
