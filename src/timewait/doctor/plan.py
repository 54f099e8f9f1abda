"""Plan: "what if", run forward from a real capture on the flow engine, remedies ranked.

Theory of operation
-------------------
A diagnosis says where each destination stands now: its usable ports, the four-tuples it holds
(long-lived connections and TIME_WAITs, each with the time it has left) and its churn. `plan()`
takes the busiest destinations and, for each, runs the flow engine (timewait.sim.flow, cross-
checked against the packet model and the kernel lab) forward for `horizon_s` from exactly that
state, once "as is" and once per remedy that applies, each a change of the KernelConfig or of
the workload:

- tw-reuse: tcp_tw_reuse=1 with the captured kernel's tcp_tw_reuse_delay (ref 3; timestamps
  needed, so not offered without them);
- widen-range[=LO-HI]: a wider ip_local_port_range, service ports reserved (the doctor's remedy);
- pool[=K]: K long-lived connections instead of one per request (the churn stops);
- more-destinations[=N]: the churn spread over N (destination address, port) pairs;
- bind-address-no-port: sockets that bound before connecting share their ports again;
- peer-closes-first: TIME_WAIT moves to the server, the client's port is free after the close.

A masquerading host's NAT pools (translated ports toward one destination, held by conntrack
entries) are planned the same way by doctor/nat_plan.py, with its own options (snat-addresses,
nat-range, ct-time-wait) on the NAT gateway model; they come back in `Plan.nat`, each a
DestinationPlan of kind "nat", where onset is the first SYN dropped and failures are drops.

Churn is what the capture measured: over an interval (two captures), the live rate window (the
TcpExt counter around the dump) or a trace; Little's law (TIME_WAIT / 60 s) only as a stated
fallback. Churn counts closes, so while connect() already fails the offered load is higher than
what the capture can see (the `churn_basis` says so).

Each option reports the time to the first EADDRNOTAVAIL (onset), failures per second at steady
state (the mean over the last TCP_TIMEWAIT_LEN of the horizon), the headroom left at the end, and
the risk sentence of the doctor's own remedy; options are ranked by steady failures, then later
onset, then the doctor's order of preference (stop the churn first). Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from timewait.config import KernelConfig
from timewait.doctor import remedies as R
from timewait.doctor.analysis import Analysis, Destination
from timewait.doctor.kernels import kernel_of
from timewait.doctor.pools import is_loopback
from timewait.errors import TimewaitError
from timewait.model.states import TCP_TIMEWAIT_LEN
from timewait.sim.flow import FlowWorkload, reuse_applies, simulate, usable_ports
from timewait.snapshot import TCP_TIME_WAIT, Snapshot, addr_bytes
from timewait.units import MS, SEC

OPTIONS: Final = (
    "pool",
    "tw-reuse",
    "bind-address-no-port",
    "peer-closes-first",
    "more-destinations",
    "widen-range",
)  # the doctor's order of preference (remedies.py): stop the churn, share, widen
# NAT pools' options (doctor/nat_plan.py), in the order of the doctor's NAT remedies
# (nat_rules.py): more addresses, a wider range, then the shorter conntrack TIME_WAIT.
NAT_OPTIONS: Final = ("snat-addresses", "nat-range", "ct-time-wait")
KIND_SOCKET: Final = "socket"
AS_IS: Final = "as-is"
DEFAULT_HORIZON_S: Final = 300.0
DEFAULT_TOP: Final = 3
LIFETIME: Final = 10 * MS  # connect() to close of one request: the flow engine's default
STEADY_S: Final = TCP_TIMEWAIT_LEN / SEC  # a TIME_WAIT's life: the window of "steady state"


class PlanError(TimewaitError):
    """A --try that names no remedy, or a value it cannot take."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OptionResult:
    """One option for one destination, run forward."""

    option: str
    value: str  # what was tried ("1", "1024-65535", "32", ...), "" for as-is
    onset_s: float | None  # first EADDRNOTAVAIL after the capture; None = never in the horizon
    failures_per_s: float  # at steady state
    headroom: int  # the fewest ports left over the horizon's last TIME_WAIT life
    usable: int  # usable ports under this option
    risk: str
    changes: str
    times: tuple[float, ...]
    ports_in_use: tuple[float, ...]
    failures_series: tuple[float, ...]
    note: str = ""  # what the reader must know about this run (e.g. how clients hash)


