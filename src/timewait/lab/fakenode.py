"""A Kubernetes/Docker node in miniature, on the real kernel: namespaces named as pods and
containers, for the tests and the benchmark of `--all-netns` (issue 14).

Theory of operation
-------------------
`FakeNode(...)` is a context manager that builds, and on every way out removes:
- one throwaway network namespace per pod, container and plain netns (lab.namespaces, named
  tw-<pid>-<random>), with a known number of client TIME_WAITs in it toward 127.0.0.1:8080,
  inside a narrow port range (`port_range`) with tcp_tw_reuse=0, so the fullest pool's usage
  is exactly time_waits / range size: rankings are known in advance;
- a process in each pod and container namespace (lab.namespaces.NetnsProcess, which holds the
  listener), filed in a cgroup named as the runtime names it (lab.cgroups):
  kubelet + containerd, systemd driver:
    kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/
    cri-containerd-<id>.scope
  kubelet + containerd, cgroupfs driver: kubepods/burstable/pod<uid>/<id>
  CRI-O: .../kubepods-burstable-pod<uid_>.slice/crio-<id>.scope
  Docker, systemd driver: system.slice/docker-<id>.scope (v2)
  Docker, cgroupfs driver on a hybrid machine: docker/<id> in the v1 name=systemd hierarchy
  A pod may have a sandbox (pause) process besides its app containers, as real ones do;
- fake kubelet directories in a temp dir (lab.owner.make_temp_dir): pods/NS_NAME_UID/CONTAINER/
  and containers/POD_NS_CONTAINER-ID.log, and docker/ID/config.v2.json for Docker names;
  `roots` points discovery at them, so nothing is written under /var/log or /var/lib;
- optionally an unnamed namespace (unshare(CLONE_NEWNET) in a child, no /run/netns entry)
  whose only name is its process's command, and host-network pods: processes in the machine's
  own namespace filed under a kubepods cgroup.
`expected` maps each namespace's inode to what discovery must say about it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

from timewait.lab import cgroups, owner
from timewait.lab.namespaces import (
    NetnsProcess,
    fork_child,
    reap,
    run_in_netns,
    throwaway_netns,
    write_sysctl,
)
from timewait.live.discover import Roots

CLONE_NEWNET: Final = 0x40000000
PR_SET_NAME: Final = 15
DEST: Final = ("127.0.0.1", 8080)
UNSHARED_COMM: Final = "tw-unshared"


@dataclass(frozen=True, kw_only=True)
class Pod:
    """A pod: its namespace, name and containers; `pod_dir=False` leaves no kubelet pod
    directory (the uid is then all a node can tell)."""

    namespace: str
    name: str
    time_waits: int
    containers: tuple[str, ...] = ("app",)
    runtime: str = "containerd"  # or "cri-o"
    driver: str = "systemd"  # or "cgroupfs"
    sandbox: bool = False  # a pause process besides the app containers
    pod_dir: bool = True
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass(frozen=True, kw_only=True)
class Container:
    """A Docker container; driver "systemd" (v2 docker-<id>.scope) or "cgroupfs-v1"
    (/docker/<id> in the v1 name=systemd hierarchy: a hybrid machine)."""

    name: str
    time_waits: int
    driver: str = "systemd"


@dataclass(frozen=True)
class Expected:
    """What discovery must report for one namespace."""

    inode: int
    name: str  # FoundNamespace.name
    kind: str
    time_waits: int
    labels: dict[str, str]


def _hex64() -> str:
    return secrets.token_hex(32)


def fill(port_range: tuple[int, int], n: int) -> tuple[int, list[Any]]:
    """Inside a namespace: `n` client TIME_WAITs to 127.0.0.1:8080 from `port_range`, with
    tcp_tw_reuse=0 (so none is counted reusable); keeps the listener."""
    write_sysctl("ip_local_port_range", f"{port_range[0]} {port_range[1]}")
    write_sysctl("tcp_tw_reuse", "0")
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(DEST)
    ls.listen(512)
    for _ in range(n):
        c = socket.create_connection(DEST)
        s, _ = ls.accept()
        c.close()  # the client closes first: its side ends in TIME_WAIT
        s.close()
    return n, [ls]


def _idle() -> tuple[None, None]:
    return None, None


def _fill_and_exit(port_range: tuple[int, int], n: int) -> int:
    made, keep = fill(port_range, n)
    for s in keep:
        s.close()
    return made


class _Unshared:
    """A child in a namespace of its own that no /run/netns entry names."""

    def __init__(self, port_range: tuple[int, int], n: int) -> None:
        self.pid = 0
        self._ctl = -1
        self.inode = 0
        r, w = os.pipe()
        ctl_r, ctl_w = os.pipe()
        pid = fork_child("unshared netns holder")
        if pid == 0:  # pragma: no cover - child
            try:
                os.close(r)
                os.close(ctl_w)
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.unshare(CLONE_NEWNET) != 0:
                    os._exit(1)
                libc.prctl(PR_SET_NAME, UNSHARED_COMM.encode(), 0, 0, 0)
                subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
                fill(port_range, n)
                os.write(w, str(os.stat("/proc/self/ns/net").st_ino).encode())
                os.close(w)
                os.read(ctl_r, 1)
            finally:
                os._exit(0)
        os.close(w)
        os.close(ctl_r)
        self.pid, self._ctl = pid, ctl_w
        with os.fdopen(r, "rb") as f:
            data = f.read()
        if not data:
            self.stop()
            raise RuntimeError("the unshared child died before reporting")
        self.inode = int(data)

    def stop(self) -> None:
        if self._ctl >= 0:
            os.close(self._ctl)
            self._ctl = -1
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            reap(self.pid)
            self.pid = 0


class _HostProcess:
    """A child that just waits, in the machine's own namespace (a host-network pod)."""

    def __init__(self) -> None:
        ctl_r, ctl_w = os.pipe()
        pid = fork_child("host-network pod")
        if pid == 0:  # pragma: no cover - child
            try:
                os.close(ctl_w)
                os.read(ctl_r, 1)
            finally:
                os._exit(0)
        os.close(ctl_r)
        self.pid, self._ctl = pid, ctl_w

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._ctl)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        reap(self.pid)


