"""The kernel side of a probe: real sockets and a TUN device in a namespace of their own.

Theory of operation
-------------------
Each script runs in a forked child that first calls unshare(CLONE_NEWNET): the namespace has no
name, no process but that child, and disappears with it -- on success, on error, on Ctrl-C or
SIGTERM of the parent (the child asks for SIGKILL when its parent dies, PR_SET_PDEATHSIG), even
on SIGKILL of the parent. Nothing is left for `timewait lab cleanup` to find, and nothing of the
host's namespace is touched: sysctls are written only after unshare (`write_sysctl()` refuses
otherwise).

Inside: IPv6 off (a fresh TUN would send router solicitations), `tun0` opened with
IFF_TUN|IFF_NO_PI (simulators-and-tests.md 4.1, Appendix B) and given 192.0.2.1/24, so every
remote address of 192.0.2.0/24 is reached through it; the sysctls pinned for every probe
(PINNED, below) and the script's own. The script's segments are written to the TUN fd; what
the kernel sends is read from it (and thrown away) and, with the kernel's transmit timestamp,
from an AF_PACKET socket bound to tun0 with SO_TIMESTAMPNS -- so segment times are the kernel's,
not our process's, and a loaded machine does not make them late. The same socket sees our own
injections (PACKET_HOST) and dates them the same way.

Sockets are non-blocking and TCP_NODELAY (the model has no Nagle). State comes from sock_diag
(timewait.live.netlink.dump: state, timer, expires, retransmissions), counters from
/proc/net/netstat and /proc/net/snmp of the namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import pickle
import select
import signal
import socket
import struct
import threading
import time
from typing import Any, Final

from timewait.lab.namespaces import LabChildFailed, LabUnavailable, write_sysctl
from timewait.lab.probe.packet import Packet
from timewait.lab.probe.script import LOCAL_ADDR, Call, Script
from timewait.lab.probe.trace import Trace, drive, payload
from timewait.live import netlink  # imported here, not in the child: no disk reads mid-script
from timewait.model.states import LinuxState

CLONE_NEWNET: Final = 0x40000000
PR_SET_PDEATHSIG: Final = 1
TUNSETIFF: Final = 0x400454CA
IFF_TUN: Final = 0x0001
IFF_NO_PI: Final = 0x1000
IFF_UP: Final = 0x1
SIOCSIFADDR: Final = 0x8916
SIOCSIFNETMASK: Final = 0x891C
SIOCGIFFLAGS: Final = 0x8913
SIOCSIFFLAGS: Final = 0x8914
SO_TIMESTAMPNS: Final = 35  # asm-generic/socket.h SO_TIMESTAMPNS_OLD
ETH_P_ALL: Final = 3
PACKET_HOST: Final = 0
PACKET_OUTGOING: Final = 4
TCP_LINGER2: Final = 8
TUN: Final = "tun0"
RT_PRIORITY: Final = 10  # SCHED_RR priority of the kernel side (1..99)

# Pinned in every probe namespace, before the script's own sysctls (a script may override):
#  - tcp_no_metrics_save=1: no per-destination RTT cache carried from one connection to the
#    next (tcp_metrics.c); the model has none.
#  - tcp_autocorking=0: a small write is not held back while an earlier segment still sits in
#    the TUN queue (tcp_should_autocork()); the model sends at once.
PINNED: Final = (("tcp_no_metrics_save", "1"), ("tcp_autocorking", "0"))

_NETSTAT_FILES: Final = ("/proc/net/netstat", "/proc/net/snmp")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _ifreq_addr(name: str, addr: str) -> bytes:
    return struct.pack("16sH2s4s8s", name.encode(), socket.AF_INET, b"\0\0",
                       socket.inet_aton(addr), b"\0" * 8)  # fmt: skip


def _if_up(ctl: socket.socket, name: str) -> None:
    req = struct.pack("16sH22s", name.encode(), 0, b"")
    flags = struct.unpack("16sH", fcntl.ioctl(ctl, SIOCGIFFLAGS, req)[:18])[1]
    fcntl.ioctl(ctl, SIOCSIFFLAGS, struct.pack("16sH22s", name.encode(), flags | IFF_UP, b""))


def read_counters() -> dict[str, int]:
    """TcpExt and Tcp counters of the calling thread's namespace, by kernel name."""
    out: dict[str, int] = {}
    for path in _NETSTAT_FILES:
        with open(path) as f:
            lines = f.read().splitlines()
        for head, vals in zip(lines[::2], lines[1::2], strict=False):
            names, values = head.split()[1:], vals.split()[1:]
            for n, v in zip(names, values, strict=False):
                with contextlib.suppress(ValueError):
                    out[n] = int(v)
    return out


