"""The board's Wi-Fi station logic, on CPython with a scripted `network` module on a virtual clock."""
import asyncio
import json
import os
import sys

import pytest

from firmware.hbkeep.config import Config
from firmware.hbkeep.events import Events
from support import fake_wlan, vloop
from tools.eventlines import parse_line
from tools.paths import BOARDS_DIR


@pytest.fixture
def wifi(monkeypatch):
    net = fake_wlan.make_module()
    monkeypatch.setitem(sys.modules, "network", net)
    monkeypatch.delitem(sys.modules, "firmware.hbkeep.wifi", raising=False)
    from firmware.hbkeep import wifi as mod

    yield mod, net
    sys.modules.pop("firmware.hbkeep.wifi", None)


def board(name):
    with open(os.path.join(BOARDS_DIR, name, "board.json")) as f:
        return json.load(f)


def run_station(mod, net, board_name, statuses, seconds, connect_errors=()):
    lines = []
    cfg = Config({"wifi": {"ssid": "lab", "password": "hunter2"}})

    async def main():
        st = mod.Station(cfg, board(board_name), Events(write=lines.append))
        st.wlan.statuses = statuses
        st.wlan.connect_errors = list(connect_errors)
        task = asyncio.create_task(st.keep())
        await asyncio.sleep(seconds)
        task.cancel()
        return st

    return vloop.run(main()), lines


def named(lines, event):
    return [x for x in lines if parse_line(x).name == event]


def test_rp2_rejoins_after_the_ap_drops_and_turns_power_saving_off(wifi):
    mod, net = wifi
    got_ip, idle = net.STAT_GOT_IP, net.STAT_IDLE
    st, lines = run_station(mod, net, "rp2_pico_w", [net.STAT_CONNECTING, got_ip, got_ip, idle], 45)
    assert st.wlan.configured == {"pm": 0xA11140}
    # First join, then two rejoins: join_timeout_ms (20 s) after the link went idle, and 20 s after that.
    assert len(st.wlan.connects) == 3
    assert any("wifi status=got_ip ip=192.0.2.7" in x for x in lines)  # from ipconfig("addr4")
    assert any("wifi status=idle" in x for x in lines)


def test_rp2_rejoins_when_status_stays_connecting_after_the_ap_is_lost(wifi):
    # cyw43 can report STAT_CONNECTING (link join) for good after losing the access point.
    mod, net = wifi
    st, lines = run_station(mod, net, "rp2_pico_w", [net.STAT_GOT_IP, net.STAT_CONNECTING], 25)
    assert len(st.wlan.connects) == 2
    rejoin = named(lines, "wifi_rejoin")
    assert rejoin and "status=connecting" in rejoin[0] and "waited_ms=20000" in rejoin[0]


def test_esp32_leaves_rejoining_to_the_port(wifi):
    mod, net = wifi
    st, lines = run_station(mod, net, "esp32", [net.STAT_GOT_IP, net.STAT_CONNECTING], 120)
    assert len(st.wlan.connects) == 1 and st.wlan.disconnects == 0
    assert st.wlan.configured == {}


@pytest.mark.parametrize("board_name", ["esp32", "rp2_pico_w"])
@pytest.mark.parametrize("status", ["STAT_WRONG_PASSWORD", "STAT_NO_AP_FOUND"])
def test_a_refused_join_is_an_event_and_a_slow_growing_retry(wifi, board_name, status):
    mod, net = wifi
    code = getattr(net, status)
    st, lines = run_station(mod, net, board_name, [code], 30 + 60 + 5)
    failed = named(lines, "wifi_failed")
    reason = status[5:].lower()
    # joined at 0, refused: retry after 30 s; refused again at 30: 60 s; again at 90: 120 s.
    assert [x.split(" ", 2)[2] for x in failed] == [
        "reason=%s ssid=lab retry_ms=%d" % (reason, ms) for ms in (30000, 60000, 120000)]
    assert len(st.wlan.connects) == 3
    if board_name == "esp32":
        assert st.wlan.disconnects >= 2  # its own quick retries stopped each time
    assert not any("hunter2" in x for x in lines)


def test_connect_raising_is_an_event_and_a_retry_not_the_end(wifi):
    mod, net = wifi
    err = OSError(-1, "cyw43 join failed")
    st, lines = run_station(mod, net, "esp32", [net.STAT_IDLE], 12, connect_errors=[err])
    assert named(lines, "wifi_error") and "op=connect" in named(lines, "wifi_error")[0]
    # Retried after error_retry_ms (5 s), even on a port that otherwise rejoins by itself; then left to it.
    assert len(st.wlan.connects) == 2


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
