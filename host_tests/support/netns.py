"""Network namespaces joined by a veth pair, for fault tests on the real Linux TCP stack.

    with NetnsPair(subnet=7) as pair:          # 10.213.7.1 (client side), 10.213.7.2 (server side)
        lsock = pair.server_socket(39002)      # a listening socket living in the server namespace
        proc = subprocess.Popen(pair.exec_client(argv))   # `ip netns exec <client ns> argv...`
        pair.link_down()                       # the server's end goes dark: no FIN, no RST

Namespaces are named hbf-<pid>-<n>-c / -s, so that parallel runs and leftovers of a killed run never
clash; every address is one the test chose in 10.213.0.0/16 and exists only inside these namespaces --
nothing is added to the root namespace, and traffic only flows between the two. Teardown is guaranteed:
`close()` from `with`/finally, and an atexit hook for anything a crash left behind.

Availability: `netns_status()` says whether namespaces can be made here (root, `ip`, a probe namespace);
`require_netns()` skips a test with the reason, or fails it when HB_REQUIRE_NETNS is set (CI), so the
namespace tier never goes green by skipping.
"""
import atexit
import ctypes
import itertools
import os
import shutil
import socket
import subprocess
import threading

from support.tiers import skip_or_fail

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
_counter = itertools.count(1)
_live = set()  # namespace names created and not yet deleted, for the atexit sweep
_status = None


def ip(*args, check=True, timeout=10):
    p = subprocess.run(("ip",) + args, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError("ip %s failed (rc=%d): %s" % (" ".join(args), p.returncode, p.stderr.strip()))
    return p


def _delete(name):
    ip("netns", "del", name, check=False)
    _live.discard(name)


@atexit.register
def _sweep():
    for name in list(_live):
        _delete(name)


def netns_status():
    """(True, "") when namespaces and veth pairs can be created here, else (False, reason). Probed once."""
    global _status
    if _status is None:
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            _status = (False, "network namespaces need root (running as uid %s)" % getattr(os, "geteuid", lambda: "?")())
        elif shutil.which("ip") is None:
            _status = (False, "the `ip` command (iproute2) is not installed")
        else:
            try:
                with NetnsPair(subnet=255):
                    pass
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                _status = (False, "cannot create network namespaces with a veth pair: %s" % e)
            else:
                _status = (True, "")
    return _status


def require_netns():
    ok, why = netns_status()
    if ok:
        return
    skip_or_fail("HB_REQUIRE_NETNS", "network namespaces", why)


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def run_in_netns(name, fn, *args):
    """Call fn(*args) in a thread that has entered namespace `name`; return its result (or raise).

    Only network namespaces are entered, which Linux allows for one thread of a threaded process; the
    thread ends afterwards, so nothing else in this process changes namespace. A socket made inside keeps
    living in that namespace whichever thread uses it later."""
    box = {}

    def body():
        try:
            fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
            try:
                if _libc().setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, "setns(%s): %s" % (name, os.strerror(e)))
            finally:
                os.close(fd)
            box["result"] = fn(*args)
        except BaseException as e:  # handed to the caller
            box["error"] = e

    t = threading.Thread(target=body, name="netns-" + name, daemon=True)
    t.start()
    t.join(timeout=30)
    if "error" in box:
        raise box["error"]
    if "result" not in box:
        raise RuntimeError("run_in_netns(%s) did not finish" % name)
    return box["result"]


class NetnsPair:
    """A client namespace and a server namespace joined by one veth pair, lo up in both."""

    CLIENT_IF = "hbc0"
    SERVER_IF = "hbs0"

    def __init__(self, subnet):
        assert 0 <= subnet <= 255
        tag = "hbf-%d-%d" % (os.getpid(), next(_counter))
        self.client_ns = tag + "-c"
        self.server_ns = tag + "-s"
        self.client_ip = "10.213.%d.1" % subnet
        self.server_ip = "10.213.%d.2" % subnet
        self.prefix = "10.213.%d.0/24" % subnet
        self.closed = False
        try:
            for ns in (self.client_ns, self.server_ns):
                ip("netns", "add", ns)
                _live.add(ns)
                ip("-n", ns, "link", "set", "lo", "up")
            # Created directly inside the two namespaces: the pair never exists in the root namespace.
            ip("link", "add", "name", self.CLIENT_IF, "netns", self.client_ns, "type", "veth",
               "peer", "name", self.SERVER_IF, "netns", self.server_ns)
            ip("-n", self.client_ns, "addr", "add", self.client_ip + "/24", "dev", self.CLIENT_IF)
            ip("-n", self.server_ns, "addr", "add", self.server_ip + "/24", "dev", self.SERVER_IF)
            ip("-n", self.client_ns, "link", "set", self.CLIENT_IF, "up")
            ip("-n", self.server_ns, "link", "set", self.SERVER_IF, "up")
        except BaseException:
            self.close()
            raise

    # -- running things inside -------------------------------------------------------------------
    def exec_client(self, argv):
        return ["ip", "netns", "exec", self.client_ns] + list(argv)

    def exec_server(self, argv):
        return ["ip", "netns", "exec", self.server_ns] + list(argv)

    def server_socket(self, port, backlog=16):
        """A listening TCP socket on server_ip:port inside the server namespace."""
        def make():
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.server_ip, port))
            s.listen(backlog)
            return s

        return run_in_netns(self.server_ns, make)

    # -- faults ------------------------------------------------------------------------------------
    def link_down(self):
        """The server's end of the veth goes down: the client's packets vanish, nothing comes back --
        no FIN, no RST, no ICMP. The client's end only loses carrier."""
        ip("-n", self.server_ns, "link", "set", self.SERVER_IF, "down")

    def link_up(self):
        ip("-n", self.server_ns, "link", "set", self.SERVER_IF, "up")

    def dark_address(self, host=99):
        """An address on the client's subnet that drops SYNs: a permanent neighbour entry sends frames
        to a MAC address nobody has, so the server namespace's veth discards them silently (no ARP
        failure, no ICMP, no RST). Returns the address."""
        addr = "10.213.%s.%d" % (self.client_ip.split(".")[2], host)
        ip("-n", self.client_ns, "neigh", "replace", addr, "lladdr", "02:00:00:00:%02x:%02x" % (0x21, host),
           "dev", self.CLIENT_IF, "nud", "permanent")
        return addr

    def close(self):
        if self.closed:
            return
        self.closed = True
        for ns in (self.client_ns, self.server_ns):
            _delete(ns)  # removes the veth pair with it

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
