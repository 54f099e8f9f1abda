"""The doctor's rules: pure functions `rule(snapshot, analysis, ctx) -> Iterable[Finding]`.

Theory of operation
-------------------
Each rule looks at one thing, has a stable id (scripts and alert rules key on it), and yields
at most one Finding: a severity, a one-line title, a short explanation, evidence (numbers only,
JSON-ready) and remedies in order of preference. The rules never read the clock or the host:
what they know about the system is the snapshot (its KernelConfig, counters, kernel version)
and the analysis of it, so a saved production capture gets the advice its own kernel needs.

Severity: CRITICAL means connections are failing or about to (a pool above 90 % used: a
destination's connect() pool, the ports left to connect() for any destination, or a bind(addr, 0)
pool where bind() users are at work); WARNING means a harmful setting or pressure building
(above 70 %, full within 10 minutes at the current trend, or a bind(0) pool used up by connect()
alone: latent); INFO explains something that looks alarming but is not; OK says what was checked
and found healthy. The doctor never says OK while a pool it saw is above 70 %.

Rule ids: connect-failures, bind-failures (these two only with a trace: doctor --trace S),
port-exhaustion, port-pressure, bind-pool-exhaustion, bind-held-ports,
tw-reuse-without-timestamps, range-swallows-listeners, tw-overflow, tw-buckets-below-count,
fin-wait2-orphans, server-side-time-wait, port-range-parity, collector-notes, ports-healthy;
and the NAT rules of doctor/nat_rules.py (issue 15): nat-port-exhaustion, nat-port-pressure,
conntrack-table-full, conntrack-drops, nat-healthy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final

import numpy as np

from timewait.doctor import remedies as R
from timewait.doctor import trace as T
from timewait.doctor.analysis import Analysis, Destination
from timewait.doctor.kernels import kernel_of
from timewait.snapshot import Snapshot

CRITICAL_USAGE: Final = 0.90  # issue 4: critical above 90 % of a destination's usable ports
WARNING_USAGE: Final = 0.70  # ... warning above 70 % (landscape 8: boxctl uses 70/85 %)
WARNING_ETA_S: Final = 600.0  # warning when a destination fills within 10 minutes
ETA_MIN_USAGE: Final = 0.25  # ... and already uses a quarter (one-snapshot trends are noisy)
SERVER_TW_INFO: Final = 1000  # server-side TIME_WAITs worth explaining
FIN_WAIT2_INFO: Final = 100  # orphaned FIN_WAIT2 minisockets worth explaining
BIND_HELD_WARNING: Final = 0.10  # bind()-held ports taking 10 % of the range
MAX_LISTED: Final = 5  # destinations listed in a finding's evidence


class Severity(IntEnum):
    OK = 0
    INFO = 1
    WARNING = 2
    CRITICAL = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One diagnosis: id, severity, title, explanation, evidence (numbers), remedies."""

    id: str
    severity: Severity
    title: str
    detail: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    remedies: tuple[R.Remedy, ...] = ()


Rule = Callable[[Snapshot, Analysis], Iterable[Finding]]


def context(snap: Snapshot) -> R.Context:
    """What remedies need: the kernel the advice targets, the config, the namespace."""
    return R.Context.of(snap, kernel_of(snap))


def _dest_evidence(d: Destination) -> dict[str, Any]:
    return {
        "destination": d.label,
        "in_use": d.in_use,
        "capacity": d.capacity,
        "headroom": d.headroom,
        "reusable": d.reusable,
        "usage": round(d.usage, 4),
        "time_wait": d.time_wait,
        "churn_per_s": round(d.churn_per_s, 2),
        "eta_s": None if d.eta_s is None else round(d.eta_s, 1),
    }


def _port_remedies(a: Analysis, ctx: R.Context) -> tuple[R.Remedy, ...]:
    """The ladder for a destination short of ports (ref 10, 12): stop churn, share, widen.
    When bind() holds most of the range, sharing those ports comes first."""
    out: list[R.Remedy | None] = [
        R.pooling(),
        R.tw_reuse(ctx),
        R.bind_address_no_port(ctx),
        R.peer_closes_first(),
        R.more_destinations(),
        R.widen_range(ctx, a.ports.listening, a.ports.capacity),
    ]
    if a.ports.exclusive >= a.ports.budget / 2:
        out.insert(0, out.pop(2))
    return tuple(r for r in out if r is not None)


