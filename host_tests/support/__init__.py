"""Helpers for the host tests (not tests themselves; the tests are host_tests/test_<module>.py).

Processes and servers on loopback:
  fwproc           the firmware (firmware/main.py) as a child process; which runtimes run here
  faultkit         the instrumented firmware as a process, servers for the fault matrix
  fw_instrumented  the script faultkit runs: the real Client printing heap and descriptor probes
  portmodel_run    the real Client and Wi-Fi station against a port model, as a process
  boardharness     the firmware's runner with the `machine` stand-in, as a process (watchdog scenarios)
  mp_sansio        the sans-IO core's checks as a script, for MicroPython (no pytest there)
  scripted_server  a threaded loopback TCP server that a test drives step by step
  netns            network namespaces joined by a veth pair (root only)
  simboard_proc    the simulated board (tools.simboard) as a process, and its serial console
Doubles, run in-process:
  client_harness   the real Client on fake_sockets and the virtual clock, its event lines parsed
  fake_sockets     a scripted network with compat.Net's interface (refusals, hangs, partial I/O)
  fake_wlan        a stand-in for MicroPython's `network` module (a Wi-Fi station)
  portmodel        socket, errno and network as esp32 and rp2 answer them (runs on MicroPython too)
  board/machine.py a scripted `machine` module (WDT, Pin, ...), for CPython tests and child processes
  fake_machine     installs board/machine.py as `machine` in a CPython test
  fake_device      a device on asyncio streams and an event recorder, for tools.hbserver tests
  vloop            an asyncio loop on a virtual clock
Fleets:
  storefix         a throw-away Valkey presence store (the `store` fixture)
TLS and authentication:
  seckit           certificates made fresh (the `pki` fixture), key files, a device and an auth server
Data:
  frames           wire frames built and decoded with firmware.hbkeep.protocol
  faultrec         the fault matrix's measurements, appended under build/faults/
  tiers            skip a tier with the reason, or fail it where an HB_REQUIRE_* variable says it must run

Event lines are parsed, and tools.hbserver is started, by tools/eventlines.py (shared with the demo and
the benchmarks)."""
