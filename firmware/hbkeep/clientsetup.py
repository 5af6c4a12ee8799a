# The client's one-time set-up: what Client() and compat.Net() make for the life of the firmware, and the
# start line Client.run prints. Loaded for each and forgotten as soon as it is done, so that neither a
# session nor an outage carries its code (the connect path, dial.py, is in the heap during an outage).
import errno

from . import compat
from .compat import const

TYPE_CHECKING = const(False)  # const: MicroPython compiles the block below away, names and all
if TYPE_CHECKING:  # for mypy only
    from .client import Client


def init_client(client: "Client", cfg, board, net, events):
    """Client.__init__: everything made once for the life of the client."""
    from .events import Events, Stats
    from .link import Link
    from . import protocol

    client.cfg = cfg
    client.board = board
    client.net = net or compat.Net(board)
    client.ev = events or Events(verbose=cfg.verbose, secret=cfg.wifi_password)
    client.stats = Stats()
    framed = client.framed = cfg.mode == "framed"
    client.link = Link(
        cfg.beat_ms, cfg.peer_timeout, cfg.peer_miss, cfg.retry_ms, cfg.backoff_max_ms, beats=framed,
        beats_unacked_max=(board.get("socket") or {}).get("beats_unacked_max"),
    )
    # Buffers allocated once for the life of the client.
    size = cfg.rx_buf
    frame = protocol.HEADER_SIZE + cfg.max_payload
    if framed and size < frame:
        size = frame  # so a whole frame fits and is echoed in place
    client.rxbuf = bytearray(size)
    client.dec = protocol.Decoder(cfg.max_payload) if framed else None
    client.beat = bytearray(protocol.HEADER_SIZE)
    protocol.encode_header(client.beat, 0, protocol.HEART, 0)
    client.addr = None
    client.rot = None
    if len(cfg.servers) > 1:
        from .servers import Rotation

        client.rot = Rotation(cfg)
    client.sock = None
    client.connected = compat.Event()
    client._tx_busy = False
    client._tx_idle = compat.Event()
    client._tx_idle.set()
    client._reason = None
    client._detail = None
    client._rx_task = None
    client._beat_task = None
    # Which failures get a line of their own, and how long failed lookups wait: repeats.FailureRun, made at
    # the first failure of a run and dropped when the run ends (a connection that outlives its probation,
    # probation.settle), so that it is not in the heap while connected.
    client.failing = None
    # The application's side (docs/APP.md, appio.py): a handler for received DATA payloads (None: the
    # seed's upper-case echo, in place and allocation-free) and send() for frames of its own.
    client.on_data = None
    client._app_hdr = None  # header of the application's frame being sent; allocated on first send
    client._app_task = None
    # Liveness for the watchdog feeder: bumped on every pass of the connection loop and of the
    # supervisor; pulse_ms (set by the feeder, 0 = no cap) caps how long either sleeps in one go.
    client.progress = 0
    client.pulse_ms = 0
    # Optional layers (docs/SECURITY.md), imported only when configured: nothing for a plain device.
    client.tls = None
    if cfg.tls_ca:
        from . import tls

        client.tls = tls.settings(cfg)  # parses the CA once; a bad file raises tls.CaError (a ValueError)
    # Device authentication keeps nothing here: dial.py makes what each connection needs from cfg.


def announce(client: "Client"):
    # The `start` line, once, when the client starts running.
    from .client import VERSION

    cfg = client.cfg
    client.ev.emit(
        "start", "version", VERSION, "runtime", compat.RUNTIME, "board", client.board.get("name"),
        "mode", cfg.mode, "server", "%s:%d" % (cfg.host, cfg.port), "beat_ms", cfg.beat_ms,
        "peer_timeout", cfg.peer_timeout, "retry_ms", cfg.retry_ms,
    )


# Host defaults (Linux numbers) for a board table without a "socket" section.
_HOST_SOCKET = {  # type: dict
    "pending": [getattr(errno, "EINPROGRESS", 115), errno.EAGAIN],
    "isconn": [getattr(errno, "EISCONN", 106)],
    "already": [getattr(errno, "EALREADY", 114)],
    "refused": [getattr(errno, "ECONNREFUSED", 111)],
}


def init_net(net, board, port):
    # compat.LwipNet.__init__: the port's answers from the board table (see LwipNet's docstring).
    sk = (board or {}).get("socket") or _HOST_SOCKET
    if sk.get("port") != port:
        sk = _HOST_SOCKET
    net.pending = tuple(sk.get("pending") or _HOST_SOCKET["pending"])
    net.isconn = tuple(sk.get("isconn") or _HOST_SOCKET["isconn"])
    net.already = tuple(sk.get("already") or _HOST_SOCKET["already"])
    net.refused = tuple(sk.get("refused") or _HOST_SOCKET["refused"])
    names = compat.port_errno_names
    names.clear()
    table = sk.get("errno_names") or {}
    for k in table:
        names[int(k)] = table[k]
    cap = sk.get("write_max")
    if cap:
        net.try_write = compat.capped_write(net.try_write, cap)


