"""The board's Wi-Fi station logic, on CPython with a scripted `network` module."""
import asyncio
import json
import os
import sys

import pytest

from firmware.hbkeep.config import Config
from firmware.hbkeep.events import Events
from support import fake_wlan, vloop
from tools.paths import BOARDS_DIR


@pytest.fixture
def wifi(monkeypatch):
    net = fake_wlan.make_module()
    monkeypatch.setitem(sys.modules, "network", net)
    monkeypatch.delitem(sys.modules, "wifi", raising=False)
    from firmware.hbkeep import wifi as mod

    yield mod, net
    sys.modules.pop("wifi", None)


def board(name):
    with open(os.path.join(BOARDS_DIR, name, "board.json")) as f:
        return json.load(f)


def run_station(mod, net, board_name, statuses, seconds):
    lines = []
    cfg = Config({"wifi": {"ssid": "lab", "password": "hunter2"}})

    async def main():
        st = mod.Station(cfg, board(board_name), Events(write=lines.append))
        st.wlan.statuses = statuses
        task = asyncio.create_task(st.keep())
        await asyncio.sleep(seconds)
        task.cancel()
        return st

    return vloop.run(main()), lines


def test_rp2_rejoins_after_the_ap_drops_and_turns_power_saving_off(wifi):
    mod, net = wifi
    got_ip, idle = net.STAT_GOT_IP, net.STAT_IDLE
    st, lines = run_station(mod, net, "rp2_pico_w", [net.STAT_CONNECTING, got_ip, got_ip, idle], 25)
    assert st.wlan.configured == {"pm": 0xA11140}
    # First join, then two rejoins: 10 s and 20 s after the link went idle.
    assert len(st.wlan.connects) == 3
    assert any("wifi status=got_ip ip=192.0.2.7" in x for x in lines)
    assert any("wifi status=idle" in x for x in lines)


def test_esp32_leaves_rejoining_to_the_port(wifi):
    mod, net = wifi
    st, lines = run_station(mod, net, "esp32", [net.STAT_GOT_IP, net.STAT_IDLE], 60)
    assert len(st.wlan.connects) == 1
    assert st.wlan.configured == {}


def test_up_means_got_ip_and_unnamed_statuses_are_reported_by_code(wifi):
    mod, net = wifi
    st, lines = run_station(mod, net, "rp2_pico_w", [2], 1)  # rp2's "joined, no IP" has no name
    assert not st.up()
    assert any("wifi status=code_2" in x for x in lines)
    st.wlan.statuses = [net.STAT_GOT_IP]
    assert st.up()


def test_the_password_is_never_printed(wifi):
    mod, net = wifi
    st, lines = run_station(mod, net, "rp2_pico_w", [net.STAT_WRONG_PASSWORD], 35)
    assert st.wlan.connects[0] == ("lab", "hunter2")
    assert lines and not any("hunter2" in x for x in lines)
    assert any("wifi status=wrong_password" in x for x in lines)
