"""Shared pieces of the TLS and authentication tests: certificates made fresh in a temporary directory
(tools.certs, the command the docs give), key files, a device written in plain asyncio for server-side
tests, and a scripted auth server for device-side ones."""
import asyncio
import json
import os
import socket
import ssl
import threading

import pytest

from firmware.hbkeep import auth
from firmware.hbkeep.auth import CHALLENGE, DeviceAuth
from tools import certs

KEY = bytes(range(32))
KEY_HEX = KEY.hex()
OTHER_KEY = bytes(range(1, 33))


class Pki:
    def __init__(self, root):
        self.root = root
        self.ca_dir = os.path.join(root, "ca")
        self.ca_pem, self.ca_der, _ = certs.make_ca(self.ca_dir)
        # The names loopback tests connect with: "localhost" checked against 127.0.0.1.
        self.cert, self.key = certs.make_server(self.ca_dir, ["localhost", "127.0.0.1"], self.ca_dir)
        self.old_cert, self.old_key = certs.make_server(self.ca_dir, ["localhost"], self.ca_dir, expired=True,
                                                        stem="expired")
        other = os.path.join(root, "other")
        self.other_ca_pem = certs.make_ca(other, name="someone else's CA")[0]

    def server_args(self, expired=False):
        if expired:
            return ["--tls-cert", self.old_cert, "--tls-key", self.old_key]
        return ["--tls-cert", self.cert, "--tls-key", self.key]

    def client_context(self):
        ctx = ssl.create_default_context(cafile=self.ca_pem)
        return ctx


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return Pki(str(tmp_path_factory.mktemp("pki")))


def write_keys(path, keys):
    with open(path, "w") as f:
        json.dump({k: (v.hex() if isinstance(v, bytes) else v) for k, v in keys.items()}, f)
    return str(path)


# -- a device in plain asyncio, for the server's side -------------------------------------------------------

async def open_device(port, ssl_ctx=None, host="127.0.0.1"):
    return await asyncio.wait_for(asyncio.open_connection(
        host, port, ssl=ssl_ctx, server_hostname="localhost" if ssl_ctx else None), 5)


async def authenticate(reader, writer, dev_id="dev-1", key=KEY):
    """Read CHALLENGE, answer AUTH, check WELCOME. Returns the AUTH frame sent."""
    challenge = await asyncio.wait_for(reader.readexactly(24), 5)
    dev = DeviceAuth(dev_id, key)
    frame = bytes(dev.answer(challenge))
    writer.write(frame)
    welcome = await asyncio.wait_for(reader.readexactly(40), 5)
    dev.check_welcome(welcome)
    return frame


async def closed_by_peer(reader, timeout=5):
    """True once the server has closed the connection (EOF or reset), within timeout."""
    try:
        while await asyncio.wait_for(reader.read(4096), timeout):
            pass
    except (ConnectionError, ssl.SSLError):
        pass
    return True


# -- a scripted server for the device's side ------------------------------------------------------------

class ScriptedAuthServer:
    """One-thread loopback server: for each connection sends CHALLENGE, reads the AUTH frame, and
    answers with `reply(auth_payload, snonce)` (bytes to send; None: send nothing and hold the line).
    Records every byte received before its reply, to check the device sent nothing else."""

    def __init__(self, reply, key=KEY):
        self.reply = reply
        self.key = key
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received = []  # bytes received per connection, up to the reply
        self.conns = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(c)
            c.settimeout(5)
            try:
                snonce = os.urandom(16)
                c.sendall(auth.frame(CHALLENGE, snonce))
                head = self._exactly(c, 8)
                length = int.from_bytes(head[4:], "little", signed=True)
                payload = self._exactly(c, length)
                self.received.append(head + payload)
                out = self.reply(payload, snonce)
                if out:
                    c.sendall(out)
            except (OSError, ValueError):
                pass

    @staticmethod
    def _exactly(c, n):
        b = b""
        while len(b) < n:
            chunk = c.recv(n - len(b))
            if not chunk:
                raise ValueError("closed")
            b += chunk
        return b

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        for c in self.conns:
            c.close()
