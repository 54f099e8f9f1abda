"""Snapshot: one frozen, columnar picture of a TCP socket table, the shape every source builds.

Theory of operation
-------------------
The live collector (sock_diag or /proc), a saved file and the model's Host all produce a
`Snapshot`; the doctor, the exporter, `top` and the plots only ever read one. That is what lets a
production capture be diagnosed on a laptop and a simulated host be diagnosed like a real one.

`sockets` is a numpy structured array (dtype `SOCKET_DTYPE`), one row per socket, made read-only.
A million rows take ~50 MB and every analysis is a vectorized pass (np.unique over
(src, dst, dport), boolean masks over `state`), so no Python object per socket is ever built.
Addresses are 16 raw bytes (IPv4 stored IPv4-mapped, ::ffff:a.b.c.d) so IPv4 and IPv6 share
columns; `family` keeps them apart. `state` holds the kernel's state number
(include/net/tcp_states.h); for minisockets it is `tw_substate` (6 TIME_WAIT or 5 FIN_WAIT2),
exactly what sock_diag and /proc/net/tcp report, and `minisock` marks them (idiag_timer == 3,
ref 9.3/9.4). State 13 (TCP_BOUND_INACTIVE, Linux 6.5+) is a socket that bind() holds without
listening or connecting: it owns its port.

Other tables of the same namespace ride along in `tables` (name -> structured array: the
conntrack table, traced connect() failures, ...), each read by the module that owns it, and
`labels` name the namespace for people (container, pod). Both are stored in the file.

A live capture may also carry the kernel counters read a moment before the dump
(`counters_before`, `counters_window_ns` earlier): the TcpExt TW delta over that window is the
current churn, which one socket table alone cannot give (issue 17).

Files are numpy .npz archives holding the array and a JSON header with a format version.
Everything is validated on load (`from_bytes`): a damaged or forged file is a one-line
MalformedSnapshot, never a traceback or a diagnosis of nonsense.
"""

from __future__ import annotations

import io
import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from timewait.config import KernelConfig
from timewait.errors import TimewaitError
from timewait.model.states import STATE_NAMES as STATE_NAMES  # re-exported
from timewait.model.states import LinuxState

FORMAT: Final = "timewait-snapshot"
# 2 added counters_before / counters_window_ns, 3 tables and labels; 1 and 2 are still read.
FORMAT_VERSION: Final = 3
READABLE_VERSIONS: Final = (1, 2, 3)

AF_INET: Final = 2
AF_INET6: Final = 10

# The kernel's state numbers as plain ints for numpy columns; the names, their text and their
# source live in timewait.model.states (one state vocabulary, issue 11).
TCP_ESTABLISHED: Final = int(LinuxState.ESTABLISHED)
TCP_SYN_SENT: Final = int(LinuxState.SYN_SENT)
TCP_SYN_RECV: Final = int(LinuxState.SYN_RECV)
TCP_FIN_WAIT1: Final = int(LinuxState.FIN_WAIT1)
TCP_FIN_WAIT2: Final = int(LinuxState.FIN_WAIT2)
TCP_TIME_WAIT: Final = int(LinuxState.TIME_WAIT)
TCP_CLOSE: Final = int(LinuxState.CLOSE)
TCP_CLOSE_WAIT: Final = int(LinuxState.CLOSE_WAIT)
TCP_LAST_ACK: Final = int(LinuxState.LAST_ACK)
TCP_LISTEN: Final = int(LinuxState.LISTEN)
TCP_CLOSING: Final = int(LinuxState.CLOSING)
TCP_NEW_SYN_RECV: Final = int(LinuxState.NEW_SYN_RECV)
TCP_BOUND_INACTIVE: Final = int(LinuxState.BOUND_INACTIVE)

SOCKET_DTYPE: Final = np.dtype(
    [
        ("family", "u1"),  # AF_INET (2) or AF_INET6 (10)
        ("state", "u1"),  # kernel state number; minisockets: tw_substate
        ("timer", "u1"),  # idiag_timer / tr: 0 none, 1 retrans, 2 keepalive, 3 TIME_WAIT, 4 probe
        ("minisock", "?"),  # TIME_WAIT or FIN_WAIT2 minisocket (inet_timewait_sock)
        ("sport", "u2"),  # local port
        ("dport", "u2"),  # remote port
        ("src", "V16"),  # local address, 16 bytes network order (IPv4 as ::ffff:a.b.c.d)
        ("dst", "V16"),  # remote address
        ("expires_ms", "u4"),  # remaining timer in ms (idiag_expires); TIME_WAIT: time left
        ("uid", "u4"),
        ("inode", "u8"),  # 0 for minisockets: no file, no owner (ref 1.2)
    ]
)

