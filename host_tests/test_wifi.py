"""The board's Wi-Fi station logic, on CPython with a scripted `network` module on a virtual clock."""
import asyncio
import sys

import pytest

from firmware.hbkeep.config import Config
from firmware.hbkeep.events import Events
from support import fake_wlan, vloop
from support.boards import board
from tools.eventlines import parse_line


@pytest.fixture
def wifi(monkeypatch):
    net = fake_wlan.make_module()
    monkeypatch.setitem(sys.modules, "network", net)
    monkeypatch.delitem(sys.modules, "firmware.hbkeep.wifi", raising=False)
    from firmware.hbkeep import wifi as mod

    yield mod, net
    sys.modules.pop("firmware.hbkeep.wifi", None)


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


def test_a_raw_esp32_code_its_table_names_is_a_refusal_there_and_not_on_rp2(wifi):
    # esp32's status() passes ESP-IDF's 211 (no access point within the auth-mode threshold) through
    # unnamed; its board table names it as a refusal. The same number on rp2, whose table lists none, is
    # just an unnamed status: rejoined every join_timeout_ms as before.
    mod, net = wifi
    st, lines = run_station(mod, net, "esp32", [211], 30 + 60 + 5)
    failed = named(lines, "wifi_failed")
    assert [x.split(" ", 2)[2] for x in failed] == [
        "reason=no_ap_authmode_threshold ssid=lab retry_ms=%d" % ms for ms in (30000, 60000, 120000)]
    assert len(st.wlan.connects) == 3 and st.wlan.disconnects >= 2  # its own quick retries stopped
    assert any("wifi status=no_ap_authmode_threshold" in x for x in lines)
    assert not any("code_211" in x for x in lines)

    st, lines = run_station(mod, net, "rp2_pico_w", [211], 30 + 60 + 5)
    assert not named(lines, "wifi_failed")
    assert any("wifi status=code_211" in x for x in lines)
    assert len(st.wlan.connects) == 5  # at 0, 20, 40, 60 and 80 s


@pytest.mark.parametrize("code, name", [
    (210, "no_ap_compatible_security"), (211, "no_ap_authmode_threshold"), (212, "no_ap_rssi_threshold")])
def test_esp32_names_each_raw_refusal_code_in_its_events(wifi, code, name):
    mod, net = wifi
    st, lines = run_station(mod, net, "esp32", [net.STAT_CONNECTING, code], 5)
    assert [x.split(" ", 2)[2] for x in named(lines, "wifi")] == ["status=connecting", "status=" + name]
    assert [x.split(" ", 2)[2] for x in named(lines, "wifi_failed")] == ["reason=%s ssid=lab retry_ms=30000" % name]


def test_the_raw_refusal_codes_are_the_board_tables_not_the_modules(wifi):
    # A code is a refusal because the table lists it: another table, another code, and 211 no longer one.
    mod, net = wifi
    lines = []
    cfg = Config({"wifi": {"ssid": "lab", "password": "hunter2"}})

    async def main():
        st = mod.Station(cfg, board("esp32", wifi_refusals={"950": "lab_refusal"}), Events(write=lines.append))
        st.wlan.statuses = [211, 950]
        task = asyncio.create_task(st.keep())
        await asyncio.sleep(2)
        task.cancel()

    vloop.run(main())
    assert [x.split(" ", 2)[2] for x in named(lines, "wifi")] == ["status=code_211", "status=lab_refusal"]
    assert [x.split(" ", 2)[2] for x in named(lines, "wifi_failed")] == ["reason=lab_refusal ssid=lab retry_ms=30000"]


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
