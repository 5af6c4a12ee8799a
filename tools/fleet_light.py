"""The light fleet: thousands of devices per process that only beat and echo probes (`tools.fleet --light`).

A full simulated device (tools/fleet.py) runs the firmware's whole Client with its tasks per connection,
which caps CPython near 10,000 beats/s on two cores. Here a device is one asyncio Protocol object and one
firmware `Link` (for the same capped, jittered reconnect backoff the firmware uses); no task per device.
One beat task per group of devices writes a HEART to each connected member once per beat period, at a
phase spread over the period; probes (DATA frames) are answered upper-cased, as the firmware does. Enough
to hold ~19,000 devices in one process and to push one server process past its capacity.

With several `--server` addresses a device moves to the next one after a failed attempt or a lost
connection, as the firmware does with its `servers` list. Each worker prints a `fleet_status` line every
--status-ms (connected now, connects and failed attempts so far, and how far behind its schedule the
worst beat group fell since the previous line: a load generator short of CPU shows here), which `make bench-fleet` reads to time
reconnect storms.
"""
import asyncio
import collections
import random
import socket
import sys
import time

from firmware.hbkeep import compat
from firmware.hbkeep.link import Link
from firmware.hbkeep.protocol import DATA, HEADER_SIZE, HEART
from firmware.hbkeep.protocol_host import encode

HEART_FRAME = encode(HEART)
GROUP = 500  # devices per beat task
# Connect attempts in flight per process. A real device has a CPU of its own; simulated ones share one, and
# 15,000 attempts at once would starve the beat tasks for seconds -- the silence would be the simulator's,
# not the network's. Attempts beyond this wait their turn (the kernel's handshake is not the bottleneck).
MAX_CONNECTING = 256
MAX_FRAME = HEADER_SIZE + 65536  # a server sending more than this is broken for our purposes


DEVICES_PER_SOURCE = 500


