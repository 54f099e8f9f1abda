"""Traced connect()/bind() failures and connection churn: the "trace" table of a Snapshot.

Theory of operation
-------------------
A socket table shows what is held, not what failed or who churned it, and the kernel has no
counter for EADDRNOTAVAIL at all. The live tracer (live/tracer.py) counts those events with
eBPF on tracepoints, aggregated in kernel maps (never one line per event), and hands the
counts over as a table of this module's dtype. It rides in `Snapshot.tables["trace"]` (with
the window it covers in `tables["trace_window"]`), so `doctor --from FILE` reads a traced
capture like a live one. This module is pure: it defines the table, checks it, and answers
the questions asked of it (failures by errno, by process and destination, the measured
churn); it never traces.

What is counted (`Kind`), and where the kernel shows it (K = include/net/tcp_states.h states):
- CONNECT_ERROR: connect() on a TCP socket returned -errno (syscalls:sys_exit_connect).
  EADDRNOTAVAIL: no local port gives a unique four-tuple toward the destination (its connect()
  pool is empty, ref 7.3); EADDRINUSE: the four-tuple of a socket that bound first is taken;
  ECONNREFUSED, ETIMEDOUT, ENETUNREACH...: the peer or the path. EINPROGRESS, EALREADY, EISCONN
  and EINTR are not failures (the connection goes on) and are not counted.
- CONNECT_ASYNC_ERROR: a connect() that returned EINPROGRESS (non-blocking) and failed later:
  the socket goes SYN_SENT -> CLOSE with sk_err set (sock:inet_sock_set_state); errno is that
  sk_err, what getsockopt(SO_ERROR) then tells the program. A socket that was already
  connecting when the trace started is counted here too, without a process (pid 0).
- BIND_ERROR: bind() on a TCP socket returned -errno; `lport` is the port asked for, 0 for
  bind(addr, 0): EADDRINUSE there is the bind pool of that address used up (ref 7.4).
- ACTIVE_CLOSE: ESTABLISHED (or SYN_RECV) -> FIN_WAIT1: this side sent the first FIN, so this
  side keeps the four-tuple in TIME_WAIT for 60 s once the close completes (unless a RST ends
  it first, or tcp_max_tw_buckets is reached: TCPTimeWaitOverflow). This is the churn that
  fills a destination's ports. (The step into TIME_WAIT itself has no tracepoint: the full
  socket is closed when the minisocket takes over -- landscape 4, tcpstates.)
- PASSIVE_CLOSE: CLOSE_WAIT -> LAST_ACK: the peer closed first; no TIME_WAIT on this side.
- OPENED: SYN_SENT -> ESTABLISHED (a connect() that succeeded); ACCEPTED: SYN_RECV ->
  ESTABLISHED (a connection a listener accepted; no process: the kernel does it).

Keys. Every row is one (kind, netns inode, cgroup id, pid, comm, errno, family, local address
and port, remote address and port) with its count over the window. Sockets are keyed by
their destination (SIDE_CLIENT: laddr, raddr, rport; lport 0) unless a listener accepted them
(SIDE_SERVER: laddr, lport; raddr, rport 0), so neither a client's ephemeral ports nor a
server's clients multiply the keys. An accepted socket is told apart by the backlog it
inherits from its listener (sk_max_ack_backlog, 0 on every connect()ed socket; measured on
6.18: the bind locks are no help, an accepted socket drops SOCK_BINDPORT_LOCK).
connect() failures carry the destination given to connect() (no local address: none was
assigned); bind() failures the address and port asked for. Process (pid, comm, cgroup) is the
caller for syscalls and closes; for events that happen in softirq (a connection established
or failed asynchronously) it is the process that called connect(), remembered per socket.

Addresses are stored like Snapshot columns (16 bytes, IPv4 as ::ffff:a.b.c.d), so a client
row's (laddr, raddr, rport) matches the doctor's destination (src, dst, dport) byte for byte
and the measured churn replaces the estimate (`churn_per_destination`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

import numpy as np
from numpy.lib import recfunctions as rfn

from timewait.snapshot import MalformedSnapshot, Snapshot, addr_bytes, addr_str

TABLE: Final = "trace"
WINDOW_TABLE: Final = "trace_window"


class Kind(IntEnum):
    """What a row counts (theory above)."""

    CONNECT_ERROR = 1
    CONNECT_ASYNC_ERROR = 2
    BIND_ERROR = 3
    ACTIVE_CLOSE = 4
    PASSIVE_CLOSE = 5
    OPENED = 6
    ACCEPTED = 7

    @property
    def label(self) -> str:
        return self.name.lower()


CONNECT_KINDS: Final = (Kind.CONNECT_ERROR, Kind.CONNECT_ASYNC_ERROR)
SIDE_CLIENT: Final = 1  # keyed by destination (laddr, raddr, rport)
SIDE_SERVER: Final = 2  # accepted from a listener: keyed by local address and port

TRACE_DTYPE: Final = np.dtype(
    [
        ("kind", "u1"),  # Kind
        ("errno", "u2"),  # failures: the errno (Linux numbers); 0 otherwise
        ("family", "u1"),  # AF_INET (2) or AF_INET6 (10)
        ("side", "u1"),  # SIDE_CLIENT, SIDE_SERVER; 0 for failures
        ("netns", "u8"),  # network namespace inode (`ls -i /run/netns/NAME`)
        ("cgroup", "u8"),  # cgroup v2 id (the inode of its directory), 0 unknown
        ("container", "S64"),  # what the cgroup names: "docker:0123456789ab", "ssh.service", "/"
        ("pid", "u4"),  # process id (thread group) in the root pid namespace; 0 unknown
        ("comm", "S16"),  # the task's command name
        ("laddr", "V16"),  # local address (IPv4 as ::ffff:a.b.c.d), zeros when none
        ("lport", "u2"),
        ("raddr", "V16"),  # remote address: the destination
        ("rport", "u2"),
        ("count", "u8"),
    ]
)
WINDOW_DTYPE: Final = np.dtype(
    [
        ("start_ns", "u8"),  # monotonic (CLOCK_MONOTONIC) time the probes were attached
        ("window_ns", "u8"),  # how long the counts ran
    ]
)
KEY_FIELDS: Final = tuple(n for n in TRACE_DTYPE.names or () if n != "count")

# Linux errno numbers (include/uapi/asm-generic/errno{-base}.h): a capture keeps its meaning
# when read on another system, so the names are not taken from the running platform.
ERRNO_NAMES: Final[Mapping[int, str]] = {
    1: "EPERM",
    4: "EINTR",
    9: "EBADF",
    11: "EAGAIN",
    13: "EACCES",
    22: "EINVAL",
    88: "ENOTSOCK",
    97: "EAFNOSUPPORT",
    98: "EADDRINUSE",
    99: "EADDRNOTAVAIL",
    100: "ENETDOWN",
    101: "ENETUNREACH",
    103: "ECONNABORTED",
    104: "ECONNRESET",
    105: "ENOBUFS",
    106: "EISCONN",
    110: "ETIMEDOUT",
    111: "ECONNREFUSED",
    112: "EHOSTDOWN",
    113: "EHOSTUNREACH",
    114: "EALREADY",
    115: "EINPROGRESS",
}
ERRNO_NUMBERS: Final[Mapping[str, int]] = {v: k for k, v in ERRNO_NAMES.items()}
EADDRINUSE: Final = 98
EADDRNOTAVAIL: Final = 99


def errno_name(n: int) -> str:
    """99 -> "EADDRNOTAVAIL"; unknown numbers -> "E<n>"."""
    return ERRNO_NAMES.get(int(n), f"E{int(n)}")


def empty(n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=TRACE_DTYPE)


def window_table(start_ns: int, window_ns: int) -> np.ndarray:
    w = np.zeros(1, dtype=WINDOW_DTYPE)
    w[0] = (start_ns, window_ns)
    return w


def rows_from_dicts(rows: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """Build a table from dicts with text addresses (tests, small sources).

    Keys: kind, count, and optionally errno (number or name), netns, cgroup, container, pid,
    comm, laddr, lport, raddr, rport, side; family comes from the addresses."""
    rows = list(rows)
    t = empty(len(rows))
    for i, r in enumerate(rows):
        err = r.get("errno", 0)
        addr = r.get("raddr") or r.get("laddr") or "0.0.0.0"
        t[i]["kind"] = int(r["kind"])
        t[i]["errno"] = ERRNO_NUMBERS[err] if isinstance(err, str) else int(err)
        t[i]["family"] = 10 if ":" in addr else 2
        t[i]["side"] = r.get("side", 0)
        t[i]["netns"] = r.get("netns", 0)
        t[i]["cgroup"] = r.get("cgroup", 0)
        t[i]["container"] = str(r.get("container", "")).encode()[:64]
        t[i]["pid"] = r.get("pid", 0)
        t[i]["comm"] = str(r.get("comm", "")).encode()[:16]
        any_addr = "::" if ":" in addr else "0.0.0.0"
        t[i]["laddr"] = addr_bytes(r.get("laddr") or any_addr)
        t[i]["lport"] = r.get("lport", 0)
        t[i]["raddr"] = addr_bytes(r.get("raddr") or any_addr)
        t[i]["rport"] = r.get("rport", 0)
        t[i]["count"] = r["count"]
    return t


def aggregate(rows: np.ndarray, keys: Sequence[str] = KEY_FIELDS) -> np.ndarray:
    """Sum `count` over rows that agree on `keys` (other key columns: of the first such row);
    largest count first. Rows of count 0 are dropped."""
    rows = rows[rows["count"] > 0]
    if rows.shape[0] == 0:
        return empty()
    packed = rfn.repack_fields(rows[list(keys)])
    view = np.ascontiguousarray(packed).view(np.dtype((np.void, packed.dtype.itemsize)))
    _, first, inverse = np.unique(view, return_index=True, return_inverse=True)
    sums = np.bincount(inverse.ravel(), weights=rows["count"].astype(np.float64))
    out = rows[first].copy()
    out["count"] = np.rint(sums).astype(np.uint64)
    return out[np.argsort(-out["count"].astype(np.int64), kind="stable")]


def delta(new: np.ndarray, old: np.ndarray | None) -> np.ndarray:
    """The counts of cumulative table `new` minus those of the earlier `old` of the same trace
    (rows present only in `new` count whole). Counts never decrease in one trace; a row that
    did (another trace) counts 0."""
    if old is None or old.shape[0] == 0:
        return aggregate(new)
    both = np.concatenate([new, old])
    keys = rfn.repack_fields(both[list(KEY_FIELDS)])
    view = np.ascontiguousarray(keys).view(np.dtype((np.void, keys.dtype.itemsize)))
    _, first, inverse = np.unique(view, return_index=True, return_inverse=True)
    sign = np.concatenate([np.ones(new.shape[0]), -np.ones(old.shape[0])])
    sums = np.bincount(inverse.ravel(), weights=both["count"].astype(np.float64) * sign)
    out = both[first].copy()
    out["count"] = np.rint(np.maximum(sums, 0)).astype(np.uint64)
    return aggregate(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class Group:
    """One aggregated line of a trace: who, toward what, which errno, how many."""

    kind: Kind
    count: int
    errno: int = 0
    netns: int = 0
    cgroup: int = 0
    container: str = ""
    pid: int = 0
    comm: str = ""
    side: int = 0
    laddr: str = ""
    lport: int = 0
    raddr: str = ""
    rport: int = 0

    @property
    def errno_name(self) -> str:
        return errno_name(self.errno) if self.errno else ""

    @property
    def process(self) -> str:
        """ "curl[1234]", or "(unknown)" for events no process could be tied to."""
        if not self.pid:
            return "(unknown)" if not self.comm else self.comm
        return f"{self.comm}[{self.pid}]"

    @property
    def destination(self) -> str:
        """The remote end ("198.18.0.2:80", "[2001:db8::1]:443"); for an accepted socket and
        a bind(), the local end ("local 0.0.0.0:80")."""
        if self.side == SIDE_SERVER or self.kind in (Kind.BIND_ERROR, Kind.ACCEPTED):
            return f"local {_hostport(self.laddr, self.lport)}"
        return _hostport(self.raddr, self.rport)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.label,
            "errno": self.errno_name or None,
            "count": self.count,
            "netns": self.netns,
            "pid": self.pid,
            "comm": self.comm,
            "cgroup": self.cgroup,
            "container": self.container,
            "side": {SIDE_CLIENT: "client", SIDE_SERVER: "server"}.get(self.side),
            "src": self.laddr or None,
            "sport": self.lport,
            "dst": self.raddr or None,
            "dport": self.rport,
            "destination": self.destination,
        }


def _hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _is_unspecified(raw: np.void) -> bool:
    b = raw.tobytes()
    return b in (bytes(16), bytes(10) + b"\xff\xff" + bytes(4))


def group_of(row: np.void) -> Group:
    """One table row as a Group; an address that is all zeros (none) reads "" except the
    address a bind() asked for (0.0.0.0 is a real choice there)."""
    laddr, raddr = row["laddr"], row["raddr"]
    kind = Kind(int(row["kind"]))
    return Group(
        kind=kind,
        count=int(row["count"]),
        errno=int(row["errno"]),
        netns=int(row["netns"]),
        cgroup=int(row["cgroup"]),
        container=bytes(row["container"]).decode(errors="replace"),
        pid=int(row["pid"]),
        comm=bytes(row["comm"]).decode(errors="replace"),
        side=int(row["side"]),
        laddr="" if _is_unspecified(laddr) and kind != Kind.BIND_ERROR else addr_str(laddr),
        lport=int(row["lport"]),
        raddr="" if _is_unspecified(raddr) else addr_str(raddr),
        rport=int(row["rport"]),
    )


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Traced:
    """A trace's counts over `window_ns`: what `doctor`, `top` and the exporter read."""

    rows: np.ndarray  # TRACE_DTYPE
    window_ns: int
    start_ns: int = 0

    @property
    def window_s(self) -> float:
        return self.window_ns / 1e9

    def of(self, kinds: Iterable[Kind]) -> np.ndarray:
        return self.rows[np.isin(self.rows["kind"], [int(k) for k in kinds])]

    def total(self, *kinds: Kind) -> int:
        return int(self.of(kinds)["count"].sum())

    def per_s(self, *kinds: Kind) -> float:
        return self.total(*kinds) / self.window_s if self.window_ns else 0.0

    def by_errno(self, *kinds: Kind) -> dict[str, int]:
        """{"EADDRNOTAVAIL": 120, ...}, most first."""
        rows = aggregate(self.of(kinds or CONNECT_KINDS), ("errno",))
        return {errno_name(int(r["errno"])): int(r["count"]) for r in rows}

    def groups(
        self,
        *kinds: Kind,
        keys: Sequence[str] = KEY_FIELDS,
        top: int | None = None,
        netns: int | None = None,
    ) -> list[Group]:
        """Aggregated lines of these kinds (largest first), over `keys` (other columns of the
        group's first row), of one namespace inode when `netns` is given."""
        rows = self.of(kinds)
        if netns is not None:
            rows = rows[rows["netns"] == netns]
        agg = aggregate(rows, keys)
        if top is not None:
            agg = agg[:top]
        return [group_of(r) for r in agg]

    def namespaces(self) -> list[int]:
        return sorted({int(n) for n in self.rows["netns"]})

    def churn_per_destination(
        self, src: np.ndarray, dst: np.ndarray, dport: np.ndarray
    ) -> np.ndarray:
        """Active closes per second toward each (src, dst, dport) (the doctor's destination
        arrays): the TIME_WAITs this side made toward it during the window."""
        n = src.shape[0]
        out = np.zeros(n, dtype=np.float64)
        if not self.window_ns or n == 0:
            return out
        rows = self.of((Kind.ACTIVE_CLOSE,))
        rows = rows[rows["side"] == SIDE_CLIENT]
        if rows.shape[0] == 0:
            return out
        index = {
            (bytes(s), bytes(d), int(p)): i
            for i, (s, d, p) in enumerate(zip(_raw(src), _raw(dst), dport.tolist(), strict=True))
        }
        for r in rows:
            i = index.get((r["laddr"].tobytes(), r["raddr"].tobytes(), int(r["rport"])))
            if i is not None:
                out[i] += int(r["count"])
        return out / self.window_s


