"""The connect path (firmware/hbkeep/dial.py) is in the heap between sessions only: on MicroPython the
client forgets it, and the modules only it uses, as soon as a session runs, and loads it again when the
session ends; the one-time set-up (clientsetup.py) is forgotten as soon as the client is made. Run on the
MicroPython unix ports (CPython keeps every module: its heap is not a board's)."""
import json
import os
import socket
import ssl
import subprocess
import time

import pytest

from firmware.hbkeep import auth, auth_host
from support.fwproc import require_runtime
from support.seckit import pki  # noqa: F401  (session fixture: CA and server certificates)
from tools import hostrun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT_S = 30.0  # the whole scenario, interpreter start-up on a busy machine included

# Prints which modules of the package are loaded while connected, while the server is down (three
# attempts refused) and once connected again, then stops.
SCRIPT = """
import sys
sys.path.insert(0, %(fw)r)
from hbkeep import compat, runner

def loaded(state):
    names = sorted(k.split(".")[1] for k in sys.modules if k.startswith("hbkeep."))
    compat.write_line("modules %%s %%s" %% (state, ",".join(names)))

async def past_probation(client):
    # A run of failures goes on through a session's first beat period (repeats.py): it is over, and its
    # lines printed, once the client drops it.
    while client.failing is not None:
        await compat.sleep_ms(5)

async def watch(client):
    await client.connected.wait()
    await past_probation(client)
    loaded("up")
    while client.sock is not None:
        await compat.sleep_ms(5)
    attempts = client.stats.attempts
    while client.stats.attempts < attempts + 3:
        await compat.sleep_ms(5)
    loaded("down")
    await client.connected.wait()
    await past_probation(client)
    loaded("again")

async def main():
    cfg, board, client = runner.prepare(%(cfg)r, %(board)r)
    task = compat.create_task(runner.Firmware(cfg, board, client).services())
    await watch(client)
    task.cancel()

compat.run(main())
"""

CONNECT_ONLY = {"dial", "sockopts", "repeats", "probation", "tls", "auth", "authio"}
DEV_ID = "dev-1"
KEY = bytes(range(32))
ONCE = {"clientsetup", "start", "config", "strictjson"}


def listener(port=0):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
    srv.settimeout(LIMIT_S)
    return srv


def read_exactly(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        assert chunk, "the device closed during authentication"
        data += chunk
    return data


def admit(conn):
    """The server's side of device authentication: CHALLENGE, the device's AUTH, WELCOME with the proof."""
    snonce = os.urandom(auth.NONCE_SIZE)
    conn.sendall(auth.frame(auth.CHALLENGE, snonce))
    ftype, length = auth.header(read_exactly(conn, 8))
    assert ftype == auth.AUTH, ftype
    welcome = auth_host.verify_auth({DEV_ID.encode(): KEY}, snonce, read_exactly(conn, length))[2]
    conn.sendall(welcome)


@pytest.mark.parametrize("layers", ["plain", "tls", "tls_auth"])
@pytest.mark.parametrize("runtime", ["micropython", "micropython32"])
def test_the_connect_path_leaves_while_connected_and_returns_for_an_outage(runtime, layers, pki, tmp_path):
    require_runtime(runtime)
    srv = listener()
    port = srv.getsockname()[1]
    conf = {"port": port, "beat_ms": 100, "retry_ms": 100, "stats_ms": 0}
    if layers == "tls_auth":
        conf["auth"] = {"id": DEV_ID, "key": KEY.hex()}
    server_tls = None
    secure = layers != "plain"
    if secure:
        conf["tls"] = {"ca": pki.ca_der}
        server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_tls.load_cert_chain(pki.cert, pki.key)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(conf))
    script = tmp_path / "watch.py"
    script.write_text(SCRIPT % {"fw": hostrun.FIRMWARE_DIR, "cfg": str(cfg),
                                "board": os.path.join(ROOT, "boards", "unix", "board.json")})
    child = subprocess.Popen(hostrun.runtime_argv(runtime) + [str(script)], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + LIMIT_S
    seen = {}
    lines = []

    def until(state):
        while state not in seen:
            assert time.monotonic() < deadline, "no `modules %s` line in time:\n%s" % (state, "".join(lines))
            line = child.stdout.readline()
            assert line, "the script ended early:\n%s" % "".join(lines)
            lines.append(line)
            parts = line.split()
            if parts[:1] == ["modules"]:
                seen[parts[1]] = set(parts[2].split(",")) if len(parts) > 2 else set()

    def accept():
        conn, _ = srv.accept()
        conn.settimeout(LIMIT_S)
        # The device's first beat, or its first read of the CHALLENGE, completes its side of the handshake
        # (tls.py): wrapping returns then.
        if server_tls:
            conn = server_tls.wrap_socket(conn, server_side=True)
        if "auth" in conf:
            admit(conn)
        return conn

    try:
        conn = accept()
        until("up")
        srv.close()  # the server is down: from now on every attempt is refused
        conn.close()
        until("down")
        srv = listener(port)
        conn = accept()
        until("again")
        conn.close()
        assert child.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, "".join(lines)
    finally:
        srv.close()
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    assert not seen["up"] & (CONNECT_ONLY | ONCE), seen["up"]
    assert {"dial", "repeats"} <= seen["down"], seen["down"]  # retrying: the connect path and its failure run
    assert not seen["down"] & ONCE, seen["down"]
    assert not seen["again"] & (CONNECT_ONLY | ONCE), seen["again"]
    assert {"client", "compat", "link", "protocol"} <= seen["up"] == seen["again"], seen
    # The control: the optional steps ran on these very connections, with their modules loaded then.
    named = [line.split()[1] for line in lines if len(line.split()) > 1]
    assert named.count("tls_ready") == (2 if secure else 0), "".join(lines)
    assert named.count("authenticated") == (2 if "auth" in conf else 0), "".join(lines)
