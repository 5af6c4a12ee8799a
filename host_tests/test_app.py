"""The client as a library (docs/APP.md): a handler for received DATA payloads, send() for frames of
the application's own, waiting for "connected". CPython on a virtual clock with a scripted network;
the example application of the docs then runs as main.py on both runtimes against a loopback server."""
import asyncio
import json
import os
import re
import signal

import pytest

from support import frames
from firmware.hbkeep import compat, protocol
from firmware.hbkeep.protocol_host import encode
from firmware.hbkeep.client import Client
from firmware.hbkeep.config import Config
from firmware.hbkeep.events import Events
from support.fwproc import FwProc
from support.frames import DATA
from support.scripted_server import ScriptedServer
from support import fake_machine, vloop
from support.fake_sockets import FakeConn, FakeNet
from tools.paths import BOARDS_DIR, FIRMWARE_DIR

REPO = os.path.dirname(FIRMWARE_DIR)
EXAMPLE = os.path.join(REPO, "docs", "examples", "sensor_main.py")


def board(name="unix"):
    with open(os.path.join(BOARDS_DIR, name, "board.json")) as f:
        return json.load(f)


class Harness:
    def __init__(self, plans, **cfg):
        cfg.setdefault("stats_ms", 0)
        self.lines = []
        self.net = FakeNet(plans)
        self.client = Client(Config(cfg), board(), self.net, Events(write=self.lines.append))
        self.task = None

    def start(self):
        self.task = asyncio.create_task(self.client.run())

    def names(self):
        return [x.split(" ")[1] for x in self.lines]


def frames_of(data):
    out, err, leftover = frames.decode(bytes(data))
    assert err is None and leftover == 0, "a torn or broken stream: %s, %d bytes left" % (err, leftover)
    return out


def data_frames(conn):
    return [p for t, p in frames_of(conn.tx) if t == protocol.DATA]


def test_send_while_down_returns_false_at_once_and_queues_nothing():
    async def main():
        conn = FakeConn()
        h = Harness([conn])
        h.net.up = False  # no network: the client does not even try
        h.start()
        await asyncio.sleep(0.5)
        t0 = compat.ticks_ms()
        assert await h.client.send(b"reading 1") is False
        assert compat.ticks_ms() == t0  # no waiting
        h.net.up = True
        await h.client.wait_connected()
        await asyncio.sleep(1)
        assert data_frames(conn) == []  # nothing was kept for later
        assert await h.client.send(b"reading 2") is True
        assert data_frames(conn) == [b"reading 2"] and h.client.stats.app_tx == 1

    vloop.run(main())


def test_sent_frames_never_interleave_with_beats_or_echoes():
    async def main():
        conn = FakeConn(read_max=5, write_max=3)  # every write is cut into pieces
        h = Harness([conn], beat_ms=20)
        h.start()
        await h.client.wait_connected()
        mine = [b"app %02d " % i * (i + 1) for i in range(20)]
        echoed = [b"echo %02d" % i for i in range(20)]

        async def sender():
            for p in mine:
                assert await h.client.send(p) is True

        async def server():
            for p in echoed:
                conn.send(encode(protocol.DATA, p))
                await asyncio.sleep(0.007)

        await asyncio.gather(sender(), server())
        await conn.wait_tx(sum(8 + len(p) for p in mine + echoed))
        got = frames_of(conn.tx)  # a torn frame fails here
        data = [p for t, p in got if t == protocol.DATA]
        assert [p for p in data if p.startswith(b"app")] == mine
        assert [p for p in data if p.startswith(b"ECHO")] == [p.upper() for p in echoed]
        assert sum(1 for t, _ in got if t == protocol.HEART) >= 3

    vloop.run(main())


def test_a_send_cut_by_the_end_of_the_connection_returns_false_and_the_next_one_goes_out():
    async def main():
        first, second = FakeConn(), FakeConn()
        h = Harness([first, second], beat_ms=100, peer_miss=3)
        h.start()
        await h.client.wait_connected()
        first.block_writes()  # the server stops reading: the client declares a stall
        assert await h.client.send(b"x" * 500) is False
        assert "disconnected" in h.names()
        await h.client.wait_connected()
        assert await h.client.send(b"after") is True
        assert data_frames(second) == [b"after"]

    vloop.run(main())


def test_a_cancelled_sender_still_finishes_its_frame():
    async def main():
        conn = FakeConn(write_max=4)
        h = Harness([conn], beat_ms=50)
        h.start()
        await h.client.wait_connected()
        conn.block_writes()
        task = asyncio.create_task(h.client.send(b"y" * 40))
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.sleep(0.01)
        conn.unblock_writes()
        await conn.wait_tx(48)
        await asyncio.sleep(0.2)
        assert b"y" * 40 in data_frames(conn)

    vloop.run(main())


def test_a_payload_over_max_payload_is_refused_with_a_clear_error():
    async def main():
        h = Harness([FakeConn()], max_payload=16)
        h.start()
        await h.client.wait_connected()
        with pytest.raises(ValueError, match="17 bytes is over max_payload=16"):
            await h.client.send(b"z" * 17)

    vloop.run(main())


