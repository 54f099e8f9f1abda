"""NAT pools: the translated ports of a masquerading host, per translated address and
destination, from the conntrack table (pure, vectorized; no I/O).

Theory of operation
-------------------
Source NAT gives each forwarded connection a reply tuple (server ip:port -> translated
ip:port) that must be unique in the conntrack table (`get_unique_tuple()`,
`nf_nat_l4proto_unique_tuple()`, K net/netfilter/nf_nat_core.c). So for one translated address
and one destination (server ip, server port, protocol) the translated ports form a pool: the
NAT rule's port range (`masquerade to :lo-hi`, `snat to a:lo-hi`; 1024-65535 without one),
each port held by one entry in any state until the entry is gone. A closed TCP connection's
entry stays in conntrack's own TIME_WAIT for nf_conntrack_tcp_timeout_time_wait (120 s by
default) after its last packet, twice the endpoints' 60 s.

What the kernel does when the pool is full (measured on 6.18.44, tests/live/test_nat_kernel.py,
README "NAT"): since Linux 6.5 (commit "netfilter: snat: evict closing tcp entries on reply
tuple collision", June 2023) the last 32 probes of each search round may *evict* a colliding
entry that is TIME_WAIT or CLOSE, was source-NATed, and whose sequence space the new SYN is
ahead of (`nf_nat_used_tuple_harder()`, `nf_seq_has_advanced()`); with 200 ports full of
TIME_WAIT entries, 5,800 connections past the full mark all got through. So on >= 6.5 the
TIME_WAIT part of a TCP pool is *reclaimable* (like tcp_tw_reuse's TIME_WAITs on a client) and
the hard limit is the entries that are not closing (SYN_SENT, ESTABLISHED, FIN_WAIT,
CLOSE_WAIT, LAST_ACK), and UDP entries. When no probe may evict, the SYN is dropped at
confirmation: insert_failed and drop rise (`nf_ct_resolve_clash()`), the client retransmits
its SYN after 1 s, then 3 s, ... and times out. Before 6.5 every held port blocks: the classic
limit of (ports in the range) / (120 s + connection lifetime) connections per second per
destination.

Per pool the analysis gives entries by state, ports held (distinct translated ports in the
range), reclaimable (TIME_WAIT/CLOSE entries the kernel may evict), headroom, usage, churn
(entries that entered TIME_WAIT in the last 10 s, from their timers) and time to exhaustion;
and for the table its fill level (nf_conntrack_count / nf_conntrack_max), memory and the
drop counters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from timewait import conntrack as C
from timewait.doctor import pools as P
from timewait.snapshot import Snapshot, addr_str

# nf_nat_used_tuple_harder(): TIME_WAIT eviction on reply-tuple collision, Linux 6.5.
EVICTION_KERNEL: Final = (6, 5)
CHURN_WINDOW_S: Final = 10
KIND_NAT: Final = "nat"
_CLOSING: Final = (C.TCP_CONNTRACK_FIN_WAIT, C.TCP_CONNTRACK_CLOSE_WAIT,
                   C.TCP_CONNTRACK_LAST_ACK)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class NatPool:
    """The translated ports of one (translated address -> destination, protocol)."""

    translated: str
    dst: str
    dport: int
    proto: int
    port_range: tuple[int, int]
    held: int  # distinct translated ports of the range held by entries
    entries: int
    by_state: Mapping[str, int]  # POOL_STATES
    reclaimable: int  # TIME_WAIT/CLOSE SNAT entries a new SYN may evict (kernel >= 6.5, TCP)
    churn_per_s: float
    trend_per_s: float | None
    random_fully: bool = False

    @property
    def size(self) -> int:
        return self.port_range[1] - self.port_range[0] + 1

    @property
    def headroom(self) -> int:
        """Ports free now (without evicting anything)."""
        return max(self.size - self.held, 0)

    @property
    def usage(self) -> float:
        return 1.0 if self.size <= 0 else min(self.held / self.size, 1.0)

    @property
    def hard_usage(self) -> float:
        """Share held by entries nothing may evict: the part that makes SYNs drop."""
        return 1.0 if self.size <= 0 else min((self.held - self.reclaimable) / self.size, 1.0)

    @property
    def eta_s(self) -> float | None:
        if self.headroom <= 0:
            return 0.0
        if self.trend_per_s is None or self.trend_per_s <= 0:
            return None
        return self.headroom / self.trend_per_s

    @property
    def label(self) -> str:
        dst = f"[{self.dst}]" if ":" in self.dst else self.dst
        proto = {C.IPPROTO_TCP: "tcp", C.IPPROTO_UDP: "udp"}.get(self.proto, str(self.proto))
        return f"NAT {self.translated} -> {dst}:{self.dport}/{proto}"

    def pool(self) -> P.Pool:
        """As a Pool (the pools table): held ports, reclaimable ones still counted as held
        (a SYN may evict them, or may be dropped: `hard_usage` tells them apart)."""
        return P.Pool(kind=KIND_NAT, label=self.label, size=self.size, held=self.held)

    def as_dict(self) -> dict[str, Any]:
        """The pool in the doctor's JSON (schema "nat.pools") and in findings' evidence."""
        return {
            "label": self.label,
            "translated": self.translated,
            "dst": self.dst,
            "dport": self.dport,
            "proto": self.proto,
            "port_range": list(self.port_range),
            "size": self.size,
            "held": self.held,
            "headroom": self.headroom,
            "usage": round(self.usage, 6),
            "reclaimable": self.reclaimable,
            "hard_usage": round(self.hard_usage, 6),
            "entries": self.entries,
            "by_state": dict(self.by_state),
            "churn_per_s": round(self.churn_per_s, 3),
            "trend_per_s": None if self.trend_per_s is None else round(self.trend_per_s, 3),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class NatAnalysis:
    """Conntrack and NAT of one namespace. `present` False: no connection tracker here."""

    present: bool
    table_read: bool = False  # the entries were dumped (not just the counters)
    entries: int = 0
    count: int | None = None  # nf_conntrack_count
    max: int | None = None  # nf_conntrack_max
    buckets: int | None = None
    by_state: Mapping[str, int] = field(default_factory=dict)  # TCP entries by state
    snat_entries: int = 0
    pools: tuple[NatPool, ...] = ()  # fullest first
    rules: int = 0  # masquerade/snat statements read (0 also when unreadable)
    rules_read: bool = False
    random_fully: bool = False
    time_wait_s: int = C.CT_TIME_WAIT_S
    eviction: bool = True  # the captured kernel evicts closing entries (>= 6.5)
    counters: Mapping[str, int] = field(default_factory=dict)  # insert_failed, drop, ...
    counters_delta: Mapping[str, int] = field(default_factory=dict)

    @property
    def fill(self) -> float | None:
        if self.count is None or not self.max:
            return None
        return self.count / self.max

    @property
    def memory_bytes(self) -> int:
        n = self.count if self.count is not None else self.entries
        return n * C.CT_ENTRY_BYTES + (self.buckets or 0) * C.CT_BUCKET_BYTES

    @property
    def nothing_to_see(self) -> bool:
        """No tracker, or a tracker without any source-NATed entry."""
        return not self.present or not self.pools

    def worst(self) -> NatPool | None:
        return self.pools[0] if self.pools else None


def _ranges(snap: Snapshot) -> tuple[tuple[int, int], bool, int, bool]:
    """(port range, random_fully, rules, rules_read) from the nat_rules table."""
    rules = snap.tables.get(C.NAT_TABLE)
    if rules is None or rules.dtype != C.NAT_RULE_DTYPE:
        return C.NAT_DEFAULT_PORTS, False, 0, False
    lo, hi = C.NAT_DEFAULT_PORTS
    given = rules[(rules["port_lo"] > 0) & (rules["port_hi"] >= rules["port_lo"])]
    if given.size and given.size == rules.size:
        # Every rule names a range: the widest one bounds what any pool can hold.
        widths = given["port_hi"].astype(np.int64) - given["port_lo"]
        i = int(np.argmax(widths))
        lo, hi = int(given["port_lo"][i]), int(given["port_hi"][i])
    fully = bool((rules["random_fully"] | rules["random"]).any()) if rules.size else False
    return (lo, hi), fully, int(rules.size), True


def analyze_nat(snap: Snapshot, previous: Snapshot | None = None) -> NatAnalysis | None:
    """The NAT analysis of a snapshot (see the module docstring); None when conntrack was not
    looked at (a snapshot from before issue 15, a model host)."""
    ctr = snap.counters
    if C.PRESENT not in ctr:
        return None
    present = bool(ctr[C.PRESENT])
    if not present:
        return NatAnalysis(present=False)
    kernel = (6, 18) if snap.kernel == "model" else snap.kernel_version
    eviction = kernel == (0, 0) or kernel >= EVICTION_KERNEL
    counters = {k: int(ctr[C.key(k)]) for k in C.COUNTER_KEYS if C.key(k) in ctr}
    delta: dict[str, int] = {}
    base = previous.counters if previous is not None else snap.counters_before
    for k, v in counters.items():
        if C.key(k) in base:
            delta[k] = v - int(base[C.key(k)])
    tw_s = int(ctr.get(C.key("nf_conntrack_tcp_timeout_time_wait"), C.CT_TIME_WAIT_S))
    (lo, hi), fully, n_rules, rules_read = _ranges(snap)
    common: dict[str, Any] = dict(
        present=True,
        count=ctr.get(C.key("nf_conntrack_count")),
        max=ctr.get(C.key("nf_conntrack_max")),
        buckets=ctr.get(C.key("nf_conntrack_buckets")),
        rules=n_rules,
        rules_read=rules_read,
        random_fully=fully,
        time_wait_s=tw_s,
        eviction=eviction,
        counters=counters,
        counters_delta=delta,
    )
    t = snap.tables.get(C.TABLE)
    if t is None or t.dtype != C.CONNTRACK_DTYPE:
        return NatAnalysis(**common)
    tcp = t["proto"] == C.IPPROTO_TCP
    states, counts = np.unique(t["state"][tcp], return_counts=True)
    by_state = {C.CT_STATE_NAMES.get(int(s), str(s)): int(c) for s, c in zip(states, counts,
                strict=True)}  # fmt: skip
    snat = (t["status"] & C.IPS_SRC_NAT) != 0
    pools: list[NatPool] = []
    if snat.any():
        # Every entry whose reply tuple points at a translated address holds a port there.
        # Integer ids for addresses (addr_ids: two 64-bit halves, no 16-byte compares).
        tr_id, n_tr = P.addr_ids(t["reply_dst"])
        mine = np.zeros(n_tr, dtype=bool)
        mine[tr_id[snat]] = True
        mine = mine[tr_id] & np.isin(t["proto"], (C.IPPROTO_TCP, C.IPPROTO_UDP))
        rows = t[mine]
        tr = tr_id[mine]
        dst_id, n_dst = P.addr_ids(rows["reply_src"])
        code = ((tr * n_dst + dst_id) * 65536 + rows["reply_sport"].astype(np.int64)) * 256
        code += rows["proto"].astype(np.int64)
        _, first, gid = np.unique(code, return_index=True, return_inverse=True)
        gid = gid.astype(np.int64).ravel()
        ng = int(first.shape[0])
        port = rows["reply_dport"].astype(np.int64)
        in_range = (port >= lo) & (port <= hi)
        code = np.unique(gid[in_range] * 65536 + port[in_range])
        held = np.bincount(code // 65536, minlength=ng)
        entries = np.bincount(gid, minlength=ng)
        st = rows["state"]
        is_tcp = rows["proto"] == C.IPPROTO_TCP
        tw = is_tcp & (st == C.TCP_CONNTRACK_TIME_WAIT)
        masks = {
            "time_wait": tw,
            "established": is_tcp & (st == C.TCP_CONNTRACK_ESTABLISHED),
            "syn_sent": is_tcp & np.isin(st, (C.TCP_CONNTRACK_SYN_SENT, C.TCP_CONNTRACK_SYN_RECV)),
            "closing": is_tcp & np.isin(st, _CLOSING),
        }
        cols = {k: np.bincount(gid[m], minlength=ng) for k, m in masks.items()}
        cols["other"] = entries - sum(cols.values())
        evictable = (is_tcp & (st >= C.TCP_CONNTRACK_TIME_WAIT)
                     & ((rows["status"] & C.IPS_SRC_NAT) != 0) & in_range)  # fmt: skip
        reclaim = np.bincount(gid[evictable], minlength=ng) if eviction else np.zeros(ng, int)
        # CTA_TIMEOUT is whole seconds rounded down (ctnetlink_dump_timeout(): expires / HZ), so
        # an entry that entered TIME_WAIT w seconds ago or less shows left >= tw_s - w, and one
        # with less than w seconds to live shows left < w: each test spans w seconds.
        win = max(min(CHURN_WINDOW_S, tw_s), 1)
        left = rows["timeout_s"].astype(np.int64)
        young = np.bincount(gid[tw & (left >= tw_s - win)], minlength=ng)
        old = np.bincount(gid[tw & (left < win)], minlength=ng)
        churn = young / win
        trend = (young - old) / win
        if eviction:
            # A full pool on an evicting kernel: each new SYN evicts a TIME_WAIT entry, so the
            # young ones are survivors, not arrivals (see churn_under_eviction()).
            size = hi - lo + 1
            for full in np.flatnonzero((held >= size) & (reclaim > 0)):
                mine = (gid == full) & tw & (left >= tw_s - win)
                churn[full] = churn_under_eviction(tw_s - left[mine], win)
        for g in range(ng):
            r = rows[first[g]]
            pools.append(
                NatPool(
                    translated=addr_str(r["reply_dst"]), dst=addr_str(r["reply_src"]),
                    dport=int(r["reply_sport"]), proto=int(r["proto"]), port_range=(lo, hi),
                    held=int(held[g]), entries=int(entries[g]),
                    by_state={k: int(v[g]) for k, v in cols.items()},
                    reclaimable=int(min(reclaim[g], held[g])), churn_per_s=float(churn[g]),
                    trend_per_s=float(trend[g]), random_fully=fully,
                )
            )  # fmt: skip
        pools.sort(key=lambda p: (-p.usage, -p.hard_usage, -p.entries, p.label))
    return NatAnalysis(
        **common, table_read=True, entries=int(t.shape[0]), by_state=by_state,
        snat_entries=int(snat.sum()), pools=tuple(pools),
    )  # fmt: skip


def churn_under_eviction(age_bins: np.ndarray, win: int) -> float:
    """New connections per second into a full pool whose kernel evicts TIME_WAIT entries, from
    the entries that entered TIME_WAIT within `win` seconds (`age_bins`: tw_s - CTA_TIMEOUT, so
    bin j holds ages in (j - 1, j]).

    A SYN evicts the entry on the port its search probes (nf_nat_used_tuple_harder()), not the
    oldest, so at turnover rate mu per entry a survivor's age is exponential: the count in bin
    j is proportional to q^(j-1), q = e^-mu. The maximum-likelihood q of that geometric law on
    win bins matches the mean bin (solved by bisection; mean >= (win - 1) / 2 is no eviction,
    q = 1), and arrivals are survivors / the surviving share: n mu / (1 - q^win) per second,
    which is n / win when q = 1 -- the plain count."""
    n = int(age_bins.size)
    if n == 0:
        return 0.0
    k = np.clip(age_bins.astype(np.int64) - 1, 0, win - 1).astype(np.float64)
    mean = float(k.mean())
    ks = np.arange(win, dtype=np.float64)

    def expected(q: float) -> float:
        w = q**ks
        return float((ks * w).sum() / w.sum())

    if win < 2 or mean >= expected(1.0):
        return n / win
    lo, hi = 1e-9, 1.0
    for _ in range(60):  # expected() rises with q
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected(mid) < mean else (lo, mid)
    q = (lo + hi) / 2
    mu = -float(np.log(q))
    return n * mu / (1.0 - q**win)


__all__ = [
    "EVICTION_KERNEL",
    "KIND_NAT",
    "NatAnalysis",
    "NatPool",
    "analyze_nat",
    "churn_under_eviction",
]
