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
- Pools (timewait.doctor.pools, ref 7.2-7.4, 8): where a local port comes from. Capacity =
  the usable ports: the ephemeral range minus reserved ports minus the *exclusive* ports, those
  whose bind bucket bind() or listen() created (listeners and bind()-only sockets in the range,
  and -- inferred, rules in pools.py -- connected and TIME_WAIT sockets that bind() gave their
  port, and ports a listener that exited left behind). connect() skips exclusive ports for
  every destination, so the budget is the same for all of them; each destination's `connect`
  pool is that budget minus its own four-tuples. `connect-new` is what a destination nobody
  uses yet gets, and the `bind` pools (per local address) what bind(addr, 0) can still take.
- In use: distinct usable ports toward the destination, in any state (a SYN_SENT, ESTABLISHED,
  FIN_WAIT2 or TIME_WAIT socket each hold their four-tuple). Exclusive ports toward it are
  counted apart (`bound`). Reusable: its TIME_WAITs that tcp_tw_reuse lets connect() take over
  now (ref 3). Headroom = capacity - in use + reusable, usage = 1 - headroom / capacity.
- Churn (TIME_WAITs created per second). A live capture with a rate window (counters read
  before and after the dump, live/capture.py): the host's churn is the TcpExt TW delta over the
  window -- the rate now, not an average -- and each destination gets its share of the
  TIME_WAITs made in the last 10 s; trend = its churn - its TIME_WAITs expiring in the next
  10 s / 10 s. One snapshot without a window (a saved file, say): Little's law,
  L = lambda * W with W = TCP_TIMEWAIT_LEN = 60 s, so churn = TIME_WAIT / 60 s (ref 9.2,
  landscape 9.3), an average over the last minute, and the report says so. Two snapshots
  `interval_s` apart: per destination, the TIME_WAITs younger than the interval (age =
  60 s - timer left, read from idiag_expires) divided by the interval -- a direct count of what
  was created, no matching of rows needed; for the host, the TcpExt TW counter delta / interval
  (which also counts FIN_WAIT2 minisockets waiting > 4 s, ref 9.2). A traced snapshot
  (`doctor --trace S`, timewait.doctor.trace): the active closes counted in the kernel over
  the trace's window, per destination exactly -- the TIME_WAITs this side made -- and for the
  host all of them ("traced"); this replaces the one-snapshot estimates.
- Trend (ports per second) and time to exhaustion. Two snapshots: (in_use now - in_use before) /
  interval. One snapshot: the TIME_WAIT timers give it: creations over the last 10 s are the
  TIME_WAITs with > 50 s left, expiries over the next 10 s those with < 10 s left, so
  d(TIME_WAIT)/dt ~= (young - old) / 10 s. eta_s = headroom / trend when the trend is up, 0
  when already full, None otherwise.
- Memory (ref 9.1): 256 B per minisocket, 2,432 B per full socket, 1,216 B of file objects per
  full socket that has an inode (a descriptor).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

from timewait.doctor import pools as P
from timewait.doctor import trace as T
from timewait.doctor.nat import NatAnalysis, analyze_nat
from timewait.doctor.pools import TIME_WAIT_MS
from timewait.model.states import FD_OBJECT_BYTES, FULL_SOCK_BYTES, TW_SOCK_BYTES
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