def _pod_cgroup(p: Pod, cid: str) -> str:
    qos = "burstable"
    if p.driver == "cgroupfs":
        return f"kubepods/{qos}/pod{p.uid}/{cid}"
    slice_ = (
        f"kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{p.uid.replace('-', '_')}.slice"
    )
    scope = "crio" if p.runtime == "cri-o" else "cri-containerd"
    return f"{slice_}/{scope}-{cid}.scope"


class FakeNode:
    """See the module docstring. Use as a context manager; `expected`, `roots`, `names`."""

    def __init__(
        self,
        *,
        pods: tuple[Pod, ...] = (),
        containers: tuple[Container, ...] = (),
        plain: tuple[int, ...] = (),
        unnamed: tuple[int, ...] = (),
        host_network: tuple[Pod, ...] = (),
        port_range: tuple[int, int] = (40000, 40099),
        prefix: str = "tw-",
    ) -> None:
        self.pods, self.containers, self.plain = pods, containers, plain
        self.unnamed, self.host_network = unnamed, host_network
        self.port_range, self.prefix = port_range, prefix
        self.expected: dict[int, Expected] = {}
        self.names: dict[int, str] = {}  # inode -> /run/netns name
        self.host_pids: list[int] = []
        self._stack = contextlib.ExitStack()
        self.roots = Roots()
        self.tmp = ""

    def __enter__(self) -> FakeNode:
        try:
            self._build()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    # -- building ------------------------------------------------------------------------

    def _netns(self) -> tuple[str, int]:
        name = self._stack.enter_context(throwaway_netns(self.prefix))
        ino = os.stat(f"/run/netns/{name}").st_ino
        self.names[ino] = name
        return name, ino

    def _process(self, name: str, n: int | None) -> int:
        proc = (
            NetnsProcess(name, fill, self.port_range, n)
            if n is not None
            else NetnsProcess(name, _idle)
        )
        self._stack.callback(proc.stop)
        proc.start()
        return proc.pid

    def _build(self) -> None:
        tmp = owner.make_temp_dir()
        self._stack.callback(owner.remove_temp_dir, tmp)
        self.tmp = tmp
        pods_dir, cont_dir, docker_dir = (
            os.path.join(tmp, d) for d in ("pods", "containers", "docker")
        )
        for d in (pods_dir, cont_dir, docker_dir):
            os.mkdir(d)
        self.roots = Roots(pods=pods_dir, containers=cont_dir, docker=docker_dir)
        v2 = self._stack.enter_context(cgroups.cgroup_tree("v2"))
        v1: cgroups.CgroupTree | None = None

        def pod_files(p: Pod, ids: dict[str, str]) -> None:
            if p.pod_dir:
                base = os.path.join(pods_dir, f"{p.namespace}_{p.name}_{p.uid}")
                for c in p.containers:
                    os.makedirs(os.path.join(base, c))
            for c, cid in ids.items():
                link = os.path.join(cont_dir, f"{p.name}_{p.namespace}_{c}-{cid}.log")
                with open(link, "w"):
                    pass

        for p in self.pods:
            name, ino = self._netns()
            ids = {c: _hex64() for c in p.containers}
            if p.sandbox:
                v2.place(self._process(name, None), _pod_cgroup(p, _hex64()))
            first = True
            for cid in ids.values():
                pid = self._process(name, p.time_waits if first else None)
                first = False
                v2.place(pid, _pod_cgroup(p, cid))
            if p.pod_dir:
                pod_files(p, ids)
            labels = {"kind": "pod", "pod_uid": p.uid, "netns": name}
            if p.pod_dir:
                labels |= {"namespace": p.namespace, "pod": p.name,
                           "container": ",".join(sorted(p.containers))}  # fmt: skip
            self.expected[ino] = Expected(
                ino, f"{p.namespace}/{p.name}" if p.pod_dir else f"pod {p.uid[:8]}", "pod",
                p.time_waits, labels,
            )  # fmt: skip
        for ct in self.containers:
            name, ino = self._netns()
            cid = _hex64()
            pid = self._process(name, ct.time_waits)
            if ct.driver == "cgroupfs-v1":
                if v1 is None:
                    v1 = self._stack.enter_context(cgroups.cgroup_tree("v1-systemd"))
                v1.place(pid, f"docker/{cid}")
            else:
                v2.place(pid, f"system.slice/docker-{cid}.scope")
            os.makedirs(os.path.join(docker_dir, cid))
            with open(os.path.join(docker_dir, cid, "config.v2.json"), "w") as f:
                json.dump({"ID": cid, "Name": f"/{ct.name}"}, f)
            self.expected[ino] = Expected(
                ino, ct.name, "container", ct.time_waits,
                {"kind": "container", "container": ct.name, "runtime": "docker",
                 "container_id": cid[:12], "netns": name},
            )  # fmt: skip
        for n in self.plain:
            name, ino = self._netns()
            run_in_netns(name, _fill_and_exit, self.port_range, n)
            self.expected[ino] = Expected(ino, name, "netns", n, {"kind": "netns", "netns": name})
        for n in self.unnamed:
            u = _Unshared(self.port_range, n)
            self._stack.callback(u.stop)
            self.expected[u.inode] = Expected(
                u.inode, f"{UNSHARED_COMM}[{u.pid}]", "process", n,
                {"kind": "process", "comm": UNSHARED_COMM, "pid": str(u.pid),
                 "netns": f"[{u.inode}]"},
            )  # fmt: skip
        for p in self.host_network:
            h = _HostProcess()
            self._stack.callback(h.stop)
            self.host_pids.append(h.pid)
            cid = _hex64()
            v2.place(h.pid, _pod_cgroup(p, cid))
            pod_files(p, {c: cid for c in p.containers[:1]})

    def usage(self, inode: int) -> float:
        """The fullest pool's expected usage in namespace `inode`."""
        size = self.port_range[1] - self.port_range[0] + 1
        return self.expected[inode].time_waits / size
