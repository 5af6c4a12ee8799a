# Configuration: JSON with documented keys (docs/CONFIG.md). Anything unknown, mistyped or out of range
# stops start-up with an error naming the key and what it expected: a device that silently ran with a
# misspelt "beat_ms" would be worse than one that refuses to start.

from .compat import const

# name: (kind, default, low, high) for numbers; (kind, default, choices) for choice strings. The kinds
# are numbers written into the code (const), so that they leave no names behind once the module is gone.
_INT = const(0)
_BOOL = const(1)
_STR = const(2)
_CHOICE = const(3)

SPEC = {
    "host": (_STR, "127.0.0.1"),
    "port": (_INT, 39002, 1, 65535),
    "mode": (_CHOICE, "framed", ("framed", "raw")),
    "beat_ms": (_INT, 3000, 10, 3600000),
    "peer_timeout": (_CHOICE, "auto", ("auto", "strict", "off")),
    "peer_miss": (_INT, 3, 1, 1000),
    "retry_ms": (_INT, 100, 1, 3600000),
    "backoff_max_ms": (_INT, 0, 0, 3600000),
    "connect_timeout_ms": (_INT, 3000, 10, 600000),
    "max_payload": (_INT, 1024, 1, 1048576),
    "rx_buf": (_INT, 2048, 64, 1048576),
    "nodelay": (_BOOL, True),
    "verbose": (_BOOL, False),
    "stats_ms": (_INT, 10000, 0, 86400000),
    "wdt_ms": (_INT, 0, 0, 3600000),
}

# TCP keepalive, seconds and a probe count; seed defaults 3 s / 3 s / 3. `"keepalive": false` turns
# SO_KEEPALIVE off altogether.
KEEPALIVE_SPEC = {
    "idle": (_INT, 3, 1, 32767),
    "intvl": (_INT, 3, 1, 32767),
    "cnt": (_INT, 3, 1, 127),
}

# 2^29 ms: the longest span time.ticks_diff() can tell and ticks_add() accepts (docs/PORTS.md).
TICKS_SPAN_MAX = const(1 << 29)

# Only used on boards. Values are never printed, not even in errors.
WIFI_KEYS = ("ssid", "password")

# TLS (docs/SECURITY.md): the CA file on flash, the name checked and sent as SNI (default: host).
TLS_SPEC = {
    "ca": (_STR, None),
    "server_hostname": (_STR, None),
    "handshake_timeout_ms": (_INT, 5000, 100, 600000),  # the default is also set in Config._tls
    "ntp_host": (_STR, "pool.ntp.org"),  # boards set their clock from it (certificate dates); default in _tls
}
# Device authentication (docs/SECURITY.md). The key is never printed, not even in errors.
AUTH_SPEC = {
    "id": (_STR, None),
    "key": (_STR, None),
    "timeout_ms": (_INT, 5000, 100, 600000),  # the default is also set in Config._auth
}
NESTED = ("keepalive", "wifi", "tls", "auth")


class ConfigError(ValueError):
    pass


def shown(value):
    """How an error names a bad value of a key that is not secret: a number, true/false/null or a string
    as written, an object or a list only by its kind -- it may hold anything, a misplaced "wifi" section
    with its password included. Values of the secret keys (wifi.*, auth.key) are never shown at all."""
    if isinstance(value, dict):
        # Not shorter: a literal of up to 10 characters is interned, and stays on the heap once config is gone.
        return "a JSON object"
    if isinstance(value, list):
        return "a JSON list"
    return repr(value)


def _check(name, spec, value):
    kind = spec[0]
    if kind == _INT:
        # bool is an int subclass on both runtimes; `true` for a number is a mistake, not 1.
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError("%s: expected an integer from %d to %d, got %s" % (name, spec[2], spec[3], shown(value)))
        if value < spec[2] or value > spec[3]:
            raise ConfigError("%s: expected an integer from %d to %d, got %d" % (name, spec[2], spec[3], value))
    elif kind == _BOOL:
        if not isinstance(value, bool):
            raise ConfigError("%s: expected true or false, got %s" % (name, shown(value)))
    elif kind == _STR:
        if not isinstance(value, str) or not value:
            raise ConfigError("%s: expected a non-empty string, got %s" % (name, shown(value)))
    else:
        if value not in spec[2]:
            raise ConfigError("%s: expected one of %s, got %s" % (name, ", ".join(spec[2]), shown(value)))
    return value


