"""Pools on the kernel: fill a namespace with a known population, let the doctor predict each
pool's headroom, then open connections (or bind(0)) until the kernel refuses.

Theory of operation
-------------------
A `Population` says which sockets to make (listeners, bind()-only sockets, clients that
connect() with the port left to the kernel or bind() first, each ending in TIME_WAIT or kept
ESTABLISHED) in a throwaway namespace whose sysctls it pins. `check()` builds it in a child that
holds the sockets, captures the namespace with the live collector and runs the doctor, then asks
the kernel each `Probe` in a second child:

- `connect`: non-blocking connect() from `src` (bound with IP_BIND_ADDRESS_NO_PORT, so the port
  is chosen by connect()'s own search, `__inet_hash_connect()`) to `dst:dport` until
  EADDRNOTAVAIL. A listener waits there, or the SYN stays in SYN_SENT: each attempt holds its
  port either way;
- `bind`: bind(addr, 0) until EADDRINUSE.

Every probe socket is then closed with SO_LINGER {1, 0} (an RST, no TIME_WAIT: ref 8), so each
probe meets the population as the doctor saw it. Bind probes go first, and probes that may
take over TIME_WAITs (tcp_tw_reuse) go last. The number the kernel allowed is compared with the
doctor's headroom for that pool: they must be equal (the searches are exhaustive, so the count
is exact even where the port order is random).

Traffic stays on the namespace's loopback, with addresses from 198.18.0.0/15, 127/8 and
2001:db8::/32 added to lo (the lab's network rule, DESIGN.md).
"""

from __future__ import annotations

import dataclasses
import errno as _errno
import os
import socket
import struct
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from timewait.lab.namespaces import (
    LabUnavailable,
    NetnsProcess,
    run_in_netns,
    throwaway_netns,
    write_sysctl,
)

IP_BIND_ADDRESS_NO_PORT: Final = 24  # include/uapi/linux/in.h
LISTEN_BACKLOG: Final = 4096  # net.core.somaxconn's default caps it anyway
REUSE_MARGIN_MS: Final = 500  # wait until TIME_WAITs are this much older than the reuse delay


@dataclass(frozen=True, kw_only=True)
class Clients:
    """`count` connections from `src` to `dst:dport`.

    how: "connect" (IP_BIND_ADDRESS_NO_PORT + bind(src, 0): connect() picks the port),
    "bind" (bind(src, 0) first: the port is bind()'s), or "bind-until-full" (bind() first,
    round robin over `dsts`, until bind() fails: `count` is ignored).
    end: "tw" (the client closes first: TIME_WAIT), "est" (kept open) or "mix" (alternating).
    """

    src: str
    dst: str
    dport: int
    count: int = 0
    how: str = "connect"
    end: str = "tw"
    dsts: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Probe:
    """A question for the kernel: ("connect", src, dst, dport) or ("bind", addr)."""

    kind: str
    src: str
    dst: str = ""
    dport: int = 0

    @property
    def label(self) -> str:
        if self.kind == "bind":
            return f"bind({self.src}, 0)"
        dst = f"[{self.dst}]" if ":" in self.dst else self.dst
        return f"connect() {self.src} -> {dst}:{self.dport}"


@dataclass(frozen=True, kw_only=True)
class Population:
    """One namespace's worth of sockets, the sysctls it runs with, and the probes to ask."""

    name: str
    about: str
    sysctls: Mapping[str, str]
    clients: tuple[Clients, ...] = ()
    listeners: tuple[tuple[str, int], ...] = ()  # (addr, port) besides the destinations'
    bound: tuple[tuple[str, int], ...] = ()  # bind()-only sockets
    bind_zero_listeners: tuple[tuple[str, int], ...] = ()  # (addr, count): bind(addr,0)+listen
    orphaned: tuple[tuple[str, int, int], ...] = ()  # (addr, port, n): server-closed, then gone
    probes: tuple[Probe, ...] = ()
    addresses: tuple[str, ...] = ()  # added to lo besides those the clients use
    extra_probe_listeners: tuple[tuple[str, int], ...] = field(default=())