_DIAG_MSG: Final = struct.Struct("=BBBBHH16s16sIIIIIII")


def diag_sockets(
    sock: socket.socket | None = None,
) -> list[tuple[int, str, int, int, int, int, int]]:
    """(lport, raddr, rport, state, timer, expires_ms, retrans) of every IPv4 TCP socket of the
    calling thread's namespace (sock_diag, as timewait.live.netlink asks it; `sock` is an open
    NETLINK_SOCK_DIAG socket to reuse). Every state but CLOSE / BOUND_INACTIVE: bind()-only
    sockets are not connections. A few sockets fit in one datagram: no 4 MiB receive blocks
    (netlink.dump() sizes for 200,000 sockets, 20 ms a call here)."""
    own = sock is None
    s = netlink.open_socket() if sock is None else sock
    states = netlink.ALL_STATES & ~(1 << 7) & ~(1 << 13)
    out = []
    try:
        s.send(netlink.encode_request(netlink.AF_INET, states))
        done = False
        while not done:
            raw = s.recv(1 << 16)
            off = 0
            while off + 16 <= len(raw):
                length, mtype = struct.unpack_from("=IH", raw, off)
                if length < 16 or mtype == netlink.NLMSG_DONE:
                    done = True
                    break
                if mtype == netlink.NLMSG_ERROR:
                    raise LabChildFailed("sock_diag refused the dump")
                if mtype == netlink.SOCK_DIAG_BY_FAMILY and length >= 16 + 72:
                    fields = _DIAG_MSG.unpack_from(raw, off + 16)
                    state, timer, retrans, sport, dport = fields[1:6]
                    dst, expires = fields[7], fields[11]
                    out.append((
                        socket.ntohs(sport), socket.inet_ntoa(dst[:4]), socket.ntohs(dport),
                        state, timer, expires, retrans,
                    ))  # fmt: skip
                off += (length + 3) & ~3
    finally:
        if own:
            s.close()
    return out


