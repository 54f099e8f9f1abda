"""doctor.fleet: the ranking of namespaces by nearness to exhaustion and the
timewait-doctor-all/1 document, on synthetic snapshots (pure: no kernel)."""

from __future__ import annotations

from typing import Any

from timewait.doctor import diagnose
from timewait.doctor.fleet import SCHEMA, Ranking
from timewait.snapshot import Snapshot, sockets_from_rows
from timewait.status import ExitStatus

from .helpers import S1, SMALL, C, tw


def ns(inode: int, n_tw: int, **labels: str) -> Snapshot:
    """A namespace of 100 ports with `n_tw` client TIME_WAITs toward S1:80."""
    rows = [tw(C, 40000 + i, S1, 80) for i in range(n_tw)]
    kind = labels.pop("kind", "netns")
    return Snapshot(
        sockets=sockets_from_rows(rows), config=SMALL, namespace=f"netns:[{inode}]",
        labels={"inode": str(inode), "netns": f"[{inode}]", "kind": kind, **labels},
    )  # fmt: skip


def ranked(*snaps: Snapshot, **kw: Any) -> Ranking:
    r = Ranking(**kw)
    for s in snaps:
        r.add(diagnose(s))
    return r


def test_ranking_is_by_worst_pool_usage() -> None:
    r = ranked(
        ns(1, 10, kind="host"),
        ns(2, 95, kind="pod", namespace="shop", pod="checkout"),
        ns(3, 50, kind="container", container="redis"),
    )
    assert [m.name for m in r.members()] == ["shop/checkout", "redis", "host"]
    assert [round(m.worst_usage, 2) for m in r.members()] == [0.95, 0.5, 0.1]
    assert r.exit_status == ExitStatus.CRITICAL == max(m.exit_status for m in r.members())


def test_ties_broken_by_time_wait_then_inode() -> None:
    r = ranked(ns(7, 20), ns(5, 20))
    assert [m.inode for m in r.members()] == [5, 7]


def test_keep_holds_only_the_nearest_diagnoses() -> None:
    r = ranked(*(ns(i, i * 9) for i in range(1, 11)), keep=2)
    kept = r.worst_diagnoses()
    assert [m.inode for m, _ in kept] == [10, 9]
    assert all(d.snapshot.labels["inode"] == str(m.inode) for m, d in kept)


def test_json_wraps_one_doctor_document_per_namespace() -> None:
    r = ranked(ns(1, 5, kind="host", host="true", host_network="kube-system/kube-proxy"),
               ns(2, 91, kind="pod", namespace="shop", pod="checkout"),
               documents=True, top=1)  # fmt: skip
    r.skip({"inode": "3", "netns": "gone", "kind": "netns"}, "vanished during the scan")
    doc = r.to_json(hostname="node-1", kernel="6.18.44", notes=("n",))
    assert doc["schema"] == SCHEMA
    assert (doc["status"], doc["exit_status"]) == ("critical", 2)
    assert doc["namespaces_total"] == 2 and doc["host_network"] == ["kube-system/kube-proxy"]
    gone = {"inode": "3", "netns": "gone", "kind": "netns"}
    assert doc["skipped"] == [
        {"inode": 3, "name": "gone", "reason": "vanished during the scan", "labels": gone}
    ]
    first = doc["namespaces"][0]
    assert (first["rank"], first["name"], first["kind"], first["host"]) == (
        1, "shop/checkout", "pod", False)  # fmt: skip
    assert first["labels"]["pod"] == "checkout"
    assert first["worst_pool"] == {"kind": "connect", "label": f"connect() {C} -> {S1}:80",
                                   "headroom": 9, "usage": 0.91}  # fmt: skip
    assert first["doctor"]["schema"] == "timewait-doctor/3"
    assert first["doctor"]["totals"]["time_wait"] == 91
    assert doc["namespaces"][1]["host"] is True


def test_empty_ranking_is_healthy() -> None:
    r = Ranking()
    assert r.exit_status == ExitStatus.OK and r.to_json()["namespaces"] == []
