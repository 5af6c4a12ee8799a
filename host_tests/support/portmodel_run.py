# The firmware's real client and Wi-Fi station against a port model (host_tests/support/portmodel.py), on any
# runtime (MicroPython unix 64/32-bit, CPython):
#
#     <python> host_tests/support/portmodel_run.py REPO PORT [old_poll]
#
# PORT is esp32 or rp2; the board table is boards/esp32 or boards/rp2_pico_w. Each scenario prints
#     scenario NAME
#     <the firmware's event lines>
#     model key=value ...        (the model's counters: what the firmware made the "port" do)
# and the script ends with "done". Assertions live in host_tests/test_portmodel.py; this only plays the
# server and the access point, with bounded waits (a scenario that hangs prints "model ... hung=1").
import sys

REPO = sys.argv[1]
PORT = sys.argv[2]
OLD_POLL = len(sys.argv) > 3 and sys.argv[3] == "old_poll"
sys.path.insert(0, REPO + "/firmware")
sys.path.insert(0, REPO + "/host_tests/support")

import asyncio  # noqa: E402  (imported before the stand-ins replace socket and errno: CPython's asyncio needs the real ones)
import json  # noqa: E402

import portmodel  # noqa: E402

world = portmodel.World(PORT, OLD_POLL)
sys.modules["socket"] = portmodel.make_socket_module(world)
sys.modules["errno"] = portmodel.make_errno(PORT)
sys.modules["network"] = portmodel.make_network_module(world)
sys.modules["machine"] = portmodel.make_machine_module(PORT)

from hbkeep import compat  # noqa: E402
from hbkeep import protocol  # noqa: E402
from hbkeep.protocol_host import encode  # noqa: E402  (host-only frame builder; runs on MicroPython too)
from hbkeep.client import Client  # noqa: E402
from hbkeep.config import Config  # noqa: E402
from hbkeep.events import Events  # noqa: E402
from hbkeep import wifi  # noqa: E402

BOARD = {"esp32": "esp32", "rp2": "rp2_pico_w"}[PORT]
with open(REPO + "/boards/" + BOARD + "/board.json") as f:
    board = json.load(f)

HEART = encode(protocol.HEART)
LIMIT_MS = 8000  # per scenario: a firmware that never gets there fails fast, by name


def out(line):
    print(line)


class ModelNet(compat.LwipNet):
    # On MicroPython the real poller waits on the model sockets (they are io.IOBase streams with an ioctl).
    # CPython's asyncio polls file descriptors only, so there the wait is a poll of the same ioctl.
    if not compat.MICROPYTHON:

        async def wait_readable(self, sock):
            while not sock.ioctl(portmodel.POLL, portmodel.RD):
                await asyncio.sleep(0.002)

        async def wait_writable(self, sock):
            while not sock.ioctl(portmodel.POLL, portmodel.WR):
                await asyncio.sleep(0.002)


def report(**kw):
    keys = sorted(kw)
    out("model " + " ".join("%s=%s" % (k, kw[k]) for k in keys))


def counters():
    return dict(
        sockets=len(world.sockets), open=len([s for s in world.sockets if s.state != portmodel.CLOSED]),
        ealready=world.ealready, errmem_blocks=world.errmem_blocks, max_write=world.max_write,
        max_queued=world.max_queued, dns=world.dns_lookups, dns_without_ip=world.dns_without_ip,
        connects_without_ip=world.connects_without_ip, warnings=len(world.warnings),
    )


class Run:
    def __init__(self, name, plans, wifi_on=False, **cfg):
        out("scenario " + name)
        world.plans = list(plans)
        world.sockets = []
        world.ealready = world.errmem_blocks = world.max_write = world.max_queued = 0
        world.dns_lookups = world.dns_without_ip = world.connects_without_ip = 0
        world.ap_present = True
        world.station = None
        conf = {"host": "hb.example", "port": 39002, "beat_ms": 100, "retry_ms": 50, "connect_timeout_ms": 300,
                "stats_ms": 0}
        if wifi_on:
            conf["wifi"] = {"ssid": "lab", "password": "hunter2"}
        conf.update(cfg)
        self.cfg = Config(conf)
        self.lines = []
        self.ev = Events(write=self._line)
        self.client = Client(self.cfg, board, ModelNet(board, PORT), self.ev)
        self.station = None
        self.tasks = []
        if wifi_on:
            self.station = wifi.Station(self.cfg, board, self.ev)
            self.station.poll_ms = 20
            self.station.join_timeout_ms = 400
            self.station.wrong_retry_ms = 300
            self.station.wrong_retry_max_ms = 1200
            self.client.net.link_up = self.station.up
            self.tasks.append(compat.create_task(self.station.keep()))
        self.tasks.append(compat.create_task(self.client.run()))
        self.t0 = compat.ticks_ms()

    def _line(self, s):
        self.lines.append(s)
        out(s)

    def count(self, name):
        n = 0
        for s in self.lines:
            if s.split(" ")[1] == name:
                n += 1
        return n

    async def until(self, cond, what):
        while not cond():
            if compat.ticks_diff(compat.ticks_ms(), self.t0) > LIMIT_MS:
                out("hung waiting_for=" + what)
                return False
            await compat.sleep_ms(5)
        return True

    async def event(self, name, n=1):
        return await self.until(lambda: self.count(name) >= n, name)

    def sock(self):
        return world.sockets[-1]

    def stop(self, **extra):
        for t in self.tasks:
            t.cancel()
        c = counters()
        c.update(extra)
        report(**c)


