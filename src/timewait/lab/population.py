"""Fill a throwaway namespace with a KNOWN population of TCP sockets, on its loopback.

Theory of operation
-------------------
`populate(spec)` runs inside the namespace (in a NetnsProcess child, which keeps the sockets
that must stay open) and returns an `Expected`: every four-tuple it created, by the state the
kernel must now report. Tests compare that, `ss` and `capture()`.

How each state is made (all on loopback, where a segment is delivered before the sending call
returns, so the order of calls fixes who closes first):
- client TIME_WAIT: connect, accept, the *client* closes first, the server reads EOF and
  closes; the client (active closer) ends in TIME_WAIT (RFC 9293 §3.6; tcp_time_wait()).
- server TIME_WAIT: same, but the server closes first: TIME_WAIT on the listener's port.
- FIN_WAIT2 minisockets: the client closes and the server never does (it stays in
  CLOSE_WAIT): an orphan in FIN_WAIT2 becomes a minisocket with tw_substate FIN_WAIT2 for
  tcp_fin_timeout seconds when that is <= 60 s (`__tcp_close()`, ref 2.2). We set
  tcp_fin_timeout = 20 inside the namespace so they outlive the test, yet differ from TIME_WAIT.
- ESTABLISHED pairs, listeners, and bind()-only sockets (bound, never listening: the kernel
  dumps them with TCPF_BOUND_INACTIVE, Linux 6.5+), IPv4 and IPv6 (::1).
- reserved ports and the port range are sysctls written inside the namespace.

`mass_time_wait()` makes N client TIME_WAIT sockets fast for the benchmark: several processes,
each with its own listeners on 127.0.0.1, doing connect/accept/close/close in a tight loop.
Inside the namespace it raises tcp_max_tw_buckets (else TIME_WAITs beyond it are skipped,
TCPTimeWaitOverflow) and sets tcp_tw_reuse = 0 (else connect() on loopback would take over old
TIME_WAITs instead of adding new ones; default 2 = loopback only). Measured on this 2-core
machine (Linux 6.18.44, 4 processes, no data sent): 70-130k connections/s, so 200,000 take
1.5-3 s, well inside the 60 s TIME_WAIT life.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from timewait.lab.namespaces import (
    NetnsProcess,
    enter_for_good,
    fork_child,
    reap,
    run_in_netns,
    write_sysctl,
)

Quad = tuple[str, int, str, int]  # (src, sport, dst, dport) as the socket's owner sees it


@dataclass(frozen=True, kw_only=True)
class PopulationSpec:
    """What to create. Counts are small so a namespace test stays well under a second."""

    # (destination address, destination port, count): client-side TIME_WAIT per destination.
    client_tw: tuple[tuple[str, int, int], ...] = (
        ("127.0.0.10", 8080, 40),
        ("127.0.0.11", 8080, 25),
        ("127.0.0.10", 9090, 15),
    )
    server_tw: tuple[str, int, int] = ("127.0.0.20", 7070, 12)
    fin_wait2: tuple[str, int, int] = ("127.0.0.30", 6060, 6)
    established: tuple[str, int, int] = ("127.0.0.40", 5050, 4)
    ipv6_tw: tuple[str, int, int] = ("::1", 8443, 10)
    ipv6_established: tuple[str, int, int] = ("::1", 8443, 2)
    # bind()-only sockets inside the ephemeral range: they take ports from every destination.
    bound_only: tuple[tuple[str, int], ...] = (
        ("127.0.0.1", 41000),
        ("127.0.0.1", 41001),
        ("0.0.0.0", 41002),
        ("::1", 41003),
    )
    sysctls: Mapping[str, str] = field(
        default_factory=lambda: {
            "ip_local_port_range": "40000 49999",
            "ip_local_reserved_ports": "40000-40009,45000",
            "tcp_fin_timeout": "20",
            "tcp_tw_reuse": "0",
        }
    )


@dataclass(frozen=True, kw_only=True)
class Expected:
    """Every socket `populate()` left behind, by the state the kernel must report."""

    time_wait: frozenset[Quad]
    fin_wait2: frozenset[Quad]  # minisockets (timer 3)
    close_wait: frozenset[Quad]  # the FIN_WAIT2 peers that never close
    established: frozenset[Quad]
    listeners: frozenset[tuple[str, int]]
    bound_only: frozenset[tuple[str, int]]
    client_tw_by_destination: Mapping[tuple[str, str, int], int]  # (src, dst, dport) -> count
    server_tw: int
    sysctls: Mapping[str, str]
    made_at: float  # time.monotonic() when the last socket was made

    def counts(self) -> dict[str, int]:
        """Sockets by ss state name."""
        return {
            "time-wait": len(self.time_wait),
            "fin-wait-2": len(self.fin_wait2),
            "close-wait": len(self.close_wait),
            "established": len(self.established),
            "listening": len(self.listeners),
            "bound-inactive": len(self.bound_only),
        }


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _quad(s: socket.socket) -> Quad:
    la, lp = s.getsockname()[:2]
    ra, rp = s.getpeername()[:2]
    return (str(la), int(lp), str(ra), int(rp))


def _listener(addr: str, port: int, keep: list[Any]) -> socket.socket:
    ls = socket.socket(_family(addr), socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(1024)
    keep.append(ls)
    return ls


def _pair(ls: socket.socket, addr: str, port: int) -> tuple[socket.socket, socket.socket]:
    c = socket.socket(_family(addr), socket.SOCK_STREAM)
    c.connect((addr, port))
    s, _ = ls.accept()
    return c, s


def _client_closes(ls: socket.socket, addr: str, port: int) -> Quad:
    """One client-side TIME_WAIT; returns the client's four-tuple."""
    c, s = _pair(ls, addr, port)
    q = _quad(c)
    c.close()
    s.recv(1)  # EOF: the client's FIN has arrived, so the server's FIN comes second
    s.close()
    return q


