"""Flow-level simulation: connect() success and TIME_WAIT at connection granularity.

Theory of operation
-------------------
The packet-level model (timewait.model.Host driven by the engine) spends ~10 segment events per
connection and runs a few thousand connections per second of wall time. The questions about port
exhaustion need a million connections, and they only depend on *how many* four-tuples are held
toward each destination and *for how long*, not on the segments. So this module models one client
network namespace at connection granularity:

* A connection to destination d holds one of d's usable local ports from connect() until it
  ends: until its TIME_WAIT expires when the client closes first, or until the close completes
  when the server closes first (the passive closer never enters TIME_WAIT, ref 1.1).
* connect() toward d succeeds iff some local port gives a free four-tuple (ref 7.3): a port with
  nothing toward d (`in_use[d] < usable`), or a TIME_WAIT that `tcp_twsk_unique()` lets connect()
  take over (ref 3). `__inet_hash_connect()` scans every candidate of the range (both parity
  passes, ref 7.2) and fails with EADDRNOTAVAIL only when none qualifies, so success/failure does
  not depend on the scan order; the flow model takes a free port first and otherwise the *oldest*
  TIME_WAIT, which is the most reusable one (all were created with the same rule, so if the
  oldest fails the `tcp_tw_reuse_delay` test every younger one fails it too).
* Every TIME_WAIT lasts exactly TCP_TIMEWAIT_LEN = 60 s (include/net/tcp.h; nothing restarts it
  here because no segment reaches it), so insertion order is expiry order: TIME_WAITs live in a
  FIFO deque, not a heap (simulators-and-tests.md 4.2, technique 2). Connections all last the same
  `lifetime`, so open connections are a FIFO too. A takeover removes the oldest TIME_WAIT of one
  destination: the per-destination deque pops it and the shared expiry deque skips it lazily.
* `tcp_max_tw_buckets` (ref 5, `inet_twsk_alloc()`): when the namespace already holds that many
  minisockets the wait is skipped, TCPTimeWaitOverflow counts it and the port is free at once.

Events at the same instant run in this order: TIME_WAIT expiries, connection ends, then
connect() attempts, so a port freed at t can be used by a connect() at t (the packet model's
timers also fire before the application acts at the same time).

Time is integer ns; randomness (Poisson arrivals only) comes from the Random passed in, so the same
inputs give the same result. Deviation, by design: under tcp_tw_reuse the kernel's scan start is
re-salted every 10 s (ref 7.2 step 3) and it takes over a reusable TIME_WAIT even when free ports
remain, so a real host holds fewer TIME_WAITs than this model's count (lab: ~18.9 k at 14.4 k
conn/s, ref 6); successes, failures and sustainable rates are unaffected (see the second bullet).
The cross-check against the packet model is tests/sim/test_flow.py.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Final

from timewait.config import KernelConfig
from timewait.errors import TimewaitError
from timewait.model import counters as C
from timewait.model.counters import Counters
from timewait.model.minisock import tw_reuse_delay_passed, tw_reuse_enabled
from timewait.model.states import TCP_TIMEWAIT_LEN
from timewait.model.timerwheel import fires_at
from timewait.units import MS, SEC

ARRIVALS: Final = ("fixed", "poisson")
_NEVER: Final = 1 << 62


class InvalidWorkload(TimewaitError, ValueError):
    """A workload that has no meaning (negative rate, zero destinations, ...): flow-level here,
    packet-level in timewait.sim.workloads. The message names the value and what is allowed."""


def usable_ports(config: KernelConfig, bind_held: int = 0) -> int:
    """Local ports one destination can use: the scanned range minus reserved and bind-held ports.

    `__inet_hash_connect()` scans `remaining = high + 1 - low` candidates, rounded down to even
    when no per-socket range is set (K inet_hashtables.c; model/ports.py connect_port), so an
    odd-sized range loses one port per scan; reserved ports are skipped
    (`inet_is_local_reserved_port()`) and ports held by bind()/listen() users are never shared
    (ref 7.1-7.3).
    """
    lo, hi = config.ip_local_port_range
    n = hi - lo + 1
    if n > 1:
        n &= ~1
    reserved = sum(1 for p in config.ip_local_reserved_ports if lo <= p <= hi)
    return max(0, n - reserved - bind_held)


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowWorkload:
    """What the client does. Times are int ns."""

    rate: float  # new connections offered per second, over all destinations (0: none)
    duration: int  # connect() attempts happen at times in [0, duration)
    # connect() -> the active closer enters TIME_WAIT (client closes first), or -> the client's
    # port is released (server closes first): request time plus about one round trip.
    lifetime: int = 10 * MS
    destinations: int = 1  # (dst ip, dst port) pairs, used round robin; x source addresses
    client_closes_first: bool = True
    loopback: bool = False  # destination on loopback: tcp_tw_reuse=2 applies (ref 3)
    peer_timestamps: bool = True  # the peer answers with timestamps (tw_ts_recent_stamp != 0)
    arrivals: str = "fixed"  # "fixed": evenly spaced; "poisson": exponential gaps from the rng
    open_at_start: int = 0  # connections opened at t=0 (a pool), before the arrivals
    sample_every: int = SEC  # time-series resolution
    bind_held_ports: int = 0  # ports of the range held by bind()/listen() users
    # A captured namespace to start from (timewait.doctor.plan): four-tuples destination 0
    # holds for the whole run (long-lived connections), and its TIME_WAITs as the ns each has
    # left. Both are FIFO-compatible: TIME_WAITs are inserted in expiry order.
    held_at_start: int = 0
    time_wait_at_start: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.rate >= 0:
            raise InvalidWorkload(f"rate={self.rate}: must be >= 0 connections per second")
        if self.duration <= 0:
            raise InvalidWorkload(f"duration={self.duration} ns: must be > 0")
        if self.lifetime < 0:
            raise InvalidWorkload(f"lifetime={self.lifetime} ns: must be >= 0")
        if self.destinations < 1:
            raise InvalidWorkload(f"destinations={self.destinations}: must be >= 1")
        if self.arrivals not in ARRIVALS:
            raise InvalidWorkload(f"arrivals={self.arrivals!r}: choose {' or '.join(ARRIVALS)}")
        if self.open_at_start < 0 or self.bind_held_ports < 0 or self.held_at_start < 0:
            raise InvalidWorkload("open_at_start, bind_held_ports, held_at_start must be >= 0")
        if any(t < 0 for t in self.time_wait_at_start):
            raise InvalidWorkload("time_wait_at_start: every time left must be >= 0 ns")
        if self.sample_every <= 0:
            raise InvalidWorkload(f"sample_every={self.sample_every} ns: must be > 0")


@dataclass
class FlowResult:
    """What happened. Series are sampled every `sample_every`, at t = 0, 1, 2 ... samples."""

    usable_ports: int  # per destination
    attempts: int = 0
    connections: int = 0  # successful connect() calls
    failures: int = 0  # EADDRNOTAVAIL
    first_failure: int | None = None  # ns
    counters: Counters = field(default_factory=Counters)
    times: list[float] = field(default_factory=list)  # s
    time_wait: list[int] = field(default_factory=list)  # client TIME_WAITs (all destinations)
    ports_in_use: list[int] = field(default_factory=list)  # four-tuples held: open + TIME_WAIT
    established: list[int] = field(default_factory=list)  # open connections
    server_time_wait: list[int] = field(default_factory=list)  # server TIME_WAITs
    failures_per_s: list[float] = field(default_factory=list)
    connections_per_s: list[float] = field(default_factory=list)
    # Successful connect()s per second over the last usable x destinations successes: in
    # steady state that is one full rotation of every port (FIFO), so no aliasing with the
    # burst pattern of a saturated range; below capacity it is the offered rate.
    recent_rate: float = 0.0
    final_time_wait: int = 0  # client TIME_WAITs when the run ends (t = duration)

    def mean_time_wait(self, last_s: float) -> float:
        """Mean sampled TIME_WAIT count over the last `last_s` seconds (a steady-state level)."""
        k = max(1, min(len(self.time_wait), round(last_s / self._step_s())))
        return sum(self.time_wait[-k:]) / k

    def _step_s(self) -> float:
        return self.times[1] - self.times[0] if len(self.times) > 1 else 1.0

    def series(self) -> dict[str, tuple[Sequence[float], Sequence[float]]]:
        """{metric: (times_s, values)} for ScenarioResult.series / --plot."""
        out: dict[str, tuple[Sequence[float], Sequence[float]]] = {
            "time_wait": (self.times, [float(v) for v in self.time_wait]),
            "ports_in_use": (self.times, [float(v) for v in self.ports_in_use]),
            "failures_per_s": (self.times, self.failures_per_s),
        }
        if any(self.server_time_wait):
            out["server_time_wait"] = (self.times, [float(v) for v in self.server_time_wait])
        return out


def arrival_times(workload: FlowWorkload, rng: random.Random) -> Callable[[], int]:
    """A generator-free source of arrival times (ns); returns _NEVER after the last one."""
    if workload.rate == 0:
        return lambda: _NEVER
    if workload.arrivals == "fixed":
        # t_i = i / rate exactly, in integer ns: rate as a fraction, so 1e6 arrivals never drift.
        frac = Fraction(workload.rate).limit_denominator(1_000_000)
        num, den = frac.numerator, frac.denominator * SEC
        state = [0]

        def fixed() -> int:
            i = state[0]
            state[0] = i + 1
            return i * den // num

        return fixed
    rate = workload.rate
    clock = [0]

    def poisson() -> int:
        t = clock[0]
        clock[0] = t + max(1, round(rng.expovariate(rate) * SEC))
        return t

    return poisson


def reuse_applies(config: KernelConfig, w: FlowWorkload) -> bool:
    """The tcp_twsk_unique() conditions that do not depend on the minisocket's age (ref 3):
    tw_reuse_enabled(); tw_ts_recent_stamp != 0 needs timestamps both ways."""
    return (
        tw_reuse_enabled(config, loopback=w.loopback)
        and config.timestamps_enabled
        and w.peer_timestamps
    )


class _FlowRun:
    """One run of `simulate()`: the client namespace's state and the three event kinds.

    State: per destination, the four-tuples held (`in_use`) and its TIME_WAITs oldest first
    (`tw_dest`, entries [expiry_ns, dest, entry_ns], dest = -1 once taken over); every
    TIME_WAIT in expiry order (`tw_all`); open connections in end order (`active`).
    """

    def __init__(
        self,
        config: KernelConfig,
        workload: FlowWorkload,
        time_wait_len: int,
        outcomes: list[tuple[int, bool]] | None,
        timer_hz: int | None,
    ) -> None:
        w = workload
        self.config = config
        self.usable = usable_ports(config, w.bind_held_ports)
        self.res = FlowResult(usable_ports=self.usable)
        self.time_wait_len = time_wait_len
        self.timer_hz = timer_hz
        self.outcomes = outcomes
        self.reuse = reuse_applies(config, w)
        self.max_tw = config.tcp_max_tw_buckets
        self.client_first = w.client_closes_first
        self.lifetime = w.lifetime
        self.in_use = [0] * w.destinations
        self.tw_dest: list[deque[list[int]]] = [deque() for _ in range(w.destinations)]
        self.tw_all: deque[list[int]] = deque()
        self.active: deque[tuple[int, int]] = deque()  # (end_ns, dest)
        self.server_tw: deque[int] = deque()  # expiry times of the server's TIME_WAITs
        self.tw_total = 0
        self.n_tw = self.n_recycled = self.n_overflow = 0
        self.attempts = self.ok = self.failures = 0
        self.first_failure: int | None = None
        self.recent: deque[int] = deque(maxlen=self.usable * w.destinations + 1)
        self.step = w.sample_every
        self.next_sample = 0
        self.fails_at_last = 0
        self.ok_at_last = 0

    def start_from_capture(self, held: int, time_wait_left: Sequence[int]) -> None:
        """Destination 0 starts with `held` four-tuples held all run and these TIME_WAITs."""
        self.in_use[0] += held
        for left in sorted(time_wait_left):
            armed = left - self.time_wait_len  # it entered TIME_WAIT that long ago
            entry = [self.dies_at(armed), 0, armed]
            self.tw_all.append(entry)
            self.tw_dest[0].append(entry)
            self.tw_total += 1
            self.in_use[0] += 1

    def dies_at(self, armed: int) -> int:
        """When a TIME_WAIT armed at `armed` is killed (the timer wheel's bucket if timer_hz)."""
        deadline = armed + self.time_wait_len
        return deadline if self.timer_hz is None else fires_at(armed, deadline, self.timer_hz)

    def advance(self, t: int) -> None:
        """Apply every TIME_WAIT expiry and connection end at or before t, in time order."""
        tw_all, active, in_use = self.tw_all, self.active, self.in_use
        while True:
            e = tw_all[0][0] if tw_all else _NEVER
            a = active[0][0] if active else _NEVER
            if e <= a and e <= t:
                entry = tw_all.popleft()
                d = entry[1]
                if d >= 0:  # tw_timer_handler() -> inet_twsk_kill(): the port is free again
                    self.tw_dest[d].popleft()
                    in_use[d] -= 1
                    self.tw_total -= 1
            elif a <= t:
                end, d = active.popleft()
                if not self.client_first:
                    in_use[d] -= 1  # passive closer: LAST_ACK -> CLOSED, no TIME_WAIT (ref 1.1)
                    self.server_tw.append(self.dies_at(end))
                elif self.tw_total >= self.max_tw:  # tw_overflow(): inet_twsk_alloc() failed
                    self.n_overflow += 1
                    in_use[d] -= 1
                else:  # tcp_time_wait(): the four-tuple stays held for TCP_TIMEWAIT_LEN
                    entry = [self.dies_at(end), d, end]
                    tw_all.append(entry)
                    self.tw_dest[d].append(entry)
                    self.tw_total += 1
                    self.n_tw += 1
            else:
                return

    def sample_until(self, t: int) -> None:
        """Record every sample due at or before t (the series of FlowResult)."""
        res = self.res
        step_s = self.step / SEC
        while self.next_sample <= t:
            at = self.next_sample
            self.advance(at)
            while self.server_tw and self.server_tw[0] <= at:
                self.server_tw.popleft()
            res.times.append(at / SEC)
            res.time_wait.append(self.tw_total)
            res.ports_in_use.append(sum(self.in_use))
            res.established.append(len(self.active))
            res.server_time_wait.append(len(self.server_tw))
            res.failures_per_s.append((self.failures - self.fails_at_last) / step_s if at else 0.0)
            res.connections_per_s.append((self.ok - self.ok_at_last) / step_s if at else 0.0)
            self.fails_at_last, self.ok_at_last = self.failures, self.ok
            self.next_sample = at + self.step

    def connect(self, t: int, d: int) -> None:
        """One connect() toward destination d at t: a free port, a TIME_WAIT taken over, or
        EADDRNOTAVAIL."""
        self.attempts += 1
        tws = self.tw_dest[d]
        if self.in_use[d] < self.usable:
            self.in_use[d] += 1
        elif self.reuse and tws and tw_reuse_delay_passed(tws[0][2], t, self.config):
            # __inet_check_established() -> tcp_twsk_unique(): the oldest TIME_WAIT is old
            # enough; it is killed and its port goes to the new connection.
            tws.popleft()[1] = -1
            self.tw_total -= 1
            self.n_recycled += 1
        else:  # __inet_hash_connect(): both parity passes found nothing -> EADDRNOTAVAIL
            self.failures += 1
            if self.first_failure is None:
                self.first_failure = t
            if self.outcomes is not None:
                self.outcomes.append((t, False))
            return
        self.ok += 1
        if self.outcomes is not None:
            self.outcomes.append((t, True))
        self.recent.append(t)
        self.active.append((t + self.lifetime, d))

    def result(self) -> FlowResult:
        res = self.res
        recent = self.recent
        if len(recent) > 1 and recent[-1] > recent[0]:
            res.recent_rate = (len(recent) - 1) * SEC / (recent[-1] - recent[0])
        res.attempts, res.connections, res.failures = self.attempts, self.ok, self.failures
        res.first_failure = self.first_failure
        res.final_time_wait = self.tw_total
        res.counters[C.ACTIVE_OPENS] = self.ok
        res.counters[C.TW] = self.n_tw
        res.counters[C.TW_RECYCLED] = self.n_recycled
        res.counters[C.TIME_WAIT_OVERFLOW] = self.n_overflow
        return res


def simulate(
    config: KernelConfig,
    workload: FlowWorkload,
    *,
    rng: random.Random,
    time_wait_len: int = TCP_TIMEWAIT_LEN,
    outcomes: list[tuple[int, bool]] | None = None,
    timer_hz: int | None = None,
) -> FlowResult:
    """Run the workload on one client namespace; see the module docstring for the rules.

    Deterministic: the same config, workload and rng state give the same FlowResult. If
    `outcomes` is a list, (time, succeeded) is appended for every connect() attempt.
    `timer_hz` (CONFIG_HZ) rounds each TIME_WAIT's death up to the kernel timer wheel's bucket,
    as Host(timer_hz=...) does (model/timerwheel.py); None ends it exactly after 60 s. The
    rounding is monotonic, so the FIFO order of expiries is kept.
    """
    w = workload
    run = _FlowRun(config, w, time_wait_len, outcomes, timer_hz)
    run.start_from_capture(w.held_at_start, w.time_wait_at_start)
    n_dest = w.destinations
    for i in range(w.open_at_start):
        run.connect(0, i % n_dest)
    next_arrival = arrival_times(w, rng)
    i = w.open_at_start
    t = next_arrival()
    duration = w.duration
    sample_until, advance, connect = run.sample_until, run.advance, run.connect
    # The hot loop: one iteration per connect() attempt (bench/bench_sim_flow.py measures it).
    while t < duration:
        if run.next_sample <= t:
            sample_until(t)
        advance(t)
        connect(t, i % n_dest)
        i += 1
        t = next_arrival()
    sample_until(duration)
    advance(duration)  # the run ends at `duration` with everything due by then applied
    return run.result()
