"""TimewaitCollector: a prometheus_client custom collector over live Snapshots.

Theory of operation
-------------------
A collector is anything with `collect()` (client_python registry.py, `Collector` protocol).
Each collection takes a fresh Snapshot of every target namespace (`timewait.live.capture`, or
an injected `source` in tests), runs the doctor's pure analysis and rules on it, and builds
metric families from the numbers (STYLE.md rule 11). Nothing about the sockets is kept: the
snapshot and the analysis are dropped as soon as the families exist, so memory does not grow
with scrapes, only with the largest socket table seen at once.

Two departures from "fresh on every collect()", both deliberate:
- A short cache (`ttl_s`, default 1 s) behind a lock: concurrent scrapes (two Prometheus
  servers, a dashboard refresh, `curl`) wait for the collection in progress and share its
  families instead of each dumping 200,000 sockets (issue 6: "cached for a short time so
  concurrent scrapes share one collection"). After `ttl_s` the next scrape collects again.
  Collections run on one worker thread (see `_Worker` for why); a scrape waits for the one in
  flight at most `lock_timeout_s`, then answers with collection_error = 1 instead of hanging.
- `timewait_collection_errors_total` counts failures over the exporter's life, and the last
  error per namespace is kept so that a failure is logged once when it starts and once when it
  ends (a dead namespace would otherwise log a line on every scrape).

Bounded labels (landscape.md 2, 8, 9.5: node_exporter declined per-destination usage for its
cost and cardinality): per namespace, the per-destination families carry at most `top_k`
destinations (the analysis orders them by usage, then TIME_WAIT count) plus ONE series with
destination="other" aggregating the rest. So no per-destination family ever has more than
top_k + 1 series per namespace, whatever the socket table holds. Every other label takes values
from fixed sets (TCP state names, rule ids, sides, severities).

Failures: a failing namespace (gone, no permission, a corrupt dump, a bug) drops only its own
families; `timewait_collection_error{netns}` becomes 1, the errors counter rises and a WARNING
goes to the "timewait.exporter" logger. The scrape itself always succeeds.

Every series carries a `netns` label: the name given with --netns; for the exporter's own
namespace its name when it has one (`ip netns exec web timewait exporter` labels netns="web",
as `--netns web` from outside does), "host" for the machine's own, "[INODE]" for an unnamed one.

With `all_netns` (exporter --all-netns, issue 14) the collector exports every namespace of the
node instead, with the Kubernetes labels namespace, pod and container after netns, and a bound
on the namespaces exported one by one: exporter/fleet.py.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from timewait.doctor.analysis import Analysis, analyze
from timewait.doctor.rules import Finding, run_rules
from timewait.errors import TimewaitError
from timewait.exporter import DEFAULT_TOP_K, MAX_TOP_K
from timewait.snapshot import Snapshot

if TYPE_CHECKING:
    from timewait.exporter.trace import TraceFeed

LOG: Final = logging.getLogger("timewait.exporter")

HOST_LABEL: Final = "host"  # the netns label of the machine's own namespace (see own_label)
OTHER: Final = "other"  # the destination label aggregating everything past the top K
DEFAULT_TTL_S: Final = 1.0
# A scrape that cannot get the lock within this time (a collection stuck in the kernel, say)
# answers with collection_error instead of hanging until Prometheus's scrape timeout.
DEFAULT_LOCK_TIMEOUT_S: Final = 10.0

Source = Callable[[str | None], Snapshot]
# all_netns: () -> (snapshots with their discovery labels, [(labels, why skipped)])
FleetSource = Callable[[], tuple[list[Snapshot], list[tuple[Mapping[str, str], str]]]]
T = TypeVar("T")
Family = GaugeMetricFamily | CounterMetricFamily


def live_source(netns: str | None) -> Snapshot:
    """One live capture of `netns` (None = our own namespace), via sock_diag or /proc."""
    from timewait.live.capture import capture

    return capture(netns=netns)


# -- the families: name -> (help, labels, unit) ------------------------------------------------
# Names carry their unit (client_python appends `unit` if missing; we spell it out so the name
# reads the same in PromQL) and counters get `_total` from CounterMetricFamily.

NS: Final = ("netns",)
DEST: Final = ("netns", "destination")

GAUGES: Final[dict[str, tuple[str, tuple[str, ...], str]]] = {
    "timewait_sockets": (
        "TCP sockets by kernel state (SYN-RECV includes request sockets; FIN-WAIT-2 includes "
        "minisockets).",
        ("netns", "state"),
        "",
    ),
    "timewait_time_wait_sockets": (
        "TIME_WAIT minisockets by side: server when the local port is a listening port "
        "(harmless, ~256 B each), else client (holds a port toward its destination).",
        ("netns", "side"),
        "",
    ),
    "timewait_fin_wait2_minisockets": (
        "Orphaned FIN_WAIT2 minisockets: this side closed, the peer never did "
        "(tcp_fin_timeout governs them, not TIME_WAIT).",
        NS,
        "",
    ),
    "timewait_minisockets": (
        "TIME_WAIT + FIN_WAIT2 minisockets: what tcp_max_tw_buckets limits (sockstat tw).",
        NS,
        "",
    ),
    "timewait_usable_ports": (
        "Ephemeral ports connect() can use toward any one destination: the range minus "
        "reserved and bind()-held ports (listeners, bind()-only sockets, and sockets that "
        "bound before connecting, inferred: README 'Pools').",
        NS,
        "",
    ),
    "timewait_exclusive_ports": (
        "Ports of the range connect() cannot share, by why: listener, bound (bind() only), "
        "bound_before_connect (inferred), orphan_server (left by a listener that exited).",
        ("netns", "why"),
        "",
    ),
    "timewait_pool_headroom_ports": (
        "What the kernel allows next, per pool: pool=connect_new (connect() to a destination "
        "nobody uses yet), pool=bind (bind(address, 0); address 0.0.0.0/:: = the wildcards, "
        "other_ipv4/other_ipv6 = any address that holds no port). Per-destination connect() "
        "pools are timewait_destination_headroom_ports. bind pools: the top K addresses.",
        ("netns", "pool", "address"),
        "",
    ),
    "timewait_pool_usage_ratio": (
        "1 - headroom / size of the pool (same labels as timewait_pool_headroom_ports).",
        ("netns", "pool", "address"),
        "ratio",
    ),
    "timewait_destination_headroom_ports": (
        "connect()s the kernel allows toward the destination now: usable ports minus its "
        "four-tuples plus TIME_WAITs tcp_tw_reuse takes over. "
        'destination="other": the sum over the destinations past the top K.',
        DEST,
        "",
    ),
    "timewait_destinations": (
        "Client-side destinations (source IP, destination IP, destination port) with sockets; "
        'all but the top K are aggregated into destination="other".',
        NS,
        "",
    ),
    "timewait_destination_ports_in_use": (
        "Local ports of the usable range held toward the destination, in any state. "
        'destination="other": the sum over the destinations past the top K.',
        DEST,
        "",
    ),
    "timewait_destination_usable_ports": (
        "Ports connect() can use toward the destination (the same budget for each). "
        'destination="other": the sum over the destinations past the top K.',
        DEST,
        "",
    ),
    "timewait_destination_port_usage_ratio": (
        "ports_in_use / usable_ports; connect() fails with EADDRNOTAVAIL at 1. "
        'destination="other": sum / sum over the rest, each of which is at most the '
        "smallest top-K ratio.",
        DEST,
        "ratio",
    ),
    "timewait_destination_time_wait_sockets": (
        'Client-side TIME_WAIT toward the destination (destination="other": the rest).',
        DEST,
        "",
    ),
    "timewait_destination_exhaustion_eta_seconds": (
        "Seconds until the destination's ports run out at the current trend (from the "
        'TIME_WAIT timers); absent when not trending up. destination="other": the soonest '
        "of the rest.",
        DEST,
        "seconds",
    ),
    "timewait_exhaustion_eta_seconds": (
        "Seconds until the first destination runs out of ports at the current trend; "
        "absent when none is trending up.",
        NS,
        "seconds",
    ),
    "timewait_doctor_finding": (
        "1 for each doctor rule that fires now (timewait doctor's findings; rule ids are stable).",
        ("netns", "rule", "severity"),
        "",
    ),
    # NAT (issue 15): the translated-port pools of a masquerading namespace, top K + "other".
    "timewait_nat_pool_ports_held": (
        "Translated ports held toward a destination, per pool (translated address -> "
        'destination:port/proto): conntrack entries in any state. pool="other": the sum over '
        "the pools past the top K.",
        ("netns", "pool"),
        "",
    ),
    "timewait_nat_pool_ports": (
        "Ports of the NAT rule's range (masquerade to :lo-hi; 64512 without one), per pool. "
        'pool="other": the sum over the rest.',
        ("netns", "pool"),
        "",
    ),
    "timewait_nat_pool_usage_ratio": (
        "held / ports of a NAT pool; at 1 a new connection needs an eviction (Linux >= 6.5, "
        'closing entries only) or its SYN is dropped. pool="other": sum / sum over the rest.',
        ("netns", "pool"),
        "ratio",
    ),
    "timewait_nat_pool_hard_usage_ratio": (
        "(held - evictable) / ports: the part no SYN can reclaim (entries not in TIME_WAIT/CLOSE,"
        ' or every entry before Linux 6.5). pool="other": the largest of the rest.',
        ("netns", "pool"),
        "ratio",
    ),
    "timewait_nat_pool_time_wait_entries": (
        "Conntrack entries in TIME_WAIT holding a port of the pool "
        "(nf_conntrack_tcp_timeout_time_wait, 120 s by default).",
        ("netns", "pool"),
        "",
    ),
    "timewait_nat_pools": (
        "NAT pools (translated address, destination, port, protocol) with entries.",
        NS,
        "",
    ),
    "timewait_conntrack_entries": ("nf_conntrack_count: entries of the namespace.", NS, ""),
    "timewait_conntrack_max": ("nf_conntrack_max (host-wide).", NS, ""),
    "timewait_conntrack_fill_ratio": (
        "nf_conntrack_count / nf_conntrack_max; at 1 new connections are dropped ('table full').",
        NS,
        "ratio",
    ),
    "timewait_collection_duration_seconds": (
        "Seconds the last collection of the namespace took (capture + analysis).",
        NS,
        "seconds",
    ),
    "timewait_collection_error": (
        "1 if the last collection of the namespace failed (its other families are then "
        "absent), else 0.",
        NS,
        "",
    ),
}

# net.ipv4 sysctl -> (metric name, help, scale). Missing ones (tcp_tw_reuse_delay before 6.14)
# are left out rather than reported with the KernelConfig default (capture() notes them).
SYSCTLS: Final[dict[str, tuple[str, str, float]]] = {
    "tcp_tw_reuse": (
        "timewait_sysctl_tcp_tw_reuse",
        "net.ipv4.tcp_tw_reuse: 0 off, 1 on (needs timestamps), 2 loopback only.",
        1.0,
    ),
    "tcp_tw_reuse_delay": (
        "timewait_sysctl_tcp_tw_reuse_delay_seconds",
        "net.ipv4.tcp_tw_reuse_delay (ms in the kernel), Linux 6.14+.",
        1e-3,
    ),
    "tcp_timestamps": (
        "timewait_sysctl_tcp_timestamps",
        "net.ipv4.tcp_timestamps: 0 turns them off, and tcp_tw_reuse with them.",
        1.0,
    ),
    "tcp_fin_timeout": (
        "timewait_sysctl_tcp_fin_timeout_seconds",
        "net.ipv4.tcp_fin_timeout: the orphaned FIN_WAIT2 wait; NOT the TIME_WAIT length "
        "(a fixed 60 s).",
        1.0,
    ),
    "tcp_max_tw_buckets": (
        "timewait_sysctl_tcp_max_tw_buckets",
        "net.ipv4.tcp_max_tw_buckets: past it TIME_WAIT is skipped (TCPTimeWaitOverflow).",
        1.0,
    ),
    "tcp_rfc1337": (
        "timewait_sysctl_tcp_rfc1337",
        "net.ipv4.tcp_rfc1337: 1 ignores RSTs in TIME_WAIT.",
        1.0,
    ),
}
RANGE_GAUGES: Final = {
    "timewait_sysctl_ip_local_port_range_low": "net.ipv4.ip_local_port_range, first port.",
    "timewait_sysctl_ip_local_port_range_high": "net.ipv4.ip_local_port_range, last port.",
    "timewait_sysctl_ip_local_reserved_ports": (
        "How many ports of net.ipv4.ip_local_port_range are in ip_local_reserved_ports."
    ),
}

# Kernel counter (/proc/net/netstat TcpExt, /proc/net/snmp Tcp) -> (metric name, help). Names
# and meanings: ref 9.2 (K include/uapi/linux/snmp.h, net/ipv4/proc.c). Counters the running
# kernel lacks (PAWSTimewait before 6.16) are left out.
COUNTERS: Final[dict[str, tuple[str, str]]] = {
    "TW": (
        "timewait_tcpext_tw",
        "TcpExt TW: minisocket timers armed for more than 4 s, i.e. TIME_WAITs created "
        "(plus long FIN_WAIT2 waits); rate() is the churn.",
    ),
    "TWKilled": (
        "timewait_tcpext_tw_killed",
        "TcpExt TWKilled: minisockets armed for 4 s or less (short FIN_WAIT2 waits).",
    ),
    "TWRecycled": (
        "timewait_tcpext_tw_recycled",
        "TcpExt TWRecycled: TIME_WAITs taken over by connect() (tcp_tw_reuse).",
    ),
    "TCPTimeWaitOverflow": (
        "timewait_tcpext_tcp_time_wait_overflow",
        "TcpExt TCPTimeWaitOverflow: closes that skipped TIME_WAIT at tcp_max_tw_buckets.",
    ),
    "TCPACKSkippedTimeWait": (
        "timewait_tcpext_tcp_ack_skipped_time_wait",
        "TcpExt TCPACKSkippedTimeWait: TIME_WAIT replies suppressed by the rate limit.",
    ),
    "TCPACKSkippedFinWait2": (
        "timewait_tcpext_tcp_ack_skipped_fin_wait2",
        "TcpExt TCPACKSkippedFinWait2: FIN_WAIT2 replies suppressed by the rate limit.",
    ),
    "PAWSTimewait": (
        "timewait_tcpext_paws_timewait",
        "TcpExt PAWSTimewait: segments rejected by PAWS in TIME_WAIT (Linux 6.16+).",
    ),
    "ActiveOpens": (
        "timewait_tcp_active_opens",
        "Tcp ActiveOpens: connect() calls that sent a SYN; rate() is the outgoing churn.",
    ),
    "PassiveOpens": (
        "timewait_tcp_passive_opens",
        "Tcp PassiveOpens: connections accepted from SYN_RECV.",
    ),
    # /proc/net/stat/nf_conntrack, summed over CPUs (issue 15)
    "conntrack.insert_failed": (
        "timewait_conntrack_insert_failed",
        "conntrack insert_failed: new entries refused at confirmation (a NAT reply tuple that "
        "clashed: no free translated port, or a race), their packets dropped.",
    ),
    "conntrack.drop": (
        "timewait_conntrack_drop",
        "conntrack drop: packets dropped by conntrack (clash, table full, ...).",
    ),
    "conntrack.early_drop": (
        "timewait_conntrack_early_drop",
        "conntrack early_drop: entries evicted to make room in a full table.",
    ),
}
ERRORS_TOTAL: Final = "timewait_collection_errors"  # exposed as timewait_collection_errors_total
ERRORS_HELP: Final = "Collections of the namespace that failed since the exporter started."
# --all-netns only (exporter/fleet.py, which holds its help text)
NAMESPACES: Final = "timewait_namespaces"
NAMESPACES_HELP: Final = (
    "Network namespaces of the node in the last collection (--all-netns), by set: exported "
    '(one by one), aggregated (summed into netns="other"), vanished (gone during the scan), '
    "failed."
)


def family_names() -> list[str]:
    """Every family this collector can expose, as registered (counters without `_total`)."""
    return [
        *GAUGES,
        *(name for name, _, _ in SYSCTLS.values()),
        *RANGE_GAUGES,
        *(name for name, _ in COUNTERS.values()),
        ERRORS_TOTAL,
        NAMESPACES,
    ]


def _sysctl_missing(snap: Snapshot) -> set[str]:
    """Sysctls the captured kernel lacks (live.sysctl notes them: "net.ipv4.X is not on ...")."""
    return {
        n.split()[0].removeprefix("net.ipv4.")
        for n in snap.notes
        if n.startswith("net.ipv4.") and "is not on this kernel" in n
    }


@dataclass(frozen=True, slots=True)
class Sample:
    """One value for one family, labels in the family's order after `netns`."""

    family: str
    labels: tuple[str, ...]
    value: float


