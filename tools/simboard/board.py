"""The simulated board: the MicroPython unix port behind a pty that looks like a board's USB serial port.

Two ptys. The *serial* pty is what a user or mpremote opens (its slave path is printed). Each VM -- one
run of the unix port, from reset to reset -- gets a pty of its own as its controlling terminal; the
simulator relays bytes between the two. That indirection is what lets the board outlive the VM:

* mpremote's soft reset (Ctrl-D on an empty raw-REPL line) makes the unix port *exit*. A board prints
  "soft reboot" and comes back, in the raw REPL and without main.py when it was in the raw REPL. The
  simulator does the same: it starts a fresh VM, prints the line, holds mpremote's bytes until the new VM
  is in the raw REPL, and hides the friendly banner the unix port prints on the way there (what boot.py
  prints still shows).
* Ctrl-C reaches a unix-port program only as SIGINT, so the VM's pty keeps ISIG on (and NOFLSH, so the
  bytes that follow a Ctrl-C -- mpremote's Ctrl-A -- are not discarded by the signal); everything else
  is raw. The unix port turns ISIG off by itself while its REPL reads a line.
* A board cooks its output (\n -> \r\n); the unix port does not, so the relay does.
* `machine` calls the unix port lacks come from standins/machine.py, first on the VM's sys.path after the
  board's own files: it reports watchdog feeds, resets and pin changes on a control pipe. standins/os.py
  gives file sizes in ilistdir() and, with --flash-size, a flash of that size in statvfs(). The watchdog's
  clock runs here, in the simulator, across soft resets as on a board; its expiry power-cycles the VM.

The board's filesystem is a host directory, the VM's current directory (`--flash`). mip's lib directory
is its `lib/` folder.
"""
import errno
import fcntl
import hashlib
import os
import selectors
import signal
import subprocess
import sys
import termios
import time
import tty

HERE = os.path.dirname(os.path.abspath(__file__))
STANDINS = os.path.join(HERE, "standins")
BOOT_SCRIPT = os.path.join(STANDINS, "_simboard_boot.py")

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
FRIENDLY_BANNER = b'Type "help()" for more information.'
BANNER_START = b"MicroPython "
SOFT_REBOOT = b"MPY: soft reboot\r\n"

# machine.reset_cause() values (the ESP32's numbers).
PWRON_RESET, HARD_RESET, WDT_RESET, SOFT_RESET = 1, 2, 3, 5

# How long a new VM may take to reach the raw REPL before the simulator gives up hiding its banner.
BOOT_TIMEOUT_S = 20.0


def log(msg):
    print("simboard: " + msg, file=sys.stderr, flush=True)


def parse_pin(text):
    """'PIN' or 'PIN=LEVEL' (LEVEL 0 or 1; 0 when left out, a button to ground) -> (pin, level).
    ValueError names the text when it is neither."""
    pin, _, level = text.partition("=")
    if not pin or level not in ("", "0", "1"):
        raise ValueError("expected PIN or PIN=0 or PIN=1, got %r" % text)
    return pin, int(level or 0)


def _vm_termios(fd):
    """Raw, except ISIG (Ctrl-C -> SIGINT) and NOFLSH (the signal keeps queued input)."""
    attrs = termios.tcgetattr(fd)
    attrs[0] = 0  # iflag: no CR/NL mapping, no flow control
    attrs[1] = 0  # oflag: no output processing (the relay cooks newlines)
    attrs[2] = termios.CS8 | termios.CREAD | termios.CLOCAL
    attrs[3] = termios.ISIG | termios.NOFLSH
    attrs[6][termios.VMIN] = 1
    attrs[6][termios.VTIME] = 0
    attrs[6][termios.VINTR] = b"\x03"
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _nonblocking(fd):
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


