# Entry point on every runtime. On a board this file runs at boot with config.json and board.json beside
# it; on the host, tools.hostrun runs `<python> main.py CONFIG BOARD` with firmware/ as the current
# module path.
#
# Whatever the config file holds, start-up ends in one `config_error` line (rc 2) or a running client:
# never a traceback. A stop (Ctrl-C, or SIGTERM where the runtime can catch it) ends in `stopped` and the
# final `stats`, rc 0.
import sys
from hbkeep import compat
from hbkeep.config import ConfigError, load


def _fail(kind, text):
    compat.write_line("%s %s %s" % (compat.ticks_ms(), kind, str(text).replace("\n", " ")))
    return 2


def main(config_path="config.json", board_path="board.json"):
    try:
        cfg = load(config_path)
    except ConfigError as e:
        return _fail("config_error", e)
    except Exception as e:  # MemoryError on a tiny heap, or anything the validator did not foresee
        return _fail("config_error", "%s: %s" % (config_path, compat.exc_text(e)))
    try:
        board = compat.load_json(board_path)
    except Exception as e:
        return _fail("board_error", "path=%s error=%s" % (board_path, compat.exc_text(e)))
    try:
        from hbkeep.client import Client  # imported after the config is known good: less heap on a failed start

        client = Client(cfg, board, compat.Net(board))  # the port's socket answers from board.json
    except ValueError as e:  # an unreadable TLS CA file (tls.CaError): named like any config error
        return _fail("config_error", str(e).replace(" ", "_"))
    except MemoryError:
        # The ranges in the config are the protocol's; what fits is the heap's. A buffer that cannot be
        # allocated is the config's fault, and the key that sized it is named.
        compat.collect()
        return _fail("config_error", "%s: %s" % (config_path, buffer_hint(cfg)))
    reason = compat.STOP_INTERRUPT
    try:
        compat.on_terminate()
        compat.run(_board_services(client, cfg, board))
    except KeyboardInterrupt:
        reason = compat.stop_reason()
    final_lines(client, reason)
    return 0


def buffer_hint(cfg):
    # Mirrors Client's sizing: the read buffer and, in framed mode, the decoder's frame buffer.
    need = cfg.rx_buf
    key = "rx_buf"
    if cfg.mode == "framed":
        frame = 8 + cfg.max_payload
        key = "max_payload" if frame >= cfg.rx_buf else "rx_buf"
        need = max(cfg.rx_buf, frame) + frame
    return "%s=%d: buffers of %d bytes do not fit in the heap (%d bytes free); lower %s" % (
        key, getattr(cfg, key), need, compat.mem_free(), key)


def final_lines(client, reason):
    # The interrupt that stopped us may be followed by another (a terminal and a parent both sending
    # SIGINT); it must not cut the last two lines short: each is retried until written.
    compat.ignore_interrupts()
    for line in (0, 1):
        for _ in range(3):
            try:
                if line == 0:
                    client.ev.emit("stopped", "reason", reason)
                else:
                    client.emit_stats()
                break
            except KeyboardInterrupt:
                pass


async def _board_services(client, cfg, board):
    # Wi-Fi and the watchdog exist only on boards; the unix board table turns both off.
    if board.get("wifi") and cfg.wifi_ssid:
        from hbkeep import wifi

        station = wifi.Station(cfg, board, client.ev)
        client.net.link_up = station.up  # no DNS or connect while the station has no IP
        compat.create_task(station.keep())
    if cfg.wdt_ms:
        compat.create_task(_feed_watchdog(cfg, board, client.ev))
    if cfg.tls_ca and board.get("rtc"):
        # Certificate dates are checked against the RTC, which a board starts at its epoch: set it.
        from hbkeep import sntp

        compat.create_task(sntp.keep(cfg.tls_ntp_host, client.ev, lambda: client.net.link_up()))
    await client.run()


async def _feed_watchdog(cfg, board, ev):
    import machine

    limit = board.get("wdt_max_ms")
    ms = cfg.wdt_ms if not limit or cfg.wdt_ms <= limit else limit  # rp2040 raises above 8388 ms
    wdt = machine.WDT(timeout=ms)
    ev.emit("watchdog", "timeout_ms", ms)
    # Fed from the event loop: if anything blocks the loop for longer than the timeout, the board resets.
    while True:
        wdt.feed()
        await compat.sleep_ms(ms // 3)


if __name__ == "__main__":
    # On a board: returns quietly after a config error (a SystemExit would soft-reset into main.py again);
    # on the host: the exit status.
    compat.exit_status(main(*sys.argv[1:3]))
