"""Every network namespace of the machine, each named by what runs in it (issue 14).

    from timewait.live.discover import discover
    for ns in discover().namespaces:          # the machine's own first, then by inode
        ns.inode, ns.path, ns.labels           # what any command needs: enter ns.path
        ns.name                                # "prod/checkout-6d4f", "docker web", "host", ...

This is the one discovery every `--all-netns` command uses (doctor, top, exporter, trace): give
it nothing and it reads the live machine; give it `Roots` and it reads a fake tree (tests).
Standard library only, so a command can run it on a thread while it imports numpy.

Theory of operation
-------------------
Where namespaces are found (one entry per namespace inode, whatever the number of processes):
- /proc/PID/ns/net of every process: the namespace of each process's main thread. A stat()
  gives the inode; processes that vanish or refuse us (no CAP_SYS_PTRACE) are skipped.
- /run/netns/NAME: the namespaces `ip netns` names (and CNI plugins: "cni-<uuid>").
- nsfs bind mounts in our mount table (/proc/self/mountinfo), e.g. Docker's
  /run/docker/netns/<id>: a namespace kept alive by a mount and no process.
Not found: a namespace held only by an open file descriptor, or only by a thread other than a
process's main thread (such as the thread timewait itself uses to look into namespaces).

The machine's own namespace is the one of PID 1 (the /proc tree's, so that in a pod with
`hostPID: true` it is the node's), marked host=True and labelled netns="host".

How each is named, from cheap local sources only (no API server, no runtime socket):
1. `ip netns` name: the /run/netns entry with that inode (label `netns`).
2. The container: the cgroup path of each process in it (/proc/PID/cgroup). The cgroup v2
   line ("0::/path") is read first; on hybrid machines, where Docker's cgroupfs driver files
   processes in the v1 hierarchies only and the v2 path is "/", the v1 lines are read too.
   Paths are matched segment by segment, so they may be relative to our cgroup namespace
   ("/../../kubepods.slice/..." inside a pod) or nested. The patterns (CONTAINER_PATTERNS):
   Docker "docker-<id>.scope" (systemd driver) and "/docker/<id>" (cgroupfs); containerd's
   CRI "cri-containerd-<id>.scope" and a bare "<id>" under a kubepods pod (cgroupfs); CRI-O
   "crio-<id>.scope" / "crio-<id>"; Podman "libpod-<id>.scope".
3. The Kubernetes pod: its uid from the kubepods path ("pod<uid>" in cgroupfs,
   "kubepods-<qos>-pod<uid with _>.slice" in systemd), its namespace and name from the
   kubelet's pod log directory (/var/log/pods/NAMESPACE_NAME_UID), and container names from
   /var/log/containers/POD_NAMESPACE_CONTAINER-ID.log (file names only: nothing is opened).
   A pod's sandbox ("pause") container has no log, so `container` names the app containers.
4. A Docker container's name from /var/lib/docker/containers/ID/config.v2.json, when
   readable.
5. Otherwise the main process: the oldest process in the namespace (start time), by command.

Host-network pods and containers run in the machine's own namespace: they are listed on the
host's entry (label `host_network`), never given an entry of their own, so nothing is counted
twice.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from timewait.nsnames import (
    KIND_CONTAINER,
    KIND_HOST,
    KIND_MOUNT,
    KIND_NETNS,
    KIND_POD,
    KIND_PROCESS,
    display_name,
)

PROC: Final = "/proc"
NETNS_RUN_DIR: Final = "/run/netns"  # iproute2 ip/ipnetns.c NETNS_RUN_DIR
KUBELET_PODS_DIR: Final = "/var/log/pods"  # kubelet: NAMESPACE_NAME_UID/CONTAINER/N.log
KUBELET_CONTAINERS_DIR: Final = "/var/log/containers"  # POD_NAMESPACE_CONTAINER-ID.log links
DOCKER_CONTAINERS_DIR: Final = "/var/lib/docker/containers"  # ID/config.v2.json
PROC_NET_INIT_INO: Final = 0xEFFFFFF9  # include/linux/proc_ns.h: init_net's inode

ENV_PODS_DIR: Final = "TIMEWAIT_PODS_DIR"
ENV_CONTAINERS_DIR: Final = "TIMEWAIT_CONTAINERS_DIR"
ENV_DOCKER_DIR: Final = "TIMEWAIT_DOCKER_DIR"

HOST: Final = "host"

# Container ids are 64 hex digits for Docker, containerd and CRI-O alike.
_ID: Final = r"([0-9a-f]{64})"
# (runtime, pattern over one cgroup path segment); the first that matches names the runtime.
CONTAINER_PATTERNS: Final = (
    ("docker", re.compile(rf"^docker-{_ID}\.scope$")),  # systemd cgroup driver
    ("containerd", re.compile(rf"^cri-containerd-{_ID}\.scope$")),  # containerd CRI, systemd
    ("cri-o", re.compile(rf"^crio-{_ID}(?:\.scope)?$")),  # CRI-O (conmon is crio-conmon-ID)
    ("podman", re.compile(rf"^libpod-{_ID}\.scope$")),
)
_BARE_ID: Final = re.compile(rf"^{_ID}$")  # "/docker/<id>" and "/kubepods/.../pod<uid>/<id>"
_UID: Final = r"([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
# cgroupfs "pod<uid>"; systemd "kubepods-burstable-pod<uid_with_underscores>.slice"
_POD_SEGMENT: Final = re.compile(rf"^(?:kubepods(?:-[a-z]+)*-)?pod{_UID}(?:\.slice)?$")
_LOG_NAME: Final = re.compile(rf"^(.+)_(.+)_(.+)-{_ID}\.log$")  # POD_NAMESPACE_CONTAINER-ID.log


@dataclass(frozen=True, slots=True, kw_only=True)
class Roots:
    """Where discovery reads; the defaults are the live machine, tests give a fake tree."""

    proc: str = PROC
    run_netns: str = NETNS_RUN_DIR
    pods: str = KUBELET_PODS_DIR
    containers: str = KUBELET_CONTAINERS_DIR
    docker: str = DOCKER_CONTAINERS_DIR
    mountinfo: str | None = None  # default: PROC/self/mountinfo

    @classmethod
    def from_env(cls, pods_dir: str | None = None, env: Mapping[str, str] | None = None) -> Roots:
        """The live machine, with the kubelet and Docker directories taken from `pods_dir`
        (--pods-dir) or TIMEWAIT_PODS_DIR, TIMEWAIT_CONTAINERS_DIR, TIMEWAIT_DOCKER_DIR.
        The containers directory defaults to the pods directory's sibling `containers`."""
        env = os.environ if env is None else env
        pods = pods_dir or env.get(ENV_PODS_DIR) or KUBELET_PODS_DIR
        default_containers = os.path.join(os.path.dirname(pods.rstrip("/")), "containers")
        return cls(
            pods=pods,
            containers=env.get(ENV_CONTAINERS_DIR) or default_containers,
            docker=env.get(ENV_DOCKER_DIR) or DOCKER_CONTAINERS_DIR,
        )