def namespace_samples(
    snap: Snapshot, a: Analysis, findings: Iterable[Finding], top_k: int
) -> Iterator[Sample]:
    """Every sample of one namespace (labels without `netns`): a pure function of its data."""
    t = a.totals
    for state, n in sorted(t.by_state.items()):
        yield Sample("timewait_sockets", (state,), n)
    yield Sample("timewait_time_wait_sockets", ("client",), t.time_wait_client)
    yield Sample("timewait_time_wait_sockets", ("server",), t.time_wait_server)
    yield Sample("timewait_fin_wait2_minisockets", (), t.fin_wait2)
    yield Sample("timewait_minisockets", (), t.minisockets)
    cap = a.ports.capacity
    yield Sample("timewait_usable_ports", (), cap)
    n = a.n_destinations
    yield Sample("timewait_destinations", (), n)
    p = a.ports
    for why, count in (
        ("listener", len(p.listener_ports)),
        ("bound", len(p.bound_ports)),
        ("bound_before_connect", p.inferred_ports),
        ("orphan_server", len(p.orphan_server_ports)),
    ):
        yield Sample("timewait_exclusive_ports", (why,), count)
    new = a.new_destination
    yield Sample("timewait_pool_headroom_ports", ("connect_new", ""), new.headroom)
    yield Sample("timewait_pool_usage_ratio", ("connect_new", ""), new.usage)
    specific = 0
    for b in a.bind_pools:  # fullest first
        if b.address not in ("", "0.0.0.0", "::"):
            specific += 1
            if specific > top_k:
                continue
        address = b.address or f"other_{b.family}"
        yield Sample("timewait_pool_headroom_ports", ("bind", address), b.headroom)
        yield Sample("timewait_pool_usage_ratio", ("bind", address), b.usage)

    # Top K by usage (the analysis' order), then one aggregate for the rest.
    k = min(top_k, n)
    eta = a.dest_eta
    for i in range(k):
        d = a.destination(i)  # its label is the doctor report's "SRC -> DST:PORT"
        yield Sample("timewait_destination_ports_in_use", (d.label,), d.in_use)
        yield Sample("timewait_destination_usable_ports", (d.label,), d.capacity)
        yield Sample("timewait_destination_port_usage_ratio", (d.label,), d.usage)
        yield Sample("timewait_destination_headroom_ports", (d.label,), d.headroom)
        yield Sample("timewait_destination_time_wait_sockets", (d.label,), d.time_wait)
        if d.eta_s is not None:
            yield Sample("timewait_destination_exhaustion_eta_seconds", (d.label,), d.eta_s)
    if n > k:
        in_use = int(a.dest_in_use[k:].sum())
        budget = cap * (n - k)
        ratio = in_use / budget if budget > 0 else (math.inf if in_use else 0.0)
        yield Sample("timewait_destination_ports_in_use", (OTHER,), in_use)
        yield Sample("timewait_destination_usable_ports", (OTHER,), budget)
        yield Sample("timewait_destination_port_usage_ratio", (OTHER,), ratio)
        rest_headroom = int(a.dest_headroom[k:].sum())
        yield Sample("timewait_destination_headroom_ports", (OTHER,), rest_headroom)
        yield Sample(
            "timewait_destination_time_wait_sockets", (OTHER,), int(a.dest_counts[k:, 0].sum())
        )
        rest = eta[k:]
        if not np.all(np.isnan(rest)):
            yield Sample(
                "timewait_destination_exhaustion_eta_seconds", (OTHER,), float(np.nanmin(rest))
            )
    if n and not np.all(np.isnan(eta)):
        yield Sample("timewait_exhaustion_eta_seconds", (), float(np.nanmin(eta)))

    yield from _nat_samples(a, top_k)

    for f in findings:
        yield Sample("timewait_doctor_finding", (f.id, f.severity.label), 1)

    cfg = snap.config
    missing = _sysctl_missing(snap)
    for key, (name, _, scale) in SYSCTLS.items():
        if key not in missing:
            yield Sample(name, (), getattr(cfg, key) * scale)
    if "ip_local_port_range" not in missing:
        lo, hi = cfg.ip_local_port_range
        yield Sample("timewait_sysctl_ip_local_port_range_low", (), lo)
        yield Sample("timewait_sysctl_ip_local_port_range_high", (), hi)
        yield Sample("timewait_sysctl_ip_local_reserved_ports", (), a.ports.reserved)

    for key, (name, _) in COUNTERS.items():
        if key in snap.counters:
            yield Sample(name, (), snap.counters[key])


