"""The `timewait doctor --json` document (schema "timewait-doctor/3").

Stable keys; numbers are plain JSON numbers, absent values are null. Version bumps on any
breaking change. Version 2 (issue 10) adds the pools: `pools`, the exclusive ports in `ports`,
and per destination `headroom`, `reusable`, `bound` and `bind_like`; `capacity` and `usage`
now leave out the ports bind() holds (inferred, see README "Pools") and count TIME_WAITs that
tcp_tw_reuse takes over as free; remedies gain `code_c`. Version 3 adds `nat` (issue 15:
the connection tracker and the NAT pools; `pools.worst` may now be a NAT pool, kind "nat")
and `trace` (issue 13: what `doctor --trace S` counted in the kernel, null without it),
the churn and trend method "traced", and the findings connect-failures and bind-failures.

`doctor --all-netns --json` is another document, "timewait-doctor-all/1" (doctor/fleet.py): it
wraps one of these per network namespace, under `namespaces[].doctor`, with the namespace's
labels (pod, namespace, container, netns, ...) and rank beside it.

    schema            "timewait-doctor/3"
    status            "healthy" | "warning" | "critical"   (exit status 0 | 1 | 2)
    exit_status       0 | 1 | 2
    snapshot          {namespace, source, kernel, hostname, time_ns, rows, notes[]}
    interval_s        seconds between the two snapshots, or null for one snapshot
    rate_window_s     seconds between the live capture's two counter reads (its churn is the
                      TcpExt TW delta over them), or null
    config            every modelled sysctl as the kernel prints it, whitespace as one space
                      (KernelConfig.to_text(): "32768 60999", no tab)
    totals            {sockets, time_wait, time_wait_server, time_wait_client,
                       fin_wait2 (minisockets: orphans), fin_wait2_full, established, listen,
                       bound_inactive, minisockets, sockstat_tw (kernel count or null),
                       by_state {STATE-NAME: count}}
    ports             {range [lo, hi], range_size, reserved, budget (range - reserved: what
                       bind(0) draws from), listener_ports [..] (in the range), bound_ports
                       (count of bind()-only ports in the range), bound_before_connect (count of
                       ports inferred taken by bind() then connected), orphan_server_ports [..]
                       (left by a listener that exited), exclusive (all of these), capacity
                       (usable ports: what connect() draws from, for every destination),
                       inference {parity, no_sharing, same_address}: destinations each rule
                       judged bind()'s}
    pools             {worst {kind, label, headroom, usage}: the fullest pool;
                       connect_new {size, held, headroom, usage}: connect() to a destination
                       no socket uses yet; bind [{address ("0.0.0.0"|"::"|"" = any other
                       address of the family), family, label, size, held, exclusive, headroom,
                       usage}]: bind(addr, 0) per local address, fullest first}
    churn_per_s       host: TIME_WAITs created per second
    churn_method      "littles_law" (TIME_WAIT / 60 s: an average over the last minute) |
                      "tw_counter" (TcpExt TW delta / interval or rate window: the rate now) |
                      "tw_timers" (TIME_WAITs younger than the interval / interval) |
                      "traced" (active closes counted in the kernel over the trace's window:
                      per destination exact; doctor --trace S)
    trend_method      "tw_timers" (one snapshot) | "tw_counter" (rate window: churn - expiring)
                      | "interval" (in_use delta / interval) | "traced" (traced churn -
                      expiring)
    timer_histogram   {bucket_s: 10, counts: [6 ints]}: TIME_WAITs by time left, [0,10) s first
    memory_bytes      {minisockets, full_sockets, file_objects, total}
    destinations      top N client-side destinations by usage (--top), each
                      {src, dst, dport, family ("ipv4"|"ipv6"), time_wait, established,
                       fin_wait2, syn_sent, other, in_use, capacity, usage (0..1),
                       headroom (connect()s the kernel allows toward it now), reusable
                       (TIME_WAITs tcp_tw_reuse takes over), bound (its ports bind() holds),
                       bind_like (its sockets bound before connecting), churn_per_s,
                       trend_per_s (ports/s or null), eta_s (seconds or null)}
    destinations_total  how many destinations exist in all
    nat               null when conntrack was not looked at (a saved file from before version
                      3, a model host); else {present (false: no connection tracker here,
                      nothing else is set), table_read, entries, count (nf_conntrack_count),
                      max, buckets, fill (count/max or null), memory_bytes, by_state
                      {CT-STATE: n} (TCP entries), snat_entries, rules (masquerade/snat
                      statements read), rules_read, random_fully, time_wait_s
                      (nf_conntrack_tcp_timeout_time_wait), eviction (the kernel, >= 6.5,
                      lets a new SYN evict a closing entry on collision), counters
                      {insert_failed, drop, early_drop, ...} (cumulative), counters_delta
                      (since the previous snapshot), pools_total, pools [{label, translated,
                      dst, dport, proto, port_range [lo, hi], size, held, headroom, usage,
                      reclaimable (TIME_WAIT/CLOSE entries a SYN may evict), hard_usage
                      ((held - reclaimable)/size), entries, by_state {time_wait, established,
                      syn_sent, closing, other}, churn_per_s, trend_per_s, eta_s}] fullest
                      first (--top)}
    trace             null, or what the trace counted in this namespace over `window_s`
                      (timewait.doctor.trace.summary_json): {window_s, connect_failures {total,
                      per_s, by_errno {EADDRNOTAVAIL: n}, async, top [{kind, errno, count, netns,
                      pid, comm, cgroup, container, side, src, sport, dst, dport, destination}]},
                      bind_failures {.. same, dst null}, active_closes {total, per_s, client,
                      server, top}, passive_closes {total, per_s, top}, opened {total, per_s},
                      accepted {total, per_s}}
    findings          most severe first, each {id, severity ("ok"|"info"|"warning"|"critical"),
                      title, detail, evidence {..}, remedies [{id, title, changes, risk,
                      commands [..], code (Python), code_c (C, or ""), requires}]}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from timewait.doctor import trace as T
from timewait.doctor.analysis import HIST_BUCKET_MS, Destination
from timewait.doctor.nat import NatAnalysis
from timewait.doctor.remedies import Remedy
from timewait.doctor.rules import Finding

if TYPE_CHECKING:
    from timewait.doctor import Diagnosis

SCHEMA: Final = "timewait-doctor/3"


def _round(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def destination_json(d: Destination) -> dict[str, Any]:
    return {
        "src": d.src,
        "dst": d.dst,
        "dport": d.dport,
        "family": "ipv6" if ":" in d.dst else "ipv4",
        "time_wait": d.time_wait,
        "established": d.established,
        "fin_wait2": d.fin_wait2,
        "syn_sent": d.syn_sent,
        "other": d.other,
        "in_use": d.in_use,
        "capacity": d.capacity,
        "usage": round(d.usage, 6),
        "headroom": d.headroom,
        "reusable": d.reusable,
        "bound": d.bound,
        "bind_like": d.bind_like,
        "churn_per_s": _round(d.churn_per_s),
        "trend_per_s": _round(d.trend_per_s),
        "eta_s": _round(d.eta_s, 1),
    }


def remedy_json(r: Remedy) -> dict[str, Any]:
    return {
        "id": r.id,
        "title": r.title,
        "changes": r.changes,
        "risk": r.risk,
        "commands": list(r.commands),
        "code": r.code,
        "code_c": r.code_c,
        "requires": r.requires,
    }


def finding_json(f: Finding) -> dict[str, Any]:
    return {
        "id": f.id,
        "severity": f.severity.label,
        "title": f.title,
        "detail": f.detail,
        "evidence": dict(f.evidence),
        "remedies": [remedy_json(r) for r in f.remedies],
    }


def _worst(diagnosis: Diagnosis) -> dict[str, Any]:
    w = diagnosis.analysis.pools(top=1)[0]
    return {"kind": w.kind, "label": w.label, "headroom": w.headroom, "usage": round(w.usage, 6)}


def to_json(diagnosis: Diagnosis, *, top: int | None = 10) -> dict[str, Any]:
    """The --json document; `top` limits destinations (None = all)."""
    snap, a = diagnosis.snapshot, diagnosis.analysis
    t, p, m = a.totals, a.ports, a.memory
    return {
        "schema": SCHEMA,
        "status": diagnosis.status,
        "exit_status": int(diagnosis.exit_status),
        "snapshot": {
            "namespace": snap.namespace,
            "source": snap.source,
            "kernel": snap.kernel,
            "hostname": snap.hostname,
            "time_ns": snap.time_ns,
            "rows": len(snap),
            "notes": list(snap.notes),
        },
        "interval_s": a.interval_s,
        "rate_window_s": None if a.rate_window_s is None else round(a.rate_window_s, 3),
        "config": snap.config.to_text(),
        "totals": {
            "sockets": t.sockets,
            "time_wait": t.time_wait,
            "time_wait_server": t.time_wait_server,
            "time_wait_client": t.time_wait_client,
            "fin_wait2": t.fin_wait2,
            "fin_wait2_full": t.fin_wait2_full,
            "established": t.established,
            "listen": t.listen,
            "bound_inactive": t.bound_inactive,
            "minisockets": t.minisockets,
            "sockstat_tw": t.sockstat_tw,
            "by_state": dict(t.by_state),
        },
        "ports": {
            "range": list(p.port_range),
            "range_size": p.range_size,
            "reserved": p.reserved,
            "budget": p.budget,
            "listener_ports": list(p.listener_ports),
            "bound_ports": len(p.bound_ports),
            "bound_before_connect": p.inferred_ports,
            "orphan_server_ports": list(p.orphan_server_ports),
            "exclusive": p.exclusive,
            "capacity": p.capacity,
            "inference": {
                "parity": p.parity_destinations,
                "no_sharing": p.sharing_destinations,
                "same_address": p.address_destinations,
            },
        },
        "pools": {
            "worst": _worst(diagnosis),
            "connect_new": a.new_destination.as_dict(),
            "bind": [b.as_dict() for b in a.bind_pools],
        },
        "churn_per_s": round(a.churn_per_s, 3),
        "churn_method": a.churn_method,
        "trend_method": a.trend_method,
        "timer_histogram": {"bucket_s": HIST_BUCKET_MS // 1000, "counts": list(a.timer_histogram)},
        "memory_bytes": {
            "minisockets": m.minisockets,
            "full_sockets": m.full_sockets,
            "file_objects": m.file_objects,
            "total": m.total,
        },
        "destinations": [destination_json(d) for d in a.destinations(top)],
        "destinations_total": a.n_destinations,
        "nat": nat_json(a.nat, top),
        "trace": trace_json(diagnosis, top=10 if top is None else max(top, 1)),
        "findings": [finding_json(f) for f in diagnosis.findings],
    }


def nat_json(nat: NatAnalysis | None, top: int | None = 10) -> dict[str, Any] | None:
    """The `nat` block (issue 15): see the schema above."""
    if nat is None:
        return None
    if not nat.present:
        return {"present": False}
    return {
        "present": True,
        "table_read": nat.table_read,
        "entries": nat.entries,
        "count": nat.count,
        "max": nat.max,
        "buckets": nat.buckets,
        "fill": None if nat.fill is None else round(nat.fill, 6),
        "memory_bytes": nat.memory_bytes,
        "by_state": dict(nat.by_state),
        "snat_entries": nat.snat_entries,
        "rules": nat.rules,
        "rules_read": nat.rules_read,
        "random_fully": nat.random_fully,
        "time_wait_s": nat.time_wait_s,
        "eviction": nat.eviction,
        "counters": dict(nat.counters),
        "counters_delta": dict(nat.counters_delta),
        "pools_total": len(nat.pools),
        "pools": [p.as_dict() for p in nat.pools[:top]],
    }


def trace_json(diagnosis: Diagnosis, *, top: int = 10) -> dict[str, Any] | None:
    """The `trace` block: null when the snapshot was not traced."""
    tr = T.traced(diagnosis.snapshot)
    return None if tr is None else T.summary_json(tr, top=top)