class Config:
    """Validated settings as attributes (cfg.beat_ms); keepalive flattened to ka_idle/ka_intvl/ka_cnt."""

    # Every attribute declared, one line each, so that the type checker (`make typecheck`) flags a
    # misspelt `cfg.beat_mss` wherever a Config is known. Next to free on a board: MicroPython generates
    # no code for a bare annotation (about a byte of line table each). A new key goes into SPEC (check,
    # default) and here (type);
    # host_tests/test_config.py fails naming any attribute set but not declared, or declared but not set.
    host: str
    port: int
    mode: str
    beat_ms: int
    peer_timeout: str
    peer_miss: int
    retry_ms: int
    backoff_max_ms: int
    connect_timeout_ms: int
    max_payload: int
    rx_buf: int
    nodelay: bool
    verbose: bool
    stats_ms: int
    wdt_ms: int
    # "keepalive": false, or its object flattened
    keepalive: bool
    ka_idle: int
    ka_intvl: int
    ka_cnt: int
    # "wifi": {ssid, password}; None when absent
    wifi_ssid: "str | None"
    wifi_password: "str | None"
    # "tls": {ca, server_hostname, handshake_timeout_ms}; tls_ca is None when TLS is off
    tls_ca: "str | None"
    tls_server_hostname: "str | None"
    tls_handshake_timeout_ms: int
    tls_ntp_host: str
    # "auth": {id, key, timeout_ms}; auth_id is None when off; auth_key (bytes) is never printed
    auth_id: "str | None"
    auth_key: "bytes | None"
    auth_timeout_ms: int
    # "servers", or host/port as a one-entry list: (host, port) pairs tried in turn
    servers: "list[tuple[str, int]]"

    def __init__(self, user=None):
        user = user or {}
        if not isinstance(user, dict):
            raise ConfigError("config: expected a JSON object at the top level")
        for name in user:
            if name not in SPEC and name not in NESTED and name != "servers":
                raise ConfigError("%s: unknown key (known: %s)" % (name, ", ".join(sorted(list(SPEC) + list(NESTED) + ["servers"]))))
        for name in SPEC:
            spec = SPEC[name]
            setattr(self, name, _check(name, spec, user[name]) if name in user else spec[1])
        self._keepalive(user.get("keepalive", {}))
        self._wifi(user.get("wifi"))
        self._servers(user)
        framed = user.get("mode", "framed") == "framed"
        self._tls(user.get("tls"), framed)
        self._auth(user.get("auth"), framed)
        self._ticks_limits()

    def _servers(self, user):
        # Always a list of (host, port): one entry from host/port unless "servers" is given.
        if "servers" not in user:
            self.servers = [(self.host, self.port)]
            return
        if "host" in user or "port" in user:
            raise ConfigError("servers: give either host/port or servers, not both")
        from .servers import parse_list  # only when a list is configured: nothing to load otherwise

        self.servers = parse_list(user["servers"], ConfigError)
        self.host, self.port = self.servers[0]

    def _ticks_limits(self):
        # A board's millisecond tick wraps at 2^30: ticks_diff() answers only within +-2^29 and
        # ticks_add() raises OverflowError from 2^29 on. A span the firmware measures with ticks must stay
        # below that (about 6.2 days), or a silence would never be judged, or adding it would raise.
        # Single keys are bounded by their ranges; these are the products.
        peer_miss = self.peer_miss
        beat_ms = self.beat_ms
        span = peer_miss * beat_ms
        if span >= TICKS_SPAN_MAX:
            raise ConfigError(
                "peer_miss x beat_ms: %d x %d = %d ms, must be below %d ms (2^29, the longest span a board's "
                "2^30 ms tick can measure); lower peer_miss or beat_ms" % (peer_miss, beat_ms, span, TICKS_SPAN_MAX))

    def _keepalive(self, ka):
        self.keepalive = ka is not False
        if ka is False or ka is None:
            ka = {}
        elif not isinstance(ka, dict):
            raise ConfigError("keepalive: expected an object {idle, intvl, cnt} or false, got %s" % shown(ka))
        for name in ka:
            if name not in KEEPALIVE_SPEC:
                raise ConfigError("keepalive.%s: unknown key (known: cnt, idle, intvl)" % name)
        for name in KEEPALIVE_SPEC:
            spec = KEEPALIVE_SPEC[name]
            setattr(self, "ka_" + name, _check("keepalive." + name, spec, ka[name]) if name in ka else spec[1])

    def _wifi(self, wifi):
        self.wifi_ssid = None
        self.wifi_password = None
        if wifi is None:
            return
        if not isinstance(wifi, dict):
            raise ConfigError("wifi: expected an object {ssid, password}")
        for name in wifi:
            if name not in WIFI_KEYS:
                raise ConfigError("wifi.%s: unknown key (known: password, ssid)" % name)
            if not isinstance(wifi[name], str):
                # The value is not echoed: it may be the password.
                raise ConfigError("wifi.%s: expected a string" % name)
        self.wifi_ssid = wifi.get("ssid")
        self.wifi_password = wifi.get("password")

    def _section(self, section, obj, spec, required, framed):
        # Flattened into <section>_<key> attributes; absent keys take their defaults.
        if not isinstance(obj, dict):
            raise ConfigError("%s: expected an object {%s}" % (section, ", ".join(sorted(spec))))
        for name in obj:
            if name not in spec:
                raise ConfigError("%s.%s: unknown key (known: %s)" % (section, name, ", ".join(sorted(spec))))
        for name in required:
            if name not in obj:
                raise ConfigError("%s.%s: required" % (section, name))
        if not framed:
            raise ConfigError("%s: needs \"mode\": \"framed\" (raw mode has no frames to carry it)" % section)

    def _tls(self, tls, framed):
        # None when off: the client then never imports the TLS module.
        self.tls_ca = self.tls_server_hostname = None
        self.tls_handshake_timeout_ms = 5000
        self.tls_ntp_host = "pool.ntp.org"
        if tls is None:
            return
        self._section("tls", tls, TLS_SPEC, ("ca",), framed)
        for name in TLS_SPEC:
            if name in tls:
                setattr(self, "tls_" + name, _check("tls." + name, TLS_SPEC[name], tls[name]))

    def _auth(self, auth, framed):
        self.auth_id = self.auth_key = None
        self.auth_timeout_ms = 5000
        if auth is None:
            return
        self._section("auth", auth, AUTH_SPEC, ("id", "key"), framed)
        from .auth import check_id, parse_key  # only when authentication is configured

        try:
            check_id(auth["id"])
            self.auth_key = parse_key(auth["key"])  # its errors never repeat the value
        except ValueError as e:
            raise ConfigError("auth.%s" % e)
        self.auth_id = auth["id"]
        if "timeout_ms" in auth:
            self.auth_timeout_ms = _check("auth.timeout_ms", AUTH_SPEC["timeout_ms"], auth["timeout_ms"])


