"""Plan for NAT pools: a masquerading host's translated ports, run forward from its conntrack
table, as they are and with each NAT remedy (issue 16 item 1, on top of issue 15's NAT pools).

Theory of operation
-------------------
The doctor's NAT pools (doctor/nat.py) say, per translated address and destination, which
translated ports entries hold, in which conntrack state, and the churn (entries that entered
TIME_WAIT in the last 10 s, from their timers). `plan_nat()` takes the busiest pools with churn
and runs each forward on the flow-level gateway (sim/nat.py driving model/nat.py: nf_nat's port
search, conntrack TIME_WAIT, and on Linux >= 6.5 the eviction of closing entries -- the
captured kernel decides which) from the captured table:

- entries in TIME_WAIT or CLOSE keep their ports for the time their timer has left (CTA_TIMEOUT,
  whole seconds rounded down: taken as that + 0.5 s);
- entries in FIN_WAIT, CLOSE_WAIT or LAST_ACK are taken to close now: a full conntrack
  TIME_WAIT from the start;
- every other entry (ESTABLISHED, SYN_SENT, ...) is taken as held for the whole horizon: its
  timer (five days for ESTABLISHED) says nothing about when it will close; the plan says so;
- the churn goes on at the measured rate from the clients the capture saw churning, in their
  measured shares, each new connection living LIFETIME before its final ACK.

Options, each the doctor's own NAT remedy (doctor/nat_rules.py: its changes and risk text):

- snat-addresses[=N]: `snat to` N addresses. The kernel does not spread connections over them:
  find_best_ips_proto() picks one address per (client address, destination address) by a hash
  (model/nat.py snat_address_index(), the kernel's jhash2, measured), and the port search then
  runs on that address alone. So the clients are split by that hash and each address's pool
  takes the churn of its own clients: many clients gain, one client gains nothing. The captured
  entries stay on the address they hold (conntrack does not move a mapping); the captured
  address is taken as the first of the N, the other N - 1 start empty.
- nat-range[=LO-HI]: a wider translated port range (default 1024-65535); captured entries
  outside the new range no longer compete for its ports.
- ct-time-wait[=S]: nf_conntrack_tcp_timeout_time_wait = S (default 60, never below 60 s, the
  endpoints' TIME_WAIT); entries already closed keep the timer they got (the timeout is applied
  at each packet, nf_ct_refresh_acct() in nf_tcp_packet(), not to existing timers).

Per option: onset (the first SYN dropped for want of a translated port), drops per second at
steady state (over the last conntrack TIME_WAIT life + LIFETIME of the horizon: in steady state
the pool turns over once per such period, so its mean is the closed form R - ports /
(time_wait + lifetime) without phase error), the headroom (the fewest ports left over that
window, in the fullest address's pool; on an evicting kernel a TIME_WAIT entry is a port a SYN
can take, so only entries nothing may evict count as held, as the doctor's hard usage), and the
usable ports (the range times the addresses the churning clients reach). Drops are first SYNs;
a client's retransmissions (1 s, 3 s, ...) are not modelled.

Runs are per connection. A run of more than SIM_BUDGET attempts is made at 1/k scale (rate,
range and captured entries divided by k; the range kept at MIN_SCALED_RANGE or more, so the
kernel's search rounds of 128 probes keep their shape): onset and the drop fraction are
scale-free (ports / R), counts are multiplied back by k, and the plan says so. Pure: no I/O,
no clock; randomness from seeded generators.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

from timewait import conntrack as C
from timewait.config import KernelConfig
from timewait.doctor import nat_rules as NR
from timewait.doctor.nat import KIND_NAT, NatAnalysis, NatPool
from timewait.doctor.plan import (
    NAT_OPTIONS,
    DestinationPlan,
    OptionResult,
    PlanError,
    int_value,
    rank_key,
)
from timewait.doctor.rules import context
from timewait.model.nat import NatGateway, snat_address_index
from timewait.sim.nat import NatResult, NatWorkload, simulate_nat
from timewait.snapshot import Snapshot, addr_bytes, addr_str
from timewait.units import MS, SEC

DEFAULT_ADDRESSES: Final = 4  # the doctor's example: snat to 203.0.113.10-203.0.113.13
SIM_BUDGET: Final = 12_000  # connection attempts per run before it is scaled down (~0.5 s)
MIN_SCALED_RANGE: Final = 256
MAX_SIM_CLIENTS: Final = 8  # clients per address in a run: their count only matters for
# keeping a client's port, and each costs a list of its own ports
CLIENT_PORTS: Final = KernelConfig().ip_local_port_range  # the clients' own (Linux default)
WIDE_CLIENT_PORTS: Final = (1024, 65535)  # for a client busier than its own range allows
SYN_TIMEOUT: Final = 500 * MS  # sim/nat.py's default: a dropped SYN frees its client port
_CLOSED: Final = (C.TCP_CONNTRACK_TIME_WAIT, C.TCP_CONNTRACK_CLOSE)
_CLOSING: Final = (C.TCP_CONNTRACK_FIN_WAIT, C.TCP_CONNTRACK_CLOSE_WAIT, C.TCP_CONNTRACK_LAST_ACK)


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolState:
    """One pool as captured: what the run starts from and who churns."""

    pool: NatPool
    held: tuple[int, ...]  # translated ports of entries taken as open for the horizon
    time_wait: tuple[tuple[int, int], ...]  # (translated port, ns left) of closed entries
    clients: tuple[tuple[str, float], ...]  # (client address, churn/s), busiest first
    zone: int = 0

    @property
    def churn_per_s(self) -> float:
        return sum(r for _, r in self.clients)


def pool_state(snap: Snapshot, nat: NatAnalysis, pool: NatPool) -> PoolState:
    """The pool's entries in the capture (see the module docstring for how each is taken)."""
    t = snap.tables[C.TABLE]
    m = (
        (t["reply_dst"] == np.frombuffer(addr_bytes(pool.translated), "V16")[0])
        & (t["reply_src"] == np.frombuffer(addr_bytes(pool.dst), "V16")[0])
        & (t["reply_sport"] == pool.dport)
        & (t["proto"] == pool.proto)
    )
    lo, hi = pool.port_range
    rows = t[m & (t["reply_dport"] >= lo) & (t["reply_dport"] <= hi)]
    st = rows["state"]
    closed = np.isin(st, _CLOSED)
    closing = np.isin(st, _CLOSING)
    tw_ns = nat.time_wait_s * SEC
    left = np.where(closing, tw_ns, rows["timeout_s"].astype(np.int64) * SEC + SEC // 2)
    gone = closed | closing
    ports = rows["reply_dport"].astype(np.int64)
    time_wait = tuple(sorted(zip(ports[gone].tolist(), left[gone].tolist(), strict=True)))
    held = tuple(sorted(ports[~gone].tolist()))
    # Who churns: the clients of the entries that entered TIME_WAIT within the doctor's window.
    win = max(min(10, nat.time_wait_s), 1)
    young = (st == C.TCP_CONNTRACK_TIME_WAIT) & (rows["timeout_s"] >= nat.time_wait_s - win)
    srcs, counts = np.unique(rows["orig_src"][young], return_counts=True)
    total = int(counts.sum())
    clients = sorted(
        ((addr_str(s), pool.churn_per_s * int(c) / total) for s, c in zip(srcs, counts,
                                                                          strict=True)),
        key=lambda x: (-x[1], x[0]),
    )  # fmt: skip
    zones = rows["zone"]
    return PoolState(pool=pool, held=held, time_wait=time_wait, clients=tuple(clients),
                     zone=int(zones[0]) if zones.size else 0)  # fmt: skip


# -- options -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Setup:
    """One way to run a pool: its range, timeout, addresses and the doctor's remedy."""

    port_range: tuple[int, int]
    time_wait_s: int
    addresses: int
    value: str
    changes: str = ""
    risk: str = ""


def _range(text: str) -> tuple[int, int]:
    if not text:
        return C.NAT_DEFAULT_PORTS
    try:
        lo_s, hi_s = text.replace("-", " ").split()
        lo, hi = int(lo_s), int(hi_s)
    except ValueError:
        raise PlanError(f"--try nat-range={text}: expected LOW-HIGH, e.g. 1024-65535") from None
    if not 1 <= lo <= hi <= 65535:
        raise PlanError(f"--try nat-range={text}: need 1 <= LOW <= HIGH <= 65535")
    return lo, hi


def options(
    snap: Snapshot, nat: NatAnalysis, pool: NatPool, wanted: Mapping[str, str] | None
) -> list[tuple[str, _Setup]]:
    """Each NAT remedy to try on this pool: every one that applies, or those `wanted` names
    (--try), with their values. Raises PlanError for a value it cannot take."""
    ctx = context(snap)
    explicit = wanted is not None
    pick = dict(wanted) if wanted is not None else dict.fromkeys(NAT_OPTIONS, "")
    tw = nat.time_wait_s
    out: list[tuple[str, _Setup]] = []
    if "snat-addresses" in pick:
        n = int_value("snat-addresses", pick["snat-addresses"], DEFAULT_ADDRESSES, 2, 1024)
        rem = NR.more_snat_addresses(ctx, pool)
        out.append(("snat-addresses", _Setup(pool.port_range, tw, n, str(n), rem.changes,
                                             rem.risk)))  # fmt: skip
    if "nat-range" in pick:
        lo, hi = _range(pick["nat-range"])
        if hi - lo + 1 > pool.size:
            wide = NR.wide_port_range(ctx, pool, (lo, hi), always=True)
            assert wide is not None
            out.append(("nat-range", _Setup((lo, hi), tw, 1, f"{lo}-{hi}", wide.changes,
                                            wide.risk)))  # fmt: skip
        elif explicit:
            a, b = pool.port_range
            raise PlanError(
                f"--try nat-range={pick['nat-range'] or f'{lo}-{hi}'}: not wider than the "
                f"rule's range {a}-{b} ({pool.size:,} ports)"
            )
    if "ct-time-wait" in pick:
        s = int_value("ct-time-wait", pick["ct-time-wait"], NR.SAFE_CT_TIME_WAIT_S, 1, 86_400)
        if s < NR.SAFE_CT_TIME_WAIT_S:
            raise PlanError(
                f"--try ct-time-wait={s}: not below {NR.SAFE_CT_TIME_WAIT_S} s, the endpoints' "
                "own TIME_WAIT (TCP_TIMEWAIT_LEN): below it, late segments of an old connection "
                "can reach a new one given the same translated port"
            )
        shorter = NR.ct_time_wait(ctx, nat, s)
        if shorter is not None:
            out.append(("ct-time-wait", _Setup(pool.port_range, s, 1, str(s), shorter.changes,
                                               shorter.risk)))  # fmt: skip
        elif explicit:
            raise PlanError(f"--try ct-time-wait={s}: not shorter than the {tw} s in force")
    return out


# -- running -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """One option run forward: the numbers (in real scale) and what it took to get them."""

    onset_s: float | None
    drops_per_s: float
    headroom: int
    usable: int
    times: tuple[float, ...]
    held: tuple[float, ...]  # ports held in the fullest address's pool
    drops: tuple[float, ...]  # drops per second, all addresses
    note: str = ""
    scale: int = 1
    steady_from_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class _Address:
    rate: float
    clients: int
    seeded: bool


def _scaled(lo: int, hi: int, k: int) -> tuple[int, int]:
    return lo, lo + max((hi - lo + 1) // k, 1) - 1


Seeds = tuple[tuple[int, ...], tuple[tuple[int, int], ...]]  # (held ports, (port, ns left))


def _seeds(state: PoolState, lo: int, hi: int, k: int) -> Seeds:
    """The captured entries that fall in [lo, hi], mapped into the 1/k-scale range: one per
    k ports (the first of each run of k), so the scaled pool is as full as the real one."""
    slo, shi = _scaled(lo, hi, k)
    seen: set[int] = set()
    held: list[int] = []
    tw: list[tuple[int, int]] = []
    for p, left in sorted([(p, -1) for p in state.held] + list(state.time_wait)):
        if not lo <= p <= hi:
            continue
        q = slo + (p - lo) // k
        if q > shi or q in seen:
            continue
        seen.add(q)
        if left < 0:
            held.append(q)
        else:
            tw.append((q, left))
    return tuple(held), tuple(tw)


def run(state: PoolState, setup: _Setup, *, evict: bool, random_fully: bool, persistent: bool,
        horizon_s: float, lifetime: int, seed: int = 1) -> Run:  # fmt: skip
    """Run the pool forward under `setup` (see the module docstring)."""
    pool = state.pool
    n = setup.addresses
    by_addr: dict[int, list[float]] = {}
    for client, rate in state.clients:
        i = snat_address_index(client, pool.dst, n, persistent=persistent, zone=state.zone)
        by_addr.setdefault(i, []).append(rate)
    # Only addresses some churning client hashes to are run: an address no client reaches
    # (the captured one included: its entries just expire) can neither drop nor fill.
    addrs = {i: _Address(rate=sum(r), clients=len(r), seeded=i == 0) for i, r in by_addr.items()}
    lo, hi = setup.port_range
    size = hi - lo + 1
    total = sum(a.rate for a in addrs.values())
    k = max(1, math.ceil(total * horizon_s / SIM_BUDGET))
    k = min(k, max(1, size // MIN_SCALED_RANGE))
    slo, shi = _scaled(lo, hi, k)
    period_s = setup.time_wait_s + lifetime / SEC
    duration = int(horizon_s * SEC)
    onset: float | None = None
    fullest: list[float] = []
    hard_max = 0.0
    drops_series = np.zeros(0)
    times: tuple[float, ...] = ()
    steady_drops = 0.0
    for i in sorted(addrs):
        a = addrs[i]
        held, tw = _seeds(state, lo, hi, k) if a.seeded else ((), ())
        res = _simulate(a, held, tw, (slo, shi), setup.time_wait_s, evict, random_fully,
                        duration, lifetime, k, seed + i)  # fmt: skip
        times = tuple(res.times)
        d = np.asarray(res.drops_per_s, dtype=np.float64) * k
        drops_series = d if drops_series.size == 0 else drops_series + d
        if res.first_drop is not None:
            t = res.first_drop / SEC
            onset = t if onset is None else min(onset, t)
        steady_drops += res.drops_per_s_after(max(horizon_s - period_s, 0.0), horizon_s) * k
        entries = np.asarray(res.entries, dtype=np.float64)
        closed = np.asarray(res.time_wait, dtype=np.float64)
        # Held as the doctor counts it: on an evicting kernel only what nothing may evict.
        hard = entries - closed if evict else entries
        w = max(1, min(hard.size, round(period_s)))  # samples are 1 s apart
        if hard.size and float(hard[-w:].max()) >= hard_max:
            hard_max = float(hard[-w:].max())
        if not fullest or (entries.size and float(entries.max()) * k > max(fullest)):
            fullest = [float(x) * k for x in entries]
    busy = len(addrs)
    usable = size * busy
    notes = []
    if n > 1:
        split = sorted((a.clients for a in addrs.values()), reverse=True)
        notes.append(
            f"{len(state.clients)} churning client(s) hash to {busy} of {n} addresses "
            f"({' + '.join(str(x) for x in split)})"
            + ("; one client uses one address" if len(state.clients) == 1 else "")
        )
    return Run(
        onset_s=onset,
        drops_per_s=round(steady_drops, 3),
        headroom=max(size - math.ceil(hard_max * k), 0),
        usable=usable,
        times=times,
        held=tuple(fullest),
        drops=tuple(float(x) for x in drops_series),
        note="; ".join(notes),
        scale=k,
        steady_from_s=max(horizon_s - period_s, 0.0),
    )


def _simulate(a: _Address, held: tuple[int, ...], tw: tuple[tuple[int, int], ...],
              port_range: tuple[int, int], time_wait_s: int, evict: bool, random_fully: bool,
              duration: int, lifetime: int, k: int, seed: int) -> NatResult:  # fmt: skip
    gw = NatGateway(rng=random.Random(seed), port_range=port_range, random_fully=random_fully,
                    time_wait=time_wait_s * SEC, evict=evict)  # fmt: skip
    rate = a.rate / k
    clients = max(1, min(a.clients, MAX_SIM_CLIENTS))
    # A client's own limit (its ports / 60 s TIME_WAIT) is the socket plan's business: a client
    # that churns near it gets a range wide enough that only the NAT can refuse it.
    lo, hi = CLIENT_PORTS
    own = CLIENT_PORTS if rate / clients < 0.8 * (hi - lo + 1) / 60 else WIDE_CLIENT_PORTS
    wl = NatWorkload(rate=rate, duration=duration, clients=clients, lifetime=lifetime,
                     syn_timeout=SYN_TIMEOUT, client_ports=own,
                     held_at_start=held, time_wait_at_start=tw)  # fmt: skip
    return simulate_nat(gw, wl, rng=random.Random(seed + 1000))


# -- the plan for one pool ---------------------------------------------------------------------


def plan_pools(
    snap: Snapshot,
    nat: NatAnalysis | None,
    *,
    horizon_s: float,
    lifetime: int,
    top: int,
    wanted: Mapping[str, str] | None = None,
) -> tuple[list[DestinationPlan], list[str]]:
    """The busiest NAT pools with churn, each as-is and per option (see the module docstring),
    and the notes the reader must see. Raises PlanError for a --try value it cannot take."""
    notes: list[str] = []
    if nat is None or not nat.table_read or not nat.pools:
        return [], notes
    pools = sorted((p for p in nat.pools if p.churn_per_s > 0 and p.proto == C.IPPROTO_TCP),
                   key=lambda p: (-p.churn_per_s, p.label))[: max(top, 0)]  # fmt: skip
    if not pools:
        notes.append("no NAT pool has churn now (no entry entered TIME_WAIT in the last "
                         "10 s): nothing to run forward")  # fmt: skip
        return [], notes
    notes.append(
        "NAT pools' churn: the entries that entered conntrack TIME_WAIT in the last "
        f"{max(min(10, nat.time_wait_s), 1)} s, from their timers (one capture is enough)"
    )
    rules = snap.tables.get(C.NAT_TABLE)
    persistent = bool(rules is not None and rules.size and rules["persistent"].any())
    kernel = "Linux >= 6.5: a SYN may evict a closing entry" if nat.eviction else (
        "Linux < 6.5: no entry is ever evicted")  # fmt: skip
    out: list[DestinationPlan] = []
    for pool in pools:
        state = pool_state(snap, nat, pool)
        setups = options(snap, nat, pool, wanted)
        as_is = _Setup(pool.port_range, nat.time_wait_s, 1, "")
        kw = dict(evict=nat.eviction, random_fully=pool.random_fully, persistent=persistent,
                  horizon_s=horizon_s, lifetime=lifetime)  # fmt: skip
        base = run(state, as_is, **kw)  # type: ignore[arg-type]
        results = [(name, s, run(state, s, **kw)) for name, s in setups]  # type: ignore[arg-type]
        n_open = len(state.held)
        if n_open:
            notes.append(
                f"{pool.label}: {n_open:,} open entries (ESTABLISHED, SYN_SENT, ...) are taken "
                "as held for the whole horizon: conntrack's timer says nothing about when a "
                "connection will close"
            )
        if nat.counters_delta.get("insert_failed", 0) > 0:
            notes.append(
                f"{pool.label}: conntrack dropped SYNs between the captures (insert_failed "
                f"+{nat.counters_delta['insert_failed']:,}): the offered load is higher than the "
                "churn the capture can see, so the plan under-states it"
            )
        scale = max([base.scale] + [r.scale for _, _, r in results])
        if scale > 1:
            notes.append(
                f"{pool.label}: runs made at up to 1/{scale} scale (rate, range and captured "
                "entries divided alike; onset and drop fraction do not depend on it)"
            )
        for r in (base, *(r for _, _, r in results)):
            if r.onset_s is not None and r.onset_s > r.steady_from_s:
                notes.append(
                    f"{pool.label}: the horizon ends less than one conntrack TIME_WAIT life "
                    "after the first drop: drops/s is not yet the steady value (--horizon)"
                )
                break
        notes.append(f"{pool.label}: {kernel} ({snap.kernel or 'kernel unknown'})")
        out.append(
            DestinationPlan(
                label=pool.label,
                kind=KIND_NAT,
                churn_per_s=pool.churn_per_s,
                held_now=pool.held,
                time_wait_now=pool.by_state.get("time_wait", 0),
                as_is=_result("as-is", as_is, base),
                options=tuple(sorted((_result(n, s, r) for n, s, r in results), key=rank_key)),
            )
        )
    return out, notes


def _result(option: str, s: _Setup, r: Run) -> OptionResult:
    return OptionResult(
        option=option,
        value=s.value,
        onset_s=r.onset_s,
        failures_per_s=r.drops_per_s,
        headroom=r.headroom,
        usable=r.usable,
        risk=s.risk,
        changes=s.changes,
        times=r.times,
        ports_in_use=r.held,
        failures_series=r.drops,
        note=r.note,
    )


__all__ = ["PoolState", "plan_pools", "pool_state", "run"]