def _pressured(a: Analysis, lo: float, hi: float | None) -> list[Destination]:
    """Destinations whose connect() pool is between lo and hi. Those whose sockets bound before
    connecting are left to the bind() rules: their clients fail in bind(), not connect()."""
    usage = a.dest_usage
    mask = usage >= lo if hi is None else (usage >= lo) & (usage < hi)
    mask &= ~a.dest_bind_like
    return [a.destination(int(i)) for i in np.flatnonzero(mask)]


def port_exhaustion(snap: Snapshot, a: Analysis) -> Iterator[Finding]:
    """Critical: a destination uses >= 90 % of its usable ports (ref 7.3, 12.1-12.2)."""
    ctx = context(snap)
    hot = _pressured(a, CRITICAL_USAGE, None)
    if not hot:
        return
    worst = hot[0]
    yield Finding(
        id="port-exhaustion",
        severity=Severity.CRITICAL,
        title=f"{len(hot)} destination(s) above {CRITICAL_USAGE:.0%} of their ports; worst "
        f"{worst.label} at {worst.usage:.0%} ({worst.headroom:,} of {worst.capacity:,} ports "
        "left)",
        detail="connect() to these destinations fails with EADDRNOTAVAIL ('Cannot assign "
        "requested address') once every usable port holds a four-tuple to them, TIME_WAIT "
        "included; it also burns CPU scanning the range first (ref 7.2, 12.2).",
        evidence={
            "destinations": [_dest_evidence(d) for d in hot[:MAX_LISTED]],
            "count": len(hot),
        },
        remedies=_port_remedies(a, ctx),
    )


def _trend_basis(a: Analysis) -> str:
    """Where the trend comes from, in words: a measured rate or one snapshot's timers."""
    if a.trend_method == "interval" and a.interval_s:
        return f"measured over {a.interval_s:.1f} s"
    if a.trend_method == "tw_counter" and a.rate_window_s:
        return f"churn measured over {a.rate_window_s:.2f} s"
    return "one snapshot's TIME_WAIT timers, the last 10 s: --interval measures it"


def _soon(a: Analysis) -> list[Destination]:
    """Destinations between a quarter and 70 % full that fill within 10 minutes."""
    eta = a.dest_eta
    usage = a.dest_usage
    with np.errstate(invalid="ignore"):
        mask = (usage >= ETA_MIN_USAGE) & (usage < WARNING_USAGE) & (eta < WARNING_ETA_S)
    mask &= ~a.dest_bind_like
    return [a.destination(int(i)) for i in np.flatnonzero(mask)]


def port_pressure(snap: Snapshot, a: Analysis) -> Iterator[Finding]:
    """Warning: 70-90 % used, or full within 10 minutes at the current trend."""
    ctx = context(snap)
    hot = _pressured(a, WARNING_USAGE, CRITICAL_USAGE)
    soon = _soon(a)
    both = hot + soon
    if not both:
        return
    worst = both[0]
    title = (
        f"{len(hot)} destination(s) above {WARNING_USAGE:.0%} of their ports; worst "
        f"{worst.label} at {worst.usage:.0%}"
        if hot
        else f"{len(soon)} destination(s) will run out of ports within "
        f"{WARNING_ETA_S / 60:.0f} minutes at the current trend ({_trend_basis(a)})"
    )
    yield Finding(
        id="port-pressure",
        severity=Severity.WARNING,
        title=title,
        detail="Connection churn to one destination is filling its ephemeral ports: each "
        "closed connection holds its port for 60 s in TIME_WAIT (ref 2.1, 7.3).",
        evidence={
            "destinations": [_dest_evidence(d) for d in both[:MAX_LISTED]],
            "count": len(both),
            "trend_method": a.trend_method,
            "churn_method": a.churn_method,
        },
        remedies=_port_remedies(a, ctx),
    )