def _nat_samples(a: Analysis, top_k: int) -> Iterator[Sample]:
    """NAT pools (top K by usage + one "other") and the conntrack table's fill (issue 15)."""
    nat = a.nat
    if nat is None or not nat.present:
        return
    if nat.count is not None:
        yield Sample("timewait_conntrack_entries", (), nat.count)
    if nat.max:
        yield Sample("timewait_conntrack_max", (), nat.max)
    if nat.fill is not None:
        yield Sample("timewait_conntrack_fill_ratio", (), nat.fill)
    yield Sample("timewait_nat_pools", (), len(nat.pools))
    for p in nat.pools[:top_k]:
        label = p.label.removeprefix("NAT ")
        yield Sample("timewait_nat_pool_ports_held", (label,), p.held)
        yield Sample("timewait_nat_pool_ports", (label,), p.size)
        yield Sample("timewait_nat_pool_usage_ratio", (label,), p.usage)
        yield Sample("timewait_nat_pool_hard_usage_ratio", (label,), p.hard_usage)
        yield Sample("timewait_nat_pool_time_wait_entries", (label,), p.by_state["time_wait"])
    rest = nat.pools[top_k:]
    if rest:
        held, size = sum(p.held for p in rest), sum(p.size for p in rest)
        yield Sample("timewait_nat_pool_ports_held", (OTHER,), held)
        yield Sample("timewait_nat_pool_ports", (OTHER,), size)
        yield Sample("timewait_nat_pool_usage_ratio", (OTHER,), held / size if size else 0.0)
        yield Sample("timewait_nat_pool_hard_usage_ratio", (OTHER,),
                     max(p.hard_usage for p in rest))  # fmt: skip
        yield Sample("timewait_nat_pool_time_wait_entries", (OTHER,),
                     sum(p.by_state["time_wait"] for p in rest))  # fmt: skip