@dataclass(frozen=True, slots=True, kw_only=True)
class DestinationPlan:
    """The busiest destinations' futures: as-is first, then the options, best first."""

    label: str
    churn_per_s: float
    held_now: int
    time_wait_now: int
    as_is: OptionResult
    options: tuple[OptionResult, ...]
    kind: str = KIND_SOCKET  # "socket": a destination's four-tuples; "nat": a NAT pool

    @property
    def ranked(self) -> tuple[OptionResult, ...]:
        return self.options


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    horizon_s: float
    churn_basis: str  # how churn was known, in words
    destinations: tuple[DestinationPlan, ...]
    notes: tuple[str, ...] = field(default=())
    nat: tuple[DestinationPlan, ...] = field(default=())  # NAT pools (kind "nat")

    @property
    def all(self) -> tuple[DestinationPlan, ...]:
        """Destinations, then NAT pools."""
        return self.destinations + self.nat


# -- the state of one destination --------------------------------------------------------------


def _rows_of(snap: Snapshot, d: Destination) -> np.ndarray:
    s = snap.sockets
    m = (s["src"] == np.frombuffer(addr_bytes(d.src), "V16")[0]) & (
        s["dst"] == np.frombuffer(addr_bytes(d.dst), "V16")[0]
    )
    out: np.ndarray = s[m & (s["dport"] == d.dport)]
    return out


def _start_state(snap: Snapshot, d: Destination) -> tuple[int, tuple[int, ...]]:
    """(four-tuples held for the run, TIME_WAITs' ns left) toward `d`, from the capture."""
    rows = _rows_of(snap, d)
    tw = rows["state"] == TCP_TIME_WAIT
    left = tuple(int(x) * MS for x in np.sort(rows["expires_ms"][tw]))
    return int((~tw).sum()), left


# -- options --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Setup:
    config: KernelConfig
    workload: FlowWorkload
    value: str  # what is tried, as --try would say it
    remedy: R.Remedy | None  # the doctor's remedy: its changes and risk text