def tw_reuse_without_timestamps(snap: Snapshot, a: Analysis) -> Iterator[Finding]:
    """tcp_tw_reuse on but tcp_timestamps 0: reuse can never happen (ref 3 cond. 3, Lab E7c)."""
    ctx = context(snap)
    cfg = snap.config
    if cfg.tcp_tw_reuse == 0 or cfg.timestamps_enabled:
        return
    yield Finding(
        id="tw-reuse-without-timestamps",
        severity=Severity.WARNING,
        title=f"tcp_tw_reuse={cfg.tcp_tw_reuse} has no effect: tcp_timestamps=0",
        detail="connect() takes over a TIME_WAIT only if the old connection carried "
        "timestamps (tcp_twsk_unique() needs tw_ts_recent_stamp); with them off, ports stay "
        "blocked for the full 60 s and PAWS cannot protect reused four-tuples (ref 3, 3.1).",
        evidence={"tcp_tw_reuse": cfg.tcp_tw_reuse, "tcp_timestamps": cfg.tcp_timestamps},
        remedies=(R.timestamps_on(ctx), R.tw_reuse_off(ctx)),
    )


def range_swallows_listeners(snap: Snapshot, a: Analysis) -> Iterator[Finding]:
    """Listening ports inside the ephemeral range and not reserved (landscape 7 #18, #19)."""
    ctx = context(snap)
    ports = a.ports.listener_ports
    if not ports:
        return
    lo, hi = a.ports.port_range
    shown = ", ".join(str(p) for p in ports[:10]) + (" ..." if len(ports) > 10 else "")
    yield Finding(
        id="range-swallows-listeners",
        severity=Severity.WARNING,
        title=f"{len(ports)} listening port(s) inside the ephemeral range {lo}-{hi}: {shown}",
        detail="While the service runs, connect() skips these ports (its bind bucket), so "
        "every destination loses them; when the service restarts, an outgoing connection can "
        "take the port first and the listener fails with EADDRINUSE (ref 7.2 step 6).",
        evidence={"ports": list(ports), "port_range": [lo, hi]},
        remedies=(R.reserve_listeners(ctx, ports),),
    )


def tw_overflow(snap: Snapshot, a: Analysis) -> Iterator[Finding]:
    """TCPTimeWaitOverflow > 0: TIME_WAIT skipped because of tcp_max_tw_buckets (ref 5, 12.4)."""
    ctx = context(snap)
    total = snap.counters.get("TCPTimeWaitOverflow", 0)
    rising = a.counters_delta.get("TCPTimeWaitOverflow", 0)
    if total <= 0 and rising <= 0:
        return
    now = f", +{rising:,} in the last {a.interval_s:.0f} s" if rising > 0 and a.interval_s else ""
    yield Finding(
        id="tw-overflow",
        severity=Severity.WARNING,
        title=f"TIME_WAIT was skipped {total:,} times (TCPTimeWaitOverflow{now})",
        detail="At tcp_max_tw_buckets the kernel closes sockets without TIME_WAIT, silently: "
        "late segments and a lost final ACK then meet a closed port (RST). The counter is "
        "cumulative for the namespace; compare two snapshots (--interval) to see if it rises.",
        evidence={
            "TCPTimeWaitOverflow": total,
            "rising": rising,
            "tcp_max_tw_buckets": snap.config.tcp_max_tw_buckets,
            "minisockets": a.totals.minisockets,
        },
        remedies=(R.pooling(), R.raise_tw_buckets(ctx, a.totals.minisockets)),
    )


