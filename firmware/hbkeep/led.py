# The status LED, where the board table names one ("led_pin"; "led_active_low" for an LED wired to the
# supply). Blinking slowly: connecting. Lit: connected. A short dark blink: a beat went out.
# On the Pico W the pin is named "LED" (it hangs off the Wi-Fi chip); machine.Pin takes the name as is.
from .compat import sleep_ms

CONNECTING_MS = 500  # half a period of the slow blink
BLINK_MS = 80  # dark time of a beat's blink
POLL_MS = 100  # how often the LED looks at the client


class StatusLed:
    def __init__(self, board):
        import machine

        self.pin = machine.Pin(board["led_pin"], machine.Pin.OUT)
        self.lit_level = 0 if board.get("led_active_low") else 1
        self.lit = None
        self.set(False)

    def set(self, lit):
        if lit != self.lit:
            self.lit = lit
            self.pin.value(self.lit_level if lit else 1 - self.lit_level)

    async def show(self, client):
        # Polls the client rather than being called by it: the client's paths stay free of LED code.
        stats = client.stats
        beats = stats.beats_sent
        lit = False
        while True:
            if client.sock is None:
                lit = not lit
                self.set(lit)
                await sleep_ms(CONNECTING_MS)
                continue
            if stats.beats_sent != beats:
                beats = stats.beats_sent
                self.set(False)
                await sleep_ms(BLINK_MS)
            self.set(True)
            await sleep_ms(POLL_MS)