@dataclass(frozen=True, kw_only=True)
class Check:
    """One pool: what the doctor predicted and what the kernel then allowed."""

    population: str
    pool: str
    predicted: int
    allowed: int

    @property
    def exact(self) -> bool:
        return self.predicted == self.allowed


# -- inside the namespace --------------------------------------------------------------------


def _fam(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _add_addresses(addrs: Sequence[str]) -> None:
    for a in sorted(set(addrs)):
        if a.startswith("127.") or a in ("::1", "0.0.0.0", "::"):
            continue
        plen = "128" if ":" in a else "32"
        cmd = ["ip", "addr", "add", f"{a}/{plen}", "dev", "lo"]
        if ":" in a:
            cmd.append("nodad")
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0 and "exists" not in res.stderr:
            raise LabUnavailable(f"`{' '.join(cmd)}` failed: {res.stderr.strip()}")
    for a in addrs:
        if ":" in a and a not in ("::", "::1"):
            _wait_routable(a)


def _wait_routable(addr: str, timeout: float = 10.0) -> None:
    """Wait until the kernel routes to an IPv6 address just added. Even with nodad its local
    route goes in from the addrconf work queue (addrconf_dad_completed() -> ipv6_ifa_notify()),
    not from the `ip addr add` call: on a loaded machine a connect() right after failed with
    ENETUNREACH (seen in a full test run beside other loads). A UDP connect() only looks the
    route up."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as u:
            try:
                u.connect((addr, 9))
                return
            except OSError as e:
                if e.errno != _errno.ENETUNREACH or time.monotonic() > deadline:
                    raise
        time.sleep(0.001)  # polling the condition, not a guess at its time


def _listen(addr: str, port: int) -> socket.socket:
    s = socket.socket(_fam(addr), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if ":" in addr:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((addr, port))
    s.listen(LISTEN_BACKLOG)
    return s


def _client(c: Clients, dst: str) -> socket.socket:
    s = socket.socket(_fam(c.src), socket.SOCK_STREAM)
    if c.how == "connect":
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    s.bind((c.src, 0))
    s.connect((dst, c.dport))
    return s


def _abort(s: socket.socket) -> None:
    """Close with an RST and no TIME_WAIT (SO_LINGER {1, 0}, ref 8)."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def _end(c: Clients, i: int, sock: socket.socket, server: socket.socket, keep: list[Any]) -> None:
    if c.end == "est" or (c.end == "mix" and i % 2):
        keep += [sock, server]
        return
    sock.close()  # the client closes first: TIME_WAIT on its side (ref 1.1)
    server.recv(1)
    server.close()


def build(pop: Population) -> tuple[dict[str, Any], list[Any]]:
    """Make `pop` in the current (private) namespace; returns (report, sockets to keep)."""
    for k, v in pop.sysctls.items():
        write_sysctl(k, v)
    addrs = [*pop.addresses, *(a for a, _ in pop.listeners), *(a for a, _ in pop.bound)]
    for c in pop.clients:
        addrs += [c.src, c.dst, *c.dsts]
    addrs += [a for a, _, _ in pop.orphaned] + [a for a, _ in pop.bind_zero_listeners]
    _add_addresses(addrs)
    keep: list[Any] = []
    for addr, port in pop.bound:  # first: a connect() could otherwise take the port
        b = socket.socket(_fam(addr), socket.SOCK_STREAM)
        b.bind((addr, port))
        keep.append(b)
    for addr, port in pop.listeners:
        keep.append(_listen(addr, port))
    for addr, n in pop.bind_zero_listeners:
        for _ in range(n):
            keep.append(_listen(addr, 0))
    for addr, port, n in pop.orphaned:
        ls = _listen(addr, port)
        for _ in range(n):
            conn = socket.create_connection((addr, port))
            srv, _ = ls.accept()
            srv.close()  # the server closes first: TIME_WAIT on the listener's port
            conn.recv(1)
            conn.close()
        ls.close()  # the listener exits; its TIME_WAITs keep the port's bucket
    listeners: dict[tuple[str, int], socket.socket] = {}
    made = 0
    bind_failed = 0
    for c in pop.clients:
        targets = c.dsts or (c.dst,)
        for dst in targets:
            if (dst, c.dport) not in listeners:
                listeners[(dst, c.dport)] = _listen(dst, c.dport)
        i = 0
        while c.how == "bind-until-full" or i < c.count:
            dst = targets[i % len(targets)]
            try:
                how = "bind" if c.how == "bind-until-full" else c.how
                sock = _client(Clients(src=c.src, dst=dst, dport=c.dport, how=how), dst)
            except OSError as e:
                if c.how == "bind-until-full" and e.errno == _errno.EADDRINUSE:
                    bind_failed += 1
                    break
                raise
            server, _ = listeners[(dst, c.dport)].accept()
            _end(c, i, sock, server, keep)
            i += 1
            made += 1
    keep += list(listeners.values())
    return {"made": made, "bind_failed": bind_failed, "made_at": time.monotonic()}, keep


def _count_connects(p: Probe, socks: list[socket.socket]) -> int:
    n = 0
    while True:
        s = socket.socket(_fam(p.src), socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.setblocking(False)
        s.bind((p.src, 0))
        err = s.connect_ex((p.dst, p.dport))
        if err == _errno.EADDRNOTAVAIL:
            s.close()
            return n
        if err not in (0, _errno.EINPROGRESS):
            s.close()
            raise OSError(err, f"probe connect to {p.dst}:{p.dport}: {os.strerror(err)}")
        socks.append(s)
        n += 1


def _count_binds(p: Probe, socks: list[socket.socket]) -> int:
    n = 0
    while True:
        s = socket.socket(_fam(p.src), socket.SOCK_STREAM)
        try:
            s.bind((p.src, 0))
        except OSError as e:
            s.close()
            if e.errno == _errno.EADDRINUSE:
                return n
            raise
        socks.append(s)
        n += 1


def ask_kernel(probes: Sequence[Probe], listen_at: Sequence[tuple[str, int]]) -> list[int]:
    """In the namespace: how many connect()/bind(0) each probe gets, one probe at a time."""
    lis = [_listen(a, p) for a, p in listen_at]
    out = []
    try:
        for p in probes:
            socks: list[socket.socket] = []
            try:
                count = _count_binds if p.kind == "bind" else _count_connects
                out.append(count(p, socks))
            finally:
                for s in socks:
                    _abort(s)
    finally:
        for s in lis:
            s.close()
    return out


# -- from outside ----------------------------------------------------------------------------


def _order(probes: Sequence[Probe]) -> list[Probe]:
    """Bind probes first; connect probes toward populated destinations (which may take over
    TIME_WAITs with tcp_tw_reuse) last."""
    return sorted(probes, key=lambda p: p.kind != "bind")


def predicted(diagnosis: Any, probe: Probe) -> int:  # Any: keeps timewait.doctor lazy
    """The doctor's headroom for the pool the probe asks about."""
    from timewait.doctor.pools import bind_pool_for

    a = diagnosis.analysis
    if probe.kind == "bind":
        return int(bind_pool_for(a.bind_pools, probe.src).headroom)
    for d in a.destinations():
        if (d.src, d.dst, d.dport) == (probe.src, probe.dst, probe.dport):
            return int(d.headroom)
    return int(a.new_destination.headroom)


def _wait_reusable(ns: str, pop: Population) -> None:
    """With tcp_tw_reuse on, wait until every TIME_WAIT is safely older than the reuse delay,
    so no TIME_WAIT turns reusable between the doctor's capture and the probes."""
    from timewait.live.capture import capture

    if pop.sysctls.get("tcp_tw_reuse", "2") == "0":
        return
    delay = int(pop.sysctls.get("tcp_tw_reuse_delay", "1000"))
    limit = 60_000 - delay - REUSE_MARGIN_MS
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        s = capture(netns=ns).sockets
        tw = s["expires_ms"][s["state"] == 6]
        if tw.size == 0 or int(tw.max()) < limit:
            return
        time.sleep(0.05)
    raise LabUnavailable("TIME_WAITs did not age past tcp_tw_reuse_delay within 10 s")


def check(pop: Population) -> tuple[list[Check], Any]:
    """Build `pop` in a throwaway namespace, diagnose it, probe it: (checks, diagnosis)."""
    from timewait.doctor import diagnose
    from timewait.live.capture import capture

    probes = _order(pop.probes)
    with throwaway_netns() as ns, NetnsProcess(ns, build, pop):
        _wait_reusable(ns, pop)
        diagnosis = diagnose(capture(netns=ns))
        allowed = run_in_netns(ns, ask_kernel, probes, pop.extra_probe_listeners)
    checks = [
        Check(population=pop.name, pool=p.label, predicted=predicted(diagnosis, p), allowed=n)
        for p, n in zip(probes, allowed, strict=True)
    ]
    return checks, diagnosis


# -- the populations the doctor is held to (issue 10 item 3; README "Pools") --------------------

RANGE: Final = {"ip_local_port_range": "40000 40199", "tcp_tw_reuse": "0"}  # 200 ports
C1, C2, C3 = "198.18.0.1", "198.18.0.2", "198.18.0.3"
NEW = "198.18.9.9"  # a destination no population uses: connect() to a new destination
V6A, V6B, V6C, V6NEW = "2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8::9"


def _dst(i: int) -> str:
    return f"198.18.1.{i}"


def _new(src: str = C1) -> Probe:
    return Probe(kind="connect", src=src, dst=NEW if ":" not in src else V6NEW, dport=8080)


def _to(src: str, dst: str, dport: int = 8080) -> Probe:
    return Probe(kind="connect", src=src, dst=dst, dport=dport)


def _bind(addr: str) -> Probe:
    return Probe(kind="bind", src=addr)


_PROBE_LISTENERS: Final = ((NEW, 8080), (V6NEW, 8080))
_ADDRS: Final = (NEW, V6NEW, C2)

_POPULATIONS: Final[tuple[Population, ...]] = (
    Population(
        name="connect-one",
        about="connect() only, one destination: 100 TIME_WAIT + 50 ESTABLISHED",
        sysctls=RANGE,
        clients=(Clients(src=C1, dst=_dst(1), dport=8080, count=150, end="mix"),),
        probes=(_to(C1, _dst(1)), _new(), _bind(C1), _bind(C2)),
    ),
    Population(
        name="connect-one-reuse",
        about="connect() on loopback with tcp_tw_reuse=2 (default): TIME_WAITs older than "
        "tcp_tw_reuse_delay are taken over",
        sysctls={"ip_local_port_range": "40000 40199", "tcp_tw_reuse": "2"},
        clients=(
            Clients(src="127.0.0.1", dst="127.0.0.10", dport=8080, count=150),
            Clients(src="127.0.0.1", dst="127.0.0.10", dport=8080, count=20, end="est"),
        ),
        probes=(_to("127.0.0.1", "127.0.0.10"), _bind("127.0.0.1")),
    ),
    Population(
        name="connect-many",
        about="connect() only, 12 destinations x 40 TIME_WAIT: ports shared across them",
        sysctls=RANGE,
        clients=tuple(Clients(src=C1, dst=_dst(i), dport=8080, count=40) for i in range(1, 13)),
        probes=(_to(C1, _dst(1)), _to(C1, _dst(7)), _new(), _bind(C1), _bind(C2)),
    ),
    Population(
        name="bind-before-connect",
        about="bind(addr, 0) then connect() to 5 destinations x 25 (TIME_WAIT and ESTABLISHED)",
        sysctls=RANGE,
        clients=tuple(
            Clients(src=C1, dst=_dst(i), dport=8080, count=25, how="bind", end="mix")
            for i in range(1, 6)
        ),
        probes=(_to(C1, _dst(1)), _new(), _new(C2), _bind(C1), _bind(C2)),
    ),
    Population(
        name="bind-before-connect-full",
        about="bind(addr, 0) then connect() round robin to 6 destinations until bind() fails "
        "with EADDRINUSE: the range is exhausted while each destination holds a sixth",
        sysctls=RANGE,
        clients=(
            Clients(
                src=C1,
                dst=_dst(1),
                dport=8080,
                how="bind-until-full",
                end="mix",
                dsts=tuple(_dst(i) for i in range(1, 7)),
            ),
        ),
        probes=(_to(C1, _dst(1)), _new(), _new(C2), _bind(C1), _bind(C2)),
    ),
    Population(
        name="bind0-servers",
        about="30 servers on bind(addr, 0) + listen(), and connect() clients (60 TIME_WAIT)",
        sysctls=RANGE,
        bind_zero_listeners=((C1, 30),),
        clients=(Clients(src=C1, dst=_dst(1), dport=8080, count=60),),
        probes=(_to(C1, _dst(1)), _new(), _bind(C1), _bind(C2)),
    ),
    Population(
        name="listeners-in-range",
        about="listeners and a bind()-only socket inside the range (0.0.0.0, a specific "
        "address, dual-stack ::), and connect() clients",
        sysctls=RANGE,
        listeners=(("0.0.0.0", 40010), (C1, 40011), ("::", 40012), ("198.18.0.5", 40013)),
        bound=((C1, 40020),),
        clients=(Clients(src=C1, dst=_dst(1), dport=8080, count=50),),
        probes=(_to(C1, _dst(1)), _new(), _bind(C1), _bind(C2), _bind(V6A), _bind("0.0.0.0")),
        addresses=(V6A,),
    ),
    Population(
        name="reserved-ports",
        about="ip_local_reserved_ports inside the range, connect() clients",
        sysctls={**RANGE, "ip_local_reserved_ports": "40000-40049,40100,41000"},
        clients=(
            Clients(src=C1, dst=_dst(1), dport=8080, count=60),
            Clients(src=C1, dst=_dst(1), dport=8080, count=20, end="est"),
        ),
        probes=(_to(C1, _dst(1)), _new(), _bind(C1), _bind(C2)),
    ),
    Population(
        name="mix",
        about="connect() to 2 destinations, bind-before-connect from another address to 2, a "
        "listener and a bound socket in the range, reserved ports, a listener that exited",
        sysctls={**RANGE, "ip_local_reserved_ports": "40190-40199"},
        listeners=((C1, 40031),),
        bound=((C3, 40041),),
        orphaned=(("198.18.0.7", 40101, 15),),
        clients=(
            Clients(src=C1, dst=_dst(1), dport=8080, count=40),
            Clients(src=C1, dst=_dst(2), dport=8080, count=30, end="mix"),
            Clients(src=C3, dst=_dst(3), dport=8080, count=20, how="bind", end="mix"),
            Clients(src=C3, dst=_dst(4), dport=8080, count=20, how="bind"),
        ),
        probes=(_to(C1, _dst(1)), _to(C1, _dst(2)), _new(), _bind(C1), _bind(C2), _bind(C3)),
    ),
    Population(
        name="ipv4-and-ipv6",
        about="IPv4 and IPv6 side by side: connect() and bind-before-connect on both families "
        "share one port space; a dual-stack :: listener in the range",
        sysctls=RANGE,
        listeners=(("::", 40050),),
        clients=(
            Clients(src=C1, dst=_dst(1), dport=8080, count=40),
            Clients(src=V6A, dst=V6B, dport=8080, count=40, end="mix"),
            Clients(src=V6A, dst=V6C, dport=8080, count=30, how="bind"),
        ),
        probes=(
            _to(C1, _dst(1)),
            _to(V6A, V6B),
            _new(),
            _new(V6A),
            _bind(C1),
            _bind(V6A),
            _bind("2001:db8::7"),
            _bind(C2),
        ),
        addresses=("2001:db8::7",),
    ),
)
POPULATIONS: Final = tuple(
    dataclasses.replace(p, addresses=(*p.addresses, *_ADDRS),
                        extra_probe_listeners=_PROBE_LISTENERS)
    for p in _POPULATIONS
)  # fmt: skip
POPULATIONS_BY_NAME: Final = {p.name: p for p in POPULATIONS}
