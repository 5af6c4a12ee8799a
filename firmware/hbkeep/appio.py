# The application's side of the link (docs/APP.md): Client.send, and the receiver that hands DATA
# payloads to the application's on_data handler instead of echoing them.
#
# Part of the client, kept in a module of its own so that it costs no heap on a board that only echoes:
# client.py imports it the first time an application sends, or at a connection when a handler is set.
# It works on the client's write side exactly like the echo and the supervisor do (hold, write,
# release; see client.py).
from . import compat, protocol
from .compat import ticks_ms, sleep_ms
from .protocol import DATA, HEADER_SIZE, FRAME_IN_PLACE, FRAME_ASSEMBLED, NEED_MORE
from .events import SMALL_INT_MAX
from .client import R_EOF, R_PROTOCOL, R_RESET


async def send(client, payload):
    n = len(payload)
    if client.framed and n > client.cfg.max_payload:
        raise ValueError("send: payload of %d bytes is over max_payload=%d" % (n, client.cfg.max_payload))
    sock = client.sock
    while sock is not None and client._tx_busy:
        await client._tx_idle.wait()  # a beat, an echo or another frame of ours is mid-way
        if client.sock is not sock:
            return False
    if sock is None:
        return False
    net = client.net
    hdr = None
    hk = 0
    pk = 0
    try:
        if client.framed:
            hdr = client._app_hdr
            if hdr is None:
                hdr = client._app_hdr = bytearray(HEADER_SIZE)
            protocol.encode_header(hdr, 0, DATA, n)
            hk = net.try_write(sock, hdr, 0, HEADER_SIZE)
        if hk == HEADER_SIZE or hdr is None:
            pk = net.try_write(sock, payload, 0, n)
            if pk == n:
                st = client.stats
                st.app_tx = (st.app_tx + 1) & SMALL_INT_MAX
                return True
    except OSError as e:
        client._abort(R_RESET, compat.errno_name(e))
        return False
    # The rest waits on the socket in a task of its own, holding the write side: if the caller is
    # cancelled meanwhile, the frame is still finished rather than torn. The session cancels that task
    # when the connection ends.
    client._hold_tx()
    task = compat.create_task(_finish(client, sock, hdr, hk, payload, pk))
    client._app_task = task
    while client._app_task is task:
        await client._tx_idle.wait()
        if client._app_task is task and client._tx_idle.is_set():
            await sleep_ms(0)  # released by the end of the connection: let the cancelled task finish first
    try:
        return await task  # already done: returns at once
    except compat.CancelledError:
        return False  # cut by the end of the connection


async def _finish(client, sock, hdr, hk, payload, pk):
    ok = False
    try:
        if hdr is not None and hk < HEADER_SIZE:
            await client._send_rest(sock, hdr, hk, HEADER_SIZE - hk, True)
            # Released at the end of that call and taken again here with no await in between:
            # nothing else can write between the header and the payload.
            client._hold_tx()
        await client._send_rest(sock, payload, pk, len(payload) - pk, True)
        st = client.stats
        st.app_tx = (st.app_tx + 1) & SMALL_INT_MAX
        ok = True
    except OSError as e:
        client._abort(R_RESET, compat.errno_name(e))
    finally:
        client._app_task = None
    return ok


async def receive(client, sock):
    """The receiver of a connection while client.on_data is set: returns a disconnect reason and raises
    OSError on socket errors, as the echoing receivers do."""
    net = client.net
    buf = client.rxbuf
    link = client.link
    handler = client.on_data
    try_read = net.try_read
    last_yield = ticks_ms()
    while True:
        n = try_read(sock, buf)
        if n < 0:
            await net.wait_readable(sock)
            continue
        if n == 0:
            return R_EOF
        now = ticks_ms()
        link.received(now)
        if deliver(client, buf, n, handler):
            return R_PROTOCOL
        # Yield once per millisecond tick while reads never wait (as the echoing receivers do).
        if now != last_yield:
            last_yield = now
            await sleep_ms(0)


def deliver(client, buf, n, handler):
    """Hand what one read brought to the handler instead of echoing it; True when the stream broke."""
    dec = client.dec
    if dec is None:
        _call(client, handler, memoryview(buf)[:n])
        return False
    pos = 0
    while pos < n:
        nxt = dec.feed(buf, pos, n)
        ev = dec.event
        if ev == FRAME_IN_PLACE or ev == FRAME_ASSEMBLED:
            if dec.type == DATA:
                if ev == FRAME_IN_PLACE:
                    s = dec.start + HEADER_SIZE
                    _call(client, handler, memoryview(buf)[s : s + dec.length])
                else:
                    _call(client, handler, memoryview(dec.frame)[HEADER_SIZE : HEADER_SIZE + dec.length])
            else:
                client.stats.hearts_received += 1
        elif ev != NEED_MORE:
            client._protocol_error(dec)
            return True
        pos = nxt
    return False


def _call(client, handler, payload):
    # A failing handler costs that payload only: an event, and the link goes on.
    st = client.stats
    st.app_rx = (st.app_rx + 1) & SMALL_INT_MAX
    try:
        handler(payload)
    except Exception as e:
        client.ev.emit("app_error", "where", "on_data", "error", compat.exc_text(e))
