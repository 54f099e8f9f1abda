"""Analysis: pure, vectorized numbers over a Snapshot (no I/O, no clock).

Theory of operation
-------------------
`analyze(snapshot, previous=None)` turns a socket table into the numbers the doctor's rules and
every output read. It never builds a Python object per socket: each step is a numpy pass over
the columns (`state`, `sport`, `src`/`dst` bytes), and per-destination figures are bincounts over
one group id per row. 1,000,000 rows take a few hundred milliseconds (bench/bench_analysis.py).

What is counted, and why (ref = ../shared/reference/linux-timewait.md):
- TIME_WAIT (`state` 6) is kept apart from FIN_WAIT2 minisockets (`state` 5, `minisock`; orphans
  waiting for the peer's FIN) and from full FIN_WAIT2 sockets (still owned by an application):
  sockstat "tw" lumps both minisocket kinds together (ref 9.2), `ss state time-wait` does not.
- Role (ref 12.1): a socket whose local port is a listening port is server side; TIME_WAIT there
  costs ~256 B and blocks only its own four-tuple. Everything else with a peer is client side.
- Destination = (source address, destination address, destination port): the unit connect()
  needs a unique four-tuple within (ref 7.3), so each destination has its own port budget.
- Capacity (ref 7.1, 7.2 step 6): the ephemeral range minus reserved ports minus ports held by
  bind() users (listeners, and state 13 TCP_BOUND_INACTIVE sockets) inside the range. connect()
  skips any port whose bind bucket was made by bind()/listen(), whatever address it is bound to,
  so the budget is the same for every destination. A socket that was bound explicitly (or with
  bind(ip, 0) without IP_BIND_ADDRESS_NO_PORT) *and then connected* also holds its port for all
  destinations, but a dump cannot tell it from an autobound one: it counts only toward its own
  destination here, so capacity is an upper bound when such clients exist.
- In use: distinct local ports of the budget (in the range, not reserved, not bind()-held)
  toward the destination, in any state (a SYN_SENT, ESTABLISHED, FIN_WAIT2 or TIME_WAIT socket
  each hold their four-tuple). Ports outside the budget (explicit binds) take nothing from it,
  so usage = in_use / capacity never exceeds 1.
- Churn (TIME_WAITs created per second). One snapshot: Little's law, L = lambda * W with
  W = TCP_TIMEWAIT_LEN = 60 s, so churn = TIME_WAIT / 60 s (ref 9.2, landscape 9.3). Two snapshots
  `interval_s` apart: per destination, the TIME_WAITs younger than the interval (age =
  60 s - timer left, read from idiag_expires) divided by the interval -- a direct count of what
  was created, no matching of rows needed; for the host, the TcpExt TW counter delta / interval
  (which also counts FIN_WAIT2 minisockets waiting > 4 s, ref 9.2).
- Trend (ports per second) and time to exhaustion. Two snapshots: (in_use now - in_use before) /
  interval. One snapshot: the TIME_WAIT timers give it: creations over the last 10 s are the
  TIME_WAITs with > 50 s left, expiries over the next 10 s those with < 10 s left, so
  d(TIME_WAIT)/dt ~= (young - old) / 10 s. eta_s = (capacity - in_use) / trend when the trend
  is up, 0 when already full, None otherwise.
- Memory (ref 9.1): 256 B per minisocket, 2,432 B per full socket, 1,216 B of file objects per
  full socket that has an inode (a descriptor).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

from timewait.snapshot import (
    STATE_NAMES,
    TCP_BOUND_INACTIVE,
    TCP_CLOSE,
    TCP_ESTABLISHED,
    TCP_FIN_WAIT2,
    TCP_LISTEN,
    TCP_SYN_SENT,
    TCP_TIME_WAIT,
    Snapshot,
    addr_str,
)

# include/net/tcp.h: TCP_TIMEWAIT_LEN (60*HZ) -- the fixed TIME_WAIT length on Linux (ref 2.1).
TIME_WAIT_MS: Final = 60_000
# Remaining-timer histogram: six buckets of 10 s over 0..60 s (ms of idiag_expires).
HIST_BUCKET_MS: Final = 10_000
HIST_BUCKETS: Final = 6
# Window for the one-snapshot trend estimate (young vs about-to-expire TIME_WAITs).
TREND_WINDOW_MS: Final = 10_000
# ref 9.1, slab sizes measured on 6.18 (same numbers as timewait.model.host).
TW_SOCK_BYTES: Final = 256  # tw_sock_TCPv6 (tw_sock_TCP is 248)
FULL_SOCK_BYTES: Final = 2432  # TCP slab slot, IPv4
FD_OBJECT_BYTES: Final = 1216  # sock_inode_cache 832 + filp 192 + dentry 192

# Per-destination state columns kept (the rest go to "other").
DEST_STATES: Final = ("time_wait", "established", "fin_wait2", "syn_sent", "other")


@dataclass(frozen=True, slots=True, kw_only=True)
class Totals:
    """Socket counts for the whole snapshot.

    `by_state` counts every row by its kernel state name (SYN-RECV merges states 3 and 12);
    FIN-WAIT-2 there includes minisockets; the fields below split what matters.
    """

    sockets: int
    by_state: Mapping[str, int]
    time_wait: int  # TIME_WAIT minisockets (what `ss state time-wait` lists)
    time_wait_server: int  # ... whose local port is a listening port
    time_wait_client: int
    fin_wait2: int  # FIN_WAIT2 minisockets: orphans waiting for the peer's FIN
    fin_wait2_full: int  # FIN_WAIT2 full sockets: the application still holds them
    established: int
    listen: int
    bound_inactive: int
    minisockets: int  # TIME_WAIT + FIN_WAIT2 minisockets = sockstat "tw" (ref 9.2)
    sockstat_tw: int | None  # the kernel's own count, when the snapshot has it


@dataclass(frozen=True, slots=True, kw_only=True)
class PortBudget:
    """The ephemeral ports connect() can choose from, per destination (ref 7.1, 7.2)."""

    port_range: tuple[int, int]
    range_size: int
    reserved: int  # ip_local_reserved_ports inside the range
    listener_ports: tuple[int, ...]  # listening ports inside the range, not reserved
    bound_ports: tuple[int, ...]  # BOUND_INACTIVE ports inside the range, not reserved/listening
    capacity: int  # range_size - reserved - len(listener_ports) - len(bound_ports)
    listening: tuple[int, ...] = ()  # every listening port, in the range or not

    def usable_mask(self, reserved: frozenset[int]) -> np.ndarray:
        """65536 booleans: True for the ports connect() may choose."""
        lut = np.zeros(65536, dtype=bool)
        lo, hi = self.port_range
        lut[lo : hi + 1] = True
        for ports in (reserved, self.listener_ports, self.bound_ports):
            if ports:
                lut[np.fromiter(ports, dtype=np.int64)] = False
        return lut


@dataclass(frozen=True, slots=True, kw_only=True)
class Destination:
    """One (src, dst, dport) with its port budget; materialized only for the top rows."""

    src: str
    dst: str
    dport: int
    family: int
    time_wait: int
    established: int
    fin_wait2: int
    syn_sent: int
    other: int
    in_use: int
    capacity: int
    usage: float
    churn_per_s: float
    trend_per_s: float | None
    eta_s: float | None

    @property
    def label(self) -> str:
        dst = f"[{self.dst}]" if ":" in self.dst else self.dst
        return f"{self.src} -> {dst}:{self.dport}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Memory:
    """Kernel memory estimate in bytes (ref 9.1)."""

    minisockets: int
    full_sockets: int
    file_objects: int

    @property
    def total(self) -> int:
        return self.minisockets + self.full_sockets + self.file_objects


@dataclass(frozen=True, slots=True, kw_only=True)
class Analysis:
    """Everything the rules and renderers read; arrays are per destination, sorted by usage.

    `dest_*` arrays hold every client-side destination (row i of each array is one
    destination), ordered by usage then TIME_WAIT count, descending; `destinations(n)` builds
    objects for the first n. `interval_s` is set when a previous snapshot was given.
    """

    totals: Totals
    ports: PortBudget
    memory: Memory
    timer_histogram: tuple[int, ...]  # TIME_WAIT rows by time left: [0,10) s ... [50,60] s
    churn_per_s: float  # host: TIME_WAITs created per second
    churn_method: str  # "littles_law" or "tw_counter" or "tw_timers"
    interval_s: float | None
    counters_delta: Mapping[str, int]  # counter increase since the previous snapshot
    server_time_wait_by_port: Mapping[int, int]  # listening port -> server-side TIME_WAITs
    dest_src: np.ndarray  # V16
    dest_dst: np.ndarray  # V16
    dest_dport: np.ndarray  # u2
    dest_family: np.ndarray  # u1
    dest_counts: np.ndarray  # (n, len(DEST_STATES)) int64
    dest_in_use: np.ndarray  # int64
    dest_churn: np.ndarray  # float64, TIME_WAITs created per second
    dest_trend: np.ndarray  # float64 ports per second; nan = unknown
    trend_method: str  # "interval" or "tw_timers"

    @property
    def n_destinations(self) -> int:
        return int(self.dest_in_use.shape[0])

    @property
    def dest_usage(self) -> np.ndarray:
        cap = self.ports.capacity
        if cap <= 0:
            return np.where(self.dest_in_use > 0, np.inf, 0.0)
        return self.dest_in_use / cap

    @property
    def dest_eta(self) -> np.ndarray:
        """Seconds until in_use reaches capacity at the current trend; nan = not trending up."""
        free = (self.ports.capacity - self.dest_in_use).astype(np.float64)
        trend = self.dest_trend
        with np.errstate(divide="ignore", invalid="ignore"):
            eta = np.where(trend > 0, np.maximum(free, 0.0) / trend, np.nan)
        return np.where(free <= 0, 0.0, eta)

    @property
    def max_usage(self) -> float:
        return float(self.dest_usage[0]) if self.n_destinations else 0.0

    def destination(self, i: int) -> Destination:
        counts = self.dest_counts[i]
        trend = float(self.dest_trend[i])
        eta = float(self.dest_eta[i])
        return Destination(
            src=addr_str(self.dest_src[i]),
            dst=addr_str(self.dest_dst[i]),
            dport=int(self.dest_dport[i]),
            family=int(self.dest_family[i]),
            **{name: int(counts[k]) for k, name in enumerate(DEST_STATES)},
            in_use=int(self.dest_in_use[i]),
            capacity=self.ports.capacity,
            usage=float(self.dest_usage[i]),
            churn_per_s=float(self.dest_churn[i]),
            trend_per_s=None if np.isnan(trend) else trend,
            eta_s=None if np.isnan(eta) else eta,
        )

    def destinations(self, n: int | None = None) -> list[Destination]:
        """The top n destinations by usage (all when n is None)."""
        k = self.n_destinations if n is None else min(n, self.n_destinations)
        return [self.destination(i) for i in range(k)]

    def count_at_least(self, usage: float) -> int:
        """How many destinations use at least this fraction of their ports."""
        return int(np.count_nonzero(self.dest_usage >= usage))


# -- helpers ---------------------------------------------------------------------------------


def _addr_ids(col: np.ndarray) -> tuple[np.ndarray, int]:
    """Factorize a V16 address column into dense int64 ids (order: by address bytes).

    np.unique on 16-byte voids is slow (generic compare); two 64-bit halves are fast.
    """
    halves = np.ascontiguousarray(col).view(">u8").reshape(-1, 2)
    hi, lo = halves[:, 0], halves[:, 1]
    if hi.size and np.all(hi == hi[0]):  # all IPv4 (::ffff:0:0/96) or one /64: one pass
        _, ids = np.unique(lo, return_inverse=True)
        return ids.astype(np.int64), int(ids.max()) + 1
    _, ih = np.unique(hi, return_inverse=True)
    ul, il = np.unique(lo, return_inverse=True)
    _, ids = np.unique(ih.astype(np.int64) * len(ul) + il, return_inverse=True)
    return ids.astype(np.int64), (int(ids.max()) + 1 if ids.size else 0)


def _group(src: np.ndarray, dst: np.ndarray, dport: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group id per row for (src, dst, dport); returns (gid, first row index of each group)."""
    if src.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sid, _ = _addr_ids(src)
    did, nd = _addr_ids(dst)
    key = (sid * nd + did) * 65536 + dport.astype(np.int64)  # < n^2 * 2^16, fits for n < 10^6.5
    _, first, gid = np.unique(key, return_index=True, return_inverse=True)
    return gid.astype(np.int64), first