class KernelSide:
    """A probe's kernel end; build it inside the child, after unshare (see `run_script`)."""

    def __init__(self, sysctls: tuple[tuple[str, str], ...]) -> None:
        for path in ("all", "default"):
            with open(f"/proc/sys/net/ipv6/conf/{path}/disable_ipv6", "w") as f:
                f.write("1")
        for k, v in (*PINNED, *sysctls):
            write_sysctl(k, v)
        self.tun = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        fcntl.ioctl(self.tun, TUNSETIFF, struct.pack("16sH", TUN.encode(), IFF_TUN | IFF_NO_PI))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ctl:
            fcntl.ioctl(ctl, SIOCSIFADDR, _ifreq_addr(TUN, LOCAL_ADDR))
            fcntl.ioctl(ctl, SIOCSIFNETMASK, _ifreq_addr(TUN, "255.255.255.0"))
            _if_up(ctl, "lo")
            _if_up(ctl, TUN)
        self.cap = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        self.cap.bind((TUN, ETH_P_ALL))
        self.cap.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.cap.setblocking(False)
        self.diag = netlink.open_socket()
        self.socks: dict[str, socket.socket] = {}
        self.out: list[tuple[int, Packet]] = []
        self.injected: list[tuple[int, bytes]] = []
        self.dumped_at = 0
        self.last_span = 0
        self.t0 = time.time_ns()

    # -- time and packets -----------------------------------------------------------------

    def now(self) -> int:
        return time.time_ns() - self.t0

    def _read_all(self) -> None:
        while True:
            try:
                data, anc, _flags, addr = self.cap.recvmsg(65536, 256)
            except BlockingIOError:
                break
            stamp = None
            for _lvl, typ, d in anc:
                if typ == SO_TIMESTAMPNS and len(d) >= 16:
                    sec, ns = struct.unpack("qq", d[:16])
                    stamp = sec * 1_000_000_000 + ns - self.t0
            t = stamp if stamp is not None else self.now()
            if addr[2] == PACKET_OUTGOING:
                pkt = Packet.decode(data)
                if pkt is not None:
                    self.out.append((t, pkt))
            elif addr[2] == PACKET_HOST:
                self.injected.append((t, data))
        while True:
            try:
                os.read(self.tun, 65536)  # what the kernel sent: consumed, freeing the skb
            except BlockingIOError:
                break

    def wait_until(self, t: int) -> int:
        while True:
            left = t - self.now()
            if left <= 0:
                break
            select.select([self.cap.fileno(), self.tun], [], [], left / 1e9)
            self._read_all()
        self._read_all()
        return self.now()

    def inject(self, pkt: Packet) -> int:
        data = pkt.encode()
        before = self.now()
        os.write(self.tun, data)
        self._read_all()
        for i, (t, seen) in enumerate(self.injected):
            if seen == data:
                del self.injected[: i + 1]
                return t
        return before

    def drain(self) -> list[tuple[int, Packet, bool]]:
        self._read_all()
        out, self.out = self.out, []
        return [(t, p, False) for t, p in out]

    # -- socket calls ---------------------------------------------------------------------

    def _new(self, name: str) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.socks[name] = s
        return s

    def call(self, step: Call) -> tuple[int, str]:
        t = self.now()
        try:
            result = self._call(step)
        except OSError as e:
            result = errno.errorcode.get(e.errno or 0, str(e.errno))
        self.last_span = self.now() - t
        return t, result

    def _call(self, step: Call) -> str:
        op, name, args = step.op, step.sock, step.args
        s = self.socks.get(name)
        if op == "socket":
            self._new(name)
            return "ok"
        if s is None:
            s = self._new(name)
        if op == "setsockopt":
            opt, vals = args[0], [int(a) for a in args[1:]]
            if opt == "reuseaddr":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, vals[0] if vals else 1)
            elif opt == "reuseport":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, vals[0] if vals else 1)
            elif opt == "linger":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", *vals[:2]))
            elif opt == "linger2":
                s.setsockopt(socket.IPPROTO_TCP, TCP_LINGER2, vals[0])
            return "ok"
        if op == "bind":
            s.bind((args[1] if len(args) > 1 else "0.0.0.0", int(args[0])))
            return "ok"
        if op == "listen":
            if args and s.getsockname()[1] == 0:
                s.bind(("0.0.0.0", int(args[0])))
            backlog = int(args[2]) if len(args) >= 3 and args[1] == "backlog" else 128
            s.listen(backlog)
            return "ok"
        if op == "connect":
            addr, _, port = args[0].rpartition(":")
            rc = s.connect_ex((addr, int(port)))
            if rc not in (0, errno.EINPROGRESS):
                raise OSError(rc, os.strerror(rc))
            return "ok"
        if op == "accept":
            listener = self.socks[args[0]]
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                return "EAGAIN"
            conn.setblocking(False)
            self.socks[name] = conn
            return "ok"
        if op == "write":
            n = s.send(payload(0, int(args[0])))
            return str(n)
        if op == "read":
            try:
                data = s.recv(int(args[0]) if args else 65536)
            except BlockingIOError:
                return "EAGAIN"
            return str(len(data))
        if op == "shutdown":
            how = {"wr": socket.SHUT_WR, "rd": socket.SHUT_RD, "rdwr": socket.SHUT_RDWR}[args[0]]
            s.shutdown(how)
            return "ok"
        if op == "close":
            s.close()
            del self.socks[name]
            return "ok"
        raise ValueError(f"unknown call {op}")

    def local_port(self, sock: str) -> int:
        return int(self.socks[sock].getsockname()[1])

    # -- state ----------------------------------------------------------------------------

    def sockets(self, at: int | None = None) -> list[tuple[int, str, int, int, str, int, int, int]]:
        self.dumped_at = self.now()  # what the snapshot's timers are relative to
        out = []
        for lport, raddr, rport, state, timer, expires, retrans in diag_sockets(self.diag):
            label = LinuxState(state).label if 1 <= state <= 13 else str(state)
            out.append((lport, raddr, rport, state, label, timer, expires, retrans))
        self.last_span = self.now() - self.dumped_at
        return out

    def counters(self) -> dict[str, int]:
        return read_counters()

    def close(self) -> None:
        for s in self.socks.values():
            with contextlib.suppress(OSError):
                s.close()
        self.cap.close()
        os.close(self.tun)