def _new_family(name: str, extra: tuple[str, ...] = ()) -> Family:
    """The family `name`, with the labels `extra` after `netns` (all_netns: namespace, pod,
    container)."""
    ns = (*NS, *extra)
    if name in GAUGES:
        doc, labels, unit = GAUGES[name]
        return GaugeMetricFamily(name, doc, labels=(*ns, *labels[1:]), unit=unit)
    for _, (sname, doc, _) in SYSCTLS.items():
        if sname == name:
            unit = "seconds" if name.endswith("_seconds") else ""
            return GaugeMetricFamily(name, doc, labels=ns, unit=unit)
    if name in RANGE_GAUGES:
        return GaugeMetricFamily(name, RANGE_GAUGES[name], labels=ns)
    for cname, doc in COUNTERS.values():
        if cname == name:
            return CounterMetricFamily(name, doc, labels=ns)
    if name == ERRORS_TOTAL:
        return CounterMetricFamily(name, ERRORS_HELP, labels=ns)
    if name == NAMESPACES:
        return GaugeMetricFamily(name, NAMESPACES_HELP, labels=("set",))
    raise KeyError(name)  # pragma: no cover - a name missing from the tables above


class _Worker:
    """One daemon thread that runs submitted functions in order.

    Every collection runs on this one thread, not on the HTTP request thread that happened to
    ask: the big temporary arrays of a dump then come from one malloc arena and are reused
    from scrape to scrape (with collections on ever-changing request threads, glibc's
    per-thread arenas kept ~1 MB per scrape: measured 80 -> 93 MB peak RSS over ten rounds of
    50 scrapes with 100,000 TIME_WAITs). A daemon thread, unlike a ThreadPoolExecutor's, never
    holds up interpreter exit if a collection is stuck in the kernel.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        fut: Future[T] = Future()
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="timewait-collect", daemon=True
                )
                self._thread.start()
        self._queue.put((fut, fn))
        return fut

    def _run(self) -> None:
        while True:
            fut, fn = self._queue.get()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)


@dataclass(frozen=True, slots=True)
class Target:
    """A namespace to collect: `netns` as given to capture() (None = ours) and its label."""

    netns: str | None
    label: str


def own_label() -> str:
    """The netns label of the exporter's own namespace: its `ip netns` name, "host" (the
    machine's own) or "[INODE]" (live.netns.own_label() without its "netns:" prefix, so that
    a namespace has one label whether exported from inside or with --netns NAME)."""
    from timewait.live.netns import own_label as label_of_ours

    return label_of_ours().removeprefix("netns:")


def targets_of(netns: Sequence[str], own: Callable[[], str] = own_label) -> tuple[Target, ...]:
    """--netns NAME ... -> targets; none given = the exporter's own namespace, labelled
    `own()`: its name, or "host"."""
    if not netns:
        return (Target(None, own()),)
    seen: dict[str, Target] = {}
    for name in netns:
        seen.setdefault(name, Target(name, name))
    return tuple(seen.values())


class TimewaitCollector:
    """The custom collector. Register it on a CollectorRegistry; `collect()` is thread-safe.

    Args:
        netns: namespaces to collect (names from `ip netns list` or paths such as
            /proc/PID/ns/net); empty = the exporter's own namespace, labelled with its name
            (or "host": `own_label()`).
        top_k: destinations exported one by one per namespace (0..MAX_TOP_K); the rest are
            aggregated into destination="other".
        ttl_s: how long one collection answers later scrapes (0 = collect on every scrape).
        all_netns: export every network namespace of the node instead (exporter/fleet.py),
            at most `max_netns` of them one by one besides the node's own; `fleet` replaces
            discovery + capture in tests; `pods_dir` is the kubelet's pod log directory.
        source: `source(netns) -> Snapshot`; the live capture by default. Tests inject
            synthetic snapshots or failures here (client_python's ProcessCollector takes
            `proc=` for the same reason).
        clock: monotonic seconds, for the cache.
        trace: the eBPF counters of `exporter --trace` (exporter/trace.py), or None.
        lock_timeout_s: a scrape waits this long for the collection in progress, then
            answers with collection_error = 1 for every namespace instead of hanging.

    Raises ValueError for a top_k or ttl_s out of range.
    """

    def __init__(
        self,
        netns: Sequence[str] = (),
        *,
        top_k: int = DEFAULT_TOP_K,
        ttl_s: float = DEFAULT_TTL_S,
        source: Source | None = None,
        clock: Callable[[], float] = time.monotonic,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        logger: logging.Logger = LOG,
        all_netns: bool = False,
        max_netns: int = 20,
        fleet: FleetSource | None = None,
        pods_dir: str | None = None,
        trace: TraceFeed | None = None,
    ) -> None:
        if not 0 <= top_k <= MAX_TOP_K:
            raise ValueError(f"top_k must be 0..{MAX_TOP_K}, got {top_k}")
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, got {ttl_s}")
        if all_netns and netns:
            raise ValueError("all_netns exports every namespace: give no netns with it")
        if not 0 <= max_netns <= 10_000:
            raise ValueError(f"max_netns must be 0..10000, got {max_netns}")
        self.all_netns = all_netns or fleet is not None
        self.max_netns = max_netns
        self.pods_dir = pods_dir
        self.fleet: FleetSource = fleet or self._live_fleet
        self._failing: set[str] = set()  # all_netns: inodes whose last collection failed
        self.targets = targets_of(netns) if not self.all_netns else (Target(None, "all"),)
        self.top_k = top_k
        self.ttl_s = ttl_s
        self.source: Source = source or live_source
        self.clock = clock
        self.lock_timeout_s = lock_timeout_s
        self.log = logger
        self._lock = threading.Lock()  # guards the cache and the in-flight collection
        self._cached: list[Metric] | None = None
        self._cached_at = -math.inf
        self._inflight: Future[list[Metric]] | None = None
        self._worker = _Worker()
        self._errors = {t.label: 0 for t in self.targets}
        self._last_error: dict[str, str | None] = {t.label: None for t in self.targets}
        self.trace = trace

    # -- the Collector protocol ----------------------------------------------------------

    def describe(self) -> list[Metric]:
        """Every family name, without samples: registration checks duplicates with these and
        never runs a collection (client_python registry.py `_get_names`)."""
        out: list[Metric] = [_new_family(name, self._extra) for name in family_names()]
        out.extend(self._trace_families())
        return out

    @property
    def _extra(self) -> tuple[str, ...]:
        from timewait.exporter.fleet import EXTRA

        return EXTRA if self.all_netns else ()

    def _trace_families(self) -> list[Family]:
        """The families of `exporter --trace` (none without it)."""
        if self.trace is None:
            return []
        from timewait.exporter import trace as X

        return [X.new_family(name) for name in X.family_names()]

    def collect(self) -> Iterator[Metric]:
        """The families of the last collection if younger than ttl_s, else of a new one."""
        yield from self._families()

    # -- internals -----------------------------------------------------------------------

    def _families(self) -> list[Metric]:
        with self._lock:
            if self._cached is not None and self.clock() - self._cached_at < self.ttl_s:
                return self._cached
            if self._inflight is None or self._inflight.done():
                self._inflight = self._worker.submit(self._collect_and_cache)
            inflight = self._inflight
        try:
            return inflight.result(timeout=self.lock_timeout_s)
        except FutureTimeout:
            self.log.warning(
                "scrape waited %.0f s for the collection in progress; answering with "
                "timewait_collection_error = 1",
                self.lock_timeout_s,
            )
        except Exception:  # a bug in building families: still answer the scrape
            self.log.exception("collection failed; answering with timewait_collection_error = 1")
        return self._busy()

    def _collect_and_cache(self) -> list[Metric]:
        families = self.collect_now()
        with self._lock:
            self._cached, self._cached_at = families, self.clock()
        return families

    def collect_now(self) -> list[Metric]:
        """One collection of every target, bypassing the cache (from one thread at a time:
        scrapes run it on the collector's worker thread). A failing target drops its
        families and is reported."""
        if self.all_netns:
            return self._collect_fleet()
        families = {name: _new_family(name) for name in family_names()}
        families.update({f.name: f for f in self._trace_families()})
        for target in self.targets:
            t0 = time.perf_counter()
            samples, error = self._collect_target(target)
            duration = time.perf_counter() - t0
            ns = target.label
            for s in samples:
                families[s.family].add_metric((ns, *s.labels), s.value)
            families["timewait_collection_duration_seconds"].add_metric((ns,), duration)
            families["timewait_collection_error"].add_metric((ns,), 1 if error else 0)
            families[ERRORS_TOTAL].add_metric((ns,), self._errors[ns])
            if self.trace is not None:
                for s in self.trace.samples(ns):
                    families[s.family].add_metric((ns, *s.labels), s.value)
        return [f for f in families.values() if f.samples]

    def _collect_target(self, target: Target) -> tuple[list[Sample], str | None]:
        """(samples, None) or ([], error text); logs when a failure starts and ends."""
        ns = target.label
        try:
            snap = self.source(target.netns)
            a = analyze(snap)
            samples = list(namespace_samples(snap, a, run_rules(snap, a), self.top_k))
        except Exception as e:  # a failing source must never fail the scrape (rule 11)
            self._errors[ns] += 1
            text = str(e) if isinstance(e, TimewaitError) else f"{type(e).__name__}: {e}"
            if self._last_error[ns] != text:
                # Our own errors are one line that says what to do; anything else is a bug,
                # so it gets its traceback.
                self.log.warning(
                    "collection of netns %s failed: %s",
                    ns,
                    text,
                    exc_info=not isinstance(e, TimewaitError),
                )
            self._last_error[ns] = text
            return [], text
        if self._last_error[ns] is not None:
            self.log.warning("collection of netns %s works again", ns)
            self._last_error[ns] = None
        return samples, None

    def _busy(self) -> list[Metric]:
        err = _new_family("timewait_collection_error", self._extra)
        for t in self.targets:
            err.add_metric((t.label, *("" for _ in self._extra)), 1)
        return [err]

    # -- all_netns (exporter/fleet.py) -----------------------------------------------------

    def _live_fleet(self) -> tuple[list[Snapshot], list[tuple[Mapping[str, str], str]]]:
        """Discover and capture every namespace (one dump walk each, no rate window: the
        counters are exported and Prometheus rates them)."""
        from timewait.live.discover import Roots, discover
        from timewait.live.scan import Captured, capture_all

        snaps: list[Snapshot] = []
        skipped: list[tuple[Mapping[str, str], str]] = []
        for item in capture_all(
            discover(Roots.from_env(self.pods_dir)).namespaces, rate_window=False
        ):
            if isinstance(item, Captured):
                snaps.append(item.snapshot)
            else:
                skipped.append((item.found.labels, item.reason))
        return snaps, skipped

    def _collect_fleet(self) -> list[Metric]:
        from timewait.doctor import Diagnosis
        from timewait.doctor.fleet import member_of
        from timewait.exporter import fleet as F

        families = {name: _new_family(name, F.EXTRA) for name in family_names()}
        t0 = time.perf_counter()
        scan_error: str | None = None
        try:
            snaps, skipped = self.fleet()
        except Exception as e:  # no CAP_SYS_ADMIN, a bug: the scrape still answers
            snaps, skipped = [], []
            scan_error = str(e) if isinstance(e, TimewaitError) else f"{type(e).__name__}: {e}"
            self._errors["all"] += 1
            if self._last_error["all"] != scan_error:
                self.log.warning("collection of the node's namespaces failed: %s", scan_error,
                                 exc_info=not isinstance(e, TimewaitError))  # fmt: skip
        else:
            if self._last_error["all"] is not None:
                self.log.warning("collection of the node's namespaces works again")
        self._last_error["all"] = scan_error
        results: list[F.Result] = []
        failing: set[str] = set()
        for snap in snaps:
            inode = snap.labels.get("inode", "?")
            try:
                a = analyze(snap)
                findings = tuple(run_rules(snap, a))
                samples = list(namespace_samples(snap, a, findings, self.top_k))
                key = member_of(Diagnosis(snapshot=snap, analysis=a, findings=findings)).key
            except Exception as e:  # one namespace's failure is not the node's
                failing.add(inode)
                self._errors["all"] += 1
                if inode not in self._failing:
                    self.log.warning("collection of netns %s (%s) failed: %s",
                                     snap.labels.get("netns", inode), inode,
                                     f"{type(e).__name__}: {e}",
                                     exc_info=not isinstance(e, TimewaitError))  # fmt: skip
                continue
            results.append(F.Result(snap.labels, samples, key, snap.labels.get("kind") == "host"))
        self._failing = failing
        exported, rest = F.bound(results, self.max_netns)
        for r in exported:
            labels = F.node_labels(r.labels)
            for s in r.samples:
                families[s.family].add_metric((*labels, *s.labels), s.value)
        for s in F.aggregate(rest):
            families[s.family].add_metric((*F.OTHER_LABELS, *s.labels), s.value)
        counts = (len(exported), len(rest), len(skipped), len(failing))
        for name, n in zip(F.SETS, counts, strict=True):
            families[NAMESPACES].add_metric((name,), n)
        families["timewait_collection_duration_seconds"].add_metric(
            F.ALL_LABELS, time.perf_counter() - t0
        )
        families["timewait_collection_error"].add_metric(F.ALL_LABELS, 1 if scan_error else 0)
        families[ERRORS_TOTAL].add_metric(F.ALL_LABELS, self._errors["all"])
        return [f for f in families.values() if f.samples]
