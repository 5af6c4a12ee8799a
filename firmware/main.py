# Entry point on every runtime. On a board this file runs at boot with config.json and board.json beside
# it; on the host, tools.hostrun runs `<python> main.py CONFIG BOARD` with firmware/ as the current
# module path.
import sys
import compat
from config import ConfigError, load


def main(config_path="config.json", board_path="board.json"):
    try:
        cfg = load(config_path)
        board = compat.load_json(board_path)
    except ConfigError as e:
        compat.write_line("%d config_error %s" % (compat.ticks_ms(), str(e).replace("\n", " ")))
        return 2
    except (OSError, ValueError) as e:
        compat.write_line("%d board_error path=%s error=%s" % (compat.ticks_ms(), board_path, e))
        return 2
    from client import Client  # imported after the config is known good: less heap on a failed start

    net = compat.Net()
    if board.get("wifi"):
        import wifi

        wifi.attach(net, cfg, board)
    client = Client(cfg, board, net)
    try:
        compat.run(client.run())
    except KeyboardInterrupt:
        client.ev.emit("stopped", "reason", "interrupt")
        client.emit_stats()
    return 0


if __name__ == "__main__":
    rc = main(*sys.argv[1:3])
    if rc:
        sys.exit(rc)