def tw_buckets_below_count(snap: Snapshot, a: Analysis) -> Iterator[Finding]:
    """tcp_max_tw_buckets at or below the TIME_WAIT + FIN_WAIT2 minisocket count (ref 5)."""
    ctx = context(snap)
    limit = snap.config.tcp_max_tw_buckets
    count = a.totals.sockstat_tw if a.totals.sockstat_tw is not None else a.totals.minisockets
    if count == 0 or limit > count:
        return
    yield Finding(
        id="tw-buckets-below-count",
        severity=Severity.WARNING,
        title=f"tcp_max_tw_buckets={limit:,} is at the minisocket count ({count:,})",
        detail="The limit counts TIME_WAIT and FIN_WAIT2 minisockets per namespace; at it, "
        "every further active close skips TIME_WAIT (ref 5). The kernel documentation warns "
        "never to lower it.",
        evidence={"tcp_max_tw_buckets": limit, "minisockets": count},
        remedies=(R.raise_tw_buckets(ctx, count), R.pooling()),
    )


def fin_wait2_orphans(snap: Snapshot, a: Analysis) -> Iterator[Finding]:
    """Many orphaned FIN_WAIT2 minisockets: peers that do not close (ref 2.2)."""
    n = a.totals.fin_wait2
    if n < FIN_WAIT2_INFO:
        return
    yield Finding(
        id="fin-wait2-orphans",
        severity=Severity.INFO,
        title=f"{n:,} orphaned FIN_WAIT2 connections wait for their peer's FIN",
        detail="This side closed; the peer acknowledged but has not closed its side. Each "
        "holds its four-tuple (and port) like a TIME_WAIT but can never be reused by "
        "tcp_tw_reuse (ref 3), and sockstat 'tw' counts them with TIME_WAIT (ref 9.2).",
        evidence={"fin_wait2_minisockets": n, "fin_wait2_full": a.totals.fin_wait2_full},
        remedies=(R.fix_peer_close(),),
    )


def server_side_time_wait(snap: Snapshot, a: Analysis) -> Iterator[Finding]:
    """Server-side TIME_WAIT: usually harmless (ref 12.1)."""
    n = a.totals.time_wait_server
    if n < SERVER_TW_INFO:
        return
    top = sorted(a.server_time_wait_by_port.items(), key=lambda kv: -kv[1])[:MAX_LISTED]
    yield Finding(
        id="server-side-time-wait",
        severity=Severity.INFO,
        title=f"{n:,} TIME_WAITs are server side (on listening ports "
        f"{', '.join(str(p) for p, _ in top)}): usually harmless",
        detail="The server closed first. Each costs ~256 B and blocks only its own four-tuple; "
        "no ephemeral port is used and tcp_tw_reuse does not apply to them (ref 12.1). A "
        "client reconnecting from the same port is handled by the SYN rules (ref 1.3).",
        evidence={
            "time_wait_server": n,
            "by_port": {str(p): c for p, c in top},
            "memory_bytes": n * 256,
        },
        remedies=(R.pooling(), R.so_reuseaddr()),
    )


def _bind_remedies(ctx: R.Context) -> tuple[R.Remedy, ...]:
    """For ports bind() holds: share them per four-tuple instead (ref 7.4, 12.5)."""
    out = (
        R.bind_address_no_port(ctx),
        R.let_connect_choose(ctx),
        R.local_port_range(ctx),
        R.autobind_reuse(ctx),
        R.pooling(),
    )
    return tuple(r for r in out if r is not None)


def _held_by(a: Analysis) -> str:
    p = a.ports
    parts = [
        (p.inferred_ports, "by sockets that bound before connect()"),
        (len(p.bound_ports), "by bind()-only sockets"),
        (len(p.orphan_server_ports), "left by a listener that exited"),
        (len(p.listener_ports), "by listeners"),
    ]
    return ", ".join(f"{n:,} {why}" for n, why in parts if n)


