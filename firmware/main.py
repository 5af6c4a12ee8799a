# What a board runs at boot, with config.json and board.json beside it (hbkeep/runner.py does the work).
# On the host, tools.hostrun runs `<python> main.py CONFIG BOARD` with firmware/ as the current module
# path. For an application of one's own on the link, see docs/APP.md.
import sys
from hbkeep.runner import main

if __name__ == "__main__":
    host_args = sys.argv[1:3]
    rc = main(*host_args)
    # A host run ends with its exit code. On a board main.py just returns, leaving the REPL free:
    # sys.exit there would count as a soft reset and run main.py again.
    if host_args and rc:
        sys.exit(rc)