def _port_mask(ports: np.ndarray | frozenset[int] | set[int]) -> np.ndarray:
    lut = np.zeros(65536, dtype=bool)
    if isinstance(ports, np.ndarray):
        lut[ports] = True
    elif ports:
        lut[np.fromiter(ports, dtype=np.int64)] = True
    return lut


def port_budget(snapshot: Snapshot) -> PortBudget:
    """The per-destination port budget of this snapshot's namespace (ref 7.1, 7.2 step 6)."""
    cfg = snapshot.config
    lo, hi = cfg.ip_local_port_range
    in_range = np.zeros(65536, dtype=bool)
    in_range[lo : hi + 1] = True
    reserved = _port_mask(cfg.ip_local_reserved_ports) & in_range
    s = snapshot.sockets
    listening = _port_mask(s["sport"][s["state"] == TCP_LISTEN]) & in_range & ~reserved
    bound = (
        _port_mask(s["sport"][s["state"] == TCP_BOUND_INACTIVE]) & in_range & ~reserved & ~listening
    )
    n_res = int(reserved.sum())
    lst = tuple(int(p) for p in np.flatnonzero(listening))
    every = tuple(int(p) for p in np.unique(s["sport"][s["state"] == TCP_LISTEN]))
    bnd = tuple(int(p) for p in np.flatnonzero(bound))
    size = hi - lo + 1
    return PortBudget(
        port_range=(lo, hi),
        range_size=size,
        reserved=n_res,
        listener_ports=lst,
        bound_ports=bnd,
        capacity=size - n_res - len(lst) - len(bnd),
        listening=every,
    )