def bind_pool_exhaustion(snap: Snapshot, a: Analysis) -> Iterator[Finding]:
    """A bind(addr, 0) pool above 70/90 % (ref 7.4, 8; inet_csk_find_open_port()).

    Critical when bind() users hold ports at that address (bind-before-connect, bind(0)
    servers); a pool used up by connect()'s own sockets alone is a latent problem: a warning."""
    ctx = context(snap)
    pools = [p for p in a.bind_pools if p.usage >= WARNING_USAGE]
    if not pools:
        return
    crit = [p for p in pools if p.usage >= CRITICAL_USAGE and p.exclusive > 0]
    worst = (crit or pools)[0]
    sev = Severity.CRITICAL if crit else Severity.WARNING
    latent = "" if worst.exclusive else " (held by connect()'s own sockets: latent)"
    yield Finding(
        id="bind-pool-exhaustion",
        severity=sev,
        title=f"{worst.label} has {worst.headroom:,} of {worst.size:,} ports left{latent}",
        detail=f"bind(addr, 0), and so bind-before-connect, fails with EADDRINUSE ('Address "
        "already in use') once every port of the range is held at that address or the "
        "wildcard, in any state, TIME_WAIT included (inet_csk_find_open_port(), ref 7.4). "
        f"Of the {worst.held:,} held, {worst.exclusive:,} were taken with bind(); each keeps "
        "its port from connect() for every destination until it and its TIME_WAIT are gone. "
        f"connect() to a new destination has {a.new_destination.headroom:,} ports.",
        evidence={
            "pools": [p.as_dict() for p in pools[:MAX_LISTED]],
            "count": len(pools),
            "connect_new_headroom": a.new_destination.headroom,
        },
        remedies=_bind_remedies(ctx),
    )


def bind_held_ports(snap: Snapshot, a: Analysis) -> Iterator[Finding]:
    """Ports connect() cannot share, held by bind() users inside the range (ref 7.2 step 6).

    Critical when they leave connect() under 10 % of the range for any destination, warning
    from 10 % of the range taken, info below."""
    ctx = context(snap)
    p = a.ports
    held = p.inferred_ports + len(p.bound_ports) + len(p.orphan_server_ports)
    if not held:
        return
    share = held / max(p.budget, 1)
    new = a.new_destination
    if new.usage >= CRITICAL_USAGE:
        sev = Severity.CRITICAL
    elif share >= BIND_HELD_WARNING or new.usage >= WARNING_USAGE:
        sev = Severity.WARNING
    else:
        sev = Severity.INFO
    yield Finding(
        id="bind-held-ports",
        severity=sev,
        title=f"{held:,} port(s) of the range are held by bind(), which connect() cannot share "
        f"({share:.1%}); connect() to any destination has {new.headroom:,} left",
        detail=f"Held {_held_by(a)}. A port whose bind bucket bind() or listen() created is "
        "skipped by connect() for every destination, source address and family until its "
        "last socket, TIME_WAIT included, is gone (__inet_hash_connect(), ref 7.2 step 6). "
        "bind(ip, 0) before connect() is the usual cause: it reserves a port per socket "
        "instead of per four-tuple (ref 7.4; envoy#44747). Which sockets bound first is "
        "inferred from the dump (README 'Pools').",
        evidence={
            "held": held,
            "bound_before_connect": p.inferred_ports,
            "bound_ports": len(p.bound_ports),
            "orphan_server_ports": list(p.orphan_server_ports),
            "listener_ports": len(p.listener_ports),
            "budget": p.budget,
            "connect_new_headroom": new.headroom,
            "rules": {
                "parity": p.parity_destinations,
                "no_sharing": p.sharing_destinations,
                "same_address": p.address_destinations,
            },
        },
        remedies=_bind_remedies(ctx),
    )


def port_range_parity(snap: Snapshot, a: Analysis) -> Iterator[Finding]:
    """Range ends of equal parity (ref 7.1: the kernel logs 'prefer different parity')."""
    ctx = context(snap)
    lo, hi = snap.config.ip_local_port_range
    if lo == hi or (lo % 2) != (hi % 2):
        return
    yield Finding(
        id="port-range-parity",
        severity=Severity.INFO,
        title=f"ip_local_port_range {lo} {hi}: both ends have the same parity",
        detail="connect() prefers one parity and bind(0) the other (ref 7.2 step 5); the "
        "kernel asks for ends of different parity so both halves are equal.",
        evidence={"port_range": [lo, hi]},
        remedies=(R.balanced_range(ctx),),
    )


# -- traced failures (doctor --trace S, issue 13) ---------------------------------------------

