# main.py for a board that sends a sensor reading over the link every few seconds. Put it on the
# board as main.py in place of the firmware's; config.json, board.json and hbkeep/ stay as they are.
import asyncio

import machine
from hbkeep.runner import main

sensor = machine.ADC(4)  # the RP2040's temperature sensor; on an ESP32 e.g. machine.ADC(machine.Pin(34))
every_ms = 5000


def on_data(payload):
    # DATA frames from the server are commands for us now (no upper-case echo): b"every=MS".
    global every_ms
    text = bytes(payload)  # payload is only valid during this call: copy what you keep
    if text.startswith(b"every="):
        every_ms = int(text[6:])


async def report(client):
    n = 0
    missed = 0
    await client.wait_connected()
    while True:
        line = "n=%d adc=%d every_ms=%d missed=%d" % (n, sensor.read_u16(), every_ms, missed)
        if not await client.send(line.encode()):
            missed += 1  # the link is down: this reading is dropped, nothing piles up in memory
        n += 1
        await asyncio.sleep(every_ms / 1000)


main(app=report, on_data=on_data)
