"""The exporter on a node (`timewait exporter --all-netns`, issue 14): every network namespace,
labelled the Kubernetes way, with a bound on how many are exported one by one.

Theory of operation
-------------------
Each collection discovers the machine's namespaces (live.discover: they come and go with
pods), captures each (live.scan), and analyzes each as the one-namespace exporter does
(collector.namespace_samples: the per-namespace top-K destination bound is kept). Then:

- Labels. Every series carries `netns` (the `ip netns` name -- CNI names pod namespaces
  "cni-<uuid>" --, "host" for the node's own, "[INODE]" for an unnamed one) and the Kubernetes
  labels `namespace`, `pod`, `container` (empty when not a pod; a container outside Kubernetes
  has `container` only). They are the names cAdvisor and kube-state-metrics use, so PromQL
  joins work; scrape with `honorLabels: true` (deploy/kubernetes/) or Prometheus renames them
  `exported_namespace`, `exported_pod`, ... after the exporter pod's own target labels.
- A bound on namespaces. The node's own namespace and the `max_netns` namespaces nearest
  exhaustion (doctor.fleet's order: worst pool usage, severity, time to exhaustion, TIME_WAIT)
  are exported one by one; the rest are summed into ONE namespace, netns="other" (namespace,
  pod, container empty): sockets by state, TIME_WAIT by side, minisockets, destinations,
  exclusive ports, findings (how many namespaces each rule fires in), and per destination
  family one destination="other" series (sums; the ratio is sum/sum; the ETA the soonest).
  Gauges that do not add up (sysctls, usable ports, pool headroom) and the kernel counters are
  left out for "other": a sum of counters over a set of namespaces that changes from scrape to
  scrape would go down, which Prometheus reads as a reset.
  So a node exports at most (max_netns + 2) x (what one namespace exports) series, however
  many pods it runs: README "Containers and Kubernetes" has the counts at 500 pods.
- Scan-wide series, netns="all": collection duration and error (1 when the scan itself failed,
  e.g. no CAP_SYS_ADMIN), the errors counter, and timewait_namespaces{set}: how many
  namespaces were exported one by one, aggregated into "other", vanished during the scan
  (skipped, never an error) and failed (logged once when they start failing).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from timewait.exporter.collector import NAMESPACES as NAMESPACES
from timewait.exporter.collector import OTHER, Sample

EXTRA: Final = ("namespace", "pod", "container")  # after netns, in every family
ALL: Final = "all"  # the netns label of scan-wide series
OTHER_NETNS: Final = "other"
DEFAULT_MAX_NETNS: Final = 20
MAX_MAX_NETNS: Final = 10_000
SETS: Final = ("exported", "aggregated", "vanished", "failed")

SUMMED: Final = frozenset(
    {
        "timewait_sockets",
        "timewait_time_wait_sockets",
        "timewait_fin_wait2_minisockets",
        "timewait_minisockets",
        "timewait_destinations",
        "timewait_exclusive_ports",
        "timewait_doctor_finding",
    }
)
DEST_SUMMED: Final = (
    "timewait_destination_ports_in_use",
    "timewait_destination_usable_ports",
    "timewait_destination_headroom_ports",
    "timewait_destination_time_wait_sockets",
)
DEST_ETA: Final = "timewait_destination_exhaustion_eta_seconds"
ETA: Final = "timewait_exhaustion_eta_seconds"
RATIO: Final = "timewait_destination_port_usage_ratio"


@dataclass(frozen=True, slots=True)
class Result:
    """One namespace's samples (labels without netns) and its place in the ranking."""

    labels: Mapping[str, str]
    samples: Sequence[Sample]
    key: tuple[float, ...]  # doctor.fleet.Member.key: nearest exhaustion first
    host: bool = False


def node_labels(labels: Mapping[str, str]) -> tuple[str, str, str, str]:
    """(netns, namespace, pod, container) of a namespace's discovery labels."""
    return (
        labels.get("netns", ""),
        labels.get("namespace", ""),
        labels.get("pod", ""),
        labels.get("container", ""),
    )


OTHER_LABELS: Final = (OTHER_NETNS, "", "", "")
ALL_LABELS: Final = (ALL, "", "", "")


def bound(results: Iterable[Result], max_netns: int) -> tuple[list[Result], list[Result]]:
    """(exported one by one, aggregated): the host and the `max_netns` nearest exhaustion,
    and the rest."""
    ranked = sorted(results, key=lambda r: r.key)
    host = [r for r in ranked if r.host]
    others = [r for r in ranked if not r.host]
    return host + others[:max_netns], others[max_netns:]


def aggregate(rest: Sequence[Result]) -> list[Sample]:
    """The netns="other" samples summing `rest` (see the module docstring)."""
    if not rest:
        return []
    sums: dict[tuple[str, tuple[str, ...]], float] = {}
    dest = dict.fromkeys(DEST_SUMMED, 0.0)
    dest_eta = math.inf
    eta = math.inf
    for r in rest:
        for s in r.samples:
            if s.family in SUMMED:
                k = (s.family, s.labels)
                sums[k] = sums.get(k, 0.0) + s.value
            elif s.family in dest:
                dest[s.family] += s.value
            elif s.family == DEST_ETA:
                dest_eta = min(dest_eta, s.value)
            elif s.family == ETA:
                eta = min(eta, s.value)
    out = [Sample(f, labels, v) for (f, labels), v in sums.items()]
    if dest["timewait_destination_usable_ports"] or dest["timewait_destination_ports_in_use"]:
        for f, v in dest.items():
            out.append(Sample(f, (OTHER,), v))
        used, usable = (
            dest["timewait_destination_ports_in_use"],
            dest["timewait_destination_usable_ports"],
        )
        out.append(Sample(RATIO, (OTHER,), used / usable if usable else math.inf))
    if dest_eta < math.inf:
        out.append(Sample(DEST_ETA, (OTHER,), dest_eta))
    if eta < math.inf:
        out.append(Sample(ETA, (), eta))
    return out
