# TCP keepalive and TCP_NODELAY "where the port supports them", decided by the board's capability table
# (boards/<name>/board.json, deployed as board.json) -- never by passing raw numbers to a port that
# lacks an option: esp32 and rp2 print a warning and ignore unknown ones, and on esp32 some raw lwIP
# numbers land on unrelated options (docs/PORTS.md).
from .compat import const

TYPE_CHECKING = const(False)  # const: MicroPython compiles the block below away, names and all
if TYPE_CHECKING:  # for mypy only: at run time the validator's module leaves the heap after start
    from .config import Config


def wanted(cfg: "Config"):
    """(option, value) pairs the config asks for, in the seed's order."""
    out = []
    if cfg.keepalive:
        out.append(("keepalive", 1))
        out.append(("idle", cfg.ka_idle))
        out.append(("intvl", cfg.ka_intvl))
        out.append(("cnt", cfg.ka_cnt))
    if cfg.nodelay:
        out.append(("nodelay", 1))
    return out


def apply(net, sock, table, cfg: "Config"):
    """Set what the port has; return (applied, lacking, failed) lists of option names."""
    applied = []
    lacking = []
    failed = []
    for name, value in wanted(cfg):
        where = table.get(name)
        if not where:
            lacking.append(name)
            continue
        try:
            net.setsockopt(sock, where[0], where[1], value)
            applied.append(name)
        except OSError:
            failed.append(name)
    return applied, lacking, failed
