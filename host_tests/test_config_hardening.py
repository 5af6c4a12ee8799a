"""Whatever the config file holds: one `config_error` line naming the file and the fault, or a running
firmware -- never a traceback -- on the board path (main.py with the file beside it) and through
tools.hostrun alike, on both runtimes, with the same verdict and the same words on every path."""
import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from tools.eventlines import parse_line
from firmware.hbkeep.config import MAX_FILE_BYTES, Config, ConfigError, parse
from firmware.hbkeep import strictjson
from tools import hostrun


@pytest.fixture
def runtime(any_runtime):
    """CPython, the MicroPython unix port and the 32-bit one (small ints end at 2^30 there, as on boards)."""
    return any_runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (file content, words the error must contain). Each is a class member: lenient-vs-strict parsers,
# unbounded recursion, encodings, sizes, and keys given twice.
BAD = [
    (b'{"beat_ms": 100,}', "trailing comma"),
    (b'{"keepalive": {"idle": 2,},}', "trailing comma"),
    (b'{"x": [1, 2,]}', "trailing comma"),
    (b'{"beat_ms" 100}', "':' expected"),
    (b'{"beat_ms": 0100}', "leading zero"),
    (b'{"beat_ms": NaN}', "a value expected at line 1 column 13 ("),
    (b'{"beat_ms": Infinity}', "a value expected at line 1 column 13 ("),
    (b'{"host": "a"} x', "extra data"),
    (b"[" * 4000 + b"]" * 4000, "nested deeper than 8 levels"),
    (b"{\"a\":" * 1200 + b"1" + b"}" * 1200, "nested deeper than 8 levels"),  # objects,
    (b'{"host": "\xff\xfe"}', "not UTF-8"),
    (b"\xef\xbb\xbf{}", "byte order mark (BOM)"),  # a UTF-8 BOM: CPython's json refuses it too
    (b"", "empty document"),
    (b'{"beat_ms": 100, "beat_ms": 200}', "given twice"),
    (b'{"host": "x' + b"y" * (MAX_FILE_BYTES + 10) + b'"}', "too large"),
    (b'{"beat_ms": 100', "document ends early"),
    (b'{"host": "tab\there"}', "control character"),
    (b'{"host": "\\ud800"}', "lone surrogate"),
    (b'{"beat_ms": 1' + b"0" * 40 + b"}", "number longer than"),
    (b'{"beat_ms": 1.5}', "beat_ms: expected an integer"),
    (b'{"beat_ms": 1e400}', "beat_ms: expected an integer"),
    (b"[1, 2]", "top level"),
]


def run_main(runtime, data, tmp_path, timeout=30):
    path = tmp_path / "config.json"
    path.write_bytes(data)
    argv = hostrun.runtime_argv(runtime) + [
        os.path.join(hostrun.FIRMWARE_DIR, "main.py"), str(path), hostrun.board_path("unix")]
    r = subprocess.run(argv, cwd=hostrun.FIRMWARE_DIR, capture_output=True, timeout=timeout)
    return r, str(path)


def run_hostrun(runtime, path):
    return subprocess.run([sys.executable, "-m", "tools.hostrun", "--runtime", runtime, "--config", path],
                          cwd=ROOT, capture_output=True, timeout=60)


@pytest.mark.parametrize("data, words", BAD, ids=[w for _, w in BAD])
def test_every_bad_file_is_one_config_error_on_both_paths(runtime, tmp_path, data, words):
    r, path = run_main(runtime, data, tmp_path)
    out = r.stdout.decode("utf-8", "replace")
    lines = out.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and not r.stderr, (r.returncode, out, r.stderr)
    ev = parse_line(lines[0])
    assert ev.name == "config_error", lines[0]
    message = lines[0].split(" ", 2)[2]
    assert message.startswith(path + ":") and words in message, message
    # hostrun reads --config with the firmware's own reader: same verdict, same words.
    h = run_hostrun(runtime, path)
    err = h.stderr.decode("utf-8", "replace").strip()
    assert h.returncode == 2 and h.stdout == b"", (h.returncode, h.stdout, err)
    assert err == "hostrun: config_error " + message, (err, message)


