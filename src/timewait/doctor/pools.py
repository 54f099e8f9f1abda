"""Pools: every place a local port comes from, as the kernel decides it, and its headroom.

Theory of operation
-------------------
Linux keeps one bind hash per network namespace, keyed by port (and VRF), shared by IPv4 and
IPv6 (the TCP `inet_hashinfo`). Each port's bucket remembers who created it, and that decides
who may share the port (ref 7.2 step 6, 7.4, 8; K net/ipv4/inet_hashtables.c,
inet_connection_sock.c). Measured on Linux 6.18.44 (tests/doctor/test_pools_kernel.py):

- connect() with no local port (`__inet_hash_connect()`) takes a port whose bucket it created
  itself (fastreuse = fastreuseport = -1) whenever the new four-tuple is free, so one port
  serves every destination; it skips every port whose bucket bind() or listen() created
  (fastreuse >= 0), for every destination, every source address and both families, until the
  last owner -- TIME_WAIT included -- is gone. So there are two connect() pools:
  `connect` per destination (src, dst, dport): the usable ports minus those already holding a
  four-tuple to it, plus the TIME_WAITs tcp_tw_reuse lets it take over now (ref 3); and
  `connect-new`, what a destination nobody talks to yet gets: every usable port.
- bind(addr, 0) (`inet_csk_find_open_port()`, also the first half of bind-before-connect)
  takes a port only if no owner of it in any state has an overlapping address
  (`inet_csk_bind_conflict()`, `inet_bhash2_addr_any_conflict()`): the same address, the
  wildcard of its family, and for IPv4 also a dual-stack `::`. Owners at other addresses do
  not block it. A `bind` pool is therefore per local address. With ip_autobind_reuse=1 and
  SO_REUSEADDR on both sockets, bind(0) may in the end share a port with non-listening
  SO_REUSEADDR sockets; a dump does not show SO_REUSEADDR, so the pool is the strict one.
- Listeners and bind()-only sockets inside the range take their port from every pool.

Usable ports = the range minus ip_local_reserved_ports minus the *exclusive* ports, those whose
bucket bind() or listen() made. A dump has no flag for that, so it is inferred here:

1. Certain: a port with a LISTEN or bind()-only (BOUND_INACTIVE, or CLOSE with a port) socket.
2. A listener that exited: a port without a listener whose sockets all have distinct remote
   ports and each is the only socket of its (src, dst, dport): accepted connections (and their
   TIME_WAITs) keep the listener's bucket.
3. Per destination (src, dst, dport), the sockets toward it came from bind() when
   - PARITY: connect() scans ports of the range's low-end parity first and takes the other
     parity only when every usable port of the first is held toward that destination, while
     bind(0) scans the other parity first (ref 7.2 step 5; Lab E9: bind(0) picked only odd
     ports). So a destination holding other-parity ports while first-parity ones are free for
     it (none held, or its other-parity share at least twice its first-parity share, with 8 or
     more sockets and 4 standard deviations above what a parity-blind search gives) did not
     get them from connect(); or
   - NO SHARING: connect() picks ports for each destination independently, so destinations
     share ports: expected sum over parities of k_d * (K - k_d) / ports, where k_d are its
     sockets and K all sockets on that parity. A destination expected to share 8 or more of its
     ports that shares at most 5 % of that was not served by connect(). This is the case of a
     range almost fully covered by many destinations with no port held twice.
   Every in-range port held toward such a destination is exclusive.

What a dump cannot tell, and what the doctor then assumes (stated in README "Pools"):
- one destination whose bind()-before-connect() sockets hold every port of the range looks
  like connect() having filled it (both fill both parities; there is nobody to share with): its
  ports are counted as shareable, so `connect-new` is too high; the `bind` pool at its address
  is still exact, and critical;
- per-socket IP_LOCAL_PORT_RANGE sub-ranges (connect() then scans both parities, Linux >= 6.8)
  and workers that split the range between them defeat both tests: such ports may be counted
  as exclusive (headroom under-estimated, never over);
- a bind() to a port that connect() sockets at another address already hold turns that port
  exclusive from then on; the doctor still counts it shareable;
- SO_REUSEADDR, SO_REUSEPORT and IPV6_V6ONLY are not in the dump: `::` owners are taken as
  dual-stack (the default, net.ipv6.bindv6only=0), and the bind pools as strict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from timewait.config import KernelConfig
from timewait.model.states import TCP_TIMEWAIT_LEN
from timewait.snapshot import (
    TCP_BOUND_INACTIVE,
    TCP_CLOSE,
    TCP_LISTEN,
    TCP_NEW_SYN_RECV,
    TCP_TIME_WAIT,
    addr_str,
)
from timewait.units import MS

# Rule 3 thresholds (see the theory above).
PARITY_MIN_SOCKETS: Final = 8  # below this, a parity share ratio is noise
PARITY_RATIO: Final = 2.0  # other-parity share at least twice the first-parity share
PARITY_Z: Final = 4.0  # ... and that many standard deviations above a parity-blind search
SHARING_MIN_EXPECTED: Final = 8.0  # P(no sharing | connect()) = e^-8 = 0.03 %
SHARING_MAX_FRACTION: Final = 0.05  # of the expected shared ports


TIME_WAIT_MS: Final = TCP_TIMEWAIT_LEN // MS  # include/net/tcp.h TCP_TIMEWAIT_LEN (ref 2.1)

KIND_CONNECT: Final = "connect"
KIND_CONNECT_NEW: Final = "connect-new"
KIND_BIND: Final = "bind"


@dataclass(frozen=True, slots=True, kw_only=True)
class Pool:
    """One pool of local ports: what it draws from, what is held, and what is left.

    `held` counts ports of the pool that sockets hold now; `reusable` those held by
    TIME_WAITs that connect() would take over right away (tcp_tw_reuse, ref 3), so the kernel
    allows `headroom = size - held + reusable` more.
    """

    kind: str  # KIND_CONNECT, KIND_CONNECT_NEW or KIND_BIND
    label: str  # "connect() 198.18.0.1 -> 198.18.0.2:80", "bind(198.18.0.1, 0)", ...
    size: int
    held: int
    reusable: int = 0
    address: str = ""  # bind pools: the local address ("0.0.0.0"/"::" for the wildcards,
    # "" for any other address of `family`, one that owns no port)
    family: str = ""  # bind pools: "ipv4" or "ipv6"
    exclusive: int = 0  # bind pools: held ports connect() cannot share (bind() users here)

    @property
    def headroom(self) -> int:
        return max(self.size - self.held + self.reusable, 0)

    @property
    def usage(self) -> float:
        """Share of the pool in use, 0..1 (1 when the pool is empty)."""
        return 1.0 if self.size <= 0 else (self.size - self.headroom) / self.size

    def as_dict(self) -> dict[str, object]:
        """The pool in the doctor's JSON (schema.py) and in findings' evidence."""
        out: dict[str, object] = {"label": self.label}
        if self.kind == KIND_BIND:
            out.update(address=self.address, family=self.family)
        out.update(size=self.size, held=self.held, headroom=self.headroom)
        out["usage"] = round(self.usage, 6)
        if self.kind == KIND_BIND:
            out["exclusive"] = self.exclusive
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Ownership:
    """Which ports of the range connect() cannot share, and how that was decided."""

    budget: int  # range - reserved
    listener_ports: tuple[int, ...]  # LISTEN, in the budget
    bound_ports: tuple[int, ...]  # bind()-only, in the budget, not listening
    orphan_server_ports: tuple[int, ...]  # rule 2: left by a listener that exited
    inferred_ports: int  # rule 3: held by sockets bind() gave their port
    parity_destinations: int  # destinations rule 3 PARITY classified
    sharing_destinations: int  # ... and NO SHARING (not already PARITY)
    exclusive: np.ndarray  # 65536 bool: ports connect() skips for every destination

    @property
    def exclusive_count(self) -> int:
        return (
            len(self.listener_ports)
            + len(self.bound_ports)
            + len(self.orphan_server_ports)
            + (self.inferred_ports)
        )

    @property
    def capacity(self) -> int:
        """Usable ports: what connect() can choose from for any destination."""
        return self.budget - self.exclusive_count

    @property
    def has_bind_users(self) -> bool:
        """Whether anything in the namespace takes ports with bind() in the range."""
        return self.exclusive_count > 0


def port_lut(ports: np.ndarray | frozenset[int] | set[int] | tuple[int, ...]) -> np.ndarray:
    """65536 booleans, True at the given ports."""
    lut = np.zeros(65536, dtype=bool)
    if isinstance(ports, np.ndarray):
        lut[ports] = True
    elif ports:
        lut[np.fromiter(ports, dtype=np.int64)] = True
    return lut


def budget_lut(cfg: KernelConfig) -> np.ndarray:
    """The range minus reserved ports (ref 7.1: both connect() and bind(0) skip reserved)."""
    lo, hi = cfg.ip_local_port_range
    lut = np.zeros(65536, dtype=bool)
    lut[lo : hi + 1] = True
    out: np.ndarray = lut & ~port_lut(cfg.ip_local_reserved_ports)
    return out


def is_loopback(addrs: np.ndarray) -> np.ndarray:
    """127/8, ::ffff:127/104 (how IPv4 is stored) and ::1, vectorized over a V16 column.

    The test tcp_tw_reuse=2 applies (`tcp_twsk_unique()`, K net/ipv4/tcp_ipv4.c; ref 3).
    """
    halves = np.ascontiguousarray(addrs).view(">u8").reshape(-1, 2)
    hi, lo = halves[:, 0], halves[:, 1]
    v4 = (hi == 0) & ((lo >> np.uint64(32)) == 0xFFFF) & (((lo >> np.uint64(24)) & 0xFF) == 127)
    out: np.ndarray = v4 | ((hi == 0) & (lo == 1))
    return out


def bound_mask(s: np.ndarray) -> np.ndarray:
    """Rows that hold a port by bind() alone: BOUND_INACTIVE, or CLOSE with a port and no peer
    (how kernels before 6.5 dump a bound socket, if they do)."""
    st = s["state"]
    m: np.ndarray = (st == TCP_BOUND_INACTIVE) | (
        (st == TCP_CLOSE) & (s["sport"] != 0) & (s["dport"] == 0)
    )
    return m


def orphan_server_rows(
    src_id: np.ndarray,
    sport: np.ndarray,
    dport: np.ndarray,
    dst_id: np.ndarray,
    group_size: np.ndarray,
) -> np.ndarray:
    """Rule 2, per row: sockets that look accepted from a listener that has exited.

    Per (local address, local port) with no listener: two or more sockets, each the only one
    of its (src, dst, dport), all remote ports distinct, and fewer remote addresses than remote
    ports -- clients' ephemeral ports toward one service port. A client that fans out from one
    port has one remote port per service, not one per connection.
    """
    out = np.zeros(sport.shape[0], dtype=bool)
    single = group_size == 1
    if not single.any():  # the usual client table: nothing to judge, no sort of 10^6 keys
        return out
    sp = sport.astype(np.int64)
    key = src_id * 65536 + sp
    # Keys held by any socket that is not alone in its destination cannot be server ports.
    spoiled = np.unique(key[~single & port_lut(sp[single])[sp]])
    cand = single & ~np.isin(key, spoiled)
    if not cand.any():
        return out
    n_dst = int(dst_id.max()) + 1
    _, k, held = np.unique(key[cand], return_inverse=True, return_counts=True)
    nk = held.shape[0]
    n_dports = np.bincount(
        np.unique(k * 65536 + dport[cand].astype(np.int64)) // 65536, minlength=nk
    )
    n_dsts = np.bincount(np.unique(k * n_dst + dst_id[cand]) // n_dst, minlength=nk)
    server = (held >= 2) & (n_dports == held) & (n_dsts < n_dports)
    out[cand] = server[k]
    return out


def bind_like_destinations(
    gid: np.ndarray,
    sport: np.ndarray,
    src_id: np.ndarray,
    n_groups: int,
    first_parity: int,
    avail: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rule 3 over candidate rows (one per socket; `gid` its destination, `src_id` its local
    address): (parity, sharing, address) booleans per destination. `avail` holds the ports
    connect() could have used (lut)."""
    n_first = int(np.count_nonzero(avail[first_parity::2]))
    n_other = int(np.count_nonzero(avail[1 - first_parity :: 2]))
    other = (sport & 1) != first_parity
    k_other = np.bincount(gid[other], minlength=n_groups).astype(np.float64)
    k_first = np.bincount(gid[~other], minlength=n_groups).astype(np.float64)
    parity = np.zeros(n_groups, dtype=bool)
    if n_first > 0 and n_other > 0:
        share_other = k_other / n_other
        share_first = k_first / n_first
        # A share ratio counts only where chance cannot make it: with no parity preference
        # (per-socket IP_LOCAL_PORT_RANGE, say) k_other is binomial; ask for PARITY_Z sigmas.
        n = k_first + k_other
        q = n_other / (n_first + n_other)
        z = (k_other - n * q) / np.sqrt(np.maximum(n * q * (1 - q), 1e-9))
        parity = (k_other >= 1) & (
            (k_first == 0)
            | (
                (k_other >= PARITY_MIN_SOCKETS)
                & (share_other >= PARITY_RATIO * share_first)
                & (z >= PARITY_Z)
            )
        )
    expected = np.zeros(n_groups, dtype=np.float64)
    for k, n_avail in ((k_first, n_first), (k_other, n_other)):
        if n_avail > 0:
            expected += k * (k.sum() - k) / n_avail
    held = np.bincount(sport.astype(np.int64), minlength=65536)
    shared = np.bincount(gid, weights=held[sport] >= 2, minlength=n_groups)
    sharing = (expected >= SHARING_MIN_EXPECTED) & (shared <= SHARING_MAX_FRACTION * expected)
    sharing &= ~parity
    # ADDRESS: a destination with no evidence either way (no port shared, first parity only)
    # follows the others of its local address when every decided one is bind()'s.
    bind_like = parity | sharing
    present = (k_first + k_other) > 0
    undecided = present & ~bind_like & (shared == 0) & (k_other == 0)
    owner = np.zeros(n_groups, dtype=np.int64)
    owner[gid] = src_id
    n_src = int(src_id.max()) + 1 if src_id.size else 0
    bind_at = np.bincount(owner[bind_like & present], minlength=n_src)
    connect_at = np.bincount(owner[present & ~bind_like & ~undecided], minlength=n_src)
    address = undecided & (bind_at[owner] > 0) & (connect_at[owner] == 0)
    return parity, sharing, address


