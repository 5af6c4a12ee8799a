"""Plant known bugs one at a time and check that the suite catches each, fast.

    python3 -m tools.build.mutants [--list] [NAME ...]

Each mutant is a small plausible bug (one comparison, one line left out) that once passed the whole test
suite or only showed up as a hang. For each one this edits the file in place, runs the tests named for it
(with the per-test timeout of pytest.ini), restores the file whatever happens, and prints one line:

    mutant=beat_drift caught=yes seconds=1.4 tests=host_tests/test_rule_edges.py::test_...

Exit code 1 if any mutant survives. docs/TESTING.md lists them and what each taught.
"""
import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
E = "host_tests/test_rule_edges.py::"
H = "host_tests/test_hbserver_hardening.py::"

# name: (file, text, replacement, tests that must fail)
MUTANTS = {
    "upcase_fallback_off_by_one": (
        "firmware/hbkeep/compat.py", "if 97 <= c <= 122:", "if 97 <= c < 122:",
        [E + "test_the_plain_python_byte_loops_are_right_on_the_runtime_itself"]),
    "offline_one_tick_late": (
        "tools/hbserver/offline.py", "if c.missed >= k and", "if c.missed > k and",
        [E + "test_a_silent_client_goes_offline_at_exactly_offline_ticks"]),
    "slow_reader_seen_as_stalled": (
        "firmware/hbkeep/client.py", "link.tx_blocked(ticks_ms())  # progress: the peer is reading, slowly",
        "pass",
        [E + "test_a_slow_but_reading_server_is_neither_stalled_nor_silent"]),
    "blocked_write_does_not_pause_silence": (
        "firmware/hbkeep/client.py", "link.reading_paused(ticks_ms())", "pass",
        [E + "test_a_slow_but_reading_server_is_neither_stalled_nor_silent"]),
    "partial_deadline_not_reset_by_frames": (
        "tools/hbserver/offline.py", "if completed or c.partial_since is None:", "if c.partial_since is None:",
        [E + "test_the_partial_frame_deadline_runs_from_when_the_held_frame_began"]),
    "beat_drift": (
        "firmware/hbkeep/link.py", "nxt = ticks_add(self.next_beat, self.beat_ms)", "nxt = ticks_add(now, self.beat_ms)",
        [E + "test_the_beat_schedule_does_not_drift_when_a_beat_goes_out_late"]),
    "retry_delay_changed": (
        "firmware/hbkeep/link.py", "return self.retry_ms  # the seed's fixed 100 ms", "return self.retry_ms * 2",
        ["host_tests/test_link.py::test_fixed_retry_is_the_seeds_100ms",
         "host_tests/test_client.py::test_refused_attempts_retry_every_retry_ms_and_close_each_socket"]),
    "auto_silence_inverted": (
        "firmware/hbkeep/link.py", "(self.mode == AUTO and self.heard)", "(self.mode == AUTO and not self.heard)",
        [E + "test_silence_judged_exactly_per_mode_and_at_the_limit"]),
    "socket_left_open_after_session": (
        "firmware/hbkeep/client.py", "            self.net.close(sock)\n            self.sock = None",
        "            self.sock = None",
        [E + "test_a_server_that_stops_reading_is_dropped_at_the_stall_limit_not_later",
         "host_tests/test_bad_servers.py"]),
    "backoff_reset_one_ms_early": (
        "firmware/hbkeep/link.py", "if ticks_diff(now, self.since) >= self.beat_ms:",
        "if ticks_diff(now, self.since) >= self.beat_ms - 1:",
        [E + "test_backoff_resets_after_exactly_one_beat_period_not_one_ms_sooner"]),
    "close_waits_forever": (
        "tools/hbserver/conn.py", "self.abort_timer = self.srv.loop.call_later(self.srv.close_grace_s, self.abort)",
        "pass",
        [H + "test_a_dropped_client_that_never_reads_is_released_within_close_ms_and_counted_until_then"]),
    "idle_conn_allocates_max_payload": (
        "tools/hbserver/conn.py", "        return bytearray(HEADER_SIZE)\n\n    def _room",
        "        return bytearray(HEADER_SIZE + max_payload)\n\n    def _room",
        [H + "test_an_idle_connection_costs_the_same_whatever_max_payload_allows"]),
    "ticker_failure_swallowed": (
        "tools/hbserver/core.py", "                self._fail(fn.__name__.strip(\"_\"), e)\n                return",
        "                continue",
        [H + "test_a_failing_part_stops_the_server_instead_of_leaving_it_half_alive"]),
    "connect_failures_not_summarised": (
        "firmware/hbkeep/repeats.py", "if shown or self.verbose or self.count <= self.first:", "if True:",
        ["host_tests/test_client_hardening.py::test_a_server_down_for_a_minute_costs_a_few_lines_not_six_hundred"]),
    "short_sessions_not_counted": (
        "firmware/hbkeep/probation.py", "if link.failures == 0 or reason == R_STOP:", "if True:",
        ["host_tests/test_repeats.py::test_a_server_that_drops_every_connection_costs_a_few_lines_not_a_pair_every_100ms"]),
    "lookups_not_backed_off": (
        "firmware/hbkeep/repeats.py", "wait = retry_ms if wait == 0 else wait + wait", "wait = retry_ms",
        ["host_tests/test_repeats.py::test_failed_lookups_back_off_to_seconds_and_connect_retries_stay_at_100ms"]),
    "trailing_comma_accepted": (
        "firmware/hbkeep/strictjson.py", "            if self.peek(\"a value\") == 0x5D:\n                self.fail(\"trailing comma\")",
        "            if self.peek(\"a value\") == 0x5D:\n                self.i += 1\n                return out",
        ["host_tests/test_config_hardening.py::test_every_bad_file_is_one_config_error_on_both_paths"]),
    "max_clients_counts_only_online": (
        "tools/hbserver/core.py", "len(self.clients) + self.closing >= cfg.max_clients", "len(self.clients) >= cfg.max_clients",
        [H + "test_a_dropped_client_that_never_reads_is_released_within_close_ms_and_counted_until_then"]),
    "frame_buffer_sized_by_the_header": (
        "tools/hbserver/conn.py", "            if size > total:\n                size = total\n",
        "            size = total\n",
        [H + "test_a_header_that_announces_megabytes_costs_only_what_arrives"]),
    "split_frame_buffer_kept": (
        "tools/hbserver/conn.py", "        dec.release()\n", "",
        [H + "test_a_split_large_frame_gets_a_buffer_only_while_it_is_split"]),
    "supervisor_exception_kills_task": (
        "firmware/hbkeep/client.py", "compat.create_task(self._guarded(self._supervise(sock), \"supervisor\"))",
        "compat.create_task(self._supervise(sock))",
        ["host_tests/test_client_hardening.py::test_an_exception_inside_a_session_ends_it_with_reason_error_and_reconnects"]),
    "idna_error_escapes_resolver": (
        "firmware/hbkeep/dial.py", "    except ValueError:\n        # CPython's IDNA", "    except KeyError:\n        # CPython's IDNA",
        ["host_tests/test_client_hardening.py::test_a_host_label_over_63_characters_is_a_resolve_failure_not_the_end"]),
    "stall_judged_one_ms_late": (
        "firmware/hbkeep/link.py", "ticks_diff(now, self.tx_blocked_at) >= self.limit_ms:",
        "ticks_diff(now, self.tx_blocked_at) > self.limit_ms:",
        [E + "test_stall_edges_and_progress_restarts_the_count"]),
    "cut_frame_not_named": (
        "tools/hbserver/conn.py", "        if not self.have:\n            return \"-\", 0",
        "        if True:\n            return \"-\", 0",
        [H + "test_misbehaving_peers_cost_nothing_lasting_and_a_good_client_never_notices"]),
    "decoder_not_reset_between_sessions": (
        "firmware/hbkeep/client.py", "        if self.dec:\n            self.dec.reset()\n", "",
        ["host_tests/test_bad_servers.py"]),
    "heap_error_not_caught_at_start": (
        "firmware/hbkeep/start.py", "    except MemoryError:\n        # The ranges", "    except KeyError:\n        # The ranges",
        ["host_tests/test_config_hardening.py::test_buffers_the_heap_cannot_hold_are_a_config_error_naming_the_key"]),
    "older_connection_kept": (
        "tools/hbserver/core.py", "        if old is not None:\n            self.replace(old, conn)\n", "",
        ["host_tests/test_hbserver_replace.py::test_a_second_connection_under_the_same_id_replaces_the_first"]),
    "store_takes_an_older_connection": (
        "tools/hbserver/presence.py", "if since and since > tonumber(ARGV[6]) then return holder end",
        "if false then return holder end",
        ["host_tests/test_presence.py::test_an_older_connection_written_after_a_newer_one_loses_and_its_server_is_told"]),
    "superseded_elsewhere_ignored": (
        "tools/hbserver/presence.py", "superseded.append((conn, res))", "pass",
        ["host_tests/test_hbserver_replace.py::test_across_servers_sharing_the_store_the_newest_connection_wins_too"]),
}


