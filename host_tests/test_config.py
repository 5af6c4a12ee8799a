"""Config validation: every bad key or value is named, and secrets never appear in errors."""
import json

import pytest

from firmware.hbkeep.config import SPEC, Config, ConfigError, load


def test_defaults_are_the_seeds():
    c = Config({})
    assert (c.port, c.retry_ms, c.beat_ms, c.connect_timeout_ms, c.max_payload) == (39002, 100, 3000, 3000, 1024)
    assert (c.ka_idle, c.ka_intvl, c.ka_cnt, c.keepalive, c.nodelay) == (3, 3, 3, True, True)
    assert (c.mode, c.peer_timeout, c.peer_miss, c.backoff_max_ms) == ("framed", "auto", 3, 0)


@pytest.mark.parametrize(
    "cfg,needle",
    [
        ({"beat_ms": -5}, "beat_ms: expected an integer from 10 to 3600000, got -5"),
        ({"beat_ms": "3000"}, "beat_ms: expected an integer"),
        ({"port": True}, "port: expected an integer"),
        ({"port": 70000}, "port: expected an integer from 1 to 65535, got 70000"),
        ({"mode": "json"}, "mode: expected one of framed, raw, got 'json'"),
        ({"peer_timeout": "never"}, "peer_timeout: expected one of auto, strict, off"),
        ({"nodelay": 1}, "nodelay: expected true or false"),
        ({"host": ""}, "host: expected a non-empty string"),
        ({"beat": 3000}, "beat: unknown key"),
        ({"keepalive": {"idle": 0}}, "keepalive.idle: expected an integer from 1"),
        ({"keepalive": {"probes": 3}}, "keepalive.probes: unknown key"),
        ({"keepalive": 5}, "keepalive: expected an object"),
        ({"wifi": {"ssid": "x", "pass": "y"}}, "wifi.pass: unknown key"),
    ],
)
def test_bad_values_are_named(cfg, needle):
    with pytest.raises(ConfigError) as e:
        Config(cfg)
    assert needle in str(e.value)


def test_keepalive_false_turns_it_off_and_partial_objects_keep_defaults():
    assert Config({"keepalive": False}).keepalive is False
    c = Config({"keepalive": {"idle": 10}})
    assert (c.keepalive, c.ka_idle, c.ka_intvl, c.ka_cnt) == (True, 10, 3, 3)


def test_wifi_password_never_appears_in_an_error():
    with pytest.raises(ConfigError) as e:
        Config({"wifi": {"ssid": "home", "password": 12345678}})
    assert "12345678" not in str(e.value) and "wifi.password" in str(e.value)
    c = Config({"wifi": {"ssid": "home", "password": "hunter2"}})
    assert c.wifi_password == "hunter2"


def test_every_documented_key_is_in_the_docs():
    import os

    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "CONFIG.md")).read()
    for key in list(SPEC) + ["keepalive", "wifi"]:
        assert "`%s`" % key in doc, key


def test_load_reports_bad_json_and_missing_file(tmp_path):
    p = tmp_path / "c.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load(str(p))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(str(tmp_path / "missing.json"))
    p.write_text(json.dumps({"beat_ms": 500}))
    assert load(str(p)).beat_ms == 500
    p.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="top level"):
        load(str(p))


@pytest.mark.parametrize(
    "text,ok",
    [('{"a": "}"}', True), ('{"a": {"b": 1}', False), ('{"a": 1', False), ('{"a": "x\\"}"}', True),
     ('{"a": [1, 2]}', True), ('{"a": "\\\\"}', True), ('{"a": "open', False), ("}{", False)],
)
def test_truncated_documents_are_caught_before_json(text, ok, tmp_path):
    # MicroPython's json.loads accepts '{"a": 1' (no closing brace); load() must not.
    p = tmp_path / "c.json"
    p.write_text(text)
    if ok:
        from firmware.hbkeep.config import parse

        assert isinstance(parse(text.encode(), "c.json"), dict)
    else:
        with pytest.raises(ConfigError, match="not valid JSON"):
            load(str(p))


def test_every_attribute_is_declared_for_the_type_checker():
    # Config sets its attributes in loops; only the class-level declarations let mypy see a misspelling.
    declared = set(Config.__annotations__)
    for user in ({}, {"keepalive": False}, {"wifi": {"ssid": "home", "password": "pw"}}):
        made = set(vars(Config(user)))
        assert made - declared == set(), "set but not declared in Config"
        assert declared - made == set(), "declared in Config but never set"
