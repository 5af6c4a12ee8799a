"""The heartbeat server to run beside your devices (docs/SERVER.md).

The API: `HeartbeatServer` and `ServerConfig` (core.py). One connection's bytes are conn.py, when a client
goes offline offline.py, echo-probe bookkeeping probe.py, TLS and device authentication before admission
gate.py (docs/SECURITY.md), for fleets the shared presence store presence.py, Prometheus metrics metrics.py
and `--workers` workers.py (docs/FLEET.md), the command line cli.py (`python3 -m tools.hbserver --help`)."""
from tools.hbserver.core import HeartbeatServer, ServerConfig
from tools.hbserver.cli import main, make_printer, serve

__all__ = ["HeartbeatServer", "ServerConfig", "main", "make_printer", "serve"]
