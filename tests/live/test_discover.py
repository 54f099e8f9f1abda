"""live.discover on fake trees (no root): cgroup path patterns of Docker, containerd, CRI-O and
Podman on v2-only and hybrid machines, kubelet pod directories, one entry per namespace,
host-network pods, names by kind. A namespace is a file; processes in one namespace share it
by hard link (same inode), as /proc/PID/ns/net links share the namespace's inode."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from timewait.live.discover import Roots, discover, parse_cgroup, parse_cgroup_path

CID = "a" * 64
CID2 = "b" * 64
UID = "6e0d7b1c-1f1e-4e4b-9c3a-2f5d8b7a6c41"

V2_ONLY_CONTAINERD = (
    "0::/kubepods.slice/kubepods-burstable.slice/"
    f"kubepods-burstable-pod{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope\n"
)
HYBRID_DOCKER_CGROUPFS = (
    "12:pids:/docker/" + CID + "\n11:memory:/docker/" + CID + "\n"
    "1:name=systemd:/docker/" + CID + "\n0::/\n"
)


@pytest.mark.parametrize(
    ("text", "runtime", "cid", "uid"),
    [
        (V2_ONLY_CONTAINERD, "containerd", CID, UID),
        (f"0::/kubepods/besteffort/pod{UID}/{CID}\n", "cri", CID, UID),  # cgroupfs driver
        (f"0::/kubepods/pod{UID}/{CID}\n", "cri", CID, UID),  # guaranteed QoS
        (
            f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{CID}.scope\n",
            "cri-o", CID, UID,
        ),
        (f"0::/system.slice/docker-{CID}.scope\n", "docker", CID, ""),
        (HYBRID_DOCKER_CGROUPFS, "docker", CID, ""),  # hybrid: v2 says "/", v1 names it
        (f"0::/machine.slice/libpod-{CID}.scope\n", "podman", CID, ""),
        # inside a pod with its own cgroup namespace, paths are relative to it
        (f"0::/../../kubepods-besteffort-pod{UID.replace('-', '_')}.slice/"
         f"cri-containerd-{CID}.scope\n", "containerd", CID, UID),
        (f"0::/system.slice/crio-conmon-{CID}.scope\n", "", "", ""),  # conmon, not a container
        ("0::/user.slice/user-0.slice/session-1.scope\n", "", "", ""),
        ("0::/\n", "", "", ""),
        (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
         f"{UID.replace('-', '_')}.slice\n", "", "", UID),  # the pod's slice itself
    ],
)  # fmt: skip
def test_parse_cgroup_patterns(text: str, runtime: str, cid: str, uid: str) -> None:
    info = parse_cgroup(text)
    assert (info.runtime, info.container_id, info.pod_uid) == (runtime, cid, uid)


def test_a_bare_id_names_a_container_only_under_docker_or_a_pod() -> None:
    assert parse_cgroup_path(f"/some/{CID}").container_id == ""
    assert parse_cgroup_path(f"/docker/{CID}").container_id == CID


class Tree:
    """A fake /proc, /run/netns, kubelet and docker directories under tmp_path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc = root / "proc"
        self.ns = root / "ns"  # one file per namespace: its inode is the namespace's
        self.run = root / "run-netns"
        self.pods = root / "var-log" / "pods"
        self.containers = root / "var-log" / "containers"
        self.docker = root / "docker"
        for d in (self.proc, self.ns, self.run, self.pods, self.containers, self.docker):
            d.mkdir(parents=True)
        (self.proc / "self").mkdir()
        (self.proc / "self" / "mountinfo").write_text("")
        self.namespace("host")

    def namespace(self, key: str) -> int:
        p = self.ns / key
        if not p.exists():
            p.write_text("")
        return p.stat().st_ino

    def process(self, pid: int, ns: str, *, cgroup: str = "0::/\n", comm: str = "sh",
                start: int | None = None) -> None:  # fmt: skip
        d = self.proc / str(pid)
        (d / "ns").mkdir(parents=True)
        os.link(self.ns / ns, d / "ns" / "net")
        (d / "cgroup").write_text(cgroup)
        (d / "comm").write_text(comm + "\n")
        st = start if start is not None else pid
        fields = ["S", *["0"] * 18, str(st), "0"]
        (d / "stat").write_text(f"{pid} ({comm}) " + " ".join(fields) + "\n")

    def named(self, name: str, ns: str) -> None:
        os.link(self.ns / ns, self.run / name)

    def roots(self) -> Roots:
        return Roots(proc=str(self.proc), run_netns=str(self.run), pods=str(self.pods),
                     containers=str(self.containers), docker=str(self.docker))  # fmt: skip


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    t = Tree(tmp_path)
    t.process(1, "host", comm="systemd")
    t.process(2, "host", comm="kthreadd")
    return t


def test_one_entry_per_namespace_host_first(tree: Tree) -> None:
    tree.namespace("a")
    for pid in (100, 101, 102):
        tree.process(pid, "a", comm="nginx")
    tree.named("web", "a")
    d = discover(tree.roots())
    assert [f.name for f in d.namespaces] == ["host", "web"]
    host, web = d.namespaces
    assert host.host and host.labels["netns"] == "host" and host.processes == 2
    assert web.processes == 3 and web.kind == "netns"
    assert web.path == str(tree.run / "web")  # the named path first, then processes
    assert web.paths[1:] == tuple(f"{tree.proc}/{p}/ns/net" for p in (100, 101, 102))
    assert web.labels["comm"] == "nginx" and web.labels["pid"] == "100"


