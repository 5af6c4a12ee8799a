"""Test doubles for tools.hbserver tests: a fake device (a tiny client on asyncio streams) and a
recorder of the server's events.

    log = EventLog()                               # pass as HeartbeatServer(on_event=log)
    c = await FakeClient.connect(port, echo=upper) # framed; raw=True for an unframed client
    c.beat(); await c.wait_hearts(1)
    fields = await log.wait("offline", client=c.name)

Everything here waits on asyncio events with deadlines; nothing sleeps to synchronise.
"""
import asyncio

from firmware.hbkeep import protocol
from firmware.hbkeep.protocol_host import encode
from firmware.hbkeep.protocol import DATA, ERROR, FRAME_ASSEMBLED, FRAME_IN_PLACE, HEADER_SIZE, HEART

WAIT = 10.0  # seconds: any single wait that must succeed; generous for a loaded CI machine


def upper(payload):
    return bytes(payload).upper()  # a-z only: C toupper() in the C locale, as the firmware does


class EventLog:
    """Records (loop_time, name, fields) for every server event and lets tests await one."""

    def __init__(self):
        self.events = []
        self._changed = None

    def __call__(self, name, fields):
        try:
            t = asyncio.get_running_loop().time()
        except RuntimeError:
            t = None  # called outside a loop (a test driving the server by hand)
        self.events.append((t, name, dict(fields)))
        if self._changed is not None:
            self._changed.set()

    def of(self, name, **match):
        return [(t, f) for t, n, f in self.events if n == name and _matches(f, match)]

    async def wait(self, name, count=1, timeout=WAIT, **match):
        """Fields of the count-th event `name` whose fields include `match` (past events count)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        async with asyncio.timeout(timeout):
            while True:
                found = self.of(name, **match)
                if len(found) >= count:
                    return found[count - 1][1]
                self._changed.clear()
                await self._changed.wait()

    async def wait_time(self, name, timeout=WAIT, **match):
        """Like wait(), returning (loop_time, fields) of the first match."""
        await self.wait(name, timeout=timeout, **match)
        return self.of(name, **match)[0]


def _matches(fields, match):
    return all(fields.get(k) == v for k, v in match.items())


class FakeClient:
    """A device stand-in on asyncio streams. Framed: decodes what the server sends with the firmware's
    decoder, counts HEARTs, answers DATA with echo(payload) when echo is set. Raw: answers every chunk
    with echo(chunk), one byte per write when split=True (to cut replies across TCP segments)."""

    def __init__(self, reader, writer, echo=None, raw=False, split=False):
        self.reader = reader
        self.writer = writer
        self.echo = echo
        self.raw = raw
        self.split = split
        host, port = writer.get_extra_info("sockname")[:2]
        self.name = "%s:%d" % (host, port)  # what the server calls this client
        self.hearts = 0
        self.data = []  # DATA payloads (framed) or chunks (raw) received
        self.closed = asyncio.get_running_loop().create_future()  # result: "eof" or "reset"
        self._changed = asyncio.Event()
        self._beater = None
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, port, host="127.0.0.1", **kw):
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, **kw)

    def beat(self):
        self.writer.write(encode(HEART))

    def send(self, data):
        self.writer.write(data)

    def start_beating(self, interval_s):
        """Beat every interval_s in the background (a device's beat task) until stop_beating()."""
        async def run():
            while True:
                self.beat()
                await asyncio.sleep(interval_s)  # the device's own pace, not synchronisation
        self._beater = asyncio.create_task(run())

    async def stop_beating(self):
        if self._beater is not None:
            self._beater.cancel()
            await asyncio.gather(self._beater, return_exceptions=True)
            self._beater = None

    async def wait_hearts(self, n, timeout=WAIT):
        await self._wait(lambda: self.hearts >= n, timeout)

    async def wait_data(self, n, timeout=WAIT):
        await self._wait(lambda: len(self.data) >= n, timeout)

    async def wait_closed(self, timeout=WAIT):
        async with asyncio.timeout(timeout):
            return await asyncio.shield(self.closed)

    async def _wait(self, cond, timeout):
        async with asyncio.timeout(timeout):
            while not cond():
                self._changed.clear()
                await self._changed.wait()

    async def close(self):
        await self.stop_beating()
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass
        await asyncio.gather(self._task, return_exceptions=True)

    async def _read(self):
        dec = protocol.Decoder(1 << 16)
        try:
            while True:
                try:
                    chunk = await self.reader.read(65536)
                except (ConnectionResetError, BrokenPipeError):
                    self._finish("reset")
                    return
                if not chunk:
                    self._finish("eof")
                    return
                if self.raw:
                    self.data.append(chunk)
                    if self.echo is not None:
                        self._write_reply(self.echo(chunk))
                else:
                    self._frames(dec, chunk)
                self._changed.set()
        finally:
            self._finish("eof")

    def _frames(self, dec, chunk):
        pos = 0
        while pos < len(chunk):
            pos = dec.feed(chunk, pos, len(chunk))
            if dec.event == FRAME_IN_PLACE:
                body, off = chunk, dec.start + HEADER_SIZE
            elif dec.event == FRAME_ASSEMBLED:
                body, off = dec.frame, HEADER_SIZE
            elif dec.event == ERROR:
                raise AssertionError("the server sent a broken frame: %s %s %s"
                                     % (dec.error_field, dec.error_value, dec.error_reason))
            else:
                continue
            if dec.type == HEART:
                self.hearts += 1
            else:
                payload = bytes(body[off : off + dec.length])
                self.data.append(payload)
                if self.echo is not None:
                    self._write_reply(encode(DATA, self.echo(payload)))

    def _write_reply(self, data):
        if self.writer.is_closing():
            return
        if self.split:
            for i in range(len(data)):
                self.writer.write(data[i : i + 1])
        else:
            self.writer.write(data)

    def _finish(self, how):
        if not self.closed.done():
            self.closed.set_result(how)
        self._changed.set()
