"""The firmware's real Client on a scripted network (support/fake_sockets.py) and a virtual clock
(support/vloop.py), with its event lines kept and parsed, for test_client.py and the 24 h soak.

    h = Harness(FakeNet([conn]), beat_ms=100)   # any config keys; stats_ms defaults to 0
    h.start()                                   # inside a coroutine run by vloop.run()
    ev = await h.wait_event("connected")        # an Event (tools.eventlines): ev.ms, ev.name, ev.fields
"""
import asyncio
import json
import os

from firmware.hbkeep.client import Client
from firmware.hbkeep.config import Config
from firmware.hbkeep.events import Events
from tools.eventlines import parse_line
from tools.paths import BOARDS_DIR


def board(name="unix"):
    with open(os.path.join(BOARDS_DIR, name, "board.json")) as f:
        return json.load(f)


class Harness:
    def __init__(self, net, board_name="unix", **cfg):
        cfg.setdefault("stats_ms", 0)
        self.lines = []
        self.net = net
        self.client = Client(Config(cfg), board(board_name), net, Events(write=self._write))
        self.task = None
        self._grew = None  # set on every line: waits wake on output, not on a polling clock

    def _write(self, line):
        self.lines.append(line)
        if self._grew is not None:
            self._grew.set()

    def start(self):
        self.task = asyncio.create_task(self.client.run())

    def events(self, name=None):
        out = [parse_line(x) for x in self.lines]
        return [e for e in out if name is None or e.name == name]

    async def wait_event(self, name, count=1, limit_s=3600):
        # Woken by each new line; the limit is on the virtual clock, which jumps over idle time, so even
        # a wait that runs out costs no real time (a poll every virtual ms would cost minutes).
        loop = asyncio.get_running_loop()
        end = loop.time() + limit_s
        if self._grew is None:
            self._grew = asyncio.Event()
        while len(self.events(name)) < count:
            left = end - loop.time()
            assert left > 0, "no %r event within %ss; lines: %s" % (name, limit_s, self.lines[-10:])
            self._grew.clear()
            try:
                await asyncio.wait_for(self._grew.wait(), left)
            except asyncio.TimeoutError:
                pass
        return self.events(name)[count - 1]