def _server_closes(ls: socket.socket, addr: str, port: int) -> Quad:
    """One server-side TIME_WAIT; returns the server's four-tuple."""
    c, s = _pair(ls, addr, port)
    q = _quad(s)
    s.close()
    c.recv(1)
    c.close()
    return q


def populate(spec: PopulationSpec) -> tuple[Expected, list[Any]]:
    """Create `spec` in the current (private) namespace; returns (expected, sockets to keep)."""
    for name, value in spec.sysctls.items():
        write_sysctl(name, value)
    keep: list[Any] = []
    listeners: dict[tuple[str, int], socket.socket] = {}

    def lis(addr: str, port: int) -> socket.socket:
        bind = "::1" if ":" in addr else "0.0.0.0"
        key = (bind, port) if bind == "0.0.0.0" else (addr, port)
        if key not in listeners:
            listeners[key] = _listener(key[0], port, keep)
        return listeners[key]

    # bind()-only sockets first: a connect() earlier could have taken their port.
    bound: set[tuple[str, int]] = set()
    for addr, port in spec.bound_only:
        b = socket.socket(_family(addr), socket.SOCK_STREAM)
        b.bind((addr, port))
        keep.append(b)
        bound.add((addr, port))
    tw: set[Quad] = set()
    by_dest: dict[tuple[str, str, int], int] = {}
    for addr, port, n in spec.client_tw:
        ls = lis(addr, port)
        for _ in range(n):
            q = _client_closes(ls, addr, port)
            tw.add(q)
            key = (q[0], q[2], q[3])
            by_dest[key] = by_dest.get(key, 0) + 1
    addr, port, n = spec.ipv6_tw
    for _ in range(n):
        q = _client_closes(lis(addr, port), addr, port)
        tw.add(q)
        key = (q[0], q[2], q[3])
        by_dest[key] = by_dest.get(key, 0) + 1
    addr, port, n = spec.server_tw
    for _ in range(n):
        tw.add(_server_closes(lis(addr, port), addr, port))
    est: set[Quad] = set()
    for addr, port, n in (spec.established, spec.ipv6_established):
        for _ in range(n):
            c, s = _pair(lis(addr, port), addr, port)
            keep += [c, s]
            est |= {_quad(c), _quad(s)}
    fw2: set[Quad] = set()
    cw: set[Quad] = set()
    addr, port, n = spec.fin_wait2
    for _ in range(n):
        c, s = _pair(lis(addr, port), addr, port)
        fw2.add(_quad(c))
        cw.add(_quad(s))
        c.close()  # orphaned: FIN sent and ACKed -> FIN_WAIT2 minisocket; s never closes
        keep.append(s)
    # The peer ACKs our FIN late: CLOSE_WAIT enters pingpong mode and delays the ACK (tcp_fin(),
    # up to TCP_DELACK_MAX = 200 ms). Until it arrives the orphans sit in FIN_WAIT1, so wait.
    _wait_no_fin_wait1(port, 2.0)
    expected = Expected(
        time_wait=frozenset(tw),
        fin_wait2=frozenset(fw2),
        close_wait=frozenset(cw),
        established=frozenset(est),
        listeners=frozenset(listeners),
        bound_only=frozenset(bound),
        client_tw_by_destination=by_dest,
        server_tw=spec.server_tw[2],
        sysctls=dict(spec.sysctls),
        made_at=time.monotonic(),
    )
    return expected, keep