def _parse_tries(tries: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for t in tries:
        name, _, value = t.partition("=")
        name = name.strip()
        if name not in OPTIONS + NAT_OPTIONS:
            raise PlanError(
                f"--try {t!r}: no such remedy; choose from {', '.join(OPTIONS + NAT_OPTIONS)} "
                "(e.g. --try pool=32 --try widen-range=1024-65535 --try snat-addresses=4)"
            )
        out[name] = value.strip()
    return out


def int_value(name: str, text: str, default: int, lo: int, hi: int) -> int:
    """A --try value: a whole number in lo..hi, or `default` when none is given."""
    if not text:
        return default
    try:
        v = int(text)
    except ValueError:
        raise PlanError(f"--try {name}={text}: expected a whole number") from None
    if not lo <= v <= hi:
        raise PlanError(f"--try {name}={text}: must be {lo}..{hi}")
    return v


def _options(
    snap: Snapshot,
    a: Analysis,
    d: Destination,
    base: FlowWorkload,
    wanted: Mapping[str, str] | None,
) -> list[tuple[str, _Setup]]:
    """Each remedy to try on this destination, as a changed config or workload: every one
    that applies, or those `wanted` names (--try), with their values."""
    cfg = snap.config
    ctx = R.Context.of(snap, kernel_of(snap))
    explicit = wanted is not None
    pick = dict(wanted) if wanted is not None else dict.fromkeys(OPTIONS, "")
    out: list[tuple[str, _Setup]] = []
    if "pool" in pick:
        guess = max(1, math.ceil(d.churn_per_s * LIFETIME / SEC) * 4)
        k = int_value("pool", pick["pool"], guess, 1, 65535)
        w = _replace(base, rate=0.0, held_at_start=base.held_at_start + k)
        out.append(("pool", _Setup(cfg, w, str(k), R.pooling())))
    if "tw-reuse" in pick:
        rem = R.tw_reuse(ctx)
        if rem is not None:
            out.append(("tw-reuse", _Setup(cfg.replace(tcp_tw_reuse=1), base, "1", rem)))
        elif explicit:
            why = "it is already 1" if cfg.tcp_tw_reuse == 1 else "tcp_timestamps=0 (ref 3)"
            raise PlanError(f"--try tw-reuse: nothing to try, {why}")
    if "bind-address-no-port" in pick and (explicit or a.ports.inferred_ports > 0):
        rem = R.bind_address_no_port(ctx)
        if rem is not None:
            held = a.ports.exclusive - a.ports.inferred_ports
            w = _replace(base, bind_held_ports=held)
            out.append(("bind-address-no-port", _Setup(cfg, w, "", rem)))
    if "peer-closes-first" in pick:
        w = _replace(base, client_closes_first=False)
        out.append(("peer-closes-first", _Setup(cfg, w, "", R.peer_closes_first())))
    if "more-destinations" in pick:
        n = int_value("more-destinations", pick["more-destinations"], 2, 2, 1024)
        w = _replace(base, destinations=n)
        out.append(("more-destinations", _Setup(cfg, w, str(n), R.more_destinations())))
    if "widen-range" in pick:
        wide = _widened(cfg, pick["widen-range"], a)
        if wide is not None:
            rem = R.widen_range(ctx, a.ports.listening, a.ports.capacity)
            lo, hi = wide.ip_local_port_range
            out.append(("widen-range", _Setup(wide, base, f"{lo}-{hi}", rem)))
        elif explicit:
            raise PlanError("--try widen-range: the range is already that wide")
    return out


def _widened(cfg: KernelConfig, text: str, a: Analysis) -> KernelConfig | None:
    """The wider range (default 1024-65535), service ports that fall in it reserved."""
    lo, hi = R.WIDE_RANGE
    if text:
        try:
            lo_s, hi_s = text.replace("-", " ").split()
            lo, hi = int(lo_s), int(hi_s)
        except ValueError:
            raise PlanError(
                f"--try widen-range={text}: expected LOW-HIGH, e.g. 1024-65535"
            ) from None
    lo = max(lo, cfg.ip_unprivileged_port_start)
    if (lo, hi) == cfg.ip_local_port_range:
        return None
    keep = set(cfg.ip_local_reserved_ports) | {p for p in a.ports.listening if lo <= p <= hi}
    try:
        return cfg.replace(ip_local_port_range=(lo, hi), ip_local_reserved_ports=frozenset(keep))
    except TimewaitError as e:
        raise PlanError(f"--try widen-range={text}: {e}") from None


def _replace(w: FlowWorkload, **changes: object) -> FlowWorkload:
    import dataclasses

    return dataclasses.replace(w, **changes)  # type: ignore[arg-type]


# -- running ----------------------------------------------------------------------------------


def _run(setup: _Setup, option: str, horizon_s: float, hz: int) -> OptionResult:
    res = simulate(setup.config, setup.workload, rng=random.Random(1), timer_hz=hz or None)
    fails = np.asarray(res.failures_per_s, dtype=np.float64)
    times = np.asarray(res.times, dtype=np.float64)
    step = float(times[1] - times[0]) if times.size > 1 else 1.0
    k = max(1, min(fails.size - 1, round(STEADY_S / step)))  # one TIME_WAIT life of samples
    steady = float(fails[-k:].mean()) if fails.size > 1 else 0.0
    onset = None if res.first_failure is None else res.first_failure / SEC
    usable = res.usable_ports
    n_dest = max(setup.workload.destinations, 1)
    # Destination 0 is the fullest (it starts with the capture's four-tuples); the series is
    # summed over all, so its share is at least the mean.
    held = np.asarray(res.ports_in_use[-k:], dtype=np.float64) / n_dest
    if reuse_applies(setup.config, setup.workload):
        # Ports left as the doctor counts them: a TIME_WAIT past tcp_tw_reuse_delay is a port
        # connect() can take (tcp_twsk_unique(), ref 3), so only the younger ones are held --
        # the last delay's worth of connections -- besides the open ones.
        young = np.asarray(res.connections_per_s[-k:]) * (setup.config.tcp_tw_reuse_delay / 1000)
        tw = np.asarray(res.time_wait[-k:], dtype=np.float64)
        held = (np.asarray(res.established[-k:]) + np.minimum(young, tw)) / n_dest
    per_dest = float(held.max()) if held.size else 0.0
    rem = setup.remedy
    return OptionResult(
        option=option,
        value=setup.value,
        onset_s=onset,
        failures_per_s=round(steady, 3),
        headroom=max(usable - math.ceil(per_dest), 0),
        usable=usable,
        risk=rem.risk if rem is not None else "",
        changes=rem.changes if rem is not None else "",
        times=tuple(float(t) for t in times),
        ports_in_use=tuple(
            float(v) / max(setup.workload.destinations, 1) for v in res.ports_in_use
        ),
        failures_series=tuple(float(f) for f in fails),
    )


def rank_key(o: OptionResult) -> tuple[float, float, int]:
    """No failures first, then the latest onset, then the doctor's order of preference."""
    order = (OPTIONS + NAT_OPTIONS).index(o.option) if o.option in OPTIONS + NAT_OPTIONS else 99
    return (o.failures_per_s, -(o.onset_s if o.onset_s is not None else math.inf), order)


def churn_basis(a: Analysis) -> str:
    """How the destinations' churn was known, in words."""
    if a.churn_method == "littles_law":
        return (
            "one snapshot: churn = TIME_WAIT / 60 s (Little's law), an average over the last "
            "minute; measure it with --interval S (or a trace) for a plan you can trust"
        )
    if a.churn_method == "traced":
        return "the active closes counted in the kernel per destination (eBPF trace)"
    if a.interval_s:
        return f"measured over {a.interval_s:.1f} s between two captures"
    if a.rate_window_s:
        return f"the TcpExt TW counter over {a.rate_window_s:.2f} s around the capture"
    return a.churn_method


def plan(
    snap: Snapshot,
    a: Analysis,
    *,
    horizon_s: float = DEFAULT_HORIZON_S,
    top: int = DEFAULT_TOP,
    tries: Sequence[str] = (),
) -> Plan:
    """Run the busiest destinations forward as they are and with each remedy (see above).

    Raises PlanError for a --try that names no remedy or takes no such value.
    """
    if not 1 <= horizon_s <= 86_400:
        raise PlanError(f"--horizon {horizon_s}: give 1 to 86400 seconds")
    wanted = _parse_tries(tries) if tries else None
    # --try names options of one kind or both: a kind none of them names is left out.
    sock_wanted = None if wanted is None else {k: v for k, v in wanted.items() if k in OPTIONS}
    nat_wanted = None if wanted is None else {k: v for k, v in wanted.items() if k in NAT_OPTIONS}
    duration = int(horizon_s * SEC)
    notes: list[str] = []
    out: list[DestinationPlan] = []
    idx = [int(i) for i in np.flatnonzero(a.dest_churn > 0)][: max(top, 0)]
    if sock_wanted is not None and not sock_wanted:
        idx = []
    if not idx and a.n_destinations:
        notes.append("no destination has churn now: nothing to run forward")
    if idx and not snap.kernel_hz:
        notes.append(
            "the capture does not say the kernel's CONFIG_HZ: TIME_WAIT is taken as exactly "
            "60 s, where the kernel's timer wheel makes it 60.5-62 s at HZ=250"
        )
    for i in idx:
        d = a.destination(i)
        held, tw_left = _start_state(snap, d)
        bound = a.ports.exclusive if not d.bind_like else a.ports.exclusive - d.bound
        base = FlowWorkload(
            rate=d.churn_per_s, duration=duration, lifetime=LIFETIME,
            loopback=_loopback(d), bind_held_ports=bound,
            held_at_start=held, time_wait_at_start=tw_left,
        )  # fmt: skip
        if usable_ports(snap.config, bound) <= 0 and not d.bind_like:
            notes.append(f"{d.label}: no usable ports at all")
        hz = snap.kernel_hz
        as_is = _run(_Setup(snap.config, base, "", None), AS_IS, horizon_s, hz)
        opts = [
            _run(setup, name, horizon_s, hz)
            for name, setup in _options(snap, a, d, base, sock_wanted)
        ]
        out.append(
            DestinationPlan(
                label=d.label,
                churn_per_s=d.churn_per_s,
                held_now=d.in_use + d.bound,
                time_wait_now=d.time_wait,
                as_is=as_is,
                options=tuple(sorted(opts, key=rank_key)),
            )
        )
    nat: list[DestinationPlan] = []
    if nat_wanted is None or nat_wanted:
        from timewait.doctor.nat_plan import plan_pools  # it builds on this module's types

        nat, nat_notes = plan_pools(snap, a.nat, horizon_s=horizon_s, lifetime=LIFETIME,
                                    top=top, wanted=nat_wanted)  # fmt: skip
        notes += nat_notes
    return Plan(
        horizon_s=horizon_s, churn_basis=churn_basis(a), destinations=tuple(out),
        notes=tuple(notes), nat=tuple(nat),
    )  # fmt: skip


def _loopback(d: Destination) -> bool:
    """tcp_tw_reuse=2 applies (the doctor's vectorized rule, one destination)."""
    both = np.array([addr_bytes(d.src), addr_bytes(d.dst)], dtype="V16")
    return bool(is_loopback(both).any())


__all__ = [
    "AS_IS",
    "NAT_OPTIONS",
    "OPTIONS",
    "DestinationPlan",
    "OptionResult",
    "Plan",
    "PlanError",
    "plan",
    "rank_key",
]
