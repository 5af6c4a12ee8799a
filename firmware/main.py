# What a board runs at boot, with config.json and board.json beside it (hbkeep/runner.py does the work).
# On the host, tools.hostrun runs `<python> main.py CONFIG BOARD` with firmware/ as the current module
# path. For an application of one's own on the link, see docs/APP.md.
import sys
from hbkeep import compat
from hbkeep.runner import main

if __name__ == "__main__":
    # On a board: returns quietly after a config error (a SystemExit would soft-reset into main.py again);
    # on the host: the exit status.
    compat.exit_status(main(*sys.argv[1:3]))
