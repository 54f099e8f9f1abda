"""The model side of a probe: the same script on one model `Host` (timewait.model.host).

The host stands for the probe namespace: address 192.0.2.1, the script's sysctls in its
KernelConfig (settings KernelConfig does not hold are kernel-only pins), segments from the
script delivered with `Host.receive()`, timers run at their deadlines between steps. Socket
calls map onto the host's calls and their errors onto errno names, with the small amount of
socket-layer bookkeeping a real descriptor has and the model's Host leaves to its caller: a
reset is reported once by the next read or write (sk_err), then end of file.
"""

from __future__ import annotations

import errno
import random

from timewait.config import KernelConfig
from timewait.errors import IllegalTransition, SocketError
from timewait.lab.probe.packet import Packet
from timewait.lab.probe.script import LOCAL_ADDR, Call, Script
from timewait.model.connection import Connection
from timewait.model.events import (
    BrokenPipe,
    ConnectionRefused,
    ConnectionReset,
    ConnectionTimedOut,
    PeerClosed,
)
from timewait.model.host import Host, SockOpt
from timewait.model.minisock import MiniSocket
from timewait.model.states import TcpState
from timewait.units import MS, SEC

_ERRORS = {
    BrokenPipe: "EPIPE",
    ConnectionReset: "ECONNRESET",
    ConnectionRefused: "ECONNREFUSED",
    ConnectionTimedOut: "ETIMEDOUT",
}


def model_config(script: Script) -> KernelConfig:
    """The script's sysctls that KernelConfig models, over Linux's defaults."""
    return KernelConfig.from_sysctl(dict(script.sysctls))