PORT_ERRNOS: Final = ("EADDRNOTAVAIL", "EADDRINUSE")  # connect() out of ports / four-tuples


def _traced(snap: Snapshot) -> T.Traced | None:
    tr = T.traced(snap)
    return tr if tr is not None and tr.window_ns else None


def connect_failures(snap: Snapshot, a: Analysis) -> Iterator[Finding]:
    """connect() failed during the trace (timewait.doctor.trace). Critical for EADDRNOTAVAIL
    (a destination's ports are gone, ref 7.3), warning for EADDRINUSE (a four-tuple a
    bind()-first socket holds, ref 7.4), info for the rest (the peer or the path)."""
    tr = _traced(snap)
    if tr is None:
        return
    total = tr.total(*T.CONNECT_KINDS)
    if not total:
        return
    by = tr.by_errno(*T.CONNECT_KINDS)
    if by.get("EADDRNOTAVAIL"):
        sev = Severity.CRITICAL
    elif by.get("EADDRINUSE"):
        sev = Severity.WARNING
    else:
        sev = Severity.INFO
    top = tr.groups(*T.CONNECT_KINDS, keys=T.FAILURE_KEYS, top=MAX_LISTED)
    worst = top[0]
    errnos = ", ".join(f"{name} {n:,}" for name, n in by.items())
    remedies = _port_remedies(a, context(snap)) if sev > Severity.INFO else ()
    yield Finding(
        id="connect-failures",
        severity=sev,
        title=f"{total:,} connect() failure(s) in the last {tr.window_s:.0f} s ({errnos}); "
        f"most: {worst.process} -> {worst.destination} {worst.errno_name} x{worst.count:,}",
        detail="Counted in the kernel on the connect() tracepoints: every call that failed, by "
        "errno, process and destination. EADDRNOTAVAIL ('Cannot assign requested address') "
        "means no local port gives a unique four-tuple toward the destination: its ports are "
        "held, TIME_WAIT included (ref 7.3); the kernel has no counter for it. EADDRINUSE "
        "from connect() is a four-tuple taken by a socket that bound first; ECONNREFUSED and "
        "ETIMEDOUT come from the peer or the path, not from the ports.",
        evidence={
            "window_s": round(tr.window_s, 3),
            "total": total,
            "by_errno": by,
            "top": [g.as_dict() for g in top],
        },
        remedies=remedies,
    )


def bind_failures(snap: Snapshot, a: Analysis) -> Iterator[Finding]:
    """bind() failed during the trace. Critical for EADDRINUSE on bind(addr, 0) (the bind pool
    of that address is used up, ref 7.4), warning for EADDRINUSE on a fixed port (a restart
    colliding with TIME_WAIT or another owner), info for the rest."""
    tr = _traced(snap)
    if tr is None:
        return
    rows = tr.of((T.Kind.BIND_ERROR,))
    total = int(rows["count"].sum())
    if not total:
        return
    in_use = rows[rows["errno"] == T.EADDRINUSE]
    ephemeral = int(in_use["count"][in_use["lport"] == 0].sum())
    fixed = int(in_use["count"][in_use["lport"] != 0].sum())
    ctx = context(snap)
    if ephemeral:
        sev, remedies = Severity.CRITICAL, _bind_remedies(ctx)
    elif fixed:
        sev, remedies = Severity.WARNING, (R.so_reuseaddr(),)
    else:
        sev, remedies = Severity.INFO, ()
    top = tr.groups(T.Kind.BIND_ERROR, keys=T.BIND_KEYS, top=MAX_LISTED)
    worst = top[0]
    yield Finding(
        id="bind-failures",
        severity=sev,
        title=f"{total:,} bind() failure(s) in the last {tr.window_s:.0f} s "
        f"({ephemeral:,} EADDRINUSE for port 0, {fixed:,} for a fixed port); most: "
        f"{worst.process} {worst.destination} {worst.errno_name} x{worst.count:,}",
        detail="Counted in the kernel on the bind() tracepoints. EADDRINUSE for port 0 means "
        "bind(addr, 0) found no port free at that address in any state, TIME_WAIT included "
        "(inet_csk_find_open_port(), ref 7.4): bind-before-connect clients stop there. For a "
        "fixed port it is another owner, often a TIME_WAIT of the previous run of a server "
        "that does not set SO_REUSEADDR.",
        evidence={
            "window_s": round(tr.window_s, 3),
            "total": total,
            "eaddrinuse_port0": ephemeral,
            "eaddrinuse_fixed": fixed,
            "by_errno": tr.by_errno(T.Kind.BIND_ERROR),
            "top": [g.as_dict() for g in top],
        },
        remedies=remedies,
    )