@dataclass(frozen=True, slots=True)
class CgroupInfo:
    """What one process's cgroup paths say about it."""

    runtime: str = ""  # "docker", "containerd", "cri-o", "podman" or ""
    container_id: str = ""  # 64 hex digits, or ""
    pod_uid: str = ""  # Kubernetes pod uid with dashes, or ""


def parse_cgroup(text: str) -> CgroupInfo:
    """/proc/PID/cgroup text -> the container and pod it names (empty fields when none).

    The v2 line ("0::PATH") is tried first, then each v1 line ("N:CONTROLLERS:PATH"), so both
    a v2-only machine and a hybrid one (v1 controllers + v2 at /sys/fs/cgroup/unified) work.
    """
    v2: list[str] = []
    v1: list[str] = []
    for line in text.splitlines():
        hid, sep, rest = line.partition(":")
        if not sep:
            continue
        _controllers, sep, path = rest.partition(":")
        if not sep:
            continue
        (v2 if hid == "0" else v1).append(path)
    best = CgroupInfo()
    for path in (*v2, *v1):
        info = parse_cgroup_path(path)
        if info.container_id and info.pod_uid:
            return info
        if (info.container_id and not best.container_id) or (info.pod_uid and not best.pod_uid):
            best = CgroupInfo(
                runtime=best.runtime or info.runtime,
                container_id=best.container_id or info.container_id,
                pod_uid=best.pod_uid or info.pod_uid,
            )
    return best


