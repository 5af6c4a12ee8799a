"""A fleet of simulated devices running the firmware's own client code on CPython.

    python3 -m tools.fleet --clients 1000 --server 127.0.0.1:39002 --seconds 60

Each device is a real firmware Client (firmware/hbkeep/client.py) with its own socket, beats and echo. Options add
churn (devices that drop and reconnect at random), a share of silent devices (connected, never beating) and
of misbehaving ones (they send a broken header now and then). The devices are spread over --procs worker
processes, each with its own event loop.

`--light` runs many devices per process that only beat and echo probes (tools/fleet_light.py): enough to
hold ~19,000 devices per process and to push one server process past its capacity. Give --server more than
once and devices move to the next address on failure, as the firmware does with its `servers` list.

With --tls-ca the devices speak TLS (the firmware's own TLS path), with --auth-keys they authenticate,
each with an id of its own from that file (so the server, given the same file, knows them all; it keeps one
connection per id, so the file needs at least --clients ids).

At the end it prints what the server should have seen, as `fleet_expect` and `fleet_report` lines in the
event format (docs/EVENTS.md), so a run can be checked against the server's own report.
"""
import argparse
import asyncio
import json
import multiprocessing
import os
import random
import resource
import signal
import socket
import sys
import time

import tools.paths
from firmware.hbkeep.config import Config
from firmware.hbkeep.client import Client
from firmware.hbkeep.events import Events
from firmware.hbkeep import protocol
from firmware.hbkeep.protocol_host import encode

BOARD_PATH = os.path.join(tools.paths.BOARDS_DIR, "unix", "board.json")


def emit(name, **fields):
    ms = int(time.monotonic() * 1000)
    print("%d %s %s" % (ms, name, " ".join("%s=%s" % kv for kv in fields.items())), flush=True)