# Remaining-timer histogram: six buckets of 10 s over 0..60 s (ms of idiag_expires).
HIST_BUCKET_MS: Final = 10_000
HIST_BUCKETS: Final = 6
# Window for the one-snapshot trend estimate (young vs about-to-expire TIME_WAITs).
TREND_WINDOW_MS: Final = 10_000

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
    time_wait_server: int  # ... whose local port is a listening port (or was: guessed below)
    time_wait_client: int
    fin_wait2: int  # FIN_WAIT2 minisockets: orphans waiting for the peer's FIN
    fin_wait2_full: int  # FIN_WAIT2 full sockets: the application still holds them
    established: int
    listen: int
    bound_inactive: int
    minisockets: int  # TIME_WAIT + FIN_WAIT2 minisockets = sockstat "tw" (ref 9.2)
    sockstat_tw: int | None  # the kernel's own count, when the snapshot has it
    # server-side TIME_WAITs on a port no listener holds now: accepted connections of a
    # listener that exited, recognized by their shape (pools.py rule 2), so a guess
    time_wait_server_guessed: int = 0


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class PortBudget:
    """The ports connect() can choose from, for any destination (ref 7.1, 7.2; pools.py)."""

    port_range: tuple[int, int]
    range_size: int
    reserved: int  # ip_local_reserved_ports inside the range
    listener_ports: tuple[int, ...]  # listening ports inside the range, not reserved
    bound_ports: tuple[int, ...]  # bind()-only ports inside the range, not reserved/listening
    orphan_server_ports: tuple[int, ...] = ()  # in the range, left by a listener that exited
    inferred_ports: int = 0  # in the range, held by sockets bind() gave their port (inferred)
    parity_destinations: int = 0  # destinations whose ports the parity rule says bind() took
    sharing_destinations: int = 0  # ... the no-sharing rule
    address_destinations: int = 0  # ... and the same-address rule
    capacity: int  # range - reserved - every exclusive port above
    listening: tuple[int, ...] = ()  # every listening port, in the range or not
    usable: np.ndarray | None = None  # 65536 bool lut of the capacity's ports

    @property
    def budget(self) -> int:
        """The range minus reserved ports: what bind(0) draws from."""
        return self.range_size - self.reserved

    @property
    def exclusive(self) -> int:
        """Ports of the budget connect() cannot share (certain and inferred)."""
        return self.budget - self.capacity


