"""--all-netns on the real kernel (issue 14): a node in miniature (lab.fakenode) of 21 private
namespaces -- pods named as kubelet + containerd and CRI-O name them (systemd and cgroupfs
drivers, with and without a pause sandbox, one without a kubelet pod directory), Docker
containers (systemd driver in the v2 tree; cgroupfs in the v1 name=systemd hierarchy when the
machine is hybrid), plain `ip netns` namespaces and an unnamed one -- plus a host-network
pod, each holding a known number of TIME_WAITs in a 100-port range.

Other runs' namespaces appear in every scan: each assertion looks at ours (by inode) and
tolerates the rest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.helpers import need_root

pytestmark = pytest.mark.root

TIMEWAIT = str(Path(sys.executable).with_name("timewait"))


def _node_spec() -> dict[str, object]:
    from timewait.lab.fakenode import Container, Pod

    pods = (
        Pod(namespace="shop", name="checkout-7d9f6c-x2x4q", time_waits=97, sandbox=True),
        Pod(namespace="shop", name="cart-5b8c7-p9t2m", time_waits=80,
            containers=("cart", "istio-proxy"), sandbox=True),
        Pod(namespace="shop", name="search-6c5d4-kq8zr", time_waits=61, driver="cgroupfs"),
        Pod(namespace="kube-system", name="coredns-5d78c9869d-abcde", time_waits=44,
            runtime="cri-o"),
        Pod(namespace="default", name="batch-28391-zz9xk", time_waits=33),
        Pod(namespace="default", name="web-0", time_waits=27, driver="cgroupfs",
            sandbox=True),
        Pod(namespace="default", name="web-1", time_waits=26),
        Pod(namespace="default", name="web-2", time_waits=25),
        Pod(namespace="monitoring", name="grafana-7f8c9-llm2n", time_waits=18),
        Pod(namespace="monitoring", name="loki-0", time_waits=14),
        Pod(namespace="prod", name="orphan-uid-only", time_waits=12, pod_dir=False),
        Pod(namespace="prod", name="api-5c7b-f2r8d", time_waits=9, runtime="cri-o",
            driver="cgroupfs"),
    )  # fmt: skip
    containers = (
        Container(name="redis", time_waits=71),
        Container(name="postgres", time_waits=52),
        Container(name="legacy-app", time_waits=38, driver="cgroupfs-v1"),
        Container(name="mailer", time_waits=5),
    )
    host_network = (Pod(namespace="kube-system", name="kube-proxy-8xk2p", time_waits=0,
                        containers=("kube-proxy",)),)  # fmt: skip
    return {
        "pods": pods,
        "containers": containers,
        "plain": (88, 21, 3, 2),
        "unnamed": (66,),
        "host_network": host_network,
    }


@pytest.fixture(scope="module")
def node() -> Iterator[object]:
    need_root()
    from timewait.lab import cgroups
    from timewait.lab.fakenode import FakeNode

    spec = _node_spec()
    if "v1-systemd" not in cgroups.hierarchies():  # a v2-only machine: Docker on systemd
        from dataclasses import replace

        spec["containers"] = tuple(
            replace(c, driver="systemd")
            for c in spec["containers"]  # type: ignore[attr-defined]
        )
    with FakeNode(**spec) as n:  # type: ignore[arg-type]
        yield n


def _ours(node: object, items: list[object]) -> list[object]:
    return [i for i in items if i.inode in node.expected]  # type: ignore[attr-defined]


def test_discovery_names_every_namespace(node: object) -> None:
    """One entry per namespace of ours, named by pod, container, netns name or process."""
    from timewait.live.discover import discover

    found = discover(node.roots).namespaces  # type: ignore[attr-defined]
    assert len(node.expected) >= 20  # type: ignore[attr-defined]
    inodes = [f.inode for f in found]
    assert len(inodes) == len(set(inodes)), "one entry per inode"
    ours = {f.inode: f for f in found if f.inode in node.expected}  # type: ignore[attr-defined]
    assert set(ours) == set(node.expected)  # type: ignore[attr-defined]
    for ino, exp in node.expected.items():  # type: ignore[attr-defined]
        f = ours[ino]
        assert f.name == exp.name, (f.labels, exp)
        assert f.kind == exp.kind
        for k, v in exp.labels.items():
            assert f.labels.get(k) == v, (k, f.labels, exp.labels)
    # a pod with a sandbox: two processes, one entry
    two = [f for f in ours.values() if f.name == "shop/checkout-7d9f6c-x2x4q"]
    assert two[0].processes == 2
    assert two[0].labels["runtime"] == "containerd"
    crio = [f for f in ours.values() if f.name.startswith("kube-system/coredns")]
    assert crio[0].labels["runtime"] == "cri-o"


def test_host_network_pod_is_named_on_the_host_not_counted_twice(node: object) -> None:
    from timewait.live.discover import discover

    found = discover(node.roots).namespaces  # type: ignore[attr-defined]
    host = [f for f in found if f.host]
    assert len(host) == 1
    assert "kube-system/kube-proxy-8xk2p" in host[0].labels["host_network"].split(",")
    assert not [f for f in found if not f.host and "kube-proxy" in f.name]


def _doctor(node: object, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TIMEWAIT_DOCKER_DIR": node.roots.docker}  # type: ignore[attr-defined]
    return subprocess.run(
        [TIMEWAIT, "doctor", "--all-netns", "--pods-dir", node.roots.pods, *args],  # type: ignore[attr-defined]
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip


def test_doctor_all_netns_json_ranks_and_names(node: object) -> None:
    """`doctor --all-netns --json`: one entry per namespace with its labels, our namespaces in
    the order of their fullest pool, TIME_WAIT counts as made, exit status from the worst."""
    r = _doctor(node, "--json", "--interval", "0")
    assert r.returncode in (0, 1, 2), r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == "timewait-doctor-all/1"
    entries = [e for e in doc["namespaces"] if e["inode"] in node.expected]  # type: ignore[attr-defined]
    assert len(entries) == len(node.expected)  # type: ignore[attr-defined]
    for e in entries:
        exp = node.expected[e["inode"]]  # type: ignore[attr-defined]
        assert e["name"] == exp.name
        assert e["time_wait"] == exp.time_waits, e["name"]
        assert e["worst_pool"]["usage"] == pytest.approx(node.usage(e["inode"])), e["name"]  # type: ignore[attr-defined]
        assert e["doctor"]["schema"] == "timewait-doctor/3"
        assert e["doctor"]["totals"]["time_wait"] == exp.time_waits
        for k, v in exp.labels.items():
            assert e["labels"][k] == v
    want = sorted(node.expected.values(), key=lambda x: -x.time_waits)  # type: ignore[attr-defined]
    assert [e["name"] for e in entries] == [x.name for x in want]
    assert entries[0]["name"] == "shop/checkout-7d9f6c-x2x4q"
    assert entries[0]["status"] == "critical"  # 97 of 100 ports
    assert r.returncode == doc["exit_status"] == 2  # the worst namespace's (ours or worse)
    ranks = [e["rank"] for e in entries]
    assert ranks == sorted(ranks)
    assert "kube-system/kube-proxy-8xk2p" in doc["host_network"]


def test_doctor_all_netns_text_names_the_pod_nearest_exhaustion(node: object) -> None:
    """The table ranks namespaces; the first report is for the worst (ours, or a worse one
    of another run); our worst pod is named in the table with its worst pool."""
    r = _doctor(node, "--interval", "0", "--rows", "0", "--worst", "1")
    assert r.returncode == 2, r.stderr
    out = r.stdout
    assert "Network namespaces by nearness to exhaustion" in out
    lines = out.splitlines()
    table = [ln for ln in lines if "│" in ln]
    ours = [ln for ln in table if "shop/" in ln or "redis" in ln]
    assert "shop/checkout-7d9f6c-x2x4q" in ours[0] and "97%" in ours[0]
    assert "connect() 127.0.0.1 -> 127.0.0.1:8080" in ours[0]
    assert "kube-system/kube-proxy-8xk2p" in out  # the host-network line
    assert "timewait doctor  CRITICAL" in out  # the worst namespace's full report


def test_exporter_labels_the_pod_nearest_exhaustion(node: object) -> None:
    """The exporter's series carry pod, namespace and container; at most max_netns
    namespaces one by one (+ host + other)."""
    from prometheus_client import CollectorRegistry

    from timewait.exporter.collector import TimewaitCollector
    from timewait.exporter.fleet import ALL

    os.environ["TIMEWAIT_DOCKER_DIR"] = node.roots.docker  # type: ignore[attr-defined]
    try:
        c = TimewaitCollector(all_netns=True, max_netns=50, pods_dir=node.roots.pods)  # type: ignore[attr-defined]
        reg = CollectorRegistry()
        reg.register(c)
        got = reg.get_sample_value(
            "timewait_destination_port_usage_ratio",
            {"netns": node.names[_inode_of(node, "shop/checkout-7d9f6c-x2x4q")],  # type: ignore[attr-defined]
             "namespace": "shop", "pod": "checkout-7d9f6c-x2x4q", "container": "app",
             "destination": "127.0.0.1 -> 127.0.0.1:8080"},
        )  # fmt: skip
        assert got == pytest.approx(0.97)
        tw = reg.get_sample_value(
            "timewait_time_wait_sockets",
            {"netns": node.names[_inode_of(node, "redis")], "namespace": "", "pod": "",  # type: ignore[attr-defined]
             "container": "redis", "side": "client"},
        )  # fmt: skip
        assert tw == 71
        assert reg.get_sample_value("timewait_collection_error", {
            "netns": ALL, "namespace": "", "pod": "", "container": ""}) == 0  # fmt: skip
        small = TimewaitCollector(all_netns=True, max_netns=3, pods_dir=node.roots.pods)  # type: ignore[attr-defined]
        fams = small.collect_now()
        netns = {s.labels["netns"] for f in fams for s in f.samples if "netns" in s.labels}
        assert len(netns - {"host", "other", ALL}) == 3
        assert "other" in netns
    finally:
        del os.environ["TIMEWAIT_DOCKER_DIR"]


def _inode_of(node: object, name: str) -> int:
    return next(i for i, e in node.expected.items() if e.name == name)  # type: ignore[attr-defined]


def test_namespace_deleted_during_a_scan_is_skipped_with_a_note() -> None:
    """Discovered, then deleted before its turn: Skipped("vanished"), the others captured."""
    need_root()
    from timewait.lab.namespaces import delete_netns, throwaway_netns
    from timewait.live.discover import discover
    from timewait.live.scan import Captured, Skipped, capture_all

    with throwaway_netns() as keep, throwaway_netns() as doomed:
        found = [f for f in discover().namespaces if f.labels["netns"] in (keep, doomed)]
        assert len(found) == 2

        def before_each(f: object) -> None:
            if f.labels["netns"] == doomed:  # type: ignore[attr-defined]
                delete_netns(doomed)

        got = list(capture_all(found, before_each=before_each))
        by = {i.found.labels["netns"]: i for i in got}
        assert isinstance(by[keep], Captured)
        assert isinstance(by[doomed], Skipped)
        assert by[doomed].reason == "vanished during the scan"


def test_unnamed_namespace_gone_between_discovery_and_arming_is_skipped() -> None:
    """A namespace whose only process exits after discovery: skipped, never an error."""
    need_root()
    from timewait.lab.fakenode import _Unshared
    from timewait.live.discover import discover
    from timewait.live.scan import Skipped, capture_all

    u = _Unshared((40000, 40099), 2)
    try:
        found = [f for f in discover().namespaces if f.inode == u.inode]
        assert len(found) == 1 and found[0].labels["kind"] == "process"
    finally:
        u.stop()
    got = list(capture_all(found))
    assert len(got) == 1 and isinstance(got[0], Skipped)


def test_top_all_netns_prints_one_ranked_frame(node: object) -> None:
    """Off a terminal, `top --all-netns` prints one frame: our pods, nearest first."""
    env = {**os.environ, "TIMEWAIT_DOCKER_DIR": node.roots.docker}  # type: ignore[attr-defined]
    r = subprocess.run(
        [TIMEWAIT, "top", "--all-netns", "--pods-dir", node.roots.pods, "--top", "500"],  # type: ignore[attr-defined]
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "timewait top --all-netns" in r.stdout
    rows = [ln for ln in r.stdout.splitlines() if "shop/" in ln]
    shop = ["shop/checkout-7d9f6c-x2x4q", "shop/cart-5b8c7-p9t2m", "shop/search-6c5d4-kq8zr"]
    assert [ln.split("│")[0].strip() for ln in rows] == shop
    assert "97" in rows[0]


@pytest.mark.parametrize(
    "args",
    [
        ["exporter", "--all-netns", "--netns", "x"],
        ["doctor", "--pods-dir", "/tmp"],
        ["top", "--all-netns", "--pid", "1"],
        ["doctor", "--all-netns", "--interval", "2"],
    ],
)
def test_all_netns_usage_errors_are_one_line(args: list[str]) -> None:
    r = subprocess.run([TIMEWAIT, *args], capture_output=True, text=True, check=False)
    assert r.returncode == 64, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "usage error" in r.stderr


def test_report_all_netns_ranks_every_namespace_on_one_page(node: object, tmp_path: Path) -> None:
    """`report --all-netns -o` (issue 16 item 3): the node's ranking with our namespaces by
    name and TIME_WAIT count, the nearest ones in full; the page in Chromium fetches nothing
    and fits a phone."""
    import re

    from tests.browser import chromium_path, open_page

    out = tmp_path / "node.html"
    env = {**os.environ, "TIMEWAIT_DOCKER_DIR": node.roots.docker}  # type: ignore[attr-defined]
    r = subprocess.run(
        [TIMEWAIT, "report", "--all-netns", "--pods-dir", node.roots.pods,  # type: ignore[attr-defined]
         "-o", str(out), "--worst", "2", "--no-plan"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert r.returncode in (0, 1, 2), r.stderr
    page = out.read_text()
    table = page[page.index('<section id="namespaces">') : page.index("</section>")]
    rows = []
    for tr in re.findall(r'<tr class="st-.*?</tr>', table, flags=re.S):
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td.*?</td>", tr, re.S)]
        rows.append(cells)
    by_name = {c[1]: c for c in rows}
    for exp in node.expected.values():  # type: ignore[attr-defined]
        assert exp.name in by_name, exp.name
        assert by_name[exp.name][7] == f"{exp.time_waits:,}", (exp.name, by_name[exp.name])
    assert [int(c[0]) for c in rows] == list(range(1, len(rows) + 1))
    detailed = re.findall(r'<section class="namespace" id="ns(\d+)-top">', page)
    assert detailed == ["1", "2"]  # the two nearest, in rank order, each with its findings
    assert 'id="ns1-findings"' in page and 'id="ns2-pools"' in page
    if chromium_path() is None and os.environ.get("CI") != "true":
        pytest.skip("chromium is not installed")
    shown = open_page(out)
    assert shown.console == [] and shown.requests == []
    assert shown.viewport_width == 390 and shown.scroll_width <= 390