def parse_server(text):
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % text)
    try:
        port = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError("port in %r is not a number" % text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError("port %d out of range 1-65535" % port)
    return host, port


def share(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a fraction from 0 to 1, got %r" % text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError("expected a fraction from 0 to 1, got %s" % text)
    return v


class Counter:
    def __init__(self):
        self.churn_drops = 0
        self.bad_frames_sent = 0
        self.misbehaver_connects = 0


async def run_device(cfg, board, churn_per_min, rng, counter, stop_at):
    """One well-behaved device; with churn it is stopped and restarted at random moments."""
    client = Client(cfg, board, events=Events(write=lambda s: None))
    loop = asyncio.get_running_loop()
    while loop.time() < stop_at:
        task = asyncio.create_task(client.run())
        if churn_per_min > 0:
            # Exponential gaps: drops at a steady average rate, at random moments.
            up = rng.expovariate(churn_per_min / 60.0)
        else:
            up = stop_at - loop.time()
        await asyncio.sleep(max(0.0, min(up, stop_at - loop.time())))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if loop.time() < stop_at:
            counter.churn_drops += 1
            await asyncio.sleep(rng.uniform(0.05, 1.0))
    return client.stats


def _header(ftype, length):
    buf = bytearray(protocol.HEADER_SIZE)
    protocol.encode_header(buf, 0, ftype, length)
    return bytes(buf)


async def run_misbehaver(host, port, beat_ms, rng, counter, stop_at, security=None):
    """Beats for a while, then sends a header the server must reject; reconnects a second later.
    security: {"ssl": context, "server_hostname": name, "auth": (id, key bytes)} when the fleet uses them."""
    loop = asyncio.get_running_loop()
    heart = encode(protocol.HEART)
    # An unknown type, a negative length, a length far above max_payload.
    bad = [_header(7, 0), _header(protocol.DATA, -1), _header(protocol.DATA, 1 << 30)]
    sec = security or {}
    while loop.time() < stop_at:
        try:
            reader, writer = await asyncio.open_connection(host, port, ssl=sec.get("ssl"),
                                                           server_hostname=sec.get("server_hostname"))
        except OSError:
            await asyncio.sleep(1.0)
            continue
        counter.misbehaver_connects += 1
        try:
            if sec.get("auth"):  # a known device gone wrong, not a stranger: it authenticates first
                from firmware.hbkeep.auth import DeviceAuth

                dev = DeviceAuth(*sec["auth"])
                writer.write(bytes(dev.answer(await asyncio.wait_for(reader.readexactly(24), 5))))
                dev.check_welcome(await asyncio.wait_for(reader.readexactly(40), 5))
            for _ in range(rng.randint(1, 5)):
                writer.write(heart)
                await asyncio.sleep(beat_ms / 1000)
            if loop.time() < stop_at:
                writer.write(rng.choice(bad))
                await writer.drain()
                counter.bad_frames_sent += 1
                await asyncio.wait_for(reader.read(), timeout=5)  # until the server drops us
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
        await asyncio.sleep(1.0)


async def worker_main(spec):
    rng = random.Random(spec["seed"])
    with open(BOARD_PATH) as f:
        board = json.load(f)
    host, port = spec["host"], spec["port"]
    loop = asyncio.get_running_loop()
    start = loop.time()
    stop_at = start + spec["seconds"]
    counter = Counter()
    tasks = []
    base = {"mode": spec["mode"], "beat_ms": spec["beat_ms"], "stats_ms": 0,
            "peer_timeout": "auto", "retry_ms": spec["retry_ms"], "backoff_max_ms": spec["backoff_max_ms"],
            "rx_buf": 256 if spec["mode"] == "raw" else 64, "max_payload": spec["max_payload"]}
    security = None
    if spec.get("tls"):
        base["tls"] = spec["tls"]
        import ssl

        security = {"ssl": ssl.create_default_context(cafile=spec["tls"]["ca"]),
                    "server_hostname": spec["tls"]["server_hostname"]}
    ids = spec.get("auth_ids") or []
    ramp = spec["ramp_s"]
    n = spec["count"]
    for i in range(n):
        kind = spec["kinds"][i]
        # Spread the starts over the ramp so beats do not all fall on the same millisecond.
        delay = ramp * i / max(1, n)
        cred = ids[(spec["first_index"] + i * spec["stride"]) % len(ids)] if ids else None  # global index
        if kind == "misbehaving":
            sec = dict(security or {})
            if cred:
                sec["auth"] = (cred[0], bytes.fromhex(cred[1]))
            coro = run_misbehaver(host, port, spec["beat_ms"], rng, counter, stop_at, sec)
        else:
            cfg = dict(base)
            if len(spec["servers"]) > 1:
                cfg["servers"] = ["%s:%d" % hp for hp in spec["servers"]]
            else:
                cfg["host"], cfg["port"] = host, port
            if cred:
                cfg["auth"] = {"id": cred[0], "key": cred[1]}
            if kind == "silent":
                cfg["beat_ms"] = 3600000  # connected, never beating
                cfg["peer_timeout"] = "off"
            coro = run_device(Config(cfg), board, spec["churn_per_min"] if kind == "beating" else 0, rng,
                              counter, stop_at)
        tasks.append(asyncio.create_task(_delayed(delay, coro)))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    total = {"beats_sent": 0, "connects": 0, "attempts": 0, "frames_echoed": 0, "disconnects": 0,
             "errors": 0}
    for r in results:
        if isinstance(r, BaseException):
            total["errors"] += 1
        elif r is not None:
            total["beats_sent"] += r.beats_sent
            total["connects"] += r.connects
            total["attempts"] += r.attempts
            total["frames_echoed"] += r.frames_echoed
            total["disconnects"] += sum(r.disconnects.values())
    total.update(churn_drops=counter.churn_drops, bad_frames_sent=counter.bad_frames_sent,
                 misbehaver_connects=counter.misbehaver_connects)
    return total


async def _delayed(delay, coro):
    await asyncio.sleep(delay)
    return await coro


def worker(spec, out):
    from tools._pdeath import die_with_parent

    die_with_parent(signal.SIGKILL)  # a fleet killed outright takes its devices with it
    raise_fd_limit()
    if spec.get("light"):
        from tools import fleet_light

        factory = None
        if spec.get("loop") == "uvloop":
            import uvloop
            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            out.put(runner.run(fleet_light.worker_main(spec)))
        return
    out.put(asyncio.run(worker_main(spec)))


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m tools.fleet", description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, required=True, help="number of simulated devices")
    ap.add_argument("--server", type=parse_server, required=True, metavar="HOST:PORT", action="append",
                    help="server address; repeat it for a list devices move along on failure")
    ap.add_argument("--seconds", type=float, default=60, help="how long to run (default 60)")
    ap.add_argument("--beat-ms", type=int, default=1000, help="beat interval of each device (default 1000)")
    ap.add_argument("--mode", choices=("framed", "raw"), default="framed")
    ap.add_argument("--churn-per-min", type=float, default=0, help="drops per device per minute (default 0)")
    ap.add_argument("--silent", type=share, default=0.0, help="share of devices that never beat (0-1)")
    ap.add_argument("--misbehaving", type=share, default=0.0, help="share that send broken headers (0-1)")
    ap.add_argument("--procs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--ramp-s", type=float, default=None, help="spread the starts over this long (default: one beat)")
    ap.add_argument("--retry-ms", type=int, default=100)
    ap.add_argument("--backoff-max-ms", type=int, default=2000, help="fleet-friendly backoff cap (default 2000)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1): runs are reproducible")
    ap.add_argument("--light", action="store_true",
                    help="many devices per task, only beats and probe echoes (~19,000 per process)")
    ap.add_argument("--status-ms", type=int, default=0,
                    help="--light: print a fleet_status line per process this often (0 = never)")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                    help="--light: the event loop of each process (default asyncio)")
    ap.add_argument("--tls-ca", metavar="FILE", help="speak TLS, checking the server against this CA (PEM or DER)")
    ap.add_argument("--tls-name", metavar="NAME",
                    help="the name the server's certificate must carry, sent as SNI (default: the --server host)")
    ap.add_argument("--auth-keys", metavar="FILE",
                    help="authenticate, each device taking an id of its own from this JSON file (id -> hex key); "
                         "it needs at least --clients ids")
    args = ap.parse_args(argv)
    if args.clients < 1:
        ap.error("--clients must be at least 1, got %d" % args.clients)
    if args.procs < 1 or args.procs > args.clients:
        ap.error("--procs must be from 1 to --clients, got %d" % args.procs)
    if args.seconds <= 0:
        ap.error("--seconds must be > 0, got %s" % args.seconds)
    if args.silent + args.misbehaving > 1:
        ap.error("--silent plus --misbehaving must not exceed 1")
    if not 10 <= args.beat_ms <= 3600000:
        ap.error("--beat-ms must be from 10 to 3600000, got %d" % args.beat_ms)
    if args.light and (args.silent or args.misbehaving or args.churn_per_min or args.mode != "framed"
                       or args.tls_ca or args.auth_keys):
        ap.error("--light devices only beat and echo (framed, plain): no --silent, --misbehaving, "
                 "--churn-per-min, --mode raw, --tls-ca, --auth-keys")
    if args.status_ms < 0:
        ap.error("--status-ms must be >= 0, got %d" % args.status_ms)
    servers = []
    for host, port in args.server:
        try:
            servers.append((socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][4][0], port))  # once, here
        except OSError as e:
            ap.error("--server %s: cannot resolve (%s)" % (host, e))
    host, port = servers[0]
    tls = None
    if args.tls_ca:
        if not os.path.isfile(args.tls_ca):
            ap.error("--tls-ca %s: no such file" % args.tls_ca)
        tls = {"ca": os.path.abspath(args.tls_ca), "server_hostname": args.tls_name or args.server[0][0]}
    elif args.tls_name:
        ap.error("--tls-name needs --tls-ca")
    auth_ids = None
    if args.auth_keys:
        from tools.hbserver.gate import load_keys

        try:
            keys = load_keys(args.auth_keys)  # checked as the server checks it; errors never show a key
        except ValueError as e:
            ap.error(str(e))
        auth_ids = sorted((k.decode(), v.hex()) for k, v in keys.items())
        if len(auth_ids) < args.clients:
            # Devices sharing an id would throw each other out: the server keeps the newest connection per id.
            ap.error("--auth-keys %s has %d ids for --clients %d: each device needs an id of its own "
                     "(make more with python3 -m tools.certs device-key)" % (args.auth_keys, len(auth_ids), args.clients))

    rng = random.Random(args.seed)
    n_silent = int(round(args.clients * args.silent))
    n_bad = int(round(args.clients * args.misbehaving))
    kinds = ["silent"] * n_silent + ["misbehaving"] * n_bad + ["beating"] * (args.clients - n_silent - n_bad)
    rng.shuffle(kinds)
    ramp = args.ramp_s if args.ramp_s is not None else args.beat_ms / 1000
    specs = []
    for p in range(args.procs):
        mine = kinds[p :: args.procs]
        specs.append({"light": args.light, "servers": servers, "proc": p, "status_ms": args.status_ms,
                      "loop": args.loop, "seed": args.seed * 1000 + p, "host": host, "port": port,
                      "seconds": args.seconds,
                      "beat_ms": args.beat_ms, "mode": args.mode, "churn_per_min": args.churn_per_min,
                      "retry_ms": args.retry_ms, "backoff_max_ms": args.backoff_max_ms, "max_payload": 1024,
                      "ramp_s": ramp, "count": len(mine), "kinds": mine, "tls": tls, "auth_ids": auth_ids,
                      "first_index": p, "stride": args.procs})
    emit("fleet_start", clients=args.clients, beating=kinds.count("beating"), silent=n_silent,
         misbehaving=n_bad, procs=args.procs, beat_ms=args.beat_ms, seconds=args.seconds, seed=args.seed)
    # What the server should see. Counts that depend on chance (churn drops, broken headers sent) are in
    # fleet_report at the end: the server's closed-by-client and protocol_error counts should match them.
    emit("fleet_expect", online_beating=kinds.count("beating"), online_silent_until_offline=n_silent,
         beats_per_s="%.0f" % (kinds.count("beating") * 1000 / args.beat_ms), false_offline=0)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(s, out), daemon=True) for s in specs]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    totals = []
    try:
        for _ in procs:
            totals.append(out.get(timeout=args.seconds + 120))
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        return 130
    for p in procs:
        p.join(timeout=10)
    agg = {}
    for t in totals:
        for k, v in t.items():
            agg[k] = agg.get(k, 0) + v
    elapsed = time.monotonic() - t0
    emit("fleet_report", seconds="%.1f" % elapsed, beats_sent=agg.get("beats_sent", 0),
         beats_per_s="%.0f" % (agg.get("beats_sent", 0) / args.seconds),
         connects=agg.get("connects", 0), attempts=agg.get("attempts", 0),
         churn_drops=agg.get("churn_drops", 0), bad_frames_sent=agg.get("bad_frames_sent", 0),
         misbehaver_connects=agg.get("misbehaver_connects", 0), frames_echoed=agg.get("frames_echoed", 0),
         device_errors=agg.get("errors", 0))
    return 0 if agg.get("errors", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
