"""The doctor across every network namespace of a node (`doctor --all-netns`, issue 14).

    ranking = Ranking(keep=3, documents=True, top=10)
    for labels, diagnosis in ...:            # one per namespace (live.scan)
        ranking.add(diagnosis)                # labels ride in diagnosis.snapshot.labels
    ranking.skip(labels, "vanished during the scan")
    ranking.members()                         # nearest exhaustion first
    ranking.to_json(hostname=..., kernel=...) # the "timewait-doctor-all/1" document

Pure (no I/O, no clock), like the rest of the doctor: the live side (live.discover, live.scan)
finds, names and captures namespaces; this ranks what their diagnoses say.

Nearness to exhaustion: each namespace's worst pool (Analysis.pools(), fullest first: the
busiest destination's connect() pool, connect() to a new destination, or a bind() pool) by
usage; ties by severity, then by time to exhaustion (soonest first), then TIME_WAIT count.
Memory stays bounded: a member keeps a small summary (and its JSON document when asked);
full Diagnoses are kept for the `keep` nearest namespaces only (their reports are printed).

The --json document wraps one timewait-doctor/3 document per namespace (schema.py):

    schema            "timewait-doctor-all/1"
    status            worst of all: "healthy" | "warning" | "critical"
    exit_status       0 | 1 | 2, the worst namespace's
    hostname, kernel  of the node
    namespaces_total  namespaces diagnosed
    host_network      pods and containers that share the node's own namespace (they are in
                      the "host" entry, not counted again)
    skipped           [{inode, name, labels, reason}]: vanished during the scan, unreadable
    notes             what discovery could not see
    namespaces        nearest exhaustion first, each
                      {rank (1 = nearest), inode, name (the most useful name: "NS/POD",
                       container, `ip netns` name, "COMM[PID]", "host"), kind ("host"|"pod"|
                       "container"|"netns"|"process"|"mount"), host (bool), labels {netns,
                       inode, kind, and where known namespace, pod, pod_uid, container,
                       container_id, runtime, comm, pid, host_network}, status, exit_status,
                       worst_pool {kind, label, headroom, usage}, sockets, time_wait,
                       eta_s (soonest destination, or null),
                       doctor: the namespace's timewait-doctor/3 document}
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from timewait.doctor.rules import Severity
from timewait.doctor.schema import to_json
from timewait.nsnames import display_name
from timewait.status import ExitStatus

if TYPE_CHECKING:
    from timewait.doctor import Diagnosis

SCHEMA: Final = "timewait-doctor-all/1"


@dataclass(frozen=True, slots=True, kw_only=True)
class Member:
    """One namespace's place in the ranking: what the table and the JSON need."""

    inode: int
    name: str
    kind: str
    labels: Mapping[str, str]
    status: str
    exit_status: ExitStatus
    severity: Severity
    worst_kind: str
    worst_label: str
    worst_headroom: int
    worst_usage: float
    sockets: int
    time_wait: int
    churn_per_s: float
    eta_s: float | None
    namespace: str  # the Snapshot's namespace label ("host", "netns:NAME", ...)
    document: Mapping[str, Any] | None = None  # its timewait-doctor/3 document
    diagnosis: Diagnosis | None = field(default=None, compare=False)

    @property
    def host(self) -> bool:
        return self.kind == "host"

    @property
    def key(self) -> tuple[float, int, float, int, int]:
        """Sort key, nearest exhaustion first."""
        eta = math.inf if self.eta_s is None else self.eta_s
        return (-self.worst_usage, -int(self.severity), eta, -self.time_wait, self.inode)


def member_of(d: Diagnosis, *, document: bool = False, top: int | None = 10) -> Member:
    """The ranking entry of one namespace's diagnosis (labels from its snapshot)."""
    snap, a = d.snapshot, d.analysis
    labels = dict(snap.labels)
    w = a.pools(top=1)[0]
    etas = [x for x in a.dest_eta.tolist() if not math.isnan(x)] if a.n_destinations else []
    try:
        inode = int(labels.get("inode", "0"))
    except ValueError:
        inode = 0
    return Member(
        inode=inode,
        name=display_name(labels) if labels else snap.namespace,
        kind=labels.get("kind", "netns"),
        labels=labels,
        status=d.status,
        exit_status=d.exit_status,
        severity=d.severity,
        worst_kind=w.kind,
        worst_label=w.label,
        worst_headroom=w.headroom,
        worst_usage=w.usage,
        sockets=a.totals.sockets,
        time_wait=a.totals.time_wait,
        churn_per_s=a.churn_per_s,
        eta_s=min(etas) if etas else None,
        namespace=snap.namespace,
        document=to_json(d, top=top) if document else None,
    )