def reusable_time_wait(s: np.ndarray, cfg: KernelConfig, loopback: np.ndarray) -> np.ndarray:
    """TIME_WAIT rows connect() would take over now for the same four-tuple (ref 3):
    tcp_tw_reuse 1 (or 2 with a loopback end), timestamps on (assumed negotiated: the dump
    cannot show tw_ts_recent_stamp), older than tcp_tw_reuse_delay. FIN_WAIT2 minisockets never
    are (`tcp_twsk_unique()`). `loopback`: per row, whether an end is a loopback address."""
    reuse = cfg.tcp_tw_reuse
    if reuse == 0 or not cfg.timestamps_enabled:
        return np.zeros(s.shape[0], dtype=bool)
    aged = s["expires_ms"].astype(np.int64) < (TIME_WAIT_MS - cfg.tcp_tw_reuse_delay)
    m: np.ndarray = (s["state"] == TCP_TIME_WAIT) & aged
    if reuse == 2:
        m &= loopback
    return m


def addr_ids(col: np.ndarray) -> tuple[np.ndarray, int]:
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


def bind_pools(
    s: np.ndarray,
    budget: np.ndarray,
    src_id: np.ndarray | None = None,
    exclusive: np.ndarray | None = None,
) -> list[Pool]:
    """The `bind` pools: one per local address that owns a port of the budget, the wildcards,
    and "another address" of each family (blocked only by wildcard owners).

    Owners are sockets of every state; overlap as `inet_csk_bind_conflict()` decides (see the
    theory above). `src_id`: addr_ids(s["src"]) when the caller has it; `exclusive`: the lut
    of ports bind() or listen() own, so each pool says how many of its held ports are theirs.
    Sorted by headroom, smallest first.
    """
    excl = np.zeros(65536, dtype=bool) if exclusive is None else exclusive & budget
    size = int(np.count_nonzero(budget))
    if src_id is None:
        src_id, _ = addr_ids(s["src"])
    owner = budget[s["sport"]]
    # Columns, not rows: a boolean index of the whole table would copy 56 bytes per socket.
    ids, own_src = src_id[owner], s["src"][owner]
    halves = own_src.view(">u8").reshape(-1, 2)
    hi, lo = halves[:, 0], halves[:, 1]
    v4 = (hi == 0) & ((lo >> np.uint64(32)) == 0xFFFF)  # ::ffff:a.b.c.d, how IPv4 is stored
    v4_any = v4 & ((lo & np.uint64(0xFFFFFFFF)) == 0)
    v6_any = (hi == 0) & (lo == 0)
    sport = s["sport"][owner].astype(np.int64)
    wild4 = port_lut(sport[v4_any | v6_any])  # blocks every specific IPv4 address
    wild6 = port_lut(sport[v6_any])  # ... every specific IPv6 address

    def pool(label: str, held: int, mine: int, address: str, family: str) -> Pool:
        return Pool(kind=KIND_BIND, label=label, size=size, held=held, address=address,
                    family=family, exclusive=mine)  # fmt: skip

    pools: list[Pool] = []
    specific = ~(v4_any | v6_any)
    if specific.any():
        sp_ids, ports = ids[specific], sport[specific]
        present = np.bincount(sp_ids) > 0  # ids are dense: remap without sorting
        inv = (np.cumsum(present) - 1)[sp_ids]
        n_addr = int(np.count_nonzero(present))
        first = np.zeros(n_addr, dtype=np.int64)
        first[inv[::-1]] = np.arange(inv.shape[0])[::-1]
        addrs = own_src[specific][first]
        if n_addr <= 256:  # a port map per address: 64 KiB each, no sort of 10^6 keys
            held = np.zeros((n_addr, 65536), dtype=bool)
            held[inv, ports] = True
            n_ports = held.sum(axis=1)
            inter4, inter6 = (held & wild4).sum(axis=1), (held & wild6).sum(axis=1)
            mine = (held & excl).sum(axis=1)
        else:
            pairs = np.unique(inv.astype(np.int64) * 65536 + ports)
            pid, pport = pairs // 65536, pairs % 65536
            n_ports = np.bincount(pid, minlength=n_addr)
            inter4 = np.bincount(pid[wild4[pport]], minlength=n_addr)
            inter6 = np.bincount(pid[wild6[pport]], minlength=n_addr)
            mine = np.bincount(pid[excl[pport]], minlength=n_addr)
        is4 = v4[specific][first]
        n4, n6 = int(np.count_nonzero(wild4)), int(np.count_nonzero(wild6))
        blocked = np.where(is4, n_ports + n4 - inter4, n_ports + n6 - inter6)
        for i in range(n_addr):
            a = addr_str(addrs[i])
            fam = "ipv4" if is4[i] else "ipv6"
            pools.append(pool(f"bind({a}, 0)", int(blocked[i]), int(mine[i]), a, fam))

    def count(lut: np.ndarray) -> tuple[int, int]:
        return int(np.count_nonzero(lut)), int(np.count_nonzero(lut & excl))

    pools.append(pool("bind(another IPv4 address, 0)", *count(wild4), "", "ipv4"))
    pools.append(pool("bind(another IPv6 address, 0)", *count(wild6), "", "ipv6"))
    pools.append(pool("bind(0.0.0.0, 0)", *count(port_lut(sport[v4 | v6_any])), "0.0.0.0", "ipv4"))
    pools.append(pool("bind(::, 0)", *count(port_lut(sport)), "::", "ipv6"))
    # Fullest first; on a tie a specific address before the wildcards before "another address".
    pools.sort(key=lambda p: (p.headroom, p.address in ("0.0.0.0", "::"), p.address == "", p.label))
    return pools