def _raw(col: np.ndarray) -> list[bytes]:
    flat = np.ascontiguousarray(col).view(np.uint8).reshape(-1, 16)
    return [bytes(r) for r in flat]


def check_table(rows: np.ndarray, window: np.ndarray | None, name: str = "snapshot") -> str:
    """What is wrong with a trace table (and its window), or ""."""
    if rows.dtype != TRACE_DTYPE:
        return f"table {TABLE} has dtype {rows.dtype}, expected the trace dtype"
    if window is None or window.dtype != WINDOW_DTYPE or window.shape != (1,):
        return f"table {TABLE} comes without its {WINDOW_TABLE} (one row)"
    if rows.shape[0] and not np.isin(rows["kind"], [int(k) for k in Kind]).all():
        return f"table {TABLE} has an unknown event kind"
    if rows.shape[0] and not np.isin(rows["family"], (2, 10)).all():
        return f"table {TABLE} has a family other than IPv4/IPv6"
    return ""


def traced(snapshot: Snapshot) -> Traced | None:
    """The snapshot's trace, or None when it was not traced. A table of the wrong shape is a
    damaged file: MalformedSnapshot, one line."""
    rows = snapshot.tables.get(TABLE)
    if rows is None:
        return None
    window = snapshot.tables.get(WINDOW_TABLE)
    problem = check_table(rows, window)
    if problem:
        raise MalformedSnapshot(f"{snapshot.namespace}: {problem}: re-capture it")
    assert window is not None
    return Traced(
        rows=rows, window_ns=int(window[0]["window_ns"]), start_ns=int(window[0]["start_ns"])
    )


