"""The doctor's NAT rules and remedies: translated-port pools and the conntrack table.

Rules (ids are stable): nat-port-exhaustion (a pool at >= 90 %: critical, or a warning when
only evictable entries fill it), nat-port-pressure (70-90 %: warning),
conntrack-table-full (critical at 90 %, warning at 70 % of nf_conntrack_max), conntrack-drops
(insert_failed/drop rising, or seen in a NAT-full namespace), nat-healthy (ok; or the clean
"nothing to see" when the namespace has no connection tracker or no source NAT).

Severity of a full pool follows the kernel (doctor/nat.py): ports held by entries nothing may
evict make SYNs drop, so they are critical at 90 %; a pool full only of TIME_WAIT/CLOSE entries
on Linux >= 6.5 leans on eviction (a new SYN evicts one when its sequence number is ahead), which
mostly works and sometimes does not: a warning, critical once drops are seen rising.

Remedies say what they change and what they cost, and never remove TCP's protection silently:
lowering nf_conntrack_tcp_timeout_time_wait is offered only down to 60 s (the endpoints'
TIME_WAIT) with its risk spelled out; nothing suggests tcp_tw_recycle, tcp_fin_timeout or
lowering tcp_max_tw_buckets (tests/doctor/test_never_recommend.py scans these too).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from timewait import conntrack as C
from timewait.doctor import remedies as R
from timewait.doctor.analysis import Analysis
from timewait.doctor.nat import NatAnalysis, NatPool
from timewait.doctor.rules import (
    CRITICAL_USAGE,
    MAX_LISTED,
    WARNING_USAGE,
    Finding,
    Severity,
    context,
)
from timewait.snapshot import Snapshot

SAFE_CT_TIME_WAIT_S: Final = 60  # TCP_TIMEWAIT_LEN: never advise below the endpoints' wait
TABLE_WARNING: Final = 0.70
TABLE_CRITICAL: Final = 0.90


def _nft_prefix(ctx: R.Context) -> str:
    return ctx.prefix


def more_snat_addresses(ctx: R.Context, pool: NatPool) -> R.Remedy:
    """find_best_ips_proto(): with an address range, each (client, destination) pair is
    hashed to one address, so extra addresses multiply the pool across clients only."""
    return R.Remedy(
        id="nat-more-addresses",
        title="Translate to more source addresses (snat to a range of addresses)",
        changes="Each translated address has its own ports toward every destination. With "
        "`snat to A1-A4` the kernel hashes each (client address, destination address) pair "
        "to one of them (find_best_ips_proto(), K nf_nat_core.c), so the capacity grows with "
        "the number of addresses when many clients share the NAT; one client toward one "
        "destination still uses one address.",
        risk="The addresses must be routed back to this host. Servers that allow-list "
        "source addresses must know them all.",
        commands=(
            f"{_nft_prefix(ctx)}nft add rule ip nat POSTROUTING oifname OUT "
            "snat to 203.0.113.10-203.0.113.13",
            "# replace `masquerade` toward the destination; Kubernetes: egress gateway / "
            "more node addresses; cloud NAT gateways: attach more addresses",
        ),
    )


def spread_destinations() -> R.Remedy:
    return R.Remedy(
        id="nat-spread-destinations",
        title="Spread the connections over more destination addresses or ports",
        changes="A pool is per (translated address, destination address, destination port): "
        "two backend addresses or ports double the translated ports available.",
        risk="Needs the client or its load balancer to use them.",
        commands=("# e.g. resolve the service to several backend addresses and use them all",),
    )


def reuse_in_pods() -> R.Remedy:
    r = R.pooling()
    return R.Remedy(
        id="nat-connection-reuse",
        title="Reuse connections in the clients behind the NAT (keep-alive, pools)",
        changes="Every new connection costs a conntrack entry and a translated port for its "
        "lifetime plus nf_conntrack_tcp_timeout_time_wait; a keep-alive connection carries "
        "many requests on one entry. This is the fix that removes the churn, on every kernel.",
        risk=r.risk,
        code=r.code,
    )


def wide_port_range(
    ctx: R.Context, pool: NatPool, to: tuple[int, int] = C.NAT_DEFAULT_PORTS, *,
    always: bool = False,
) -> R.Remedy | None:  # fmt: skip
    """The range `to` instead of the pool's; None when the pool's range is already wide
    (unless `always`: plan tries a range the user names)."""
    lo, hi = pool.port_range
    if not always and ((lo, hi) == C.NAT_DEFAULT_PORTS or hi - lo + 1 >= 60000):
        return None
    then = (
        "# then: ... masquerade to :1024-65535   (or drop `to :PORTS`)"
        if to == C.NAT_DEFAULT_PORTS
        else f"# then: ... masquerade to :{to[0]}-{to[1]}"
    )
    return R.Remedy(
        id="nat-wide-port-range",
        title=f"Widen the NAT port range (now {lo}-{hi}: {hi - lo + 1:,} ports)",
        changes="`masquerade` without `to :PORTS` maps source ports into 1024-65535 (64,512 "
        "ports, nf_nat_l4proto_unique_tuple()); an explicit narrow range caps every pool at "
        "its size.",
        risk="Ports used by services on this host itself stay free as long as their own "
        "conntrack entries hold them; nothing else.",
        commands=(
            f"{_nft_prefix(ctx)}nft list ruleset | grep -n 'masquerade\\|snat'",
            then,
        ),
    )


def random_fully(ctx: R.Context, nat: NatAnalysis) -> R.Remedy:
    have = " (this ruleset already uses it)" if nat.random_fully else ""
    return R.Remedy(
        id="nat-random-fully",
        title=f"`masquerade random-fully`: what it fixes and what it does not{have}",
        changes="It skips the 'keep the client's source port' step, so two clients that "
        "connect at the same instant from the same port no longer race for one translated "
        "port (the Kubernetes insert_failed race, resolved at confirmation by a drop). On "
        "Linux >= 5.x both `random` and `random-fully` start the port search at a random "
        "offset (get_random_u16()).",
        risk="It adds no port: a pool full of entries stays full, and the capacity toward a "
        "destination is unchanged. Source ports no longer match the clients' (some "
        "protocols or logs rely on that).",
        commands=(f"{_nft_prefix(ctx)}# ... oifname OUT masquerade random-fully",),
    )


def ct_time_wait(
    ctx: R.Context, nat: NatAnalysis, target: int = SAFE_CT_TIME_WAIT_S
) -> R.Remedy | None:
    """nf_conntrack_tcp_timeout_time_wait shortened to `target` (never below
    SAFE_CT_TIME_WAIT_S); None when it is not longer than that now."""
    cur = nat.time_wait_s
    target = max(target, SAFE_CT_TIME_WAIT_S)
    if cur <= target:
        return None
    floor = "no lower" if target == SAFE_CT_TIME_WAIT_S else f"never below {SAFE_CT_TIME_WAIT_S} s"
    return R.Remedy(
        id="nat-ct-time-wait",
        title=f"Shorten conntrack's TIME_WAIT from {cur} s to {target} s, {floor}",
        changes=f"A closed connection's translated port comes back after {target} s "
        f"instead of {cur} s: the capacity toward one destination grows by "
        f"{cur / target:.1f}x (ports / (timeout + lifetime)).",
        risk="This shortens a protection: the entry keeps the mapping for late segments and "
        "retransmitted FINs, and a new connection given the same translated port can meet the "
        "server's TIME_WAIT of the old one. 60 s matches the endpoints' own TIME_WAIT "
        "(TCP_TIMEWAIT_LEN); below that, late packets of the old connection can reach a new "
        "one that reused the four-tuple. It applies to every tracked connection of the "
        "namespace.",
        commands=(
            f"{ctx.prefix}sysctl -w net.netfilter.nf_conntrack_tcp_timeout_time_wait={target}",
        ),
    )


def table_size(ctx: R.Context, nat: NatAnalysis) -> R.Remedy:
    cur = nat.max or 262144
    target = 2 * cur
    mem = target * C.CT_ENTRY_BYTES / 2**20
    return R.Remedy(
        id="conntrack-max",
        title=f"Raise nf_conntrack_max to {target:,}",
        changes="More entries fit before 'nf_conntrack: table full, dropping packet'; at 95 % "
        "the garbage collector starts evicting closing entries early.",
        risk=f"Memory: at least {C.CT_ENTRY_BYTES} B per entry (the nf_conntrack slab object, "
        f"measured on 6.18) plus extensions, ~{mem:,.0f} MiB at the new limit; raise "
        "nf_conntrack_buckets with it (8 B per bucket) or lookups slow down. It is a host-wide "
        "setting, writable only in the host's namespace. Fix the churn too.",
        commands=(
            f"sysctl -w net.netfilter.nf_conntrack_max={target}",
            f"echo {target // 4} > /sys/module/nf_conntrack/parameters/hashsize  # buckets",
        ),
    )


def _remedies(snap: Snapshot, a: Analysis, pool: NatPool) -> tuple[R.Remedy, ...]:
    ctx = context(snap)
    nat = a.nat
    assert nat is not None
    out = [
        reuse_in_pods(),
        more_snat_addresses(ctx, pool),
        spread_destinations(),
        wide_port_range(ctx, pool),
        ct_time_wait(ctx, nat),
        random_fully(ctx, nat),
    ]
    return tuple(r for r in out if r is not None)


def _evidence(p: NatPool) -> dict[str, object]:
    return p.as_dict()


def _drops_rising(nat: NatAnalysis) -> bool:
    d = nat.counters_delta
    return d.get("insert_failed", 0) > 0 or d.get("drop", 0) > 0


def _eviction_text(nat: NatAnalysis) -> str:
    if nat.eviction:
        return (
            "On this kernel (>= 6.5) a new SYN may evict a TIME_WAIT/CLOSE entry in the last "
            "32 probes of each search round when its sequence number is ahead of the old "
            "connection's (nf_nat_used_tuple_harder()); when no probe may evict, the SYN is "
            "dropped (insert_failed, drop) and the client retransmits after 1 s, 3 s, ... "
        )
    return (
        "This kernel (< 6.5) never evicts: every held port blocks, and a SYN that finds no "
        "free port is dropped (insert_failed, drop); the client retransmits after 1 s, 3 s, ... "
    )


def nat_port_exhaustion(snap: Snapshot, a: Analysis) -> Iterator[Finding]:
    """A translated pool at >= 90 % of its ports (critical when SYNs must drop)."""
    nat = a.nat
    if nat is None or not nat.pools:
        return
    full = [p for p in nat.pools if p.usage >= CRITICAL_USAGE]
    if not full:
        return
    hard = [p for p in full if not nat.eviction or p.hard_usage >= CRITICAL_USAGE]
    rising = _drops_rising(nat)
    critical = bool(hard) or rising
    worst = (hard or full)[0]
    held_by = (
        f"{worst.by_state.get('time_wait', 0):,} TIME_WAIT, "
        f"{worst.by_state.get('established', 0):,} ESTABLISHED, "
        f"{worst.by_state.get('syn_sent', 0) + worst.by_state.get('closing', 0):,} opening or "
        "closing"
    )
    yield Finding(
        id="nat-port-exhaustion",
        severity=Severity.CRITICAL if critical else Severity.WARNING,
        title=f"{len(full)} NAT pool(s) at or above {CRITICAL_USAGE:.0%}; worst {worst.label} "
        f"holds {worst.held:,} of {worst.size:,} translated ports ({held_by})",
        detail="Each forwarded connection holds a translated port toward its destination until "
        "its conntrack entry is gone, "
        f"{nat.time_wait_s} s in conntrack's TIME_WAIT after it closed. "
        + _eviction_text(nat)
        + f"-- clients see connect() time out, not EADDRNOTAVAIL. "
        f"{worst.reclaimable:,} of its entries may be evicted; "
        f"insert_failed {nat.counters.get('insert_failed', 0):,}, drop "
        f"{nat.counters.get('drop', 0):,} (cumulative" + (", rising now)." if rising else ")."),
        evidence={
            "pools": [_evidence(p) for p in (hard or full)[:MAX_LISTED]],
            "count": len(full),
            "eviction_kernel": nat.eviction,
            "counters": dict(nat.counters),
            "counters_delta": dict(nat.counters_delta),
        },
        remedies=_remedies(snap, a, worst),
    )


def nat_port_pressure(snap: Snapshot, a: Analysis) -> Iterator[Finding]:
    """A translated pool between 70 and 90 %."""
    nat = a.nat
    if nat is None:
        return
    warm = [p for p in nat.pools if WARNING_USAGE <= p.usage < CRITICAL_USAGE]
    if not warm:
        return
    worst = warm[0]
    yield Finding(
        id="nat-port-pressure",
        severity=Severity.WARNING,
        title=f"{len(warm)} NAT pool(s) above {WARNING_USAGE:.0%}; worst {worst.label} at "
        f"{worst.usage:.0%} ({worst.headroom:,} of {worst.size:,} ports free)",
        detail=f"Connection churn through the NAT fills the translated ports: each closed "
        f"connection keeps its port {nat.time_wait_s} s (conntrack TIME_WAIT). "
        + _eviction_text(nat).split(";")[0]
        + ".",
        evidence={"pools": [_evidence(p) for p in warm[:MAX_LISTED]], "count": len(warm)},
        remedies=_remedies(snap, a, worst),
    )


def conntrack_table_full(snap: Snapshot, a: Analysis) -> Iterator[Finding]:
    nat = a.nat
    if nat is None or nat.fill is None or nat.fill < TABLE_WARNING:
        return
    sev = Severity.CRITICAL if nat.fill >= TABLE_CRITICAL else Severity.WARNING
    yield Finding(
        id="conntrack-table-full",
        severity=sev,
        title=f"conntrack table {nat.fill:.0%} full ({nat.count:,} of {nat.max:,} entries)",
        detail="At nf_conntrack_max a new connection is dropped ('nf_conntrack: table full, "
        "dropping packet') unless an unassured entry can be evicted (early_drop); from 95 % "
        "the garbage collector evicts closing entries early. The table is shared by every "
        "namespace of the host.",
        evidence={
            "count": nat.count,
            "max": nat.max,
            "fill": round(nat.fill, 4),
            "memory_bytes": nat.memory_bytes,
            "early_drop": nat.counters.get("early_drop", 0),
        },
        remedies=(reuse_in_pods(), table_size(context(snap), nat)),
    )


def conntrack_drops(snap: Snapshot, a: Analysis) -> Iterator[Finding]:
    """insert_failed/drop rising between two snapshots (the NAT or the table refused)."""
    nat = a.nat
    if nat is None or not _drops_rising(nat) or any(p.usage >= CRITICAL_USAGE for p in
                                                    nat.pools):  # fmt: skip
        return  # a full pool already reports them
    d = nat.counters_delta
    yield Finding(
        id="conntrack-drops",
        severity=Severity.WARNING,
        title=f"conntrack dropped new connections: insert_failed +{d.get('insert_failed', 0):,}"
        f", drop +{d.get('drop', 0):,} since the previous snapshot",
        detail="A new entry could not be inserted: its reply tuple clashed (two clients given "
        "the same translated port at once, or no free port), or the table was full. Clients "
        "see SYN retransmissions (1 s, 3 s, ...) and timeouts.",
        evidence={"counters_delta": dict(d), "counters": dict(nat.counters)},
        remedies=(random_fully(context(snap), nat), reuse_in_pods()),
    )


def nat_healthy(snap: Snapshot, a: Analysis) -> Iterator[Finding]:
    """OK: the NAT pools have headroom, or there is nothing to see (no tracker, no NAT)."""
    nat = a.nat
    if nat is None:
        return
    if not nat.present:
        yield Finding(
            id="nat-healthy",
            severity=Severity.OK,
            title="No connection tracker in this namespace: no NAT pool to check",
            detail="Without nf_conntrack there is no NAT here and no conntrack TIME_WAIT.",
        )
        return
    if any(p.usage >= WARNING_USAGE for p in nat.pools) or (
        nat.fill is not None and nat.fill >= TABLE_WARNING
    ):
        return
    if not nat.pools:
        rules = f"{nat.rules} NAT rule(s)" if nat.rules_read else "NAT rules not readable"
        yield Finding(
            id="nat-healthy",
            severity=Severity.OK,
            title=f"No source-NATed connection in conntrack ({nat.entries:,} entries, {rules})",
            detail="Nothing is translated here now, so there is no NAT pool to run out.",
            evidence={"entries": nat.entries, "rules": nat.rules},
        )
        return
    worst = nat.pools[0]
    yield Finding(
        id="nat-healthy",
        severity=Severity.OK,
        title=f"NAT headroom OK: {len(nat.pools):,} pool(s), busiest {worst.label} at "
        f"{worst.usage:.0%} of {worst.size:,} ports",
        detail=f"{nat.snat_entries:,} source-NATed entries; conntrack table "
        + (f"{nat.fill:.0%} full." if nat.fill is not None else "fill unknown."),
        evidence={"pools": [_evidence(p) for p in nat.pools[:MAX_LISTED]]},
    )


NAT_RULES: Final = (
    nat_port_exhaustion,
    nat_port_pressure,
    conntrack_table_full,
    conntrack_drops,
    nat_healthy,
)
NAT_RULE_IDS: Final = (
    "nat-port-exhaustion",
    "nat-port-pressure",
    "conntrack-table-full",
    "conntrack-drops",
    "nat-healthy",
)
