"""The firmware's `servers` list: config validation, and moving to the next server on failure, on real
loopback sockets under CPython and the MicroPython unix port (the firmware runs as a child process)."""
import socket

import pytest

from firmware.hbkeep.config import Config, ConfigError
from support.fwproc import FwProc
from support.scripted_server import ScriptedServer

START = 20.0
WAIT = 10.0


def test_servers_default_to_host_and_port():
    c = Config({"host": "10.0.0.5", "port": 4000})
    assert c.servers == [("10.0.0.5", 4000)]


def test_servers_list_parsed_in_order_and_first_is_host():
    c = Config({"servers": ["a.example:1", "127.0.0.1:39002", "[::1]:65535"]})
    assert c.servers == [("a.example", 1), ("127.0.0.1", 39002), ("::1", 65535)]
    assert (c.host, c.port) == ("a.example", 1)


@pytest.mark.parametrize("value, message", [
    ([], "servers: expected a list of 1 to 16"),
    ("h:1", "servers: expected a list of 1 to 16"),
    (["h:1"] * 17, "servers: expected a list of 1 to 16"),
    (["h"], "servers[0]: expected \"host:port\", got 'h'"),
    (["h:1", ":5"], "servers[1]: expected \"host:port\""),
    (["h:x"], "servers[0]: expected \"host:port\""),
    (["h:0"], "servers[0]: port must be from 1 to 65535, got 0"),
    (["h:70000"], "servers[0]: port must be from 1 to 65535, got 70000"),
    ([5], "servers[0]: expected a \"host:port\" string, got 5"),
])
def test_bad_servers_name_the_entry(value, message):
    with pytest.raises(ConfigError) as e:
        Config({"servers": value})
    assert message in str(e.value)


def test_servers_and_host_together_is_an_error():
    with pytest.raises(ConfigError, match="either host/port or servers"):
        Config({"host": "h", "servers": ["h:1"]})


def test_moves_to_the_next_server_on_failure(runtime):
    # The first address refuses (a bound port with no listener); the client must go on to the second,
    # then back to the first once it listens and the second drops the connection.
    hold = socket.socket()
    hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    hold.bind(("127.0.0.1", 0))  # bound, not listening: connecting to it is refused
    port = hold.getsockname()[1]
    with ScriptedServer(port=port, listen=False) as dead, ScriptedServer() as live:
        cfg = {"servers": ["127.0.0.1:%d" % dead.port, "127.0.0.1:%d" % live.port], "beat_ms": 100,
               "retry_ms": 50, "backoff_max_ms": 200, "stats_ms": 0, "connect_timeout_ms": 2000}
        with FwProc(runtime, cfg) as fw:
            fw.wait_event("connect_failed", START)
            ev = fw.wait_event("connected", WAIT)
            assert ev.fields["addr"].endswith(":%d" % live.port), fw.output()
            conn = live.accept(WAIT)
            hold.close()
            dead.listen()
            conn.close()
            again = fw.wait_event("connected", WAIT, where=lambda f: f["addr"].endswith(":%d" % dead.port))
            assert again is not None, fw.output()
            assert dead.accept(WAIT) is not None
            resolved = [e.fields["host"] for e in fw.events if e.name == "resolved"]
            assert resolved.count("127.0.0.1") == 2, "each address is resolved once, then cached: %s" % resolved