def loopback_source(index):
    """A loopback source address of its own per DEVICES_PER_SOURCE devices.

    All devices talking to one server address from one source address share one pool of ~28,000 ephemeral
    ports (fewer while old connections sit in TIME_WAIT), and as it fills every connect() spends longer
    searching it. Spreading the sources over 127.0.0.0/8 gives every source its own pool, and every device
    of a test fleet a distinct address, as real devices have."""
    k = index // DEVICES_PER_SOURCE
    return "127.200.%d.%d" % (k // 250, k % 250 + 1)


class Device(asyncio.Protocol):
    __slots__ = ("fleet", "index", "link", "transport", "buf", "server_i", "connecting")

    def __init__(self, fleet, index):
        self.fleet = fleet
        self.index = index
        self.link = Link(fleet.beat_ms, "off", 3, fleet.retry_ms, fleet.backoff_max_ms)
        self.transport = None
        self.buf = b""
        self.server_i = index % len(fleet.servers)  # spread the first connects over the list
        self.connecting = False

    # -- asyncio callbacks -------------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.link.up(compat.ticks_ms())
        self.fleet.connected += 1
        self.fleet.connects += 1

    def data_received(self, data):
        if data == HEART_FRAME:  # by far the most common read: one HEART reply
            self.fleet.hearts_in += 1
            return
        buf = self.buf + data if self.buf else data
        pos = 0
        n = len(buf)
        while n - pos >= HEADER_SIZE:
            ftype = int.from_bytes(buf[pos : pos + 4], "little", signed=True)
            length = int.from_bytes(buf[pos + 4 : pos + 8], "little", signed=True)
            if length < 0 or length > MAX_FRAME or ftype not in (HEART, DATA):
                self.fleet.protocol_errors += 1
                self.transport.abort()
                return
            end = pos + HEADER_SIZE + length
            if end > n:
                break
            if ftype == HEART:
                self.fleet.hearts_in += 1
            else:
                self.transport.write(encode(DATA, bytes(buf[pos + HEADER_SIZE : end]).upper()))
                self.fleet.echoes += 1
            pos = end
        self.buf = buf[pos:] if pos < n else b""

    def connection_lost(self, exc):
        self.transport = None
        self.buf = b""
        self.fleet.connected -= 1
        self.fleet.lost += 1
        self.link.down(compat.ticks_ms())
        self.fleet.schedule(self)

    # -- the fleet's side --------------------------------------------------------------------------

    def beat(self):
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(HEART_FRAME)
            return True
        return False


class LightFleet:
    def __init__(self, servers, count, beat_ms, retry_ms, backoff_max_ms, ramp_s, seed, first_index=0, stride=1):
        self.servers = servers  # [(host, port)], resolved
        self.beat_ms = beat_ms
        self.retry_ms = retry_ms
        self.backoff_max_ms = backoff_max_ms
        self.ramp_s = ramp_s
        self.rng = random.Random(seed)
        # Device numbers are fleet-wide (process p of P holds p, p + P, p + 2P, ...): they pick source addresses.
        self.devices = [Device(self, first_index + i * stride) for i in range(count)]
        self.connected = 0
        self.connects = 0
        self.failures = 0
        self.lost = 0
        self.beats = 0
        self.hearts_in = 0
        self.echoes = 0
        self.protocol_errors = 0
        self.lag = 0.0  # the longest a beat group was behind its schedule since the last status line (s)
        self.loop = None
        self.stopping = False
        self._tasks = set()  # connect attempts in flight
        self._waiting = collections.deque()  # devices due to connect while MAX_CONNECTING are in flight

    def rand_below(self, n):
        return self.rng.randrange(n) if n > 0 else 0

    def schedule(self, dev, delay_ms=None):
        if self.stopping:
            return
        if delay_ms is None:
            if len(self.servers) > 1:
                dev.server_i = (dev.server_i + 1) % len(self.servers)
            delay_ms = dev.link.retry_delay(self.rand_below)
        self.loop.call_later(delay_ms / 1000, self._start_connect, dev)

    def _start_connect(self, dev):
        if self.stopping or dev.connecting or dev.transport is not None:
            return
        dev.connecting = True
        if len(self._tasks) >= MAX_CONNECTING:
            self._waiting.append(dev)  # started as soon as one of the attempts in flight ends
            return
        self._launch(dev)

    def _launch(self, dev):
        t = self.loop.create_task(self._connect(dev))
        self._tasks.add(t)
        t.add_done_callback(self._attempt_done)

    def _attempt_done(self, t):
        self._tasks.discard(t)
        while self._waiting and len(self._tasks) < MAX_CONNECTING and not self.stopping:
            self._launch(self._waiting.popleft())

    async def _connect(self, dev):
        host, port = self.servers[dev.server_i]
        local = (loopback_source(dev.index), 0) if host.startswith("127.") else None
        try:
            await self.loop.create_connection(lambda: dev, host, port, local_addr=local)
        except OSError:
            self.failures += 1
            dev.link.connect_failed()
            dev.connecting = False
            self.schedule(dev)
            return
        dev.connecting = False

    async def _beat_group(self, group, phase_s):
        await asyncio.sleep(phase_s)
        period = self.beat_ms / 1000
        nxt = self.loop.time()
        while True:
            n = 0
            for d in group:
                if d.beat():
                    n += 1
            self.beats += n
            nxt += period
            delay = nxt - self.loop.time()
            if -delay > self.lag:
                self.lag = -delay
            if delay < 0:  # behind: beat on from now rather than in a burst
                nxt = self.loop.time()
                delay = 0
            await asyncio.sleep(delay)

    async def run(self, seconds, status_ms=0, status=None):
        self.loop = asyncio.get_running_loop()
        n = len(self.devices)
        for i, d in enumerate(self.devices):
            self.schedule(d, delay_ms=self.ramp_s * 1000 * i / max(1, n))
        groups = [self.devices[i : i + GROUP] for i in range(0, n, GROUP)]
        period = self.beat_ms / 1000
        beaters = [asyncio.create_task(self._beat_group(g, period * k / max(1, len(groups))))
                   for k, g in enumerate(groups)]
        end = self.loop.time() + seconds
        try:
            if status_ms:
                while self.loop.time() < end:
                    await asyncio.sleep(min(status_ms / 1000, max(0.0, end - self.loop.time())))
                    status(self)
            else:
                await asyncio.sleep(seconds)
        finally:
            self.stopping = True
            for t in beaters:
                t.cancel()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*beaters, *self._tasks, return_exceptions=True)
            for d in self.devices:
                if d.transport is not None:
                    d.transport.abort()
            await asyncio.sleep(0)  # let the transports' connection_lost run
        return self.totals()

    def totals(self):
        return {"beats_sent": self.beats, "connects": self.connects, "attempts": self.connects + self.failures,
                "frames_echoed": self.echoes, "disconnects": self.lost, "errors": self.protocol_errors,
                "connected_at_end": self.connected}


def status_printer(proc):
    def status(fleet):
        sys.stdout.write(
            "%d fleet_status proc=%d connected=%d devices=%d connects=%d failures=%d beats=%d lag_ms=%d\n" % (
                int(time.monotonic() * 1000), proc, fleet.connected, len(fleet.devices), fleet.connects,
                fleet.failures, fleet.beats, int(fleet.lag * 1000)))
        sys.stdout.flush()
        fleet.lag = 0.0
    return status


async def worker_main(spec):
    fleet = LightFleet(spec["servers"], spec["count"], spec["beat_ms"], spec["retry_ms"], spec["backoff_max_ms"],
                       spec["ramp_s"], spec["seed"], spec["first_index"], spec["stride"])
    return await fleet.run(spec["seconds"], spec["status_ms"], status_printer(spec["proc"]))