@dataclass(frozen=True, slots=True, kw_only=True)
class Destination:
    """One (src, dst, dport) with its connect() pool; materialized only for the top rows."""

    src: str
    dst: str
    dport: int
    family: int
    time_wait: int
    established: int
    fin_wait2: int
    syn_sent: int
    other: int
    in_use: int  # usable ports holding a four-tuple to it
    capacity: int  # usable ports (the same for every destination)
    usage: float  # (capacity - headroom) / capacity
    churn_per_s: float
    trend_per_s: float | None
    eta_s: float | None
    reusable: int = 0  # TIME_WAITs connect() would take over now (tcp_tw_reuse)
    bound: int = 0  # exclusive ports (bind() gave them) holding a four-tuple to it
    bind_like: bool = False  # its sockets got their ports from bind() (pools.py rule 3)

    @property
    def headroom(self) -> int:
        return max(self.capacity - self.in_use + self.reusable, 0)

    @property
    def label(self) -> str:
        dst = f"[{self.dst}]" if ":" in self.dst else self.dst
        return f"{self.src} -> {dst}:{self.dport}"

    def pool(self) -> P.Pool:
        return P.Pool(
            kind=P.KIND_CONNECT, label=f"connect() {self.label}", size=self.capacity,
            held=self.in_use, reusable=self.reusable,
        )  # fmt: skip


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
    `bind_pools` are the bind(addr, 0) pools, smallest headroom first.
    """

    totals: Totals
    ports: PortBudget
    memory: Memory
    timer_histogram: tuple[int, ...]  # TIME_WAIT rows by time left: [0,10) s ... [50,60] s
    churn_per_s: float  # host: TIME_WAITs created per second
    churn_method: str  # "littles_law", "tw_counter", "tw_timers" or "traced"
    interval_s: float | None
    rate_window_s: float | None  # the live capture's counter window (churn_method tw_counter)
    counters_delta: Mapping[str, int]  # counter increase since the previous snapshot
    # (or over the capture's rate window, when there is one)
    server_time_wait_by_port: Mapping[int, int]  # listening port -> server-side TIME_WAITs
    dest_src: np.ndarray  # V16
    dest_dst: np.ndarray  # V16
    dest_dport: np.ndarray  # u2
    dest_family: np.ndarray  # u1
    dest_counts: np.ndarray  # (n, len(DEST_STATES)) int64
    dest_in_use: np.ndarray  # int64
    dest_reusable: np.ndarray  # int64
    dest_bound: np.ndarray  # int64
    dest_bind_like: np.ndarray  # bool
    dest_churn: np.ndarray  # float64, TIME_WAITs created per second
    dest_trend: np.ndarray  # float64 ports per second; nan = unknown
    trend_method: str  # "interval", "tw_counter" (rate window), "tw_timers" or "traced"
    bind_pools: tuple[P.Pool, ...] = ()
    nat: NatAnalysis | None = None  # conntrack and the NAT pools (doctor/nat.py, issue 15)

    @property
    def n_destinations(self) -> int:
        return int(self.dest_in_use.shape[0])

    @property
    def dest_headroom(self) -> np.ndarray:
        cap = self.ports.capacity
        free: np.ndarray = np.maximum(cap - self.dest_in_use + self.dest_reusable, 0)
        return free

    @property
    def dest_usage(self) -> np.ndarray:
        cap = self.ports.capacity
        if cap <= 0:
            return np.ones(self.n_destinations, dtype=np.float64)
        usage: np.ndarray = (cap - self.dest_headroom) / cap
        return usage

    @property
    def dest_eta(self) -> np.ndarray:
        """Seconds until the headroom is gone at the current trend; nan = not trending up."""
        free = self.dest_headroom.astype(np.float64)
        trend = self.dest_trend
        with np.errstate(divide="ignore", invalid="ignore"):
            eta = np.where(trend > 0, free / trend, np.nan)
        return np.where(free <= 0, 0.0, eta)

    @property
    def max_usage(self) -> float:
        return float(self.dest_usage[0]) if self.n_destinations else 0.0

    @property
    def new_destination(self) -> P.Pool:
        """connect() toward a destination no socket uses yet: every usable port."""
        return P.Pool(
            kind=P.KIND_CONNECT_NEW, label="connect() to a new destination",
            size=self.ports.budget, held=self.ports.exclusive,
        )  # fmt: skip

    def pools(self, top: int | None = 10) -> list[P.Pool]:
        """Every pool, smallest headroom share first: the `top` busiest destinations'
        connect() pools (not those whose sockets bound first: their pool is bind()'s),
        connect() to a new destination, and the bind() pools."""
        connect_like = np.flatnonzero(~self.dest_bind_like)
        out = [self.destination(int(i)).pool() for i in connect_like[:top]]
        out += [self.new_destination, *self.bind_pools]
        if self.nat is not None:
            out += [n.pool() for n in self.nat.pools[:top]]
        return sorted(out, key=lambda p: -p.usage)

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
            reusable=int(self.dest_reusable[i]),
            bound=int(self.dest_bound[i]),
            bind_like=bool(self.dest_bind_like[i]),
        )

    def destinations(self, n: int | None = None) -> list[Destination]:
        """The top n destinations by usage (all when n is None)."""
        k = self.n_destinations if n is None else min(n, self.n_destinations)
        return [self.destination(i) for i in range(k)]

    def count_at_least(self, usage: float) -> int:
        """How many destinations use at least this fraction of their ports."""
        return int(np.count_nonzero(self.dest_usage >= usage))


# -- helpers ---------------------------------------------------------------------------------


def _group(
    sid: np.ndarray, dst: np.ndarray, dport: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: (group id of (src id, dst, dport), first row of each group, dst id)."""
    if sid.size == 0:
        z = np.zeros(0, np.int64)
        return z, z, z
    did, nd = P.addr_ids(dst)
    key = (sid * nd + did) * 65536 + dport.astype(np.int64)  # < n^2 * 2^16, fits for n < 10^6.5
    _, first, gid = np.unique(key, return_index=True, return_inverse=True)
    return gid.astype(np.int64), first, did


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


def _totals(snapshot: Snapshot, listener_lut: np.ndarray, guessed_server_tw: int) -> Totals:
    s = snapshot.sockets
    st = s["state"]
    mini = s["minisock"]
    state_counts = np.bincount(st, minlength=16)
    by_state: dict[str, int] = {}
    for num, name in STATE_NAMES.items():
        if state_counts[num]:
            by_state[name] = by_state.get(name, 0) + int(state_counts[num])
    is_tw = st == TCP_TIME_WAIT
    n_tw = int(is_tw.sum())
    n_tw_server = int((is_tw & listener_lut[s["sport"]]).sum()) + guessed_server_tw
    fw2 = st == TCP_FIN_WAIT2
    sockstat = snapshot.counters.get("sockstat.tw")
    return Totals(
        sockets=len(snapshot),
        by_state=by_state,
        time_wait=n_tw,
        time_wait_server=n_tw_server,
        time_wait_client=n_tw - n_tw_server,
        time_wait_server_guessed=guessed_server_tw,
        fin_wait2=int((fw2 & mini).sum()),
        fin_wait2_full=int((fw2 & ~mini).sum()),
        established=int(state_counts[TCP_ESTABLISHED]),
        listen=int(state_counts[TCP_LISTEN]),
        bound_inactive=int(state_counts[TCP_BOUND_INACTIVE]),
        minisockets=int(mini.sum()),
        sockstat_tw=None if sockstat is None else int(sockstat),
    )


def _memory(s: np.ndarray) -> Memory:
    mini = s["minisock"]
    full = ~mini
    return Memory(
        minisockets=int(mini.sum()) * TW_SOCK_BYTES,
        full_sockets=int(full.sum()) * FULL_SOCK_BYTES,
        file_objects=int((full & (s["inode"] != 0)).sum()) * FD_OBJECT_BYTES,
    )


def _timer_histogram(s: np.ndarray) -> tuple[int, ...]:
    tw_left = s["expires_ms"][s["state"] == TCP_TIME_WAIT].astype(np.int64)
    buckets = np.minimum(tw_left // HIST_BUCKET_MS, HIST_BUCKETS - 1)
    return tuple(int(x) for x in np.bincount(buckets, minlength=HIST_BUCKETS))


def _per_group(g: np.ndarray, n: int, mask: np.ndarray | None = None) -> np.ndarray:
    return np.bincount(g if mask is None else g[mask], minlength=n).astype(np.int64)


def _distinct_ports(g: np.ndarray, sport: np.ndarray, n: int) -> np.ndarray:
    # sort + diff: faster than np.unique's hash path for ~10^6 int64 keys (numpy 2.4)
    code = np.sort(g * 65536 + sport.astype(np.int64))
    keep = np.ones(code.shape[0], dtype=bool)
    keep[1:] = code[1:] != code[:-1]
    return _per_group(code[keep] // 65536, n)


def _port_budget(
    snapshot: Snapshot,
    cur: np.ndarray,
    gid: np.ndarray,
    sid: np.ndarray,
    n_groups: int,
    orphan: np.ndarray,
) -> tuple[PortBudget, np.ndarray]:
    """The usable ports (pools.py rules 1-3) and, per destination, whether bind() gave its
    sockets their ports. `cur` holds client rows only (server side, guessed too, removed)."""
    s = snapshot.sockets
    cfg = snapshot.config
    lo, hi = cfg.ip_local_port_range
    budget = P.budget_lut(cfg)
    listening, bound = P.certain_exclusive(s, budget)
    certain = listening | bound
    orphan = orphan & budget & ~certain
    judged = P.candidate_mask(cur, budget, certain | orphan)
    j_gid, j_sport = gid[judged], cur["sport"][judged].astype(np.int64)
    parity, sharing, address = P.bind_like_destinations(
        j_gid, j_sport, sid[judged], n_groups, lo & 1, budget & ~certain & ~orphan
    )
    bind_like = parity | sharing | address
    inferred = P.port_lut(j_sport[bind_like[j_gid]]) & budget & ~certain & ~orphan
    usable = budget & ~(certain | orphan | inferred)
    in_range = np.zeros(65536, dtype=bool)
    in_range[lo : hi + 1] = True
    every = tuple(int(p) for p in np.unique(s["sport"][s["state"] == TCP_LISTEN]))
    ports = PortBudget(
        port_range=(lo, hi),
        range_size=hi - lo + 1,
        reserved=int(np.count_nonzero(in_range & ~budget)),
        listener_ports=tuple(int(p) for p in np.flatnonzero(listening)),
        bound_ports=tuple(int(p) for p in np.flatnonzero(bound)),
        orphan_server_ports=tuple(int(p) for p in np.flatnonzero(orphan)),
        inferred_ports=int(np.count_nonzero(inferred)),
        parity_destinations=int(np.count_nonzero(parity)),
        sharing_destinations=int(np.count_nonzero(sharing)),
        address_destinations=int(np.count_nonzero(address)),
        capacity=int(np.count_nonzero(usable)),
        listening=every,
        usable=usable,
    )
    return ports, bind_like


def port_budget(snapshot: Snapshot) -> PortBudget:
    """The usable ports of this snapshot's namespace (ref 7.1, 7.2 step 6; pools.py)."""
    return analyze(snapshot).ports


def analyze(snapshot: Snapshot, previous: Snapshot | None = None) -> Analysis:
    """Numbers for one snapshot; with `previous` (same source, earlier) rates use the interval.

    Raises ValueError if `previous` is not earlier than `snapshot` (monotonic clock).
    """
    s = snapshot.sockets
    st = s["state"]
    cfg = snapshot.config

    interval_s: float | None = None
    if previous is not None:
        dt_ns = snapshot.monotonic_ns - previous.monotonic_ns
        if dt_ns <= 0:
            raise ValueError("the previous snapshot must be older than the current one")
        interval_s = dt_ns / 1e9

    listener_lut = P.port_lut(np.unique(s["sport"][st == TCP_LISTEN]))
    table_sid, _ = P.addr_ids(s["src"])  # one factorization for destinations and bind pools
    peer_mask = _client_mask(s, listener_lut)
    peers = s[peer_mask]
    n_peers = int(peers.shape[0])
    if previous is not None:
        ps = previous.sockets
        prev_lut = P.port_lut(np.unique(ps["sport"][ps["state"] == TCP_LISTEN]))
        prv = ps[_client_mask(ps, prev_lut)]
        rows = np.concatenate([peers, prv])
        row_sid, _ = P.addr_ids(rows["src"])  # ids comparable across both snapshots
    else:
        rows = peers
        row_sid = table_sid[peer_mask]
    # One grouping for both snapshots: group ids are comparable between them.
    gid_all, first, did_all = _group(row_sid, rows["dst"], rows["dport"])
    sid_all = row_sid
    ng = int(first.shape[0])
    g0 = gid_all[:n_peers]
    size0 = np.bincount(g0, minlength=ng)[g0]
    server_row = P.orphan_server_rows(
        sid_all[:n_peers], peers["sport"], peers["dport"], did_all[:n_peers], size0
    )
    orphan = P.port_lut(peers["sport"][server_row])
    guessed_tw = server_row & (peers["state"] == TCP_TIME_WAIT)
    totals = _totals(snapshot, listener_lut, int(guessed_tw.sum()))
    tw_ports = np.concatenate(
        [s["sport"][(st == TCP_TIME_WAIT) & listener_lut[s["sport"]]], peers["sport"][guessed_tw]]
    )
    sp, sc = np.unique(tw_ports, return_counts=True)
    server_by_port = {int(p): int(c) for p, c in zip(sp, sc, strict=True)}

    delta: dict[str, int] = {}
    window_s = snapshot.counters_window_ns / 1e9
    base = previous.counters if previous is not None else snapshot.counters_before
    for k, v in snapshot.counters.items():
        if k in base and not k.startswith("sockstat."):
            delta[k] = int(v) - int(base[k])

    # -- destinations and pools --------------------------------------------------------------
    client = ~server_row
    if server_row.any():
        cur, gid, sid = peers[client], g0[client], sid_all[:n_peers][client]
    else:  # the usual table: no copy
        cur, gid, sid = peers, g0, sid_all[:n_peers]
    ports, bind_like = _port_budget(snapshot, cur, gid, sid, ng, orphan)
    usable = ports.usable
    assert usable is not None
    cst = cur["state"]
    use = usable[cur["sport"]]
    named = {
        "time_wait": cst == TCP_TIME_WAIT,
        "established": cst == TCP_ESTABLISHED,
        "fin_wait2": cst == TCP_FIN_WAIT2,
        "syn_sent": cst == TCP_SYN_SENT,
    }
    cols = [_per_group(gid, ng, named[n]) for n in DEST_STATES[:-1]]
    cols.append(_per_group(gid, ng) - sum(cols))
    counts = np.stack(cols, axis=1) if ng else np.zeros((0, len(DEST_STATES)), np.int64)
    in_use = _distinct_ports(gid[use], cur["sport"][use], ng)
    budget = P.budget_lut(cfg)
    bound = _per_group(gid, ng, budget[cur["sport"]] & ~use)
    loopback = P.is_loopback(rows["src"][first]) | P.is_loopback(rows["dst"][first])
    reusable = _per_group(gid, ng, use & P.reusable_time_wait(cur, cfg, loopback[gid]))

    if interval_s is not None:
        win = min(interval_s * 1000.0, TIME_WAIT_MS)
        churn = _per_group(gid, ng, _young_tw(cur, win)) / interval_s
        pg = gid_all[n_peers:]
        p_use = usable[prv["sport"]]
        before = _distinct_ports(pg[p_use], prv["sport"][p_use], ng)
        trend = (in_use - before) / interval_s
        trend_method = "interval"
        tw_delta = delta.get("TW")
        if tw_delta is not None and tw_delta >= 0:
            host_churn, churn_method = tw_delta / interval_s, "tw_counter"
        else:
            host_churn = float(_young_tw(s, win).sum()) / interval_s
            churn_method = "tw_timers"
    elif window_s > 0 and delta.get("TW", -1) >= 0:
        # Rate window: the host's churn now; each destination its share of the recent ones.
        host_churn, churn_method = delta["TW"] / window_s, "tw_counter"
        young = _per_group(gid, ng, _young_tw(cur, TREND_WINDOW_MS)).astype(np.float64)
        share = young / young.sum() if young.sum() else young
        churn = host_churn * share
        old = _per_group(gid, ng, (cst == TCP_TIME_WAIT) & (cur["expires_ms"] < TREND_WINDOW_MS))
        trend = churn - old / (TREND_WINDOW_MS / 1000)
        trend_method = "tw_counter"
    else:
        churn = counts[:, 0] / (TIME_WAIT_MS / 1000)
        young = _per_group(gid, ng, _young_tw(cur, TREND_WINDOW_MS))
        old = _per_group(gid, ng, (cst == TCP_TIME_WAIT) & (cur["expires_ms"] < TREND_WINDOW_MS))
        trend = (young - old) / (TREND_WINDOW_MS / 1000)
        trend_method = "tw_timers"
        host_churn = totals.time_wait / (TIME_WAIT_MS / 1000)
        churn_method = "littles_law"

    # A trace (doctor --trace S, issue 13) counted the active closes themselves: the churn is
    # measured, per destination too, and the trend is that churn minus the TIME_WAITs
    # expiring in the next 10 s (what the rate window does with the counter's share).
    measured = T.traced(snapshot)
    if measured is not None and measured.window_ns and previous is None:
        host_churn, churn_method = measured.per_s(T.Kind.ACTIVE_CLOSE), "traced"
        heads = rows[first]
        churn = measured.churn_per_destination(heads["src"], heads["dst"], heads["dport"])
        old = _per_group(gid, ng, (cst == TCP_TIME_WAIT) & (cur["expires_ms"] < TREND_WINDOW_MS))
        trend = churn - old / (TREND_WINDOW_MS / 1000)
        trend_method = "traced"

    # A destination whose sockets bound first draws on a bind() pool: no connect() trend.
    trend = np.where(bind_like, np.nan, trend)
    # Keep only destinations present now; order by usage (headroom), then TIME_WAIT, descending.
    present = np.flatnonzero(_per_group(gid, ng) > 0)
    held = in_use - reusable
    order = present[np.lexsort((-counts[present, 0], -bound[present], -held[present]))]
    src_rows = rows[first[order]]
    return Analysis(
        totals=totals,
        ports=ports,
        memory=_memory(s),
        timer_histogram=_timer_histogram(s),
        churn_per_s=float(host_churn),
        churn_method=churn_method,
        interval_s=interval_s,
        rate_window_s=window_s if previous is None and window_s > 0 else None,
        counters_delta=delta,
        server_time_wait_by_port=server_by_port,
        dest_src=src_rows["src"],
        dest_dst=src_rows["dst"],
        dest_dport=src_rows["dport"],
        dest_family=src_rows["family"],
        dest_counts=counts[order],
        dest_in_use=in_use[order],
        dest_reusable=reusable[order],
        dest_bound=bound[order],
        dest_bind_like=bind_like[order],
        dest_churn=np.asarray(churn, dtype=np.float64)[order],
        dest_trend=np.asarray(trend, dtype=np.float64)[order],
        trend_method=trend_method,
        bind_pools=tuple(P.bind_pools(s, budget, table_sid, budget & ~usable)),
        nat=analyze_nat(snapshot, previous),
    )
