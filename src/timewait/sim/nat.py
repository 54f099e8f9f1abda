"""Flow-level NAT: several client namespaces behind one masquerading gateway (model/nat.py),
at connection granularity.

Theory of operation
-------------------
Clients 0..n-1 (distinct addresses) share the offered `rate` round robin, each connection at a
fixed instant (attempt i at i / rate). A client takes a local port from its own range (a port
is busy from connect() until its TIME_WAIT ends 60 s after the close, or until its SYN gives
up), sends a SYN through the gateway, and:
- accepted: the connection lives `lifetime` (connect -> the final ACK), then the gateway's entry
  enters conntrack TIME_WAIT and the client's port its own 60 s TIME_WAIT (the client closes
  first);
- dropped (no translated port): the client gives up after `syn_timeout` without a retransmission
  (the lab's clients use a timeout below the 1 s initial RTO), its port is free again and there
  is no TIME_WAIT anywhere.
A run may start from a captured table: `held_at_start` (translated ports of open entries, held
for the whole run) and `time_wait_at_start` (translated ports of closed entries, each with the
time its conntrack timer has left), seeded at 0 under keys of no client (model/nat.py seed()).
Local ports: a client picks uniformly among its free ports (the kernel's perturbed scan,
ref 7.2, gives another order; only reuse of a port toward the same server within the gateway's
TIME_WAIT depends on it, and the SYN then reopens the entry).

Closed forms (kernels before 6.5, or `evict=False`; sim/scenarios/flow.py asserts them):
capacity toward one destination = ports / (time_wait + lifetime); the pool fills at
ports / R (the first drop, when R > capacity); steady entries = min(R x (time_wait + lifetime),
ports). With eviction (6.5+) the closing entries are reclaimable and the hard capacity is
ports / lifetime.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from fractions import Fraction

from timewait.errors import TimewaitError
from timewait.model.nat import CT_TIME_WAIT, NatGateway
from timewait.model.states import TCP_TIMEWAIT_LEN
from timewait.units import MS, SEC

CLIENT_NET = "198.18.1."
SERVER = ("198.18.0.2", 80)
CAPTURED = "captured"  # the client address of seeded entries: no client of the run has it


class InvalidNatWorkload(TimewaitError, ValueError):
    """A NAT workload that has no meaning (no clients, negative rate, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NatWorkload:
    rate: float  # connections per second over all clients
    duration: int  # ns
    clients: int = 3
    lifetime: int = 1 * MS  # connect -> the final ACK
    syn_timeout: int = 500 * MS
    client_ports: tuple[int, int] = (50000, 59999)
    payload: int = 0  # bytes the client sends (moves td_end)
    sample_every: int = SEC
    held_at_start: tuple[int, ...] = ()  # translated ports of open entries at 0
    time_wait_at_start: tuple[tuple[int, int], ...] = ()  # (translated port, ns left) at 0

    def __post_init__(self) -> None:
        if self.clients < 1 or not self.rate > 0 or self.duration <= 0:
            raise InvalidNatWorkload("need clients >= 1, rate > 0 and duration > 0")
        if self.lifetime < 0 or self.syn_timeout <= 0 or self.sample_every <= 0:
            raise InvalidNatWorkload("lifetime >= 0, syn_timeout > 0, sample_every > 0")
        ports = list(self.held_at_start) + [p for p, _ in self.time_wait_at_start]
        if len(set(ports)) != len(ports):
            raise InvalidNatWorkload("a translated port seeded twice")
        if any(left <= 0 for _, left in self.time_wait_at_start):
            raise InvalidNatWorkload("a seeded TIME_WAIT entry with no time left")


@dataclass
class NatResult:
    attempts: int = 0
    connections: int = 0
    drops: int = 0
    evicted: int = 0
    reopened: int = 0
    first_drop: int | None = None  # ns
    pool_full: int | None = None  # ns: first SYN that found no free port without evicting
    times: list[float] = field(default_factory=list)
    time_wait: list[int] = field(default_factory=list)  # gateway entries in TIME_WAIT
    entries: list[int] = field(default_factory=list)
    drops_per_s: list[float] = field(default_factory=list)
    drop_times: list[int] = field(default_factory=list)

    def drops_per_s_after(self, t0: float, t1: float) -> float:
        """Drops per second among attempts made in [t0, t1) seconds."""
        if t1 <= t0:
            return 0.0
        n = sum(1 for t in self.drop_times if t0 * SEC <= t < t1 * SEC)
        return n / (t1 - t0)


def simulate_nat(gw: NatGateway, wl: NatWorkload, *, rng: random.Random) -> NatResult:
    """Run the workload through the gateway (see the module docstring). Deterministic."""
    res = NatResult()
    lo, hi = wl.client_ports
    free: list[list[int]] = [list(range(lo, hi + 1)) for _ in range(wl.clients)]
    events: list[tuple[int, int, int, tuple[str, int, str, int], int]] = []  # (t, kind, c, ...)
    seq = 0
    frac = Fraction(wl.rate).limit_denominator(1_000_000)
    n_attempts = int(wl.duration * frac.numerator // (frac.denominator * SEC))
    dst, dport = SERVER
    for port in wl.held_at_start:
        k = (CAPTURED, port, dst, dport)
        gw.seed(0, k, port, td_end=gw.isn(k, 0) + 1, left=None)
    for port, left in wl.time_wait_at_start:
        k = (CAPTURED, port, dst, dport)
        gw.seed(0, k, port, td_end=gw.isn(k, 0) + 2, left=left)
    next_sample = 0
    drops_at_last = 0

    def sample(at: int) -> None:
        nonlocal drops_at_last
        gw.expire(at)
        res.times.append(at / SEC)
        res.time_wait.append(gw.time_wait_entries(at))
        res.entries.append(gw.entries())
        step = wl.sample_every / SEC
        res.drops_per_s.append((res.drops - drops_at_last) / step if at else 0.0)
        drops_at_last = res.drops

    def run_events(until: int) -> None:
        while events and events[0][0] <= until:
            t, kind, c, key, extra = heapq.heappop(events)
            if kind == 0:  # the final ACK: conntrack TIME_WAIT; the client's own TIME_WAIT
                gw.close(t, key, extra)
                heapq.heappush(events, (t + TCP_TIMEWAIT_LEN, 1, c, key, seq))
            else:  # the client's port is free again (its TIME_WAIT ended, or the SYN gave up)
                free[c].append(key[1])

    for i in range(n_attempts):
        t = i * frac.denominator * SEC // frac.numerator
        while next_sample <= t:
            run_events(next_sample)
            sample(next_sample)
            next_sample += wl.sample_every
        run_events(t)
        c = i % wl.clients
        res.attempts += 1
        ports = free[c]
        if not ports:
            continue  # the client's own EADDRNOTAVAIL: never in the lab's workloads
        j = rng.randrange(len(ports))
        ports[j], ports[-1] = ports[-1], ports[j]
        sport = ports.pop()
        key = (f"{CLIENT_NET}{10 + c}", sport, dst, dport)
        isn = gw.isn(key, t)
        v = gw.syn(t, key, (isn + 1) & 0xFFFFFFFF)
        if v.accepted:
            res.connections += 1
            res.evicted += v.evicted
            res.reopened += int(v.reopened)
            end = (isn + 2 + wl.payload) & 0xFFFFFFFF
            heapq.heappush(events, (t + wl.lifetime, 0, c, key, end))
        else:
            res.drops += 1
            res.drop_times.append(t)
            if res.first_drop is None:
                res.first_drop = t
            heapq.heappush(events, (t + wl.syn_timeout, 1, c, key, 0))
        if res.pool_full is None and (not v.accepted or v.evicted):
            res.pool_full = t
    while next_sample <= wl.duration:
        run_events(next_sample)
        sample(next_sample)
        next_sample += wl.sample_every
    return res


def capacity(ports: int, lifetime_s: float, time_wait_s: float = CT_TIME_WAIT / SEC) -> float:
    """Connections per second one translated pool sustains without eviction."""
    return ports / (time_wait_s + lifetime_s)


__all__ = ["NatResult", "NatWorkload", "capacity", "simulate_nat"]
