"""The whole fleet as the presence store sees it: which devices are online, on which server.

    python3 -m tools.fleetstatus --presence redis://127.0.0.1:6379            # counts, then one line a device
    python3 -m tools.fleetstatus --presence redis://127.0.0.1:6379 --json     # one JSON document
    python3 -m tools.fleetstatus --presence redis://127.0.0.1:6379 --watch    # then follow every change

The servers write the store (`tools.hbserver --presence URL`, docs/FLEET.md). A device listed in the store's
index whose record has expired belonged to a server that stopped renewing it (it died without a word): it
shows as offline with reason `expired`.
"""
import argparse
import asyncio
import json
import sys
import time

from tools.hbserver.presence import DEFAULT_PREFIX, connect, keys, parse_url

FIELDS = ("state", "server", "since", "last_beat", "reason", "changed")


async def snapshot(r, prefix):
    """{"devices": [...], "servers": {...}, "counts": {...}} read from the store."""
    k = keys(prefix)
    names = await r.zrange(k["index"], 0, -1)
    pipe = r.pipeline(transaction=False)
    for n in names:
        pipe.hmget(k["dev"] + n, *FIELDS)
    rows = await pipe.execute() if names else []
    devices = []
    for name, vals in zip(names, rows):
        rec = dict(zip(FIELDS, vals))
        if rec["state"] is None:
            rec = {"state": "offline", "server": None, "since": None, "last_beat": None, "reason": "expired",
                   "changed": None}
        else:
            for f in ("since", "last_beat", "changed"):
                rec[f] = int(rec[f]) if rec[f] else None
        rec["device"] = name
        devices.append(rec)
    servers = {}
    skeys = [s async for s in r.scan_iter(match=k["server"] + "*", count=1000)]
    for sk in sorted(skeys):
        info = await r.hgetall(sk)
        servers[sk[len(k["server"]):]] = {"devices": int(info.get("devices", 0)), "seen": int(info.get("seen", 0))}
    counts = {"online": 0, "offline": 0, "by_server": {}, "offline_by_reason": {}}
    for d in devices:
        counts[d["state"]] = counts.get(d["state"], 0) + 1
        if d["state"] == "online":
            counts["by_server"][d["server"]] = counts["by_server"].get(d["server"], 0) + 1
        else:
            counts["offline_by_reason"][d["reason"]] = counts["offline_by_reason"].get(d["reason"], 0) + 1
    return {"devices": devices, "servers": servers, "counts": counts}


def _ago(ms, now_ms):
    if ms is None:
        return "-"
    return "%.1fs" % ((now_ms - ms) / 1000)


def print_text(snap, out):
    c = snap["counts"]
    now = int(time.time() * 1000)
    out.write("devices=%d online=%d offline=%d servers_alive=%d\n"
              % (len(snap["devices"]), c["online"], c["offline"], len(snap["servers"])))
    for sid in sorted(set(c["by_server"]) | set(snap["servers"])):
        alive = "alive" if sid in snap["servers"] else "gone"
        out.write("server %s online=%d %s\n" % (sid, c["by_server"].get(sid, 0), alive))
    for reason in sorted(c["offline_by_reason"]):
        out.write("offline reason=%s count=%d\n" % (reason, c["offline_by_reason"][reason]))
    for d in sorted(snap["devices"], key=lambda d: (d["state"] != "online", d["device"])):
        out.write("device %s %s server=%s last_beat=%s ago%s\n" % (
            d["device"], d["state"], d["server"] or "-", _ago(d["last_beat"], now),
            "" if d["state"] == "online" else " reason=%s" % d["reason"]))
    out.flush()


async def watch(r, prefix, as_json, out, stop_after=None):
    """Print every change as it is published, plus devices whose records expire (their server died and
    nobody published: found by re-reading the index once a second)."""
    k = keys(prefix)
    pubsub = r.pubsub()
    await pubsub.subscribe(k["channel"])
    known = {d["device"]: d["state"] for d in (await snapshot(r, prefix))["devices"]}
    printed = 0
    last_scan = time.monotonic()
    try:
        while stop_after is None or printed < stop_after:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            changes = []
            if msg is not None and msg.get("type") == "message":
                ch = json.loads(msg["data"])
                known[ch["device"]] = ch["state"]
                changes.append(ch)
            if time.monotonic() - last_scan >= 1.0:
                last_scan = time.monotonic()
                for d in (await snapshot(r, prefix))["devices"]:
                    if d["reason"] == "expired" and known.get(d["device"]) != "offline":
                        known[d["device"]] = "offline"
                        changes.append({"device": d["device"], "state": "offline", "server": None,
                                        "reason": "expired", "t": int(time.time() * 1000)})
            for ch in changes:
                if as_json:
                    out.write(json.dumps(ch, separators=(",", ":")) + "\n")
                else:
                    out.write("change %s %s server=%s%s\n" % (
                        ch["device"], ch["state"], ch.get("server") or "-",
                        " reason=%s" % ch["reason"] if ch["state"] == "offline" else ""))
                out.flush()
                printed += 1
    finally:
        await pubsub.aclose()


async def amain(args, out):
    r = connect(args.presence, timeout_ms=args.timeout_ms)
    try:
        snap = await snapshot(r, args.prefix)
        if args.json:
            out.write(json.dumps(snap, separators=(",", ":")) + "\n")
            out.flush()
        else:
            print_text(snap, out)
        if args.watch:
            await watch(r, args.prefix, args.json, out, args.count)
    finally:
        await r.aclose()
    return 0


def main(argv=None, out=sys.stdout):
    ap = argparse.ArgumentParser(prog="python3 -m tools.fleetstatus", description=__doc__.split("\n\n")[0],
                                 epilog="See docs/FLEET.md.")
    ap.add_argument("--presence", required=True, metavar="redis://HOST:PORT[/DB]", help="the presence store")
    ap.add_argument("--prefix", default=DEFAULT_PREFIX, help="key prefix the servers use (default %(default)s)")
    ap.add_argument("--json", action="store_true", help="JSON instead of text (with --watch: one line per change)")
    ap.add_argument("--watch", action="store_true", help="after the snapshot, print changes as they happen")
    ap.add_argument("--count", type=int, default=None, help="with --watch: stop after this many changes")
    ap.add_argument("--timeout-ms", type=int, default=2000, help="store connect/command timeout (default 2000)")
    args = ap.parse_args(argv)
    try:
        parse_url(args.presence)
    except ValueError as e:
        ap.error(str(e))
    try:
        return asyncio.run(amain(args, out))
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        print("fleetstatus: cannot read %s: %s" % (args.presence, e), file=sys.stderr)
        return 1
    except Exception as e:  # the client library's connection errors are not OSErrors
        if type(e).__module__.startswith(("redis", "valkey")):
            print("fleetstatus: cannot read %s: %s" % (args.presence, e), file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