def test_buffers_the_heap_cannot_hold_are_a_config_error_naming_the_key(runtime, tmp_path):
    # Inside the documented ranges, but 2 MiB of buffers: more than the MicroPython unix port's heap.
    data = json.dumps({"port": 9, "max_payload": 1048576, "rx_buf": 1048576, "stats_ms": 0}).encode()
    if runtime == "cpython":
        # CPython's heap grows: the same file starts (stopped at once by an unreachable port's retries).
        path = tmp_path / "config.json"
        path.write_bytes(data)
        p = subprocess.Popen(hostrun.runtime_argv(runtime) + [
            os.path.join(hostrun.FIRMWARE_DIR, "main.py"), str(path), hostrun.board_path("unix")],
            cwd=hostrun.FIRMWARE_DIR, stdout=subprocess.PIPE, text=True, preexec_fn=hostrun.default_sigint)
        try:
            first = parse_line(p.stdout.readline())
        finally:
            p.kill()
            p.wait(10)
            p.stdout.close()
        assert first.name == "start", first.line
        return
    r, path = run_main(runtime, data, tmp_path)
    out = r.stdout.decode()
    assert r.returncode == 2 and len(out.splitlines()) == 1 and not r.stderr, (out, r.stderr)
    assert " config_error %s: max_payload=1048576: buffers of 2097168 bytes do not fit" % path in out, out