def test_the_handler_gets_every_payload_whole_and_nothing_is_echoed():
    async def main():
        conn = FakeConn(read_max=7)  # frames split across reads: assembled before the handler sees them
        h = Harness([conn], beat_ms=1000)
        got = []
        h.client.on_data = lambda payload: got.append(bytes(payload))
        h.start()
        await h.client.wait_connected()
        sent = [b"cmd %d" % i * 3 for i in range(10)]
        conn.send(b"".join(encode(protocol.DATA, p) for p in sent) + encode(protocol.HEART))
        await asyncio.sleep(0.5)
        assert got == sent
        assert data_frames(conn) == []  # no echo
        assert h.client.stats.app_rx == 10 and h.client.stats.hearts_received == 1

    vloop.run(main())


def test_a_failing_handler_costs_that_payload_only():
    async def main():
        conn = FakeConn()
        h = Harness([conn])
        got = []

        def handler(payload):
            if bytes(payload) == b"bad":
                raise ValueError("cannot parse")
            got.append(bytes(payload))

        h.client.on_data = handler
        h.start()
        await h.client.wait_connected()
        for p in (b"one", b"bad", b"two"):
            conn.send(encode(protocol.DATA, p))
        await asyncio.sleep(0.1)
        assert got == [b"one", b"two"]
        err = [x for x in h.lines if " app_error " in x]
        assert len(err) == 1 and "where=on_data error=ValueError:_cannot_parse" in err[0]
        assert "disconnected" not in h.names()

    vloop.run(main())


def test_raw_mode_sends_plain_bytes_and_hands_over_what_each_read_brought():
    async def main():
        conn = FakeConn()
        h = Harness([conn], mode="raw")
        got = []
        h.client.on_data = lambda b: got.append(bytes(b))
        h.start()
        await h.client.wait_connected()
        conn.send(b"hello")
        await asyncio.sleep(0.01)
        assert await h.client.send(b"t=21.5\n") is True
        await asyncio.sleep(0.01)
        assert got == [b"hello"] and bytes(conn.tx) == b"t=21.5\n"

    vloop.run(main())


# -- the example application of docs/APP.md, as main.py on both runtimes ------------------------
def test_the_docs_show_the_example_as_it_is_tested():
    with open(os.path.join(REPO, "docs", "APP.md")) as f:
        doc = f.read()
    with open(EXAMPLE) as f:
        code = f.read()
    block = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    assert block == code


def readings(conn, n, timeout=20):
    out = []
    while len(out) < n:
        ftype, payload = conn.recv_frame(timeout)
        if ftype == DATA:
            out.append(dict(f.split("=") for f in payload.decode().split(" ")))
    return out


def test_example_app_sends_readings_takes_commands_and_misses_while_down(any_runtime, tmp_path):
    # peer_timeout off: this server never answers beats, and once it has spoken (a command) "auto"
    # would judge its silence.
    cfg_extra = {"beat_ms": 100, "stats_ms": 0, "retry_ms": 50, "peer_timeout": "off"}
    b = board()

    def argv(config, board_path):
        # As a board runs main.py: no arguments, config.json and board.json in the current directory.
        os.replace(config, str(tmp_path / "config.json"))
        os.replace(board_path, str(tmp_path / "board.json"))
        with open(EXAMPLE) as f:
            example = f.read()
        assert "every_ms = 5000\n" in example
        app = tmp_path / "main.py"
        app.write_text(example.replace("every_ms = 5000\n", "every_ms = 300\n"))  # a quicker test
        code = ("import sys; del sys.argv[1:]; sys.path.insert(0, %r); sys.path.insert(0, %r); "
                "import os; os.chdir(%r); exec(open('main.py').read())"
                % (FIRMWARE_DIR, fake_machine.BOARD_SHIM_DIR, str(tmp_path)))
        return ["-c", code]

    with ScriptedServer() as srv:
        cfg = dict(cfg_extra, port=srv.port)
        with FwProc(any_runtime, cfg, board_table=b, argv=argv) as fw:
            conn = srv.accept(timeout=20)
            first = readings(conn, 2)
            assert [r["n"] for r in first] == ["0", "1"] and first[0]["every_ms"] == "300"
            assert first[0]["adc"] == "1234"
            conn.send_frame(DATA, b"every=100")
            r = readings(conn, 1)[0]
            while r["every_ms"] != "100":
                r = readings(conn, 1)[0]
            # The command was the application's: it was not echoed back upper-cased.
            assert not any(e.name == "echo" for e in fw.events)
            # The server goes away for a while: readings are missed, not queued.
            srv.stop_listening()
            conn.close()
            fw.wait_event("disconnected", timeout=10)
            fw.wait_event("connect_failed", timeout=10)
            fw.wait_event("connect_failed", timeout=10)
            srv.listen()
            conn = srv.accept(timeout=20)
            back = readings(conn, 1)[0]
            assert int(back["missed"]) >= 1 and int(back["n"]) > int(r["n"])