def _wait_no_fin_wait1(port: int, timeout: float) -> None:
    """Poll this namespace's /proc/net/tcp until no socket toward `port` is in FIN_WAIT1 (04)."""
    deadline = time.monotonic() + timeout
    hexport = f"{port:04X}"
    while time.monotonic() < deadline:
        with open("/proc/net/tcp") as f:
            rows = f.read().splitlines()[1:]
        if not any(r.split()[2].endswith(":" + hexport) and r.split()[3] == "04" for r in rows):
            return
        time.sleep(0.01)


def populated(name: str, spec: PopulationSpec | None = None) -> NetnsProcess:
    """A NetnsProcess holding `spec` in namespace `name`; its `.report` is the Expected.

    with populated(ns) as holder: expected = holder.report
    """
    return NetnsProcess(name, populate, spec or PopulationSpec())


# -- the benchmark's mass TIME_WAIT generator ---------------------------------------------------

MASS_SYSCTLS: Final = {
    "tcp_max_tw_buckets": "1000000",  # never lower it in real life (ref 10); here: keep all
    "tcp_tw_reuse": "0",
}


def _mass_worker(first_port: int, ports: int, count: int) -> int:
    """Make `count` client TIME_WAITs to 127.0.0.1:first_port..+ports-1; returns how many."""
    keep: list[Any] = []
    lss = [_listener("127.0.0.1", first_port + i, keep) for i in range(ports)]
    AF, ST = socket.AF_INET, socket.SOCK_STREAM
    made = 0
    for i in range(count):
        j = i % ports
        c = socket.socket(AF, ST)
        c.connect(("127.0.0.1", first_port + j))
        s, _ = lss[j].accept()
        c.close()
        s.close()  # the client's FIN arrived first (loopback): client side ends in TIME_WAIT
        made += 1
    return made


def _set_mass_sysctls() -> None:
    for k, v in MASS_SYSCTLS.items():
        write_sysctl(k, v)


def mass_time_wait(
    name: str, total: int = 200_000, *, procs: int = 4, ports_per_proc: int = 4
) -> float:
    """Fill namespace `name` with `total` client TIME_WAITs; returns the seconds it took.

    Destinations are 127.0.0.1:20000.. (procs x ports_per_proc listeners), so each destination
    gets total / (procs x ports_per_proc) ports of its 28,232 (16 destinations: 12,500 each).
    """
    run_in_netns(name, _set_mass_sysctls)
    per = [total // procs + (1 if i < total % procs else 0) for i in range(procs)]
    t0 = time.monotonic()
    pids: list[tuple[int, int]] = []
    for i, n in enumerate(per):
        r, w = os.pipe()
        pid = fork_child("mass TIME_WAIT worker")
        if pid == 0:  # pragma: no cover - child
            os.close(r)
            code = 1
            try:
                enter_for_good(name)
                made = _mass_worker(20000 + i * ports_per_proc, ports_per_proc, n)
                os.write(w, str(made).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        pids.append((pid, r))
    made = 0
    try:
        for pid, r in pids:
            with os.fdopen(r, "rb") as f:
                data = f.read()
            reap(pid)
            made += int(data or b"0")
    except BaseException:  # interrupted: the workers go with us
        for pid, _ in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            reap(pid)
        raise
    if made != total:
        from timewait.lab.namespaces import LabChildFailed

        raise LabChildFailed(f"mass TIME_WAIT generator made {made} of {total} sockets")
    return time.monotonic() - t0