class Vm:
    """One run of the unix port: process, its pty master, its control pipe."""

    def __init__(self, argv, flash, env, boot_main):
        master, slave = os.openpty()
        _vm_termios(slave)
        ctl_r, ctl_w = os.pipe()
        env = dict(env, SIMBOARD_CTL_FD=str(ctl_w), SIMBOARD_BOOT="main" if boot_main else "repl")

        def child_setup():
            # A session of its own with the pty as controlling terminal: Ctrl-C becomes its SIGINT.
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            argv + ["-i", BOOT_SCRIPT], cwd=flash, env=env, stdin=slave, stdout=slave, stderr=slave,
            pass_fds=(ctl_w,), preexec_fn=child_setup, close_fds=True)
        os.close(slave)
        os.close(ctl_w)
        _nonblocking(master)
        _nonblocking(ctl_r)
        self.master = master
        self.ctl = ctl_r
        self.ctl_buf = b""
        self.up = False  # the boot script has run its first line: SIGINT now lands in MicroPython

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log("VM pid %d did not end after SIGKILL" % self.proc.pid)
        for fd in (self.master, self.ctl):
            try:
                os.close(fd)
            except OSError:
                pass


class SimBoard:
    def __init__(self, flash, micropython_argv, hold_pins=None, uid=None, flash_size=None, heap=None,
                 link=None, echo=None):
        self.flash = os.path.abspath(flash)
        os.makedirs(self.flash, exist_ok=True)
        self.argv = list(micropython_argv)
        if heap:
            self.argv += ["-X", "heapsize=%s" % heap]
        self.hold_pins = dict(hold_pins or {})
        # A stable id per flash directory, like a board's chip id.
        self.uid = uid or hashlib.sha256(self.flash.encode()).hexdigest()[:12]
        self.flash_size = flash_size
        self.echo = echo  # a binary stream that also gets the board's output (--echo), or None
        self.sel = selectors.DefaultSelector()

        self.serial_master, self.serial_slave = os.openpty()
        tty.setraw(self.serial_slave)  # what pyserial sets too; before it opens, no echo of our output
        _nonblocking(self.serial_master)
        self.port = os.ttyname(self.serial_slave)
        self.link = link
        if link:
            if os.path.islink(link) or os.path.exists(link):
                os.unlink(link)
            os.symlink(self.port, link)

        self.vm = None
        self.raw_mode = False  # the VM's REPL is the raw one (decides what a soft reset comes back to)
        self.hiding = False  # a soft reset from the raw REPL: output is hidden until the raw banner
        self.hide_deadline = 0.0
        self.pending_in = b""  # serial input held while a VM boots
        self.tail = b""  # last output bytes, to find banners split across reads
        self.held_out = b""  # output of a VM still on its way back to the raw REPL
        self.last_out = b""  # the last byte sent, to cook lone \n
        self.wdt_ms = None
        self.wdt_deadline = None
        self.pins = {}
        self.boots = 0
        self.stopping = False

        self.sel.register(self.serial_master, selectors.EVENT_READ, "serial")

    # -- the VM's life ------------------------------------------------------------------------------
    def _env(self, cause):
        env = dict(os.environ)
        path = ["", STANDINS, ".frozen", os.path.join(self.flash, "lib")]
        env.pop("SIMBOARD_FLASH_SIZE", None)
        if self.flash_size:
            env["SIMBOARD_FLASH_SIZE"] = str(self.flash_size)
        env["SIMBOARD_PATH"] = ":".join(path)
        env["SIMBOARD_RESET_CAUSE"] = str(cause)
        env["SIMBOARD_WDT_RUNNING"] = "1" if self.wdt_ms else "0"
        env["SIMBOARD_UID"] = self.uid
        env["SIMBOARD_PINS"] = ",".join("%s=%d" % kv for kv in sorted(self.hold_pins.items()))
        env.pop("MICROPYPATH", None)
        return env

    def start(self, cause=PWRON_RESET, boot_main=True):
        """(Re)start the VM. A power-on or hard reset clears the watchdog; a soft reset keeps it."""
        if self.vm is not None:
            self._drop_vm()
        if cause != SOFT_RESET:
            self.wdt_ms = self.wdt_deadline = None
        self.boots += 1
        self.raw_mode = not boot_main
        self.hiding = not boot_main
        self.hide_deadline = time.monotonic() + BOOT_TIMEOUT_S
        self.tail = b""
        self.held_out = b""
        names = {PWRON_RESET: "power on", HARD_RESET: "hard reset", WDT_RESET: "watchdog reset",
                 SOFT_RESET: "soft reset"}
        log("%s (boot %d, %s)" % (names.get(cause, cause), self.boots,
                                  "main.py" if boot_main else "raw REPL, no main.py"))
        self.vm = Vm(self.argv, self.flash, self._env(cause), boot_main)
        self.sel.register(self.vm.master, selectors.EVENT_READ, "vm")
        self.sel.register(self.vm.ctl, selectors.EVENT_READ, "ctl")

    def _drop_vm(self):
        for fd in (self.vm.master, self.vm.ctl):
            try:
                self.sel.unregister(fd)
            except (KeyError, ValueError):
                pass
        self.vm.kill()
        self.vm = None

    def power_cycle(self, cause=PWRON_RESET):
        self.pending_in = b""  # what was on its way to the old VM is lost, as on a board
        self.start(cause, boot_main=True)

    def soft_reboot(self):
        """What a board does on a soft reset: print the line, start again, main.py only from friendly."""
        raw = self.raw_mode
        self._to_serial(SOFT_REBOOT)
        self.start(SOFT_RESET, boot_main=not raw)

    # -- bytes in both directions -------------------------------------------------------------------
    def _to_serial(self, data):
        if self.echo is not None:
            self.echo.write(data)
            self.echo.flush()
        try:
            os.write(self.serial_master, data)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EIO):
                raise
            # Nobody reads the port and its buffer is full: the output is lost, as from a board's UART.

    def _cook(self, data):
        out = bytearray()
        prev = self.last_out
        for b in data:
            if b == 10 and prev != b"\r":
                out += b"\r"
            out.append(b)
            prev = bytes((b,))
        if data:
            self.last_out = data[-1:]
        return bytes(out)

    def _from_vm(self, data):
        seen = self.tail + data
        self.tail = seen[-64:]
        raw_at, friendly_at = seen.rfind(RAW_BANNER), seen.rfind(FRIENDLY_BANNER)
        if raw_at != friendly_at:  # both -1: no banner here; otherwise the later one is the REPL now
            self.raw_mode = raw_at > friendly_at
        if self.hiding:
            self.held_out += data
            i = self.held_out.find(RAW_BANNER)
            if i < 0:
                return
            held, self.held_out = self.held_out, b""
            self.hiding = False
            # What boot.py printed goes out, as from a board (mpremote lets it through between "soft reboot"
            # and the raw banner); the unix port's friendly banner, printed before it reads the Ctrl-A
            # that takes it back to the raw REPL, does not: a board goes straight there.
            j = held.rfind(BANNER_START, 0, i)
            if j >= 0 and FRIENDLY_BANNER in held[j:i]:
                held = held[:j] + held[i:]
            self._to_serial(self._cook(held))
            self._deliver()
            return
        self._to_serial(self._cook(data))

    def _from_serial(self, data):
        self.pending_in += data
        self._deliver()

    def _deliver(self):
        if self.vm is None or not self.vm.up or self.hiding or not self.pending_in:
            return
        try:
            n = os.write(self.vm.master, self.pending_in)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EIO):
                raise
            return
        self.pending_in = self.pending_in[n:]

    def _control(self, line):
        words = line.split()
        if not words:
            return
        cmd = words[0]
        if cmd == "up":
            self.vm.up = True
            if self.hiding:
                os.write(self.vm.master, b"\x01")  # into the raw REPL, as the board was before the reset
            self._deliver()
        elif cmd == "wdt":
            self.wdt_ms = int(words[1])
            self.wdt_deadline = time.monotonic() + self.wdt_ms / 1000
            log("watchdog started, %d ms" % self.wdt_ms)
        elif cmd == "feed":
            if self.wdt_ms:
                self.wdt_deadline = time.monotonic() + self.wdt_ms / 1000
        elif cmd == "reset":
            self.power_cycle(HARD_RESET)
        elif cmd == "soft":
            self.soft_reboot()
        elif cmd == "pin":
            self.pins[words[1]] = int(words[2])
        else:
            log("unknown control line from the VM: %r" % line)

    def command(self, line):
        """A command from the simulator's stdin: power, hold PIN[=LEVEL], release PIN, quit."""
        words = line.split()
        if not words:
            return
        if words[0] in ("power", "power-cycle"):
            self.power_cycle(PWRON_RESET)
        elif words[0] == "hold" and len(words) == 2:
            try:
                pin, level = parse_pin(words[1])
            except ValueError as e:
                log("hold: %s; nothing changed" % e)
                return
            self.hold_pins[pin] = level
            log("pin %s held at %d from the next boot" % (pin, level))
        elif words[0] == "release" and len(words) == 2:
            self.hold_pins.pop(words[1], None)
            log("pin %s released from the next boot" % words[1])
        elif words[0] == "quit":
            self.stopping = True
        else:
            log("unknown command %r (known: power, hold PIN[=LEVEL], release PIN, quit)" % line)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self, deadline=None, commands_fd=None, wake_fd=None):
        """Relay until stopped: a `quit` command, a byte on wake_fd ('p' power-cycles, 'q' quits), or
        the deadline (time.monotonic()) passing."""
        cmd_buf = b""
        if commands_fd is not None:
            try:
                self.sel.register(commands_fd, selectors.EVENT_READ, "cmd")
            except PermissionError:
                pass  # /dev/null or a regular file: no commands, signals only
        if wake_fd is not None:
            self.sel.register(wake_fd, selectors.EVENT_READ, "wake")
        if self.vm is None:
            self.start()
        while not self.stopping:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                log("stopping: --timeout reached")
                break
            if self.wdt_deadline is not None and now >= self.wdt_deadline:
                log("watchdog expired (%d ms without a feed): resetting the board" % self.wdt_ms)
                self.power_cycle(WDT_RESET)
                continue
            if self.hiding and now >= self.hide_deadline:
                log("the new VM did not reach the raw REPL in %.0f s" % BOOT_TIMEOUT_S)
                self.hiding = False
                self._to_serial(self._cook(self.held_out))
                self.held_out = b""
                self._deliver()
            waits = [t for t in (deadline, self.wdt_deadline, self.hide_deadline if self.hiding else None)
                     if t is not None]
            timeout = max(0.0, min(waits) - now) if waits else None
            for key, _ in self.sel.select(timeout):
                what = key.data
                fd = key.fd
                if what == "serial":
                    try:
                        data = os.read(fd, 4096)
                    except OSError as e:
                        if e.errno in (errno.EAGAIN, errno.EIO):
                            continue
                        raise
                    self._from_serial(data)
                elif what == "vm":
                    if self.vm is None or fd != self.vm.master:
                        continue
                    try:
                        data = os.read(fd, 4096)
                    except OSError as e:
                        if e.errno == errno.EAGAIN:
                            continue
                        data = b""  # EIO: the VM closed its terminal, i.e. it ended
                    if data:
                        self._from_vm(data)
                    else:
                        self._vm_ended()
                        break  # the selector's registrations changed
                elif what == "ctl":
                    if self.vm is None or fd != self.vm.ctl:
                        continue
                    try:
                        data = os.read(fd, 4096)
                    except BlockingIOError:
                        continue
                    if not data:
                        self.sel.unregister(fd)
                        continue
                    self.vm.ctl_buf += data
                    restarted = False
                    while b"\n" in self.vm.ctl_buf:
                        line, _, self.vm.ctl_buf = self.vm.ctl_buf.partition(b"\n")
                        vm = self.vm
                        self._control(line.decode("ascii", "replace"))
                        if self.vm is not vm:
                            restarted = True
                            break
                    if restarted:
                        break
                elif what == "cmd":
                    try:
                        data = os.read(fd, 4096)
                    except OSError:  # EIO: a terminal we are in the background of
                        data = b""
                    if not data:
                        self.sel.unregister(fd)  # stdin closed: no more commands, the board goes on
                        continue
                    cmd_buf += data
                    while b"\n" in cmd_buf:
                        line, _, cmd_buf = cmd_buf.partition(b"\n")
                        self.command(line.decode("utf-8", "replace"))
                    break
                elif what == "wake":
                    for b in os.read(fd, 64):
                        if b == ord("p"):
                            self.power_cycle(PWRON_RESET)
                        elif b == ord("q"):
                            self.stopping = True
                    break

    def _vm_ended(self):
        rc = self.vm.proc.wait(timeout=10)
        if rc < 0:
            log("the VM died (signal %d): power-cycling the board" % -rc)
            self.power_cycle(PWRON_RESET)
        else:
            # The unix port exits where a board soft-resets: Ctrl-D in a REPL, or sys.exit() at the REPL.
            self.soft_reboot()

    def close(self):
        if self.vm is not None:
            self._drop_vm()
        for fd in (self.serial_master, self.serial_slave):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.link and os.path.islink(self.link):
            os.unlink(self.link)
        self.sel.close()
