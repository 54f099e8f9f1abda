"""`timewait exporter --trace`: the tracer's counts as Prometheus counters, with bounded labels.

Theory of operation
-------------------
One Tracer (timewait.live.tracer) counts for every exported namespace at once, filtered by
their inodes in the kernel; its cumulative counts are read at each collection and become
counters:

    timewait_connect_errors_total{netns, errno, comm, container, destination}
    timewait_bind_errors_total{netns, errno, comm, container, address}
    timewait_active_closes_total{netns, side, comm, container, destination}
    timewait_passive_closes_total{netns, side, comm, container, destination}
    timewait_connections_opened_total{netns, comm, container, destination}
    timewait_connections_accepted_total{netns, address}
    timewait_trace_up{netns}                    1 while the tracer counts, else 0

The program leaves the pid out of its keys here (`with_pid=False`): labels never carry a pid,
and a long-lived exporter must not fill its kernel map with one key per short-lived process.

Bounded labels, like the gauges (collector.py): per namespace and family at most `top_k`
label sets have series of their own, the rest are summed into one series whose labels are
"other" (errno kept: a small fixed set). A counter must never move from one series to another
-- "other" would then go down, which Prometheus reads as a reset -- so the top K are *sticky*:
the first K label sets seen (the largest first at that moment) keep their series for the life
of the exporter, everything later goes to "other". Restart the exporter to choose again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Final

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from timewait.doctor import trace as T
from timewait.exporter.collector import LOG, OTHER, Family, Sample

if TYPE_CHECKING:
    from timewait.live.tracer import Tracer

# name -> (help, labels after netns, kinds, label builder)
COUNTERS: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "timewait_connect_errors": (
        "connect() calls that failed, by errno (EADDRNOTAVAIL: the destination's ports are "
        "gone; the kernel has no counter for it), traced with eBPF. Asynchronous failures of "
        "non-blocking connects (SYN_SENT -> CLOSE) included.",
        ("errno", "comm", "container", "destination"),
    ),
    "timewait_bind_errors": (
        "bind() calls that failed, by errno; address ends in :0 for bind(addr, 0) (EADDRINUSE "
        "there: the bind pool of that address is used up).",
        ("errno", "comm", "container", "address"),
    ),
    "timewait_active_closes": (
        "Connections this side closed first (ESTABLISHED -> FIN_WAIT1): each leaves a TIME_WAIT "
        "here for 60 s; rate() is the exact churn toward the destination (side=client) or on "
        "the listening address (side=server).",
        ("side", "comm", "container", "destination"),
    ),
    "timewait_passive_closes": (
        "Connections the peer closed first (CLOSE_WAIT -> LAST_ACK): no TIME_WAIT on this side.",
        ("side", "comm", "container", "destination"),
    ),
    "timewait_connections_opened": (
        "connect()s that established (SYN_SENT -> ESTABLISHED).",
        ("comm", "container", "destination"),
    ),
    "timewait_connections_accepted": (
        "Connections a listener accepted (SYN_RECV -> ESTABLISHED), by listening address.",
        ("address",),
    ),
}
UP: Final = "timewait_trace_up"
UP_HELP: Final = "1 while the eBPF tracer counts for the namespace (exporter --trace), else 0."
KINDS: Final = {
    "timewait_connect_errors": T.CONNECT_KINDS,
    "timewait_bind_errors": (T.Kind.BIND_ERROR,),
    "timewait_active_closes": (T.Kind.ACTIVE_CLOSE,),
    "timewait_passive_closes": (T.Kind.PASSIVE_CLOSE,),
    "timewait_connections_opened": (T.Kind.OPENED,),
    "timewait_connections_accepted": (T.Kind.ACCEPTED,),
}


def family_names() -> list[str]:
    return [*COUNTERS, UP]


def new_family(name: str) -> Family:
    if name == UP:
        return GaugeMetricFamily(UP, UP_HELP, labels=("netns",))
    doc, labels = COUNTERS[name]
    return CounterMetricFamily(name, doc, labels=("netns", *labels))


def _labels(name: str, g: T.Group) -> tuple[str, ...]:
    """A group's label values for family `name` (after netns)."""
    comm = g.comm or "(kernel)"
    container = g.container or ""
    side = "server" if g.side == T.SIDE_SERVER else "client"
    if name == "timewait_connect_errors":
        return (g.errno_name, comm, container, g.destination)
    if name == "timewait_bind_errors":
        return (g.errno_name, comm, container, g.destination.removeprefix("local "))
    if name in ("timewait_active_closes", "timewait_passive_closes"):
        dest = g.destination if g.side == T.SIDE_SERVER else f"{g.laddr} -> {g.destination}"
        return (side, comm, container, dest.removeprefix("local "))
    if name == "timewait_connections_opened":
        return (comm, container, f"{g.laddr} -> {g.destination}")
    return (g.destination.removeprefix("local "),)