def test_kubernetes_pod_named_from_kubelet_directories(tree: Tree) -> None:
    tree.namespace("pod")
    sandbox = CID2
    base = ("0::/kubepods.slice/kubepods-burstable.slice/"
            f"kubepods-burstable-pod{UID.replace('-', '_')}.slice/")  # fmt: skip
    tree.process(300, "pod", cgroup=f"{base}cri-containerd-{sandbox}.scope\n", comm="pause")
    tree.process(301, "pod", cgroup=f"{base}cri-containerd-{CID}.scope\n", comm="java")
    (tree.pods / f"shop_checkout-7d9f6c-x2x4q_{UID}" / "checkout").mkdir(parents=True)
    (tree.containers / f"checkout-7d9f6c-x2x4q_shop_checkout-{CID}.log").write_text("")
    (f,) = [f for f in discover(tree.roots()).namespaces if not f.host]
    assert f.name == "shop/checkout-7d9f6c-x2x4q"
    assert f.kind == "pod"
    assert f.labels["namespace"] == "shop" and f.labels["pod"] == "checkout-7d9f6c-x2x4q"
    assert f.labels["container"] == "checkout"  # the app, not the pause sandbox
    assert f.labels["container_id"] == CID[:12] and f.labels["runtime"] == "containerd"
    assert f.labels["pod_uid"] == UID
    assert f.labels["comm"] == "pause"  # the oldest process: the sandbox
    assert f.labels["netns"] == f"[{f.inode}]"  # no /run/netns entry


def test_pod_without_kubelet_directory_keeps_its_uid(tree: Tree) -> None:
    tree.namespace("pod")
    tree.process(300, "pod", cgroup=V2_ONLY_CONTAINERD)
    (f,) = [f for f in discover(tree.roots()).namespaces if not f.host]
    assert f.name == f"pod {UID[:8]}" and "pod" not in f.labels and f.labels["pod_uid"] == UID


def test_docker_container_named_from_its_config(tree: Tree) -> None:
    tree.namespace("c")
    tree.process(400, "c", cgroup=HYBRID_DOCKER_CGROUPFS, comm="redis-server")
    (tree.docker / CID).mkdir()
    (tree.docker / CID / "config.v2.json").write_text('{"ID": "x", "Name": "/redis"}')
    (f,) = [f for f in discover(tree.roots()).namespaces if not f.host]
    assert (f.name, f.kind, f.labels["runtime"]) == ("redis", "container", "docker")
    (tree.docker / CID / "config.v2.json").write_text("not json")
    (g,) = [f for f in discover(tree.roots()).namespaces if not f.host]
    assert g.name == CID[:12]  # unreadable name: the short id


def test_host_network_pods_are_listed_on_the_host(tree: Tree) -> None:
    tree.process(500, "host", cgroup=V2_ONLY_CONTAINERD, comm="kube-proxy")
    tree.process(501, "host", cgroup=f"0::/system.slice/docker-{CID2}.scope\n")
    (tree.pods / f"kube-system_kube-proxy-8xk2p_{UID}").mkdir()
    d = discover(tree.roots())
    assert len(d.namespaces) == 1
    assert d.namespaces[0].labels["host_network"] == (
        f"docker {CID2[:12]},kube-system/kube-proxy-8xk2p"
    )


def test_main_process_is_the_oldest(tree: Tree) -> None:
    tree.namespace("x")
    tree.process(900, "x", comm="worker", start=50)
    tree.process(700, "x", comm="supervisor", start=10)
    (f,) = [f for f in discover(tree.roots()).namespaces if not f.host]
    assert f.name == "supervisor[700]" and f.kind == "process"


def test_namespace_kept_by_a_bind_mount_only(tree: Tree) -> None:
    ino = tree.namespace("m")
    point = tree.root / "docker-netns" / "1a2b3c"
    point.parent.mkdir()
    os.link(tree.ns / "m", point)
    line = f"512 30 0:4 net:[{ino}] {point} rw - nsfs nsfs rw\n"
    (tree.proc / "self" / "mountinfo").write_text(line)
    (f,) = [f for f in discover(tree.roots()).namespaces if not f.host]
    assert f.path == str(point) and f.kind == "mount" and f.processes == 0


def test_unreadable_or_vanished_processes_are_skipped(tree: Tree) -> None:
    (tree.proc / "123").mkdir()  # exited between listdir and stat: no ns/net
    d = discover(tree.roots())
    assert [f.name for f in d.namespaces] == ["host"]


def test_roots_from_env_and_pods_dir() -> None:
    r = Roots.from_env(env={"TIMEWAIT_PODS_DIR": "/x/pods"})
    assert (r.pods, r.containers) == ("/x/pods", "/x/containers")
    r = Roots.from_env("/y/pods/", env={"TIMEWAIT_DOCKER_DIR": "/d"})
    assert (r.pods, r.containers, r.docker) == ("/y/pods/", "/y/containers", "/d")
    assert Roots.from_env(env={}).pods == "/var/log/pods"