_V4_PREFIX: Final = b"\x00" * 10 + b"\xff\xff"


class MalformedSnapshot(TimewaitError):
    """A snapshot file that is truncated, corrupt or of another format/version."""


def addr_bytes(addr: str) -> bytes:
    """'198.18.0.1' -> 16 bytes IPv4-mapped; '2001:db8::1' -> its 16 bytes."""
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return _V4_PREFIX + ip.packed
    return ip.packed


def addr_str(raw: bytes | np.void) -> str:
    """16 bytes -> text; IPv4-mapped addresses print as plain IPv4."""
    b = raw.tobytes() if isinstance(raw, np.void) else bytes(raw)
    if b[:12] == _V4_PREFIX:
        return str(ipaddress.IPv4Address(b[12:]))
    return str(ipaddress.IPv6Address(b))


def check_sockets(arr: np.ndarray) -> str:
    """What is impossible in a socket table, or "" (a kernel never dumps such rows)."""
    fam = arr["family"]
    if not np.isin(fam, (AF_INET, AF_INET6)).all():
        return "a family other than IPv4/IPv6"
    st = arr["state"]
    if ((st < TCP_ESTABLISHED) | (st > TCP_BOUND_INACTIVE)).any():
        return "a TCP state outside 1..13"
    if (arr["timer"] > 4).any():
        return "a timer kind outside 0..4"
    mini = arr["minisock"]
    if (mini & ~np.isin(st, (TCP_FIN_WAIT2, TCP_TIME_WAIT))).any():
        return "a minisocket that is not TIME_WAIT or FIN_WAIT2"
    for col in ("src", "dst"):
        halves = np.ascontiguousarray(arr[col]).view(">u8").reshape(-1, 2)
        mapped = (halves[:, 0] == 0) & ((halves[:, 1] >> np.uint64(32)) == 0xFFFF)
        if (~mapped & (fam == AF_INET)).any():
            return f"an IPv4 row whose {col} is not an IPv4 address"
    if ((arr["dport"] == 0) & ~np.isin(st, (TCP_LISTEN, TCP_BOUND_INACTIVE, TCP_CLOSE))).any():
        return "a connected socket with remote port 0"
    return ""


def empty_sockets(n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=SOCKET_DTYPE)