def _client_mask(s: np.ndarray, listener_lut: np.ndarray) -> np.ndarray:
    """Rows that hold an outgoing connection's four-tuple (ref 12.1)."""
    st = s["state"]
    mask: np.ndarray = (
        (st != TCP_LISTEN)
        & (st != TCP_BOUND_INACTIVE)
        & (st != TCP_CLOSE)
        & (s["dport"] != 0)
        & ~listener_lut[s["sport"]]
    )
    return mask


def _young_tw(s: np.ndarray, window_ms: float) -> np.ndarray:
    """TIME_WAIT rows created less than window_ms ago (time left > 60 s - window)."""
    mask: np.ndarray = (s["state"] == TCP_TIME_WAIT) & (s["expires_ms"] > TIME_WAIT_MS - window_ms)
    return mask


def analyze(snapshot: Snapshot, previous: Snapshot | None = None) -> Analysis:
    """Numbers for one snapshot; with `previous` (same source, earlier) rates use the interval.

    Raises ValueError if `previous` is not earlier than `snapshot` (monotonic clock).
    """
    s = snapshot.sockets
    st = s["state"]
    mini = s["minisock"]
    cfg = snapshot.config

    interval_s: float | None = None
    if previous is not None:
        dt_ns = snapshot.monotonic_ns - previous.monotonic_ns
        if dt_ns <= 0:
            raise ValueError("the previous snapshot must be older than the current one")
        interval_s = dt_ns / 1e9

    # -- totals ------------------------------------------------------------------------------
    state_counts = np.bincount(st, minlength=16)
    by_state: dict[str, int] = {}
    for num, name in STATE_NAMES.items():
        if state_counts[num]:
            by_state[name] = by_state.get(name, 0) + int(state_counts[num])
    listener_ports = np.unique(s["sport"][st == TCP_LISTEN])
    listener_lut = _port_mask(listener_ports)
    is_tw = st == TCP_TIME_WAIT
    tw_server = is_tw & listener_lut[s["sport"]]
    n_tw = int(is_tw.sum())
    n_tw_server = int(tw_server.sum())
    fw2 = st == TCP_FIN_WAIT2
    n_fw2_mini = int((fw2 & mini).sum())
    sockstat = snapshot.counters.get("sockstat.tw")
    totals = Totals(
        sockets=len(snapshot),
        by_state=by_state,
        time_wait=n_tw,
        time_wait_server=n_tw_server,
        time_wait_client=n_tw - n_tw_server,
        fin_wait2=n_fw2_mini,
        fin_wait2_full=int((fw2 & ~mini).sum()),
        established=int(state_counts[TCP_ESTABLISHED]),
        listen=int(state_counts[TCP_LISTEN]),
        bound_inactive=int(state_counts[TCP_BOUND_INACTIVE]),
        minisockets=int(mini.sum()),
        sockstat_tw=None if sockstat is None else int(sockstat),
    )
    ports = port_budget(snapshot)

    # -- server-side TIME_WAIT per listening port --------------------------------------------
    sp, sc = np.unique(s["sport"][tw_server], return_counts=True)
    server_by_port = {int(p): int(c) for p, c in zip(sp, sc, strict=True)}

    # -- timers and memory -------------------------------------------------------------------
    tw_left = s["expires_ms"][is_tw].astype(np.int64)
    buckets = np.minimum(tw_left // HIST_BUCKET_MS, HIST_BUCKETS - 1)
    hist = tuple(int(x) for x in np.bincount(buckets, minlength=HIST_BUCKETS))
    full = ~mini
    memory = Memory(
        minisockets=int(mini.sum()) * TW_SOCK_BYTES,
        full_sockets=int(full.sum()) * FULL_SOCK_BYTES,
        file_objects=int((full & (s["inode"] != 0)).sum()) * FD_OBJECT_BYTES,
    )

    # -- counters ----------------------------------------------------------------------------
    delta: dict[str, int] = {}
    if previous is not None:
        for k, v in snapshot.counters.items():
            if k in previous.counters and not k.startswith("sockstat."):
                delta[k] = int(v) - int(previous.counters[k])

    # -- destinations ------------------------------------------------------------------------
    cmask = _client_mask(s, listener_lut)
    cur = s[cmask]
    n_cur = int(cur.shape[0])
    if previous is not None:
        ps = previous.sockets
        prev_lut = _port_mask(np.unique(ps["sport"][ps["state"] == TCP_LISTEN]))
        prv = ps[_client_mask(ps, prev_lut)]
        rows = np.concatenate([cur, prv])
    else:
        rows = cur
    gid_all, first = _group(rows["src"], rows["dst"], rows["dport"])
    ng_all = int(first.shape[0])
    gid = gid_all[:n_cur]
    cst = cur["state"]
    usable = ports.usable_mask(cfg.ip_local_reserved_ports)
    in_rng = usable[cur["sport"]]

    def per_group(g: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(g if mask is None else g[mask], minlength=ng_all).astype(np.int64)

    def distinct_ports(g: np.ndarray, sport: np.ndarray) -> np.ndarray:
        # sort + diff: faster than np.unique's hash path for ~10^6 int64 keys (numpy 2.4)
        code = np.sort(g * 65536 + sport.astype(np.int64))
        keep = np.ones(code.shape[0], dtype=bool)
        keep[1:] = code[1:] != code[:-1]
        return per_group(code[keep] // 65536)

    named = {
        "time_wait": cst == TCP_TIME_WAIT,
        "established": cst == TCP_ESTABLISHED,
        "fin_wait2": cst == TCP_FIN_WAIT2,
        "syn_sent": cst == TCP_SYN_SENT,
    }
    cols = [per_group(gid, named[n]) for n in DEST_STATES[:-1]]
    cols.append(per_group(gid) - sum(cols))
    counts = np.stack(cols, axis=1) if ng_all else np.zeros((0, len(DEST_STATES)), np.int64)
    in_use = distinct_ports(gid[in_rng], cur["sport"][in_rng])

    if interval_s is not None:
        win = min(interval_s * 1000.0, TIME_WAIT_MS)
        churn = per_group(gid, _young_tw(cur, win)) / interval_s
        pg = gid_all[n_cur:]
        p_rng = usable[prv["sport"]]
        before = distinct_ports(pg[p_rng], prv["sport"][p_rng])
        trend = (in_use - before) / interval_s
        trend_method = "interval"
        tw_delta = delta.get("TW")
        if tw_delta is not None and tw_delta >= 0:
            host_churn, churn_method = tw_delta / interval_s, "tw_counter"
        else:
            host_churn = float(_young_tw(s, win).sum()) / interval_s
            churn_method = "tw_timers"
    else:
        churn = counts[:, 0] / (TIME_WAIT_MS / 1000)
        young = per_group(gid, _young_tw(cur, TREND_WINDOW_MS))
        old = per_group(gid, (cst == TCP_TIME_WAIT) & (cur["expires_ms"] < TREND_WINDOW_MS))
        trend = (young - old) / (TREND_WINDOW_MS / 1000)
        trend_method = "tw_timers"
        host_churn = n_tw / (TIME_WAIT_MS / 1000)
        churn_method = "littles_law"

    # Keep only destinations present now; order by usage, then TIME_WAIT, descending.
    present = np.flatnonzero(per_group(gid) > 0)
    order = present[np.lexsort((-counts[present, 0], -in_use[present]))]
    src_rows = rows[first[order]]
    return Analysis(
        totals=totals,
        ports=ports,
        memory=memory,
        timer_histogram=hist,
        churn_per_s=float(host_churn),
        churn_method=churn_method,
        interval_s=interval_s,
        counters_delta=delta,
        server_time_wait_by_port=server_by_port,
        dest_src=src_rows["src"],
        dest_dst=src_rows["dst"],
        dest_dport=src_rows["dport"],
        dest_family=src_rows["family"],
        dest_counts=counts[order],
        dest_in_use=in_use[order],
        dest_churn=np.asarray(churn, dtype=np.float64)[order],
        dest_trend=np.asarray(trend, dtype=np.float64)[order],
        trend_method=trend_method,
    )