def collector_notes(snap: Snapshot, a: Analysis) -> Iterator[Finding]:
    """What the collector could not see (e.g. no root): shown so counts are read right."""
    if not snap.notes:
        return
    yield Finding(
        id="collector-notes",
        severity=Severity.INFO,
        title="The capture is incomplete: " + "; ".join(snap.notes),
        detail="Numbers below cover only what the collector could read.",
        evidence={"notes": list(snap.notes), "source": snap.source},
    )


def ports_healthy(snap: Snapshot, a: Analysis) -> Iterator[Finding]:
    """OK: every pool has headroom (says what was checked)."""
    pools = [p for p in a.pools(top=1) if p.kind != "nat"]  # NAT pools: nat_rules.py
    if any(p.usage >= WARNING_USAGE for p in pools) or _soon(a):
        return  # never OK beside a warning about the same ports
    busiest_bind = a.bind_pools[0] if a.bind_pools else None
    bind_text = (
        f"; {busiest_bind.label} at {busiest_bind.usage:.0%}" if busiest_bind is not None else ""
    )
    yield Finding(
        id="ports-healthy",
        severity=Severity.OK,
        title=f"Port headroom OK: {a.n_destinations:,} destination(s), busiest at "
        f"{a.max_usage:.0%} of {a.ports.capacity:,} usable ports{bind_text}",
        detail=f"{a.totals.time_wait:,} TIME_WAIT ({a.totals.time_wait_client:,} client side), "
        f"{a.churn_per_s:,.1f} new TIME_WAIT/s; connect() to a new destination has "
        f"{a.new_destination.headroom:,} ports.",
        evidence={
            "destinations": a.n_destinations,
            "max_usage": round(a.max_usage, 4),
            "capacity": a.ports.capacity,
            "pools": [p.as_dict() for p in pools[:MAX_LISTED]],
        },
    )


RULES: Final[tuple[Rule, ...]] = (
    connect_failures,
    bind_failures,
    port_exhaustion,
    port_pressure,
    bind_pool_exhaustion,
    bind_held_ports,
    tw_reuse_without_timestamps,
    range_swallows_listeners,
    tw_overflow,
    tw_buckets_below_count,
    fin_wait2_orphans,
    server_side_time_wait,
    port_range_parity,
    collector_notes,
    ports_healthy,
)

RULE_IDS: Final = (
    "connect-failures",
    "bind-failures",
    "port-exhaustion",
    "port-pressure",
    "bind-pool-exhaustion",
    "bind-held-ports",
    "tw-reuse-without-timestamps",
    "range-swallows-listeners",
    "tw-overflow",
    "tw-buckets-below-count",
    "fin-wait2-orphans",
    "server-side-time-wait",
    "port-range-parity",
    "collector-notes",
    "ports-healthy",
)  # the NAT rules' ids: nat_rules.NAT_RULE_IDS


def _nat_rules() -> tuple[Rule, ...]:
    """The NAT rules (doctor/nat_rules.py imports this module, so they are looked up late)."""
    from timewait.doctor.nat_rules import NAT_RULES

    return NAT_RULES


def run_rules(snap: Snapshot, a: Analysis) -> list[Finding]:
    """Every rule's findings, most severe first (stable within a severity: RULES order)."""
    found = [f for rule in (*RULES, *_nat_rules()) for f in rule(snap, a)]
    return sorted(found, key=lambda f: -f.severity)