def sockets_from_rows(rows: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """Build the socket array from dicts with text addresses (for tests and small sources).

    Keys: src, sport, dst, dport, state (number), and optionally family, timer, minisock,
    expires_ms, uid, inode. Family defaults from the address; minisock from timer == 3.
    """
    rows = list(rows)
    arr = empty_sockets(len(rows))
    for i, r in enumerate(rows):
        v6 = ":" in r["src"]
        arr[i]["family"] = r.get("family", AF_INET6 if v6 else AF_INET)
        arr[i]["state"] = r["state"]
        arr[i]["timer"] = r.get("timer", 3 if r.get("minisock") else 0)
        arr[i]["minisock"] = r.get("minisock", arr[i]["timer"] == 3)
        arr[i]["sport"] = r["sport"]
        arr[i]["dport"] = r["dport"]
        arr[i]["src"] = addr_bytes(r["src"])
        arr[i]["dst"] = addr_bytes(r["dst"])
        arr[i]["expires_ms"] = r.get("expires_ms", 0)
        arr[i]["uid"] = r.get("uid", 0)
        arr[i]["inode"] = r.get("inode", 0)
    return arr


@dataclass(frozen=True, eq=False)
class Snapshot:
    """A socket table at one instant, with everything needed to interpret it.

    Attributes:
        sockets: SOCKET_DTYPE rows, read-only.
        config: the namespace's KernelConfig (read from its sysctls, or the model's).
        counters: kernel counters by kernel name: TcpExt (TW, TWRecycled, TWKilled,
            TCPTimeWaitOverflow, ...), Tcp (ActiveOpens, ...), and sockstat under
            "sockstat.tw", "sockstat.inuse", "sockstat.orphan", "sockstat.alloc".
        time_ns: wall-clock capture time, Unix epoch ns (display and file names only).
        monotonic_ns: monotonic capture time, for rates between two snapshots of one source.
        kernel: kernel release (`uname -r`), or "model" for a simulated host.
        namespace: label of what was captured ("host", "netns:NAME", "pid:1234", "sim:client").
        source: "sock_diag", "proc", "model" or "file:<original source>".
        hostname: the machine's name, when known.
        notes: what the collector could not see (e.g. "no root: ..."), shown with findings.
        counters_before: the same counters read `counters_window_ns` before `counters`
            (a live capture's rate window), or empty.
        counters_window_ns: the time between the two counter reads; 0 when there is no window.
        tables: other tables of the namespace by name (structured arrays, read-only), e.g.
            "conntrack"; the module that reads one checks its dtype.
        labels: what names the namespace for people, e.g. {"pod": "web-1", "namespace": "prod"}.
        kernel_hz: the captured kernel's CONFIG_HZ (its timer wheel rounds TIME_WAIT up to
            60.5-62 s at 250), 0 when unknown.
    """

    sockets: np.ndarray
    config: KernelConfig
    counters: Mapping[str, int] = field(default_factory=dict)
    time_ns: int = 0
    monotonic_ns: int = 0
    kernel: str = ""
    namespace: str = "host"
    source: str = "unknown"
    hostname: str = ""
    notes: tuple[str, ...] = ()
    counters_before: Mapping[str, int] = field(default_factory=dict)
    counters_window_ns: int = 0
    tables: Mapping[str, np.ndarray] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    kernel_hz: int = 0

    def __post_init__(self) -> None:
        if self.sockets.dtype != SOCKET_DTYPE:
            raise MalformedSnapshot(
                f"socket table has dtype {self.sockets.dtype}, expected SOCKET_DTYPE"
            )
        arr = self.sockets
        if arr.flags.writeable:
            arr = arr.copy() if arr.base is not None else arr
            arr.flags.writeable = False
            object.__setattr__(self, "sockets", arr)
        object.__setattr__(self, "counters", dict(self.counters))
        object.__setattr__(self, "counters_before", dict(self.counters_before))
        object.__setattr__(self, "labels", dict(self.labels))
        frozen: dict[str, np.ndarray] = {}
        for name, table in self.tables.items():
            if not name.isidentifier() or table.dtype.names is None or table.ndim != 1:
                raise MalformedSnapshot(f"table {name!r} is not a named 1-D structured array")
            t = table.copy() if table.flags.writeable else table
            t.flags.writeable = False
            frozen[name] = t
        object.__setattr__(self, "tables", frozen)

    def __len__(self) -> int:
        return int(self.sockets.shape[0])

    @property
    def kernel_version(self) -> tuple[int, int]:
        """(major, minor) parsed from `kernel`; (0, 0) if unknown (e.g. a model host)."""
        head = self.kernel.split("-", 1)[0].split(".")
        try:
            return (int(head[0]), int(head[1]))
        except (IndexError, ValueError):
            return (0, 0)

    # -- files -------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The .npz file content (array + JSON header)."""
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": self.config.to_sysctl(),
            "counters": dict(self.counters),
            "time_ns": self.time_ns,
            "monotonic_ns": self.monotonic_ns,
            "kernel": self.kernel,
            "namespace": self.namespace,
            "source": self.source,
            "hostname": self.hostname,
            "notes": list(self.notes),
            "counters_before": dict(self.counters_before),
            "counters_window_ns": self.counters_window_ns,
            "labels": dict(self.labels),
            "kernel_hz": self.kernel_hz,
            "tables": {k: len(v) for k, v in self.tables.items()},
            "rows": len(self),
        }
        buf = io.BytesIO()
        arrays: dict[str, np.ndarray] = {
            "sockets": np.ascontiguousarray(self.sockets),
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        }
        arrays.update({f"table_{k}": np.ascontiguousarray(v) for k, v in self.tables.items()})
        np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    def save(self, path: str | Path) -> None:
        """Write to `path` (conventionally *.npz); the write is atomic (temp file + rename)."""
        from timewait.outpath import write_atomic

        write_atomic(path, self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str = "snapshot") -> Snapshot:
        """Parse a file's content; MalformedSnapshot says what is wrong and what to do.

        Every field is checked: the header's types, the config against the kernel's bounds,
        and the socket table's columns (check_sockets)."""
        import zipfile  # only files need it: the live doctor never imports it

        hint = "re-capture it with `timewait snapshot -o FILE`"
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                sockets = z["sockets"]
                declared = meta.get("tables", {}) if isinstance(meta, dict) else {}
                if not isinstance(declared, dict):
                    raise ValueError("tables")
                tables = {str(k): z[f"table_{k}"] for k in declared}
        except (zipfile.BadZipFile, EOFError, KeyError, ValueError, OSError) as e:
            raise MalformedSnapshot(
                f"{name} is not a readable timewait snapshot ({type(e).__name__}): "
                f"truncated or corrupt? {hint}"
            ) from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise MalformedSnapshot(f"{name} is not a timewait snapshot: {hint}")
        if meta.get("version") not in READABLE_VERSIONS:
            raise MalformedSnapshot(
                f"{name} has snapshot format version {meta.get('version')}, this timewait reads "
                f"versions {', '.join(map(str, READABLE_VERSIONS))}: {hint} with this version"
            )
        if sockets.dtype != SOCKET_DTYPE or sockets.shape != (meta.get("rows"),):
            raise MalformedSnapshot(f"{name} has a damaged socket table: {hint}")

        def bad(what: str) -> MalformedSnapshot:
            return MalformedSnapshot(f"{name} has a damaged header ({what}): {hint}")

        def counters(key: str) -> dict[str, int]:
            raw = meta.get(key, {})
            if not isinstance(raw, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in raw.values()
            ):
                raise bad(f"{key} must map names to integers")
            return {str(k): int(v) for k, v in raw.items()}

        def integer(key: str) -> int:
            v = meta.get(key, 0)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise bad(f"{key} must be a non-negative integer")
            return v

        def text(key: str) -> str:
            v = meta.get(key, "")
            if not isinstance(v, str):
                raise bad(f"{key} must be text")
            return v

        notes = meta.get("notes", [])
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise bad("notes must be a list of text")
        cfg = meta.get("config", {})
        if not isinstance(cfg, dict) or not all(isinstance(v, str) for v in cfg.values()):
            raise bad("config must map sysctl names to their text")
        try:
            config = KernelConfig.from_sysctl(cfg)
        except TimewaitError as e:
            raise bad(f"config: {e}") from None
        labels = meta.get("labels", {})
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise bad("labels must map text to text")
        for k, t in tables.items():
            if t.dtype.names is None or t.ndim != 1 or t.shape[0] != declared[k]:
                raise bad(f"table {k} is damaged")
        problem = check_sockets(sockets)
        if problem:
            raise MalformedSnapshot(f"{name} has a damaged socket table ({problem}): {hint}")
        src = text("source") or "unknown"
        return cls(
            sockets=sockets,
            config=config,
            counters=counters("counters"),
            time_ns=integer("time_ns"),
            monotonic_ns=integer("monotonic_ns"),
            kernel=text("kernel"),
            namespace=text("namespace"),
            source=src if src.startswith("file:") else f"file:{src}",
            hostname=text("hostname"),
            notes=tuple(notes),
            counters_before=counters("counters_before"),
            counters_window_ns=integer("counters_window_ns"),
            tables=tables,
            labels=labels,
            kernel_hz=integer("kernel_hz"),
        )

    @classmethod
    def load(cls, path: str | Path) -> Snapshot:
        p = Path(path)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise MalformedSnapshot(f"no snapshot file at {p}: check the path") from None
        except IsADirectoryError:
            raise MalformedSnapshot(f"{p} is a directory, not a snapshot file") from None
        return cls.from_bytes(data, name=str(p))


