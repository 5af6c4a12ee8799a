"""tools/build/heapmap.py (with tools/fwheapmap.py inside the firmware's process): the heap after start,
module by module, on the 32-bit MicroPython."""
import subprocess
import sys

import pytest

from support.fwproc import require_runtime

from tools import bench
from tools.build import heapmap
from tools.paths import REPO


def _as_dict(rows):
    keys = [k for k, _ in rows]
    assert len(keys) == len(set(keys)), "a key printed twice"
    return dict(rows)


def _modules(m):
    """{row name: bytes} of the module rows."""
    return {k[len("module_"):-len("_bytes")]: int(v) for k, v in m.items()
            if k.startswith("module_") and k.endswith("_bytes") and not k.endswith("_qstr_bytes")}


@pytest.fixture(scope="module")
def mpy_map():
    require_runtime("micropython32")
    return _as_dict(heapmap.heap_map("micropython32", "framed"))


@pytest.fixture(scope="module")
def romfs_map():
    require_runtime("micropython32")
    return _as_dict(heapmap.heap_map("micropython32", "framed", romfs=True))


def test_every_module_the_running_firmware_holds_has_a_row_that_costs_heap(mpy_map):
    rows = _modules(mpy_map)
    names = {name for row in rows for name in row.split("+")}
    assert {"hbkeep", "hbkeep.compat", "hbkeep.runner", "hbkeep.client", "hbkeep.protocol", "hbkeep.link",
            "hbkeep.events", "asyncio"} <= names
    # The start-up code and the config validator leave sys.modules once done: no row of their own.
    assert not names & {"hbkeep.start", "hbkeep.config", "hbkeep.strictjson"}
    # Imported dependencies first, each import costs something of its own: a module measured after one
    # that had already pulled it in would show 0.
    for row, nbytes in rows.items():
        assert nbytes > 0, row
        assert int(mpy_map["module_%s_qstrs" % row]) >= 1, row
    assert mpy_map["deploy"] == "mpy" and mpy_map["runtime"] == "micropython32"


def test_the_rows_add_up_to_the_firmware_share(mpy_map):
    parts = sum(_modules(mpy_map).values()) + int(mpy_map["start_bytes"]) + int(mpy_map["connect_bytes"])
    assert parts == int(mpy_map["firmware_bytes"])
    qstrs = sum(int(v) for k, v in mpy_map.items() if k.endswith("_qstrs") and k not in (
        "entry_qstrs", "firmware_qstrs"))
    assert qstrs == int(mpy_map["firmware_qstrs"]) == int(mpy_map["qstrs"]) - int(mpy_map["entry_qstrs"])
    assert int(mpy_map["qstr_bytes"]) > int(mpy_map["qstr_text_bytes"]) > 0
    assert int(mpy_map["connect_bytes"]) > 0  # a socket and tasks


def test_the_client_buffers_are_those_the_config_sized(mpy_map):
    lengths = sorted(int(v) for k, v in mpy_map.items() if k.startswith("buffer_") and k.endswith("_length"))
    # bench config: rx_buf 2048; framed: the frame buffer 8 + max_payload (1024), and the 8-byte beat.
    assert 2048 in lengths and 8 + bench.PAYLOAD in lengths
    costs = [int(v) for k, v in mpy_map.items() if k.startswith("buffer_") and k.endswith("_bytes")]
    assert sum(costs) == int(mpy_map["buffers_bytes"])
    assert sum(lengths) < sum(costs) < sum(lengths) + 64 * len(lengths)  # object + data, block-rounded
    assert int(mpy_map["buffers_bytes"]) < int(mpy_map["start_bytes"])


def test_the_map_agrees_with_the_bench_on_the_firmware_share(mpy_map):
    # Two measuring programs with different names of their own in the pool: close, not equal.
    share = int(bench.run_start("micropython32", "framed")["heap_after_start_firmware_bytes"])
    assert abs(share - int(mpy_map["firmware_bytes"])) < 3072, (share, mpy_map["firmware_bytes"])