def bind_pool_for(pools: Sequence[Pool], address: str) -> Pool:
    """The pool bind(address, 0) draws from: its own, or "another address" of its family."""
    for p in pools:
        if p.address == address:
            return p
    family = "ipv6" if ":" in address and not address.startswith("::ffff:") else "ipv4"
    return next(p for p in pools if p.address == "" and p.family == family)


def candidate_mask(s: np.ndarray, budget: np.ndarray, certain: np.ndarray) -> np.ndarray:
    """Rows whose port rule 2 and 3 must judge: a peer, in the budget, not certainly exclusive."""
    st = s["state"]
    m: np.ndarray = (
        (st != TCP_LISTEN)
        & (st != TCP_NEW_SYN_RECV)
        & ~bound_mask(s)
        & (s["dport"] != 0)
        & budget[s["sport"]]
        & ~certain[s["sport"]]
    )
    return m


def certain_exclusive(s: np.ndarray, budget: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rule 1: (listening ports, bind()-only ports) of the budget, as luts."""
    listening = port_lut(s["sport"][s["state"] == TCP_LISTEN]) & budget
    bound = port_lut(s["sport"][bound_mask(s)]) & budget & ~listening
    return listening, bound


__all__ = [
    "KIND_BIND",
    "KIND_CONNECT",
    "KIND_CONNECT_NEW",
    "Ownership",
    "Pool",
    "addr_ids",
    "bind_like_destinations",
    "bind_pool_for",
    "bind_pools",
    "budget_lut",
    "candidate_mask",
    "certain_exclusive",
    "is_loopback",
    "orphan_server_rows",
    "port_lut",
    "reusable_time_wait",
]