def run_one(name, env):
    path, old, new, tests = MUTANTS[name]
    full = os.path.join(ROOT, path)
    with open(full) as f:
        original = f.read()
    if original.count(old) != 1:
        return "stale", 0.0, tests  # the code moved on: the mutant needs updating
    try:
        with open(full, "w") as f:
            f.write(original.replace(old, new))
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"] + tests,
                           cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        took = time.monotonic() - t0
    finally:
        with open(full, "w") as f:
            f.write(original)
    return ("yes" if r.returncode != 0 else "NO"), took, tests


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m tools.build.mutants", description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="mutants to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args(argv)
    if args.list:
        for n, (path, _, _, tests) in MUTANTS.items():
            print("%s %s %s" % (n, path, ",".join(tests)))
        return 0
    unknown = [n for n in args.names if n not in MUTANTS]
    if unknown:
        ap.error("unknown mutant(s): %s (see --list)" % ", ".join(unknown))
    env = dict(os.environ, HB_REQUIRE_MICROPYTHON=os.environ.get("HB_REQUIRE_MICROPYTHON", "1"))
    survived = 0
    for n in args.names or list(MUTANTS):
        caught, took, tests = run_one(n, env)
        survived += caught != "yes"
        print("mutant=%s caught=%s seconds=%.1f tests=%s" % (n, caught, took, ",".join(tests)), flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
