"""The strict config reader's errors: where and what, never what the file says there.

The reader cannot know which value is a secret (the Wi-Fi password, the auth key): a fault inside or at the
start of a value is named by its kind and its line and column, never by the characters found there. Each
case below puts a secret written only with the letters Q and Z at the fault; the same document with the
secret's letters swapped must give the very same error, and neither letter may appear in it.
Paths (main.py, hostrun, deploy) print this same text: test_config_hardening.py runs them."""
import re

import pytest

from firmware.hbkeep import strictjson

WIFI = b'{"wifi": {"ssid": "lab", "password": %s}}'
# (document with SECRET where the secret goes, the secret, words the error must hold)
CASES = [
    (WIFI, b"QZZQ", "a value expected"),  # left unquoted
    (WIFI, b"ZQ", "a value expected"),
    (WIFI, b'"QZ\\qZQ"', "invalid escape"),  # a backslash that starts no escape
    (WIFI, b'"QZ\\uQZQZ"', "invalid \\u escape"),
    (WIFI, b'"QZ\\ud801QZ"', "lone surrogate"),  # the escape's digits are the secret's too
    (WIFI, b'"QZ\\ud801\\ud802"', "invalid surrogate pair"),
    (WIFI, b'"QZ\tZQ"', "control character"),  # a raw tab inside the password
    (WIFI, b'"QZ\x01ZQ"', "control character"),
    (WIFI, b'"QZZQ\n}}', "control character"),  # the closing quote forgotten: the line break is inside
    (b'{"wifi": {"ssid": "lab", "password": %s', b'"QZZQ', "document ends inside the string"),
    (WIFI, b"12QZ", "',' or '}' expected"),  # number-looking: 12 is read, then the rest is no JSON
    (WIFI, b"-QZ", "digit expected"),
    (WIFI, b"1.QZ", "digit expected after '.'"),
    (WIFI, b"1eQZ", "digit expected in the exponent"),
    (WIFI, "\u00e9QZ".encode(), "a value expected"),  # a non-ASCII first byte
    (b'{"auth": {"id": "d1", "key": %s}}', b"QZ00112233445566778899aabbccddeeff", "a value expected"),
    (b'{"auth": {"id": "d1", "key": %s}}', b"00QZ112233445566778899aabbccddeeff", "leading zero"),
    # a forgotten key whose value repeats an earlier key: named as a missing ':', not as a key given twice
    (b'{"wifi": {"QZZQ": "x", %s}}', b'"QZZQ"', "':' expected after a key"),
]


def _error(doc):
    with pytest.raises(strictjson.JSONError) as e:
        strictjson.loads(doc)
    return str(e.value)


def _swapped(secret):
    return secret.replace(b"Q", b"\0").replace(b"Z", b"Q").replace(b"\0", b"Z")


@pytest.mark.parametrize("doc, secret, words", CASES, ids=[repr(c[1]) for c in CASES])
def test_no_part_of_a_value_is_echoed(doc, secret, words):
    text = _error(doc % secret)
    assert words in text, text
    assert re.search(r" at line \d+ column \d+", text), text  # where, always
    assert "Q" not in text and "Z" not in text, text  # no character of the secret
    assert "0x" not in text, text  # nor its code (a control character's, a non-ASCII byte's)
    # The error depends on where the fault is and of what kind, not on the characters there.
    assert _error(doc % _swapped(secret)) == text


def test_control_characters_are_not_told_apart():
    # Which control character sits in a password is a part of it: a tab, a line break and 0x01 read alike.
    texts = {_error(WIFI % (b'"QZ' + c + b'ZQ"')) for c in (b"\t", b"\n", b"\r", b"\x01", b"\x1f")}
    assert len(texts) == 1, texts


def test_the_digits_of_an_escape_are_not_echoed():
    # "\\ud801" in a password is its character U+D801 written out: its digits are the value's.
    texts = {_error(WIFI % (b'"QZ\\u' + d + b'QZ"')) for d in (b"d801", b"dbff", b"dc00", b"DFFF")}
    assert len(texts) == 1 and "lone surrogate" in texts.pop()
    texts = {_error(WIFI % (b'"QZ\\ud801\\u' + d + b'"')) for d in (b"0041", b"d802", b"ffff")}
    assert len(texts) == 1 and "invalid surrogate pair" in texts.pop()


@pytest.mark.parametrize("doc, words, line, column", [
    # An unclosed string is named where it starts: that is where the closing quote is missing.
    (b'{\n  "wifi": {"ssid": "lab", "password": "QZZQ\n}}', "string that starts", 2, 39),
    (b'{"host": "h"}\n\n  {', "extra data", 3, 3),
    (b'{"wifi": {"ssid": "lab",\n "password": QZ}}', "a value expected at line 2 column 14 (a string in double quotes", 2, 14),
    (b'{"wifi": {"ssid": "lab", "password": "QZ\\qZQ"}}', "invalid escape", 1, 41),  # at the backslash
    (b'{"beat_ms": 100,\n "beat_ms": 200}', "key 'beat_ms' given twice", 2, 2),  # at the second one
])
def test_errors_say_where_and_what(doc, words, line, column):
    text = _error(doc)
    assert words in text and "line %d column %d" % (line, column) in text, text


def test_a_byte_order_mark_is_named():
    # Editors on some systems save one: it is named as such rather than as an unexpected character.
    assert _error(b"\xef\xbb\xbf{}") == (
        "a byte order mark (BOM) at line 1 column 1: save the file as UTF-8 without one")


def test_keys_are_still_named():
    # Keys are not secret, and the one given twice is the one to fix.
    assert "key 'port' given twice" in _error(b'{"port": 1, "port": 2}')