def test_reader_verdicts_are_the_same_on_micropython(runtime, tmp_path):
    """The strict reader itself, run on the other runtime over a batch of tricky documents: every
    verdict and every value must match CPython's run of the same code."""
    docs = [d for d, _ in BAD if len(d) < 2000] + [
        b'{"a": "\\u00e9\\ud83d\\ude00", "b": [true, false, null], "c": -0.5e-3, "d": {}}',
        b' {"host" : "h\\"q\\\\", "n": -12} ', b"[]", b"{}", b"-0", b'"\\/"', b"[1,[2,[3]]]",
        '{"k": "ünï"}'.encode(), b'{"x": 1E2}', b'{"x": 1.}', b'{"x": .5}', b'{"x": -}', b"tru", b"nul",
        b'{"x": "\\q"}', b'{"x": "\\u12"}', b'{"x": "\\u12g4"}',
    ]
    script = tmp_path / "verdicts.py"
    script.write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom hbkeep import strictjson\n"
        "import binascii\n"
        "for line in open(%r):\n"
        "    d = binascii.unhexlify(line.strip())\n"
        "    try:\n"
        "        print('ok', repr(strictjson.loads(d)))\n"
        "    except strictjson.JSONError as e:\n"
        "        print('err', e)\n" % (hostrun.FIRMWARE_DIR, str(tmp_path / "docs.txt")))
    (tmp_path / "docs.txt").write_text("".join(d.hex() + "\n" for d in docs))
    r = subprocess.run(hostrun.runtime_argv(runtime) + [str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    want = []
    for d in docs:
        try:
            want.append("ok " + repr(strictjson.loads(d)))
        except strictjson.JSONError as e:
            want.append("err %s" % e)
    got = r.stdout.splitlines()
    # repr of floats and of non-ASCII strings may differ in form between runtimes; compare the parsed
    # verdicts and, for values, re-evaluate them.
    assert len(got) == len(want)
    for g, w, d in zip(got, want, docs):
        assert g.split(" ", 1)[0] == w.split(" ", 1)[0], (d, g, w)
        if g.startswith("err"):
            assert g == w, (d, g, w)
        else:
            ns = {"inf": float("inf")}
            assert eval(g[3:], ns) == eval(w[3:], ns), (d, g, w)


@pytest.mark.parametrize("data, secret", [
    (b'{"wifi": {"ssid": "lab", "hunter2pw"}}', "hunter2pw"),  # the password with its key forgotten
    (b'{"auth": {"id": "d1", "00112233445566778899aabbccddeeff"}}', "00112233445566778899aabbccddeeff"),
])
def test_a_value_where_a_key_belongs_is_not_echoed(data, secret):
    # The reader cannot know it holds a secret there: a key without its ':' is never repeated, whatever
    # it is. Line and column still say where (every path prints this same message: main.py, hostrun, deploy).
    with pytest.raises(ConfigError) as e:
        parse(data, "c.json")
    assert "':' expected after a key at line 1" in str(e.value) and secret not in str(e.value), str(e.value)


# A secret written with the letters Q and Z only, where the file goes wrong: the error says where and
# what on every path, and holds no character of the secret (nor its code, nor a fragment).
SECRET_AT_FAULT = [
    (b'{\n "wifi": {"ssid": "lab", "password": QZZQ}}', "a value expected at line 2 column 38 ("),  # unquoted
    (b'{\n "wifi": {"ssid": "lab", "password": "QZ\\qZQ"}}', "invalid escape at line 2 column 41 ("),
    (b'{\n "wifi": {"ssid": "lab", "password": "QZZQ', "document ends inside the string that starts at line 2 column 38"),
    (b'{\n "wifi": {"ssid": "lab", "password": "QZ\tZQ"}}', "control character inside the string that starts at line 2 column 38"),
    (b'{\n "wifi": {"ssid": "lab", "password": 12QZ}}', "',' or '}' expected at line 2 column 40"),  # number-looking
    (b'{\n "auth": {"id": "d1", "key": "QZ\\ud801"}}', "lone surrogate in a \\u escape at line 2 column 33 ("),
]


@pytest.mark.parametrize("data, words", SECRET_AT_FAULT, ids=[w.split(" at ")[0] for _, w in SECRET_AT_FAULT])
def test_a_secret_at_the_fault_is_not_echoed_on_any_path(runtime, tmp_path, data, words):
    from tools.deploy import plan

    r, path = run_main(runtime, data, tmp_path)
    out = r.stdout.decode("utf-8", "replace")
    h = run_hostrun(runtime, path)
    err = h.stderr.decode("utf-8", "replace")
    with pytest.raises(plan.PlanError) as e:
        plan.load_config(path)
    for text in (out, err, str(e.value)):
        assert "not valid JSON (" + words in text, (text, words)
        said = text.replace(path, "")  # the path is named; it is the test's own
        assert "Q" not in said and "Z" not in said and "0x" not in said, said


@pytest.mark.parametrize("cfg, words", [
    # Objects and lists in keys that are not secret are named by their kind: they may hold anything, a
    # misplaced "wifi" section with its password included.
    ({"host": {"ssid": "lab", "password": "QZZQ"}}, "host: expected a non-empty string, got a JSON object"),
    ({"mode": ["QZZQ"]}, "mode: expected one of framed, raw, got a JSON list"),
    ({"beat_ms": ["QZZQ"]}, "beat_ms: expected an integer from 10 to 3600000, got a JSON list"),
    ({"verbose": {"password": "QZZQ"}}, "verbose: expected true or false, got a JSON object"),
    ({"keepalive": ["QZZQ"]}, "keepalive: expected an object {idle, intvl, cnt} or false, got a JSON list"),
    ({"servers": {"password": "QZZQ"}}, 'servers: expected a list of 1 to 16 "host:port" strings, got a JSON object'),
    ({"servers": []}, 'servers: expected a list of 1 to 16 "host:port" strings, got a JSON list of 0'),
    ({"servers": [["QZZQ"]]}, 'servers[0]: expected a "host:port" string, got a JSON list'),
    ({"tls": {"ca": ["QZZQ"]}}, "tls.ca: expected a non-empty string, got a JSON list"),
    ({"auth": {"id": ["QZZQ"], "key": "ab" * 16}}, "auth.id: expected a string"),
    # The secret keys' values are never shown, whatever they are.
    ({"wifi": {"ssid": "lab", "password": ["QZZQ"]}}, "wifi.password: expected a string"),
    ({"auth": {"id": "d1", "key": "QZ" * 16}}, "auth.key: expected hex digits only"),
    ({"auth": {"id": "d1", "key": "QZQ"}}, "auth.key: expected an even number of hex digits"),
    ({"auth": {"id": "d1", "key": {"k": "QZ"}}}, "auth.key: expected a string of hex digits"),
])
def test_bad_values_name_their_kind_not_their_content(cfg, words):
    with pytest.raises(ConfigError) as e:
        Config(cfg)
    text = str(e.value)
    assert text.startswith(words) and "Q" not in text and "Z" not in text, text


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(alphabet='{}[]",:0123456789-.eEtrufalsn \\u', max_size=60).map(str.encode))
def test_any_bytes_give_a_value_or_a_config_error(data):
    try:
        parse(data, "c.json")
    except ConfigError as e:
        assert str(e).startswith("c.json: ")


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
                    max_leaves=12))
def test_whatever_json_dumps_writes_reads_back_the_same(value):
    text = json.dumps(value)
    depth = text.count("[") + text.count("{")  # an upper bound; deep ones are refused by design
    try:
        assert strictjson.loads(text.encode()) == value
    except strictjson.JSONError as e:
        assert "nested deeper" in str(e) and depth > strictjson.MAX_DEPTH
