"""`--workers N`: N server processes sharing one port (SO_REUSEPORT), supervised by this one.

Why processes: one CPython process serves one core and has one descriptor budget (RLIMIT_NOFILE); N
workers give N of each. The kernel spreads new connections over the listening sockets of the port group,
so a device lands on some worker; with `--presence` every worker writes the same store, and the fleet is
one view whatever worker holds a device.

The parent reserves the port first with a bound, non-listening SO_REUSEPORT socket (so `--port 0` still
means one port for all, and no outsider can take it between worker restarts), forks the workers, prints
`worker_started` / `worker_exited`, starts a worker again one second after it dies (its devices meanwhile
reconnect to the others), and on SIGINT/SIGTERM stops every worker and waits for them.
"""
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from dataclasses import replace

RESTART_DELAY_S = 1.0
FAST_FAIL_S = 2.0  # a worker that fails this soon after starting is not restarted: it would only fail again
STOP_GRACE_S = 10.0


class _Clock:
    @staticmethod
    def time():
        return time.monotonic()


def reserve_port(host, port):
    """A bound socket in the port's SO_REUSEPORT group, never listening: holds the port for the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    return s


def run(n, config, run_worker, on_event):
    """Run n workers until SIGINT/SIGTERM. run_worker(index, config) is the worker's whole life (it
    returns an exit code); it runs in a forked child with config.port fixed and reuse_port set."""
    try:
        reserved = reserve_port(config.host, config.port)
    except OSError as e:
        on_event("worker_error", {"error": "cannot reserve %s:%d: %s" % (config.host, config.port,
                                                                        e.strerror or e)})
        return 1
    port = reserved.getsockname()[1]
    wconfig = replace(config, port=port, reuse_port=True)
    ctx = multiprocessing.get_context("fork")
    stopping = []

    def on_signal(signum, frame):
        stopping.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def start(i):
        p = ctx.Process(target=_child, args=(i, wconfig, run_worker, reserved), name="hbserver-w%d" % i)
        p.start()
        on_event("worker_started", {"worker": i, "pid": p.pid, "port": port})
        return p, time.monotonic()

    procs = {}
    code = 0
    try:
        for i in range(n):
            procs[i] = start(i)
        restart_at = {}
        while not stopping:
            sentinels = {p.sentinel: i for i, (p, _) in procs.items() if p is not None}
            ready = multiprocessing.connection.wait(list(sentinels), timeout=0.2)
            now = time.monotonic()
            for s in ready:
                i = sentinels[s]
                p, t0 = procs[i]
                p.join()
                on_event("worker_exited", {"worker": i, "pid": p.pid, "code": p.exitcode,
                                           "up_ms": int((now - t0) * 1000)})
                procs[i] = (None, t0)
                if now - t0 < FAST_FAIL_S and p.exitcode not in (0, -signal.SIGKILL, -signal.SIGTERM):
                    on_event("worker_error", {"worker": i, "error": "exited %s right after starting; not "
                                              "restarted" % p.exitcode})
                    stopping.append(0)
                    code = 1
                else:
                    restart_at[i] = now + RESTART_DELAY_S
            for i, when in list(restart_at.items()):
                if now >= when and not stopping:
                    del restart_at[i]
                    procs[i] = start(i)
    finally:
        live = [p for p, _ in procs.values() if p is not None and p.is_alive()]
        for p in live:
            os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for p in live:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        reserved.close()
        for s, h in old.items():
            signal.signal(s, h)
    return code


def _child(index, config, run_worker, reserved):
    from tools._pdeath import die_with_parent

    die_with_parent(signal.SIGTERM)  # a supervisor killed outright: the workers still stop cleanly
    reserved.close()  # the parent's placeholder; the worker listens on its own socket
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)
    os._exit(run_worker(index, config))
