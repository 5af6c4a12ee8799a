# Runs at every reset, soft resets included -- also the one mpremote does before copying files, after
# which main.py does not run. If the firmware's watchdog survived that soft reset, keep it fed so that the
# board does not reset under the user (hbkeep/wdtpark.py, docs/BOARD.md).
try:
    import sys
    import hbkeep
    from hbkeep import wdtpark

    if not wdtpark.resume():
        # Nothing to keep fed: forget the module, so that it holds no heap while the REPL is in use.
        del sys.modules["hbkeep.wdtpark"]
        del hbkeep.wdtpark
    # boot.py runs in the namespace the REPL and main.py then use: a name left there would hold the
    # module for good. A parked watchdog's timer holds what it needs of it.
    del hbkeep, wdtpark
except Exception as e:  # a half-copied package must not stop the board from reaching the REPL
    print("0 boot_error error=%s:%s" % (type(e).__name__, e))