def _child(script: Script, wfd: int, parent: int) -> None:  # pragma: no cover - forked child
    code = 0
    try:
        libc = _libc()
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl(): nobody to report to
            os._exit(1)
        if libc.unshare(CLONE_NEWNET) != 0:
            raise LabUnavailable(f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}")
        # Like packetdrill: a real-time priority keeps a busy machine from delaying our steps
        # (the process sleeps in select() nearly all the time). Not allowed: run as we are.
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(RT_PRIORITY))
        side = KernelSide(script.sysctls)
        trace = drive(script, side, "kernel")
        trace.kernel = os.uname().release
        result: tuple[str, Any] = ("ok", trace)
    except BaseException as e:
        result = ("err", f"{type(e).__name__}: {e}")
        code = 1
    with os.fdopen(wfd, "wb") as w:
        w.write(pickle.dumps(result))
    os._exit(code)


class KernelRun:
    """One script on the kernel, in a forked child with its own namespace. `start()` forks,
    `result()` waits (at most `timeout` s) and returns the Trace; `kill()` ends it at once.
    Use `run_script()` for one, several KernelRuns for a parallel batch."""

    def __init__(self, script: Script, timeout: float) -> None:
        self.script = script
        self.timeout = timeout
        self.pid = 0
        self._rfd = -1

    def start(self) -> KernelRun:
        rfd, wfd = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(rfd)
            _child(self.script, wfd, parent)
        os.close(wfd)
        self.pid, self._rfd = pid, rfd
        return self

    def fileno(self) -> int:
        return self._rfd

    def result(self) -> Trace:
        timer = threading.Timer(self.timeout, self.kill)
        timer.daemon = True
        timer.start()
        try:
            with os.fdopen(self._rfd, "rb") as r:
                self._rfd = -1
                data = r.read()
        finally:
            timer.cancel()
            self._reap()
        if not data:
            raise LabChildFailed(f"probe {self.script.name}: the kernel side died without a result")
        kind, value = pickle.loads(data)
        if kind != "ok":
            raise LabChildFailed(f"probe {self.script.name}: {value}")
        assert isinstance(value, Trace)
        return value

    def kill(self) -> None:
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def _reap(self) -> None:
        if self.pid:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = 0
        if self._rfd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._rfd)
            self._rfd = -1


def run_script(script: Script, timeout: float = 60.0) -> Trace:
    """Run `script` on the kernel (root needed); returns the kernel's Trace."""
    run = KernelRun(script, timeout).start()
    try:
        return run.result()
    except BaseException:
        run.kill()
        run._reap()
        raise