class ModelSide:
    """A probe's model end (see the module docstring)."""

    def __init__(self, script: Script, seed: int = 1) -> None:
        self.host = Host(addrs=[LOCAL_ADDR], rng=random.Random(seed), config=model_config(script))
        self.now = 0
        self.fds: dict[str, int] = {}
        self.out: list[tuple[int, Packet, bool]] = []
        self.err: dict[str, str] = {}  # pending socket error (sk_err), reported once
        self.eof: dict[str, bool] = {}  # RCV_SHUTDOWN by shutdown(SHUT_RD)
        self.done: dict[str, bool] = {}  # SOCK_DONE: the peer's FIN arrived
        self.dumped_at = 0
        self.last_span = 0
        # Every timer deadline seen (-> when first seen, about when it was armed) and when one
        # ran: the fuzzer discards a sequence with a step next to one (fuzz.ambiguous()).
        self.timers: dict[int, int] = {}
        self.fired: list[int] = []

    def _collect(self, timer: bool = False) -> None:
        for seg in self.host.segments_to_send(self.now):
            self.out.append((self.now, Packet.from_segment(seg), timer))
        for name, fd in self.fds.items():
            try:
                events = self.host.events(fd)
            except SocketError:
                continue
            for ev in events:
                code = _ERRORS.get(type(ev))
                if code is not None:
                    self.err[name] = code
                elif isinstance(ev, PeerClosed):
                    self.done[name] = True

    def wait_until(self, t: int) -> int:
        while (d := self.host.next_deadline()) is not None and d <= t:
            self.now = max(self.now, d)
            self.fired.append(d)
            self.host.on_timer(self.now)
            self._collect(timer=True)
        self.now = max(self.now, t)
        self._note_due()
        return self.now

    def _note_due(self) -> None:
        d = self.host.next_deadline()
        if d is not None:
            self.timers.setdefault(d, self.now)

    def inject(self, pkt: Packet) -> int:
        self.host.receive(pkt.to_segment(), self.now)
        self._collect()
        self._note_due()
        return self.now

    def drain(self) -> list[tuple[int, Packet, bool]]:
        self._collect()
        out, self.out = self.out, []
        return out

    def call(self, step: Call) -> tuple[int, str]:
        try:
            result = self._call(step)
        except SocketError as e:
            result = errno.errorcode.get(e.errno_value, str(e.errno_value))
        self._collect()
        self._note_due()
        return self.now, result

    def _fd(self, name: str) -> int:
        fd = self.fds.get(name)
        if fd is None:
            fd = self.fds[name] = self.host.socket()
        return fd

    def _call(self, step: Call) -> str:
        h, now, op, name, args = self.host, self.now, step.op, step.sock, step.args
        if op == "socket":
            self.fds[name] = h.socket()
            return "ok"
        fd = self._fd(name)
        if op == "setsockopt":
            opt, vals = args[0], [int(a) for a in args[1:]]
            if opt == "reuseaddr":
                h.setsockopt(fd, SockOpt.SO_REUSEADDR, vals[0] if vals else 1)
            elif opt == "reuseport":
                h.setsockopt(fd, SockOpt.SO_REUSEPORT, vals[0] if vals else 1)
            elif opt == "linger":
                h.setsockopt(fd, SockOpt.SO_LINGER, (vals[0], vals[1]))
            elif opt == "linger2":
                h.setsockopt(fd, SockOpt.TCP_LINGER2, vals[0])
            return "ok"
        if op == "bind":
            h.bind(fd, args[1] if len(args) > 1 else "0.0.0.0", int(args[0]), now)
            return "ok"
        if op == "listen":
            if args and not h._sock(fd).lport:
                h.bind(fd, "0.0.0.0", int(args[0]), now)
            backlog = int(args[2]) if len(args) >= 3 and args[1] == "backlog" else 128
            h.listen(fd, now, backlog)
            return "ok"
        if op == "connect":
            addr, _, port = args[0].rpartition(":")
            h.connect(fd, addr, int(port), now)
            return "ok"
        if op == "accept":
            del self.fds[name]  # the placeholder _fd() made
            h.close(fd, now)
            child = h.accept(self.fds[args[0]])
            if child is None:
                return "EAGAIN"
            self.fds[name] = child
            return "ok"
        if op == "write":
            if name in self.err:
                return self.err.pop(name)
            try:
                h.send(fd, bytes(int(args[0])), now)
            except IllegalTransition:
                return "EPIPE"
            return args[0]
        if op == "read":
            # K tcp_recvmsg_locked(): data first; then SOCK_DONE (the peer's FIN arrived)
            # reads 0 even when an error is pending; then sk_err; then RCV_SHUTDOWN.
            data = h.recv(fd, now)
            if data:
                return str(len(data))
            if self.done.get(name):
                return "0"
            if name in self.err:
                return self.err.pop(name)
            if self.eof.get(name) or h.state(fd) is TcpState.CLOSED:
                return "0"
            return "EAGAIN"
        if op == "shutdown":
            read = args[0] in ("rd", "rdwr")
            h.shutdown(fd, now, read=read, write=args[0] in ("wr", "rdwr"))
            if read:
                self.eof[name] = True  # RCV_SHUTDOWN: a read without data returns 0
            return "ok"
        if op == "close":
            h.close(fd, now)
            del self.fds[name]
            return "ok"
        raise ValueError(f"unknown call {op}")

    def local_port(self, sock: str) -> int:
        return self.host._sock(self.fds[sock]).lport

    def sockets(self, at: int | None = None) -> list[tuple[int, str, int, int, str, int, int, int]]:
        """The host's sockets as sock_diag would list them at `at` (default: now), the
        kernel's dump time: a moment after the step, or longer on a loaded machine, so timers
        due by then run first, as they did in the kernel."""
        out = []
        if at is not None:
            self.wait_until(at)
        now = self.now
        self.dumped_at = now
        for s in self.host.listeners():
            out.append((s.lport, "0.0.0.0", 0, 10, "LISTEN", 0, 0, 0))
        for ft, sk in self.host.ehash.items():
            if isinstance(sk, MiniSocket):
                st = sk.substate.linux
                left = max(0, sk.expires - now) // MS
                out.append((ft.lport, ft.raddr, ft.rport, int(st), st.label, 3, left, 0))
            else:
                assert isinstance(sk, Connection)
                st = sk.state.linux
                timer, left, retrans = sk.diag_timer(now)
                out.append((ft.lport, ft.raddr, ft.rport, int(st), st.label, timer, left, retrans))
        return out

    def counters(self) -> dict[str, int]:
        return dict(self.host.counters)


__all__ = ["SEC", "ModelSide", "model_config"]