def from_host(host: Any, now: int, *, namespace: str | None = None) -> Snapshot:
    """The Snapshot of a model Host at `now` (ns): the simulator's hosts speak the same shape.

    Full connections report their state, minisockets their substate with the timer left, and
    listeners LISTEN; the host's KernelConfig and kernel-named counters come along.
    """
    from timewait.model.host import Host
    from timewait.model.minisock import MiniSocket

    assert isinstance(host, Host)
    rows: list[dict[str, Any]] = []
    for ft, sk in host.ehash.items():
        if isinstance(sk, MiniSocket):
            rows.append(
                dict(
                    src=ft.laddr, sport=ft.lport, dst=ft.raddr, dport=ft.rport,
                    state=sk.substate.linux, timer=3, minisock=True,
                    expires_ms=max(0, (sk.expires - now) // 1_000_000),
                )
            )  # fmt: skip
        else:
            rows.append(
                dict(src=ft.laddr, sport=ft.lport, dst=ft.raddr, dport=ft.rport,
                     state=sk.state.linux, inode=1)
            )  # fmt: skip
    for s in host.listeners():
        any_addr = "::" if ":" in s.bind_addr else "0.0.0.0"
        rows.append(
            dict(src=s.bind_addr, sport=s.lport, dst=any_addr, dport=0, state=TCP_LISTEN, inode=1)
        )
    return Snapshot(
        sockets=sockets_from_rows(rows),
        config=host.config,
        counters={**host.counters, "sockstat.tw": host.tw_count},
        time_ns=now,
        monotonic_ns=now,
        kernel="model",
        namespace=namespace or f"sim:{host.name}",
        source="model",
    )