def test_from_romfs_code_stays_in_the_image(mpy_map, romfs_map):
    assert romfs_map["deploy"] == "romfs"
    assert int(romfs_map["romfs_buffer_bytes"]) > 30000
    # The buffer stands for flash: the program's own heap at entry is that of the .mpy run, give or take.
    assert abs(int(romfs_map["entry_bytes"]) - int(mpy_map["entry_bytes"])) < 512
    assert _modules(romfs_map).keys() == _modules(mpy_map).keys()
    assert int(romfs_map["firmware_bytes"]) < int(mpy_map["firmware_bytes"]) * 0.8
    # The client's code, less its names: a name pool that grows while it loads lands in its row, and
    # where that happens depends on how many names the modules before it interned.
    def code(m):
        return int(m["module_hbkeep.client_bytes"]) - int(m["module_hbkeep.client_qstr_bytes"])

    assert code(romfs_map) < code(mpy_map) // 2
    # The same names interned, their text in the image rather than the heap.
    assert romfs_map["firmware_qstrs"] == mpy_map["firmware_qstrs"]


def test_a_module_loaded_only_by_some_configs_gets_a_row_when_loaded():
    # Nothing names the modules: a config with a server list loads hbkeep.servers, and the map shows it.
    require_runtime("micropython32")

    def two_servers(port):
        cfg = bench.bench_config(port, "framed")
        del cfg["port"]
        cfg["servers"] = ["127.0.0.1:%d" % port, "127.0.0.1:1"]
        return cfg

    plain = _modules(_as_dict(heapmap.heap_map("micropython32", "framed")))
    rotated = _modules(_as_dict(heapmap.heap_map("micropython32", "framed", config_for=two_servers)))
    assert "hbkeep.servers" in rotated and "hbkeep.servers" not in plain
    assert rotated["hbkeep.servers"] > 0


def test_dependency_order_puts_what_a_module_imports_first_and_groups_a_package_with_its_core():
    deps = {
        "pkg": ["pkg", "pkg.core"], "pkg.core": ["pkg", "pkg.core"], "app": ["app"],
        "app.a": ["app", "app.a", "pkg", "pkg.core"], "app.b": ["app", "app.a", "app.b", "pkg", "pkg.core"],
    }
    groups = heapmap.dependency_order(list(deps), deps)
    assert groups == [["app"], ["pkg", "pkg.core"], ["app.a"], ["app.b"]]


def test_parse_map_reads_heap_and_name_pool_lines():
    lines = ["heap_at=entry bytes=100", "qstr_at=entry",
             "qstr pool: n_pool=1, n_qstr=5, n_str_data_bytes=40, n_total_bytes=120",
             "heap_at=m bytes=300", "qstr_at=m",
             "qstr pool: n_pool=2, n_qstr=9, n_str_data_bytes=80, n_total_bytes=400",
             "buffer=client.rxbuf bytes=2064 length=2048", "done=1"]
    steps, buffers = heapmap.parse_map(lines)
    assert steps == [("entry", 100, (1, 5, 40, 120)), ("m", 300, (2, 9, 80, 400))]
    assert buffers == [("client.rxbuf", 2064, 2048)]


def test_the_command_prints_key_value_lines_and_refuses_romfs_on_the_64_bit_build():
    require_runtime("micropython32")
    p = subprocess.run([sys.executable, "-m", "tools.build.heapmap", "--mode", "raw"], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert all("=" in line for line in lines)
    m = dict(line.split("=", 1) for line in lines)
    assert m["mode"] == "raw" and int(m["firmware_bytes"]) > 0
    assert not any(k.startswith("buffer_client.dec") for k in m)  # raw mode: no frame decoder
    assert "measuring" in p.stderr  # progress on stderr, figures on stdout
    bad = subprocess.run([sys.executable, "-m", "tools.build.heapmap", "--romfs", "--runtime", "micropython"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert bad.returncode == 2 and "--romfs" in bad.stderr