@dataclass(frozen=True, slots=True)
class SkippedMember:
    inode: int
    name: str
    labels: Mapping[str, str]
    reason: str


class Ranking:
    """Namespaces ranked by nearness to exhaustion, built one diagnosis at a time.

    keep: how many full Diagnoses to keep (the nearest ones, for their reports).
    documents: build each namespace's timewait-doctor/3 document (for --json), with `top`
        destinations each (None = all).
    """

    def __init__(self, *, keep: int = 0, documents: bool = False, top: int | None = 10) -> None:
        self.keep = keep
        self.documents = documents
        self.top = top
        self._members: list[Member] = []
        self._kept: list[tuple[tuple[float, ...], int, Diagnosis]] = []  # max-heap by nearness
        self._skipped: list[SkippedMember] = []
        self._seq = 0

    def add(self, d: Diagnosis) -> Member:
        m = member_of(d, document=self.documents, top=self.top)
        self._members.append(m)
        if self.keep > 0:
            # heap of the `keep` nearest: the root is the farthest of them
            item = (tuple(-x for x in m.key), self._seq, d)
            self._seq += 1
            if len(self._kept) < self.keep:
                heapq.heappush(self._kept, item)
            elif item[0] > self._kept[0][0]:
                heapq.heapreplace(self._kept, item)
        return m

    def skip(self, labels: Mapping[str, str], reason: str) -> None:
        try:
            inode = int(labels.get("inode", "0"))
        except ValueError:
            inode = 0
        self._skipped.append(SkippedMember(inode, display_name(labels), dict(labels), reason))

    @property
    def skipped(self) -> list[SkippedMember]:
        return list(self._skipped)

    def members(self) -> list[Member]:
        """Every namespace, nearest exhaustion first."""
        return sorted(self._members, key=lambda m: m.key)

    def worst_diagnoses(self) -> list[tuple[Member, Diagnosis]]:
        """The kept Diagnoses with their members, nearest first."""
        by_inode = {m.inode: m for m in self._members}
        kept = sorted(self._kept, key=lambda t: tuple(-x for x in t[0]))
        return [(by_inode.get(member_of_inode(d), member_of(d)), d) for _, _, d in kept]

    @property
    def exit_status(self) -> ExitStatus:
        return max((m.exit_status for m in self._members), default=ExitStatus.OK)

    @property
    def status(self) -> str:
        return {ExitStatus.CRITICAL: "critical", ExitStatus.WARNING: "warning"}.get(
            self.exit_status, "healthy"
        )

    def host_network(self) -> list[str]:
        for m in self._members:
            if m.host and m.labels.get("host_network"):
                return m.labels["host_network"].split(",")
        return []

    def to_json(
        self, *, hostname: str = "", kernel: str = "", notes: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """The "timewait-doctor-all/1" document (see the module docstring)."""
        return {
            "schema": SCHEMA,
            "status": self.status,
            "exit_status": int(self.exit_status),
            "hostname": hostname,
            "kernel": kernel,
            "namespaces_total": len(self._members),
            "host_network": self.host_network(),
            "skipped": [
                {"inode": s.inode, "name": s.name, "labels": dict(s.labels), "reason": s.reason}
                for s in self._skipped
            ],
            "notes": list(notes),
            "namespaces": [member_json(m, rank) for rank, m in enumerate(self.members(), 1)],
        }

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members())


def member_of_inode(d: Diagnosis) -> int:
    try:
        return int(d.snapshot.labels.get("inode", "0"))
    except ValueError:
        return 0


def member_json(m: Member, rank: int) -> dict[str, Any]:
    return {
        "rank": rank,
        "inode": m.inode,
        "name": m.name,
        "kind": m.kind,
        "host": m.host,
        "labels": dict(m.labels),
        "status": m.status,
        "exit_status": int(m.exit_status),
        "worst_pool": {
            "kind": m.worst_kind,
            "label": m.worst_label,
            "headroom": m.worst_headroom,
            "usage": round(m.worst_usage, 6),
        },
        "sockets": m.sockets,
        "time_wait": m.time_wait,
        "churn_per_s": round(m.churn_per_s, 3),
        "eta_s": None if m.eta_s is None else round(m.eta_s, 1),
        "doctor": dict(m.document) if m.document is not None else None,
    }