MAX_FILE_BYTES = const(8192)  # a full config with Wi-Fi is under 1 KiB; more is not a config, and costs heap


def parse(data, path):
    """The JSON object in `data` (bytes), parsed by the strict reader every runtime shares; raises
    ConfigError naming `path` and what is wrong. tools.hostrun reads --config files with this too."""
    from .strictjson import JSONError, loads

    if len(data) > MAX_FILE_BYTES:
        raise ConfigError("%s: too large (%d bytes; a config is at most %d)" % (path, len(data), MAX_FILE_BYTES))
    try:
        data.decode()
    except UnicodeError:
        raise ConfigError("%s: not UTF-8 text (a config is JSON, saved as UTF-8)" % path)
    try:
        return loads(data)
    except JSONError as e:
        raise ConfigError("%s: not valid JSON (%s)" % (path, e))


def read(path):
    try:
        with open(path, "rb") as f:
            # One byte past the limit is enough to know the file is too large, without reading it all.
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError("%s: cannot read config file (%s)" % (path, e))
    return parse(data, path)


def load(path) -> Config:
    data = read(path)
    if not isinstance(data, dict):
        raise ConfigError("%s: expected a JSON object at the top level" % path)
    try:
        cfg = Config(data)
    except ConfigError as e:
        raise ConfigError("%s: %s" % (path, e))  # which file, then which key
    ca = cfg.tls_ca
    if ca and not ca.startswith("/") and "/" in path:
        cfg.tls_ca = path[: path.rfind("/") + 1] + ca  # relative to the config file, as on the board
    return cfg