def _other(name: str, labels: tuple[str, ...]) -> tuple[str, ...]:
    """The "other" series a label set falls into: errno (and side) kept, the rest "other"."""
    keep = {"errno", "side"}
    names = COUNTERS[name][1]
    return tuple(v if n in keep else OTHER for n, v in zip(names, labels, strict=True))


class StickyTopK:
    """Which label sets own a series, per (namespace, family): the first `k` seen, for good."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._chosen: dict[tuple[str, str], set[tuple[str, ...]]] = {}

    def series(
        self, ns: str, name: str, counts: Sequence[tuple[tuple[str, ...], int]]
    ) -> dict[tuple[str, ...], int]:
        """{labels: value} for `counts` (label set, cumulative count), largest first."""
        chosen = self._chosen.setdefault((ns, name), set())
        out: dict[tuple[str, ...], int] = {}
        for labels, n in sorted(counts, key=lambda c: -c[1]):
            if labels not in chosen and len(chosen) < self.k:
                chosen.add(labels)
            key = labels if labels in chosen else _other(name, labels)
            out[key] = out.get(key, 0) + n
        return out


def trace_samples(rows: np.ndarray, window_ns: int, top: StickyTopK, ns: str) -> Iterator[Sample]:
    """The counters of one namespace's cumulative rows (labels without `netns`)."""
    tr = T.Traced(rows=rows, window_ns=window_ns)
    for name, kinds in KINDS.items():
        counts: dict[tuple[str, ...], int] = {}
        for g in tr.groups(*kinds):
            labels = _labels(name, g)
            counts[labels] = counts.get(labels, 0) + g.count
        for labels, value in top.series(ns, name, list(counts.items())).items():
            yield Sample(name, labels, value)


class TraceFeed:
    """The exporter's tracer: started once (from the main thread: PR_SET_PDEATHSIG follows
    the thread that forks), read at every collection, stopped with the exporter.

    A tracer that cannot start logs one line and the exporter serves everything else;
    `timewait_trace_up` says 0 then.
    """

    def __init__(
        self,
        labels: dict[int, str],
        top_k: int,
        *,
        logger: logging.Logger = LOG,
        interval_s: float = 1.0,
    ) -> None:
        self.labels = labels  # namespace inode -> the exporter's netns label
        self.top = StickyTopK(top_k)
        self.log = logger
        self.interval_s = interval_s
        self.tracer: Tracer | None = None
        self.error: str | None = None
        self._warned_dead = False

    def start(self) -> TraceFeed:
        from timewait.live import tracer as TR

        try:
            plan = TR.preflight()
            tracer = TR.Tracer(
                list(self.labels), interval_s=self.interval_s, plan=plan, with_pid=False
            )
            tracer.start()
        except TR.TraceUnavailable as e:
            self.error = str(e)
            self.log.warning("--trace: %s; serving without the traced counters", e)
            return self
        for note in plan.notes:
            self.log.warning("--trace: %s", note)
        self.tracer = tracer
        self.log.info("tracing connect()/bind() failures and closes (bpftrace pid %s)", tracer.pid)
        return self

    def stop(self) -> None:
        if self.tracer is not None:
            self.tracer.stop()

    def samples(self, ns: str) -> Iterator[Sample]:
        """The counters of namespace label `ns` (and timewait_trace_up)."""
        tracer = self.tracer
        if tracer is None:
            yield Sample(UP, (), 0)
            return
        alive = tracer.alive
        if not alive and not self._warned_dead:
            self.log.warning("--trace: bpftrace exited; the traced counters stop here")
            self._warned_dead = True
        yield Sample(UP, (), 1 if alive else 0)
        reading = tracer.reading()
        inodes = [i for i, label in self.labels.items() if label == ns]
        rows = reading.rows[np.isin(reading.rows["netns"], inodes)]
        yield from trace_samples(rows, reading.window_ns, self.top, ns)


def start_feed(netns: Sequence[str], top_k: int) -> TraceFeed:
    """The feed for `exporter --netns ... --trace`: every target's namespace, by inode."""
    from timewait.exporter.collector import targets_of
    from timewait.live import netns as _netns
    from timewait.live.tracer import netns_inode

    labels: dict[int, str] = {}
    for t in targets_of(netns):
        target = _netns.resolve(netns=t.netns) if t.netns is not None else None
        labels.setdefault(netns_inode(target), t.label)
    return TraceFeed(labels, top_k).start()