def parse_cgroup_path(path: str) -> CgroupInfo:
    """One cgroup path -> runtime, container id and pod uid it names (see the module doc)."""
    if len(path) < 20:  # "/", "/user.slice", ...: nothing to find, skip the regexes
        return CgroupInfo()
    runtime = container = pod = ""
    parent_is_docker = False
    in_kubepods = False
    for seg in path.split("/"):
        if not seg:
            continue
        if seg.startswith("kubepods"):
            in_kubepods = True
        m = _POD_SEGMENT.match(seg) if in_kubepods else None
        if m:
            pod = m.group(1).replace("_", "-")
        for name, pattern in CONTAINER_PATTERNS:
            m = pattern.match(seg)
            if m:
                runtime, container = name, m.group(1)
                break
        else:
            m = _BARE_ID.match(seg)
            if m and (parent_is_docker or pod):
                # cgroupfs: "/docker/<id>", or "<id>" under a kubepods pod (containerd or
                # dockershim: the runtime is not in the path; CRI is the honest name)
                runtime, container = ("docker" if parent_is_docker else "cri"), m.group(1)
        parent_is_docker = seg == "docker"
    return CgroupInfo(runtime=runtime, container_id=container, pod_uid=pod)


@dataclass(frozen=True, slots=True, kw_only=True)
class FoundNamespace:
    """One network namespace of the machine.

    inode: the namespace's inode (what `ls -l /proc/PID/ns/net` shows as net:[INODE]).
    path: a file to enter it by (setns): its /run/netns entry, a bind mount, or
        /proc/PID/ns/net of a process in it. `paths` holds every candidate, best first: a
        process may exit before the namespace is entered; check the inode after opening.
    labels: what names it (timewait.nsnames.LABEL_KEYS): netns, inode, kind, and where known pod,
        namespace, pod_uid, container, container_id, runtime, comm, pid, host, host_network.
    host: the machine's own namespace.
    processes: how many processes have it as their namespace (0: kept by a mount only).
    """

    inode: int
    path: str
    labels: Mapping[str, str]
    host: bool = False
    paths: tuple[str, ...] = ()
    processes: int = 0

    @property
    def kind(self) -> str:
        return self.labels.get("kind", KIND_MOUNT)

    @property
    def name(self) -> str:
        """The most useful name for people: "prod/checkout-6d4f" (a pod), "web" (a container
        or an `ip netns` name), "host", "nginx[1234]" (a process), "[4026532561]"."""
        return display_name(self.labels)

    @property
    def netns(self) -> str:
        """The Snapshot namespace label: "host", "netns:NAME" or "netns:[INODE]"."""
        v = self.labels["netns"]
        return HOST if self.host else f"netns:{v}"


@dataclass(frozen=True, slots=True)
class Discovery:
    """The namespaces (the machine's own first, then by inode) and notes on what was skipped."""

    namespaces: tuple[FoundNamespace, ...]
    notes: tuple[str, ...] = field(default=())


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _ino(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _start_time(proc: str, pid: int) -> int:
    """Field 22 of /proc/PID/stat (clock ticks since boot); a huge number when unreadable."""
    text = _read(f"{proc}/{pid}/stat")
    if text is None:
        return 1 << 62
    fields = text.rpartition(")")[2].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return 1 << 62


def _nsfs_mounts(mountinfo: str, run_netns: str) -> dict[int, list[str]]:
    """inode -> mount points of network namespace bind mounts (outside run_netns)."""
    text = _read(mountinfo) or ""
    out: dict[int, list[str]] = {}
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        if not sep or not tail.startswith("nsfs "):
            continue
        parts = head.split()
        if len(parts) < 5 or not parts[3].startswith("net:["):
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4])
        if os.path.dirname(point) == run_netns.rstrip("/"):
            continue  # named: listed from run_netns with its name
        try:
            ino = int(parts[3][5:-1])
        except ValueError:
            continue
        out.setdefault(ino, []).append(point)
    return out