async def beats_in(sock, n):
    # The server reads until it has n HEART frames from the board.
    got = bytearray()
    t0 = compat.ticks_ms()
    while got.count(HEART) < n and compat.ticks_diff(compat.ticks_ms(), t0) < LIMIT_MS:
        got += sock.take()
        await compat.sleep_ms(10)
    return got.count(HEART)


async def connect_and_beat():
    r = Run("connect_beat", [portmodel.ACCEPT])
    if await r.event("connected"):
        s = r.sock()
        beats = await beats_in(s, 2)
        s.send(encode(protocol.DATA, b"mixed Case"))
        echoed = bytearray()
        await r.until(lambda: echoed.extend(s.take()) or encode(protocol.DATA, b"MIXED CASE") in echoed,
                      "echo")
        r.stop(beats=beats, echo=int(encode(protocol.DATA, b"MIXED CASE") in echoed))
    else:
        r.stop()
    await compat.sleep_ms(20)


async def refused():
    r = Run("refused", [portmodel.REFUSE, portmodel.ACCEPT])
    await r.event("connected")
    r.stop()
    await compat.sleep_ms(20)


async def timeout():
    r = Run("timeout", [portmodel.HANG, portmodel.ACCEPT])
    await r.event("connected")
    r.stop()
    await compat.sleep_ms(20)


async def reset():
    r = Run("reset", [portmodel.ACCEPT, portmodel.ACCEPT])
    if await r.event("connected"):
        await beats_in(r.sock(), 1)
        r.sock().reset()
        await r.event("connected", 2)
    r.stop()
    await compat.sleep_ms(20)


async def full_send_buffer():
    # The server sends and stops reading: the board's echoes fill lwIP's send buffer and block.
    r = Run("full_send_buffer", [portmodel.ACCEPT], max_payload=1024)
    if await r.event("connected"):
        s = r.sock()
        s.acking = False
        frame = encode(protocol.DATA, b"x" * 1000)
        for _ in range(12):
            s.send(frame)
        await r.event("disconnected")
    r.stop()
    await compat.sleep_ms(20)


async def unanswered_beats():
    # Nothing comes back and nothing is acknowledged (a dead path), with silence judging off: only the
    # port's write budget stands between the beats and rp2's 10 s block inside write().
    r = Run("unanswered_beats", [portmodel.ACCEPT], peer_timeout="off", beat_ms=20)
    if await r.event("connected"):
        s = r.sock()
        s.acking = False
        await r.until(lambda: r.client.stats.beats_sent + r.client.stats.beats_skipped >= 60, "60 beats due")
    r.stop(beats_sent=r.client.stats.beats_sent, beats_skipped=r.client.stats.beats_skipped)
    await compat.sleep_ms(20)


async def server_beats(r):
    # The server beats too (as tools.hbserver does), so the board has something to judge silence by.
    while True:
        if world.sockets:
            s = world.sockets[-1]
            if s.state == portmodel.CONNECTED and not s.dead:
                s.send(HEART)
        await compat.sleep_ms(r.cfg.beat_ms)


async def ap_loss_and_return():
    r = Run("ap_loss", [portmodel.ACCEPT, portmodel.ACCEPT, portmodel.ACCEPT], wifi_on=True)
    r.tasks.append(compat.create_task(server_beats(r)))
    if await r.event("connected"):
        await beats_in(r.sock(), 1)
        world.ap_present = False
        r.sock().dead = True
        await r.event("disconnected")
        # No IP: no DNS and no connect attempts, however long it lasts.
        attempts = r.client.stats.attempts
        await compat.sleep_ms(600)
        held = r.client.stats.attempts == attempts
        world.ap_present = True
        if await r.event("connected", 2):
            beats = await beats_in(r.sock(), 1)
            r.stop(held=int(held), beats_after=beats, wlan_connects=world.station.connects)
            await compat.sleep_ms(20)
            return
    r.stop()
    await compat.sleep_ms(20)


async def wrong_password():
    # The access point refuses the key: an event, a slow growing retry, and no DNS or connect meanwhile;
    # once the key is right (the user fixed the AP), the station joins and the client connects.
    world.station = None
    r = Run("wrong_password", [portmodel.ACCEPT], wifi_on=True)
    world.station.password_ok = False
    await r.event("wifi_failed", 3)
    attempts = r.client.stats.attempts
    world.station.password_ok = True
    await r.event("connected")
    r.stop(attempts_while_refused=attempts, wlan_connects=world.station.connects,
           wlan_disconnects=world.station.disconnects)
    await compat.sleep_ms(20)


async def main():
    for scenario in (connect_and_beat, refused, timeout, reset, full_send_buffer, unanswered_beats,
                     ap_loss_and_return, wrong_password):
        await scenario()
    out("done")


compat.run(main())
