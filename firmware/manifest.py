# MicroPython manifest: freezes the firmware into your own MicroPython image. In your board's manifest:
#     include("/path/to/hb-keepalive/firmware/manifest.py")            # the hbkeep package, importable
#     include("/path/to/hb-keepalive/firmware/manifest.py", main=True) # and main.py, boot.py: it starts at boot
# Frozen modules cost no RAM for their bytecode and no flash filesystem space; the board still reads
# config.json and board.json from its filesystem (tools.deploy writes them; see docs/BOARD.md).
options.defaults(main=False)

metadata(description="hb-keepalive: a TCP connection kept alive and honest, with heartbeats", version="0.1.0")

# The modules a board loads, named one by one: the package folder also holds host-only modules
# (_cpython.py, protocol_host.py) that no board needs. The test suite checks this list against the package.
package(
    "hbkeep",
    files=(
        "__init__.py",
        "appio.py",
        "auth.py",
        "authio.py",
        "client.py",
        "clientsetup.py",
        "compat.py",
        "config.py",
        "dial.py",
        "eai.py",
        "events.py",
        "fastbuf.py",
        "led.py",
        "link.py",
        "probation.py",
        "protocol.py",
        "repeats.py",
        "runner.py",
        "servers.py",
        "sntp.py",
        "sockopts.py",
        "start.py",
        "strictjson.py",
        "tls.py",
        "watchdog.py",
        "wdtpark.py",
        "wifi.py",
    ),
)

if options.main:
    module("main.py")
    module("boot.py")  # keeps a running watchdog fed after a soft reset (docs/BOARD.md)