class _Kubelet:
    """The kubelet's pod and container log directories, listed once, on first use."""

    def __init__(self, pods: str, containers: str) -> None:
        self.pods_dir, self.containers_dir = pods, containers
        self._pods: dict[str, tuple[str, str, tuple[str, ...]]] | None = None
        self._containers: dict[str, str] | None = None

    def pod(self, uid: str) -> tuple[str, str, tuple[str, ...]] | None:
        """uid -> (namespace, name, container names that have logs)."""
        if self._pods is None:
            self._pods = {}
            try:
                entries = os.listdir(self.pods_dir)
            except OSError:
                entries = []
            for entry in entries:
                parts = entry.split("_")
                if len(parts) != 3:
                    continue
                ns, name, puid = parts
                try:
                    names = tuple(
                        sorted(
                            d.name
                            for d in os.scandir(os.path.join(self.pods_dir, entry))
                            if d.is_dir()
                        )
                    )
                except OSError:
                    names = ()
                self._pods[puid] = (ns, name, names)
        return self._pods.get(uid)

    def container(self, cid: str) -> str | None:
        """container id -> container name (from /var/log/containers link names)."""
        if self._containers is None:
            self._containers = {}
            try:
                entries = os.listdir(self.containers_dir)
            except OSError:
                entries = []
            for entry in entries:
                m = _LOG_NAME.match(entry)
                if m:
                    self._containers[m.group(4)] = m.group(3)
        return self._containers.get(cid)


def _docker_name(docker_dir: str, cid: str) -> str | None:
    text = _read(os.path.join(docker_dir, cid, "config.v2.json"))
    if not text:
        return None
    try:
        name = json.loads(text).get("Name")
    except (ValueError, AttributeError):
        return None
    return name.lstrip("/") if isinstance(name, str) and name.strip("/") else None


