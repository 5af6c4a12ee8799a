# The "servers" config key: several "host:port" addresses the client tries in turn (docs/CONFIG.md).
# A module of its own so that a config without the key never loads it (a board's heap is small).

MAX_SERVERS = 16


def parse_list(lst, error):
    """[ "host:port", ... ] -> [(host, port), ...]; raises error(text) naming the bad entry."""
    if not isinstance(lst, list) or not 1 <= len(lst) <= MAX_SERVERS:
        from .config import shown  # loaded: the config is being read (an error path: costs nothing otherwise)

        got = "a JSON list of %d" % len(lst) if isinstance(lst, list) else shown(lst)
        raise error("servers: expected a list of 1 to %d \"host:port\" strings, got %s" % (MAX_SERVERS, got))
    return [parse_one("servers[%d]" % i, text, error) for i, text in enumerate(lst)]


def parse_one(name, text, error):
    """ "host:port" (an IPv6 host in brackets: "[::1]:39002") -> (host, port)."""
    if not isinstance(text, str):
        from .config import shown

        raise error("%s: expected a \"host:port\" string, got %s" % (name, shown(text)))
    i = text.rfind(":")
    host = text[:i] if i > 0 else ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    digits = text[i + 1:] if i > 0 else ""
    if not host or not digits or not digits.isdigit():
        raise error("%s: expected \"host:port\", got %r" % (name, text))
    port = int(digits)
    if port < 1 or port > 65535:
        raise error("%s: port must be from 1 to 65535, got %d" % (name, port))
    return (host, port)


class Rotation:
    """Which server of the list the client tries next. The client reads cfg.host and cfg.port as "the
    current server"; each address is resolved on first use and cached here, as a single one is."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.list = cfg.servers
        self.addrs = [None] * len(self.list)
        self.i = 0

    def next(self, addr):
        """Keep the current server's address (None if unresolved), move on; the next one's address."""
        self.addrs[self.i] = addr
        self.i = (self.i + 1) % len(self.list)
        self.cfg.host, self.cfg.port = self.list[self.i]
        return self.addrs[self.i]
