"""exporter --all-netns (exporter/fleet.py) on synthetic nodes: Kubernetes labels on every
series, the node's own namespace and the max_netns nearest exhaustion one by one, the rest
summed into netns="other", and the series count of a 500-pod node bounded."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from timewait.config import KernelConfig
from timewait.doctor.analysis import analyze
from timewait.exporter.collector import TimewaitCollector
from timewait.snapshot import TCP_ESTABLISHED, TCP_LISTEN, TCP_TIME_WAIT, Snapshot
from timewait.snapshot import sockets_from_rows as rows_to

CFG = KernelConfig(ip_local_port_range=(40000, 40999))  # 1,000 ports


def pod_snapshot(i: int, n_tw: int, dests: int = 15) -> Snapshot:
    """Pod i: n_tw client TIME_WAITs spread over `dests` destinations, a listener, one
    ESTABLISHED pair."""
    rows = [
        dict(src="198.18.0.1", sport=40000 + k, dst=f"198.18.1.{k % dests + 1}", dport=80,
             state=TCP_TIME_WAIT, timer=3, minisock=True, expires_ms=30_000)
        for k in range(n_tw)
    ]  # fmt: skip
    rows.append(dict(src="0.0.0.0", sport=8080, dst="0.0.0.0", dport=0, state=TCP_LISTEN))
    rows.append(dict(src="198.18.0.1", sport=41000, dst="198.18.2.1", dport=5432,
                     state=TCP_ESTABLISHED, inode=3))  # fmt: skip
    labels = {"inode": str(4026532000 + i), "netns": f"cni-{i:04d}", "kind": "pod",
              "namespace": f"team-{i % 7}", "pod": f"svc-{i}", "container": "app"}  # fmt: skip
    if i == 0:
        labels = {"inode": "4026531833", "netns": "host", "kind": "host", "host": "true"}
    return Snapshot(
        sockets=rows_to(rows), config=CFG, namespace=f"netns:{labels['netns']}",
        counters={"TW": 1000 + i, "ActiveOpens": 10 * i}, labels=labels,
    )  # fmt: skip


def node(n_pods: int) -> list[Snapshot]:
    # usage grows with i, so the nearest exhaustion are the last ones
    return [pod_snapshot(i, min(5 + i, 990)) for i in range(n_pods + 1)]


def collect(snaps: list[Snapshot], skipped: list[tuple[Mapping[str, str], str]] | None = None,
            **kw: int) -> list:  # fmt: skip
    c = TimewaitCollector(fleet=lambda: (snaps, skipped or []), ttl_s=0, **kw)
    return c.collect_now()


def series(fams: list) -> list:
    return [s for f in fams for s in f.samples]


def test_every_series_has_the_kubernetes_labels() -> None:
    fams = collect(node(3), max_netns=10)
    for s in series(fams):
        if s.name.startswith("timewait_namespaces"):
            assert set(s.labels) == {"set"}
            continue
        assert {"netns", "namespace", "pod", "container"} <= set(s.labels), s
    tw = {(s.labels["netns"], s.labels["pod"], s.labels["namespace"]): s.value
          for s in series(fams) if s.name == "timewait_time_wait_sockets"
          and s.labels["side"] == "client"}  # fmt: skip
    assert tw[("cni-0003", "svc-3", "team-3")] == 8
    assert tw[("host", "", "")] == 5


def test_host_and_nearest_exported_one_by_one_the_rest_summed() -> None:
    snaps = node(30)
    fams = collect(snaps, max_netns=5)
    by_netns = {s.labels["netns"] for s in series(fams) if "netns" in s.labels}
    assert by_netns == {"host", "cni-0030", "cni-0029", "cni-0028", "cni-0027", "cni-0026",
                        "other", "all"}  # fmt: skip
    vals = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in series(fams)}

    def v(name: str, **labels: str) -> float:
        full = {"netns": "other", "namespace": "", "pod": "", "container": "", **labels}
        return vals[(name, tuple(sorted(full.items())))]

    rest = range(1, 26)  # pods 1..25 are summed
    assert v("timewait_time_wait_sockets", side="client") == sum(5 + i for i in rest)
    assert v("timewait_sockets", state="LISTEN") == 25
    analyses = [analyze(snaps[i]) for i in rest]
    in_use = sum(int(a.dest_in_use.sum()) for a in analyses)
    usable = sum(a.ports.capacity * a.n_destinations for a in analyses)
    assert v("timewait_destination_ports_in_use", destination="other") == in_use
    assert v("timewait_destination_usable_ports", destination="other") == usable
    assert v("timewait_destination_port_usage_ratio", destination="other") == pytest.approx(
        in_use / usable
    )
    assert not [k for k in vals if k[0].startswith("timewait_tcpext") and "other" in str(k)]
    sets = {s.labels["set"]: s.value for s in series(fams) if s.name == "timewait_namespaces"}
    assert sets == {"exported": 6, "aggregated": 25, "vanished": 0, "failed": 0}


def test_series_count_is_bounded_at_500_pods() -> None:
    """500 pods: one by one they would be ~60k series; the bound keeps it to max_netns + 2
    namespaces' worth (the numbers are README's "Containers and Kubernetes")."""
    snaps = node(500)
    unbounded = len(series(collect(snaps, max_netns=10_000)))
    bounded = len(series(collect(snaps, max_netns=20)))
    biggest = len(series(collect(snaps[-1:], max_netns=1)))  # one pod, with the scan-wide ones
    print(f"series: 500 pods one by one {unbounded}, bounded (20) {bounded}, one pod {biggest}")
    assert unbounded > 500 * 60
    assert bounded <= 22 * biggest + 60  # host + 20 one by one, "other"'s sums
    assert bounded < unbounded / 20


def test_vanished_and_failing_namespaces_are_counted_not_fatal() -> None:
    bad = pod_snapshot(2, 3)
    object.__setattr__(bad, "config", "not a config")  # analysis blows up on it
    gone = [({"inode": "9", "netns": "cni-x"}, "vanished during the scan")]
    fams = collect([pod_snapshot(0, 1), pod_snapshot(1, 9), bad], skipped=gone)
    sets = {s.labels["set"]: s.value for s in series(fams) if s.name == "timewait_namespaces"}
    assert sets == {"exported": 2, "aggregated": 0, "vanished": 1, "failed": 1}
    errs = [s.value for s in series(fams) if s.name == "timewait_collection_errors_total"]
    assert errs == [1]


def test_scan_failure_answers_with_an_error() -> None:
    def fail() -> tuple[list[Snapshot], list[tuple[Mapping[str, str], str]]]:
        from timewait.live.netns import NeedRoot

        raise NeedRoot("looking into netns:x needs root")

    c = TimewaitCollector(fleet=fail, ttl_s=0)
    fams = c.collect_now()
    err = [s for s in series(fams) if s.name == "timewait_collection_error"]
    assert [(s.labels["netns"], s.value) for s in err] == [("all", 1)]


def test_all_netns_with_netns_is_refused() -> None:
    with pytest.raises(ValueError, match="all_netns"):
        TimewaitCollector(("web",), all_netns=True)