def discover(roots: Roots | None = None) -> Discovery:
    """Every network namespace of the machine, named (see the module docstring).

    Never raises for what it cannot read: a process that exits mid-walk is skipped, an
    unreadable directory gives fewer names, and notes say what was missing.
    """
    r = roots or Roots()
    notes: list[str] = []
    host_ino = _ino(f"{r.proc}/1/ns/net")
    if host_ino is None:
        notes.append(
            "cannot read /proc/1/ns/net (PID 1 refuses the ptrace access check: needs root "
            "with CAP_SYS_PTRACE): the machine's own namespace is told by its fixed inode"
        )
        host_ino = PROC_NET_INIT_INO

    named: dict[int, list[str]] = {}
    try:
        run_names = sorted(os.listdir(r.run_netns))
    except OSError:
        run_names = []
    for name in run_names:
        ino = _ino(os.path.join(r.run_netns, name))
        if ino is not None:  # a stale or half-created entry has no namespace behind it
            named.setdefault(ino, []).append(name)
    mounts = _nsfs_mounts(r.mountinfo or f"{r.proc}/self/mountinfo", r.run_netns)

    members: dict[int, list[int]] = {}
    refused = 0
    try:
        pids = [int(e) for e in os.listdir(r.proc) if e.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        try:
            ino = os.stat(f"{r.proc}/{pid}/ns/net").st_ino
        except PermissionError:
            refused += pid != 1  # PID 1 has its note above
            continue
        except OSError:  # exited meanwhile
            continue
        members.setdefault(ino, []).append(pid)
    if refused:
        notes.append(
            f"{refused} processes would not show their namespace (needs root with "
            "CAP_SYS_PTRACE): namespaces only they use are missing"
        )

    kubelet = _Kubelet(r.pods, r.containers)
    inodes = sorted(set(members) | set(named) | set(mounts) | {host_ino})
    out: list[FoundNamespace] = []
    for ino in inodes:
        pids_in = members.get(ino, [])
        host = ino == host_ino
        labels: dict[str, str] = {"inode": str(ino)}
        names = named.get(ino, [])
        labels["netns"] = HOST if host else (names[0] if names else f"[{ino}]")
        paths = [os.path.join(r.run_netns, n) for n in names] + mounts.get(ino, [])
        # The oldest processes first: the main process, and the best paths to enter by.
        if not host:
            pids_in = sorted(pids_in, key=lambda p: (_start_time(r.proc, p), p))
        paths += [f"{r.proc}/{p}/ns/net" for p in pids_in[:4]]
        if host:
            labels["kind"] = KIND_HOST
            labels["host"] = "true"
            shared = _host_network(r, pids_in, kubelet)
            if shared:
                labels["host_network"] = ",".join(shared)
        else:
            _name(labels, r, pids_in, kubelet, named=bool(names))
        if not paths:
            continue  # nothing to enter it by (our own namespace without /proc/1)
        out.append(
            FoundNamespace(
                inode=ino, path=paths[0], labels=labels, host=host, paths=tuple(paths),
                processes=len(pids_in),
            )
        )  # fmt: skip
    out.sort(key=lambda f: (not f.host, f.inode))
    return Discovery(namespaces=tuple(out), notes=tuple(notes))


def all_namespaces(roots: Roots | None = None) -> list[FoundNamespace]:
    """discover(roots).namespaces as a list: (inode, path, labels) for every namespace."""
    return list(discover(roots).namespaces)


def _cgroups(r: Roots, pids: Iterable[int]) -> list[tuple[int, CgroupInfo]]:
    out = []
    for pid in pids:
        text = _read(f"{r.proc}/{pid}/cgroup")
        if text:
            out.append((pid, parse_cgroup(text)))
    return out


def _pod_name(uid: str, kubelet: _Kubelet) -> str:
    found = kubelet.pod(uid)
    return f"{found[0]}/{found[1]}" if found else f"pod {uid}"


def _host_network(r: Roots, pids: list[int], kubelet: _Kubelet) -> list[str]:
    """Pods and containers whose processes run in the machine's own namespace."""
    shared: dict[str, None] = {}
    for _pid, info in _cgroups(r, pids):
        if info.pod_uid:
            shared.setdefault(_pod_name(info.pod_uid, kubelet), None)
        elif info.container_id:
            name = _docker_name(r.docker, info.container_id) if info.runtime == "docker" else None
            shared.setdefault(f"{info.runtime} {name or info.container_id[:12]}", None)
    return sorted(shared)


def _name(
    labels: dict[str, str], r: Roots, pids: list[int], kubelet: _Kubelet, *, named: bool
) -> None:
    """Fill the labels of a namespace other than the machine's own (see the module doc)."""
    infos = _cgroups(r, pids)
    pods = [i.pod_uid for _, i in infos if i.pod_uid]
    containers = [(pid, i) for pid, i in infos if i.container_id]
    if pids:
        labels["pid"] = str(pids[0])
        comm = (_read(f"{r.proc}/{pids[0]}/comm") or "").strip()
        if comm:
            labels["comm"] = comm
    if pods:
        uid = pods[0]  # the pod of the oldest process (the sandbox)
        labels["kind"] = KIND_POD
        labels["pod_uid"] = uid
        found = kubelet.pod(uid)
        if found:
            labels["namespace"], labels["pod"] = found[0], found[1]
        ids = list(dict.fromkeys(i.container_id for _, i in containers if i.pod_uid == uid))
        # App containers have logs; the sandbox (pause) does not.
        names = sorted({n for c in ids if (n := kubelet.container(c))})
        if not names and found and found[2]:
            names = list(found[2])
        if names:
            labels["container"] = ",".join(names)
        apps = [c for c in ids if kubelet.container(c)] or ids
        if apps:
            labels["container_id"] = apps[0][:12]
            runtime = next(i.runtime for _, i in containers if i.container_id == apps[0])
            labels["runtime"] = runtime
        return
    if containers:
        _pid, info = containers[0]
        labels["kind"] = KIND_CONTAINER
        labels["container_id"] = info.container_id[:12]
        labels["runtime"] = info.runtime
        names = []
        for cid in dict.fromkeys(i.container_id for _, i in containers):
            runtime = next(i.runtime for _, i in containers if i.container_id == cid)
            n = _docker_name(r.docker, cid) if runtime == "docker" else None
            if n:
                names.append(n)
        if names:
            labels["container"] = ",".join(sorted(names))
        return
    if named:
        labels["kind"] = KIND_NETNS
    elif pids:
        labels["kind"] = KIND_PROCESS
    else:
        labels["kind"] = KIND_MOUNT
