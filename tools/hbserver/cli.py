"""The heartbeat server to run beside your devices (docs/SERVER.md).

    python3 -m tools.hbserver [--port 39002] [--tick-ms 3000] [--offline-ticks 5] [--probe-ms 1000] ...

Any number of concurrent clients, each with its own state. Every tick each client's missed-beat count goes
up by one and a HEART sets it back to zero; a client whose count reaches --offline-ticks is offline and
its connection is closed (the seed's rule). Echo probes check the firmware's upper-case echo. One event
line per client event, a periodic summary, JSON lines with --json (docs/EVENTS.md).

This module is the command line (`python3 -m tools.hbserver` runs its main()); the importable API is
the package's: `from tools.hbserver import HeartbeatServer, ServerConfig`.
"""
import argparse
import asyncio
import json
import resource
import signal
import socket
import sys
from dataclasses import replace

from firmware.hbkeep.events import Events

from tools.hbserver.core import HeartbeatServer, ServerConfig

__all__ = ["main", "serve", "make_printer"]


# -- command line ----------------------------------------------------------------------------------


def _int_in(lo, hi):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("expected an integer, got %r" % text)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError("must be from %d to %d, got %d" % (lo, hi, v))
        return v
    return parse


def build_parser():
    d = ServerConfig()
    ap = argparse.ArgumentParser(prog="python3 -m tools.hbserver", description=__doc__.split("\n\n")[0],
                                 epilog="See docs/SERVER.md for the offline rule, probes and output.")
    a = ap.add_argument
    a("--host", default=d.host, help="address to listen on (default %(default)s, all IPv4)")
    a("--port", type=_int_in(0, 65535), default=d.port, help="TCP port, 0 = any free (default %(default)s)")
    a("--tick-ms", type=_int_in(10, 3600000), default=d.tick_ms,
      help="checker period: every tick each client's missed count goes up by one (default %(default)s)")
    a("--offline-ticks", type=_int_in(1, 1000000), default=d.offline_ticks,
      help="missed ticks that make a client offline, the seed's HEART_COUNT (default %(default)s)")
    a("--no-heart-reply", action="store_true", help="do not answer HEART with HEART (as the seed's server)")
    a("--probe-ms", type=_int_in(0, 3600000), default=d.probe_ms, help="echo probe period, 0 = off (default 0)")
    a("--probe-bytes", type=_int_in(1, 65536), default=d.probe_bytes,
      help="random bytes per probe (default %(default)s)")
    a("--probe-mode", choices=("framed", "raw"), default=d.probe_mode,
      help="framed: DATA frames; raw: bare bytes for clients without framing (default %(default)s)")
    a("--probe-late-ms", type=_int_in(1, 3600000), default=d.probe_late_ms,
      help="a probe reply later than this counts as late (default %(default)s)")
    a("--max-clients", type=_int_in(0, 10000000), default=d.max_clients,
      help="refuse connections beyond this many online clients, 0 = no limit (default 0)")
    a("--max-payload", type=_int_in(0, 1 << 24), default=d.max_payload,
      help="largest DATA payload accepted (default %(default)s)")
    a("--header-timeout-ms", type=_int_in(1, 3600000), default=d.header_timeout_ms,
      help="drop a client holding a partial frame longer than this (default %(default)s)")
    a("--summary-ms", type=_int_in(0, 3600000), default=d.summary_ms,
      help="summary line period, 0 = none (default %(default)s)")
    a("--backlog", type=_int_in(1, 65535), default=d.backlog, help="listen backlog (default %(default)s)")
    a("--close-ms", type=_int_in(1, 3600000), default=d.close_ms,
      help="a dropped client's unsent bytes may take this long to flush before it is aborted (default %(default)s)")
    a("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="event loop (default asyncio)")
    f = ap.add_argument_group("fleet", "several server processes, shared presence, metrics (docs/FLEET.md)")
    f.add_argument("--workers", type=_int_in(1, 256), default=1,
                   help="server processes sharing the port via SO_REUSEPORT, each with its own descriptor "
                        "budget (default 1: this process serves)")
    f.add_argument("--presence", metavar="redis://HOST:PORT[/DB]",
                   help="record every device's online/offline state in this Valkey or Redis store")
    f.add_argument("--server-id", default="",
                   help="this server's name in the presence store (default hostname:pid)")
    f.add_argument("--presence-prefix", default="hb", help="key prefix in the store (default %(default)s)")
    f.add_argument("--presence-flush-ms", type=_int_in(10, 600000), default=1000,
                   help="presence writes are batched and sent this often (default %(default)s)")
    f.add_argument("--presence-ttl-ms", type=_int_in(30, 86400000), default=15000,
                   help="online records expire this long after the last renewal: the devices of a "
                        "server that dies read offline within it (default %(default)s)")
    f.add_argument("--metrics-port", type=_int_in(0, 65535), default=None,
                   help="serve Prometheus metrics on this port at /metrics (with --workers: port + worker "
                        "index; 0 = any free port)")
    f.add_argument("--metrics-host", default="0.0.0.0", help="address for --metrics-port (default %(default)s)")
    a("--json", action="store_true", help="print events as JSON lines")
    sec = ap.add_argument_group("security (docs/SECURITY.md; all off by default: the seed's plain protocol)")
    b = sec.add_argument
    b("--tls-cert", metavar="FILE", help="serve TLS with this certificate chain (PEM); needs --tls-key")
    b("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    b("--auth-keys", metavar="FILE",
      help="authenticate devices: JSON object of device id -> hex key (make with python3 -m tools.certs device-key)")
    b("--auth-timeout-ms", type=_int_in(1, 3600000), default=d.auth_timeout_ms,
      help="drop a connection not authenticated this long after its CHALLENGE (default %(default)s)")
    b("--handshake-timeout-ms", type=_int_in(1, 3600000), default=d.handshake_timeout_ms,
      help="drop a connection whose TLS handshake takes longer (default %(default)s)")
    b("--max-pending", type=_int_in(1, 1000000), default=d.max_pending,
      help="connections still in TLS handshake or authentication, at most; they never take "
           "--max-clients slots (default %(default)s)")
    b("--auth-fail-limit", type=_int_in(1, 1000000), default=d.auth_fail_limit,
      help="failed authentications from one address within the window before its connections are "
           "refused (default %(default)s)")
    b("--auth-fail-window-ms", type=_int_in(1, 86400000), default=d.auth_fail_window_ms,
      help="the rate limit's window (default %(default)s)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quiet", action="store_true",
                   help="print only listening, summary and stopped lines")
    g.add_argument("--verbose", action="store_true", help="also print per-frame events (beat, data, probe_ok)")
    return ap


QUIET_EVENTS = ("listening", "summary", "stopped", "presence_error", "presence_restored", "metrics",
                "worker_started", "worker_exited", "worker_error")


def make_printer(loop, as_json, quiet, out=sys.stdout):
    """An on_event hook printing event lines (docs/EVENTS.md); the text form is the firmware's own
    formatter, so every program's lines are one format family."""
    def clock():
        return int(loop.time() * 1000 + 0.5)

    def write(line):
        out.write(line + "\n")
        out.flush()

    text = Events(write=write, clock=clock)

    def on_event(name, f):
        if quiet and name not in QUIET_EVENTS:
            return
        if as_json:
            write(json.dumps({"t": clock(), "ev": name, **f}, separators=(",", ":")))
        else:
            kv = []
            for k, v in f.items():
                kv.append(k)
                kv.append(v)
            text.emit(name, *kv)
    return on_event


def raise_fd_limit():
    # Every client is a descriptor; the usual soft limit of 1024 would cap a fleet far below the target.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


async def serve(config, as_json=False, quiet=False, presence=None, metrics=None):
    """Run until SIGINT or SIGTERM; returns the exit code. presence: a PresenceConfig or None;
    metrics: (host, port) for the Prometheus endpoint or None."""
    loop = asyncio.get_running_loop()
    server = HeartbeatServer(config, on_event=make_printer(loop, as_json, quiet))
    hook = None
    if presence is not None:
        from tools.hbserver.presence import Presence  # lazy: costs nothing without --presence
        hook = Presence(presence)
        server.hooks.append(hook)
    if metrics is not None:
        from tools.hbserver.metrics import Metrics
        server.hooks.append(Metrics(metrics[1], metrics[0], presence=hook))
    # Handlers first: whoever reads the `listening` line may signal at once, and must get a clean stop.
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except OSError as e:
        what = e.strerror if e.strerror and e.strerror.startswith("--") else "cannot listen on %s:%d: %s" % (
            config.host, config.port, e.strerror or e)
        print("hbserver: %s" % what, file=sys.stderr)
        return 1
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(server.done.wait())]
    try:
        # Until a signal, or until the server stops itself because something it cannot run without
        # failed (a periodic task, or printing events: a closed stdout).
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await server.stop()
    if server.failure is not None:
        where, exc = server.failure
        try:
            print("hbserver: stopped: %s failed: %s: %s" % (where, type(exc).__name__, exc), file=sys.stderr)
        except OSError:
            pass
        return 1
    return 0


