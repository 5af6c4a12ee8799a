# Entry point on every runtime. On a board this file runs at boot with config.json and board.json beside
# it; on the host, tools.hostrun runs `<python> main.py CONFIG BOARD` with firmware/ as the current
# module path.
import sys
from hbkeep import compat
from hbkeep.config import ConfigError, load


def main(config_path="config.json", board_path="board.json"):
    try:
        cfg = load(config_path)
        board = compat.load_json(board_path)
    except ConfigError as e:
        compat.write_line("%s config_error %s" % (compat.ticks_ms(), str(e).replace("\n", " ")))
        return 2
    except (OSError, ValueError) as e:
        compat.write_line("%s board_error path=%s error=%s" % (compat.ticks_ms(), board_path, e))
        return 2
    from hbkeep.client import Client  # imported after the config is known good: less heap on a failed start

    net = compat.Net(board)  # the port's socket answers (errno numbers, write cap) from board.json
    client = Client(cfg, board, net)
    try:
        compat.run(_board_services(client, cfg, board))
    except KeyboardInterrupt:
        client.ev.emit("stopped", "reason", "interrupt")
        client.emit_stats()
    return 0


async def _board_services(client, cfg, board):
    # Wi-Fi and the watchdog exist only on boards; the unix board table turns both off.
    if board.get("wifi") and cfg.wifi_ssid:
        from hbkeep import wifi

        station = wifi.Station(cfg, board, client.ev)
        client.net.link_up = station.up  # no DNS or connect while the station has no IP
        compat.create_task(station.keep())
    if cfg.wdt_ms:
        compat.create_task(_feed_watchdog(cfg, board, client.ev))
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
