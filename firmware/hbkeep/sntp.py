# The board's clock for TLS: a board starts with its RTC at the port's epoch, and mbedTLS checks the
# server certificate's validity dates against that clock, so before the first sync every certificate is
# "not yet valid" (connect_failed reason=tls_not_yet_valid). With TLS on, on boards whose table says
# "rtc": true, main.py runs keep() beside the client: one SNTP query (RFC 4330) until it succeeds.
#
# Non-blocking throughout, unlike the ntptime module (a blocking socket with a timeout): the query waits
# on asyncio's poller, so the watchdog feeder and the client keep running. Imported only when TLS is on.
import errno
import socket

from . import compat

NTP_PORT = 123
_TO_1970 = 2208988800  # seconds from 1900 (NTP's epoch) to 1970


def request():
    # LI 0, version 4, mode 3 (client); the rest zero.
    b = bytearray(48)
    b[0] = 0x23
    return b


def parse(reply):
    """Seconds since 1970 from a server reply's transmit timestamp; ValueError for anything else."""
    if len(reply) < 48 or reply[0] & 0x07 != 4:  # mode 4: server
        raise ValueError("not an SNTP server reply")
    if reply[1] == 0:  # stratum 0: a kiss-of-death, no time in it
        raise ValueError("SNTP kiss-of-death")
    secs = (reply[40] << 24) | (reply[41] << 16) | (reply[42] << 8) | reply[43]
    if secs == 0:
        raise ValueError("SNTP reply without a time")
    return secs - _TO_1970


async def query(addr, timeout_ms):
    """One SNTP exchange with addr (a getaddrinfo sockaddr); seconds since 1970."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        s.sendto(request(), addr)
        return await compat.wait_for_ms(_reply(s), timeout_ms)
    finally:
        s.close()


async def _reply(s):
    while True:
        try:
            return parse(s.recv(64))
        except OSError as e:
            if e.args[0] != errno.EAGAIN:
                raise
        await compat.wait_readable(s)


def set_rtc(unix_seconds):
    """Board only: set the RTC from seconds since 1970, whatever the port's epoch (1970 or 2000)."""
    import time
    import machine

    epoch = time.gmtime(0)[0]
    t = time.gmtime(unix_seconds - (946684800 if epoch == 2000 else 0))
    # RTC.datetime takes (year, month, day, weekday, hours, minutes, seconds, subseconds).
    machine.RTC().datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0))


async def keep(host, ev, link_up, set_clock=set_rtc, port=NTP_PORT, retry_ms=5000, timeout_ms=2000):
    """Query until one answer sets the clock, then return. Resolves the name only while the link is up,
    and only until it has an address (getaddrinfo blocks on every port)."""
    addr = None
    while True:
        if link_up():
            try:
                if addr is None:
                    addr = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0][-1]
                secs = await query(addr, timeout_ms)
                set_clock(secs)
                ev.emit("clock_set", "source", "sntp", "server", host, "unix_s", secs)
                return secs
            except compat.TimeoutError:
                ev.emit("clock_failed", "server", host, "error", "timeout")
            except (OSError, ValueError) as e:
                ev.emit("clock_failed", "server", host, "error",
                        compat.errno_name(e) if isinstance(e, OSError) else str(e))
        await compat.sleep_ms(retry_ms)