def loop_factory(name):
    if name == "uvloop":
        import uvloop  # checked importable by main()
        return uvloop.new_event_loop
    return None


def main(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            ap.error("--loop uvloop: uvloop is not installed (pip install uvloop), or use --loop asyncio")
    config = ServerConfig(
        host=args.host, port=args.port, tick_ms=args.tick_ms, offline_ticks=args.offline_ticks,
        heart_reply=not args.no_heart_reply, probe_ms=args.probe_ms, probe_bytes=args.probe_bytes,
        probe_mode=args.probe_mode, probe_late_ms=args.probe_late_ms, max_clients=args.max_clients,
        max_payload=args.max_payload, header_timeout_ms=args.header_timeout_ms, summary_ms=args.summary_ms,
        verbose=args.verbose, backlog=args.backlog, close_ms=args.close_ms, tls_cert=args.tls_cert, tls_key=args.tls_key,
        auth_keys=args.auth_keys, auth_timeout_ms=args.auth_timeout_ms,
        handshake_timeout_ms=args.handshake_timeout_ms, max_pending=args.max_pending,
        auth_fail_limit=args.auth_fail_limit, auth_fail_window_ms=args.auth_fail_window_ms)
    if (args.tls_cert is None) != (args.tls_key is None):
        ap.error("--tls-cert and --tls-key go together: give both or neither")
    try:
        config.validate()
        if config.gated:  # read the certificate, key and key files now: errors name them, before listening
            from tools.hbserver.gate import Gate

            Gate(None, config)
    except ValueError as e:
        ap.error(str(e))
    try:
        socket.getaddrinfo(args.host, None)
    except OSError as e:
        ap.error("--host %s: cannot resolve (%s)" % (args.host, e))
    presence = None
    if args.presence:
        from tools.hbserver.presence import PresenceConfig
        presence = PresenceConfig(url=args.presence, server_id=args.server_id, prefix=args.presence_prefix,
                                  flush_ms=args.presence_flush_ms, ttl_ms=args.presence_ttl_ms)
        try:
            presence.validate()
        except ValueError as e:
            ap.error("--presence: %s" % e)
        try:
            import redis  # noqa: F401
        except ImportError:
            ap.error("--presence: the redis client library is not installed (pip install redis)")
    if args.metrics_port is not None:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            ap.error("--metrics-port: prometheus_client is not installed (pip install prometheus-client)")
    if args.workers > 1 and args.metrics_port and args.metrics_port + args.workers - 1 > 65535:
        ap.error("--metrics-port %d + %d workers goes beyond port 65535" % (args.metrics_port, args.workers))

    def run_one(index, cfg):
        raise_fd_limit()
        p = presence
        if p is not None and args.workers > 1 and args.server_id:
            p = replace(p, server_id="%s-w%d" % (args.server_id, index))
        m = None
        if args.metrics_port is not None:
            m = (args.metrics_host, args.metrics_port + index if args.metrics_port else 0)
        try:
            with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
                rc = runner.run(serve(cfg, args.json, args.quiet, presence=p, metrics=m))
        except KeyboardInterrupt:
            # SIGINT before serve() installed its handler (a Ctrl-C during start-up): nothing to report.
            rc = 0
        # A late duplicate SIGINT (a terminal and a parent both sending one) must not end in a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return rc

    if args.workers == 1:
        return run_one(0, config)
    from tools.hbserver import workers

    printer = make_printer(workers._Clock, args.json, args.quiet)
    return workers.run(args.workers, config, run_one, printer)