def tables(rows: np.ndarray, start_ns: int, window_ns: int) -> dict[str, np.ndarray]:
    """The Snapshot.tables entries of a trace."""
    return {TABLE: rows, WINDOW_TABLE: window_table(start_ns, window_ns)}


# -- summaries: the JSON shape shared by `trace --json`, `doctor --json` and reports ----------

# Keys a summary groups by: per (process, destination) for failures, per destination for closes.
FAILURE_KEYS: Final = ("kind", "errno", "netns", "pid", "comm", "cgroup", "raddr", "rport")
BIND_KEYS: Final = ("errno", "netns", "pid", "comm", "cgroup", "laddr", "lport")
CLOSE_KEYS: Final = ("netns", "side", "laddr", "lport", "raddr", "rport")


def _count(tr: Traced, rows: np.ndarray) -> dict[str, Any]:
    n = int(rows["count"].sum())
    return {"total": n, "per_s": round(n / tr.window_s, 3) if tr.window_ns else None}


def summary_json(tr: Traced, *, netns: int | None = None, top: int = 10) -> dict[str, Any]:
    """What a trace saw (of one namespace inode, or all): the documented JSON block.

    window_s          seconds counted
    connect_failures  {total, per_s, by_errno {EADDRNOTAVAIL: n, ...}, async (of them,
                       failed after connect() returned), top [Group.as_dict()]: per
                       (kind, errno, process, destination), most first}
    bind_failures     {total, per_s, by_errno, top [per (errno, process, address:port)]}
    active_closes     {total, per_s, client, server, top [per destination (client side:
                       src -> dst:dport) or listening address:port (server side)]}
    passive_closes    {total, per_s, top [same keys]}
    opened            {total, per_s}: connect()s that established
    accepted          {total, per_s}: connections listeners accepted
    """
    rows = tr.rows if netns is None else tr.rows[tr.rows["netns"] == netns]
    sub = Traced(rows=rows, window_ns=tr.window_ns, start_ns=tr.start_ns)

    def part(kinds: Sequence[Kind], keys: Sequence[str], errnos: bool) -> dict[str, Any]:
        r = sub.of(kinds)
        out = _count(sub, r)
        if errnos:
            out["by_errno"] = sub.by_errno(*kinds)
        out["top"] = [g.as_dict() for g in sub.groups(*kinds, keys=keys, top=top)]
        return out

    connect = part(CONNECT_KINDS, FAILURE_KEYS, True)
    connect["async"] = sub.total(Kind.CONNECT_ASYNC_ERROR)
    active = part((Kind.ACTIVE_CLOSE,), CLOSE_KEYS, False)
    closes = sub.of((Kind.ACTIVE_CLOSE,))
    active["client"] = int(closes["count"][closes["side"] == SIDE_CLIENT].sum())
    active["server"] = int(closes["count"][closes["side"] == SIDE_SERVER].sum())
    return {
        "window_s": round(sub.window_s, 3),
        "connect_failures": connect,
        "bind_failures": part((Kind.BIND_ERROR,), BIND_KEYS, True),
        "active_closes": active,
        "passive_closes": part((Kind.PASSIVE_CLOSE,), CLOSE_KEYS, False),
        "opened": _count(sub, sub.of((Kind.OPENED,))),
        "accepted": _count(sub, sub.of((Kind.ACCEPTED,))),
    }
