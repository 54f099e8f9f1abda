"""Cgroups named the way container runtimes and the kubelet name them, for the tests and the
benchmark of `--all-netns` (issue 14).

Theory of operation
-------------------
`cgroup_tree(hierarchy)` makes ONE directory of our own, timewait-lab-cg-<pid>-<random>, at the
top of a cgroup hierarchy (the v2 tree, or the v1 name=systemd one on a hybrid machine), and
`place(pid, "kubepods.slice/.../cri-containerd-<id>.scope")` files a process in a path below
it, made on demand. /proc/PID/cgroup then shows the path a real node would, under our prefix,
which is exactly what timewait.live.discover reads (it matches segments, wherever they sit).
No controller is enabled anywhere (no subtree_control writes), so nothing is limited and the
v2 "no internal processes" rule never applies.

Removal, on every way out (the context manager's finally, under lab.namespaces'
signals_as_exit for Ctrl-C and SIGTERM): processes still inside are moved to the hierarchy's
root (they are the caller's, not ours to kill), then every directory is removed, deepest first.
The tree is recorded with lab.owner before it exists (kind "cgroup"), so after a SIGKILL
`timewait lab cleanup` or the next lab run removes it -- and only trees of runs that are gone.

Hierarchies are found in /proc/self/mountinfo: "cgroup2" mounts (/sys/fs/cgroup on a v2-only
machine, /sys/fs/cgroup/unified on a hybrid one) and the v1 "name=systemd" one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import Final

from timewait.errors import TimewaitError
from timewait.lab import owner

PREFIX: Final = "timewait-lab-cg-"


class CgroupUnavailable(TimewaitError):
    """No writable cgroup hierarchy of the kind asked for."""


def hierarchies(mountinfo: str = "/proc/self/mountinfo") -> dict[str, str]:
    """{"v2": mount point, "v1-systemd": mount point} for the hierarchies this machine has."""
    out: dict[str, str] = {}
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        head, sep, tail = line.partition(" - ")
        if not sep:
            continue
        fields = head.split()
        fstype, _source, *opts = tail.split()
        point = fields[4]
        if fstype == "cgroup2":
            out.setdefault("v2", point)
        elif fstype == "cgroup" and opts and "name=systemd" in opts[0].split(","):
            out.setdefault("v1-systemd", point)
    return out


class CgroupTree:
    """Our directory in one hierarchy; `place()` files processes below it."""

    def __init__(self, root: str) -> None:
        self.root = root

    def place(self, pid: int, path: str) -> str:
        """Move process `pid` into ROOT/path (made if missing); returns that directory."""
        rel = path.strip("/")
        if not rel or ".." in rel.split("/"):
            raise ValueError(f"bad cgroup path {path!r}")
        d = os.path.join(self.root, rel)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "cgroup.procs"), "w") as f:
            f.write(str(pid))
        return d


def remove_tree(root: str) -> None:
    """Move the processes out of `root` (to the hierarchy's top) and remove it, deepest first."""
    if not os.path.basename(root.rstrip("/")).startswith(PREFIX):
        raise ValueError(f"refusing to remove {root}: not a timewait lab cgroup")
    top = os.path.dirname(root.rstrip("/"))
    dirs = [d for d, _, _ in os.walk(root)]
    for d in sorted(dirs, key=lambda p: -p.count("/")):
        with contextlib.suppress(OSError):
            with open(os.path.join(d, "cgroup.procs")) as f:
                pids = f.read().split()
            for pid in pids:
                with (
                    contextlib.suppress(OSError),
                    open(os.path.join(top, "cgroup.procs"), "w") as out,
                ):
                    out.write(pid)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(d)
    if os.path.exists(root):
        raise OSError(f"could not remove cgroup {root}")


@contextlib.contextmanager
def cgroup_tree(kind: str = "v2") -> Iterator[CgroupTree]:
    """A fresh tree of ours in the hierarchy `kind` ("v2" or "v1-systemd"), removed on exit.

    Raises CgroupUnavailable when this machine has no such hierarchy (or it is read-only).
    """
    from timewait.lab.namespaces import signals_as_exit

    found = hierarchies()
    if kind not in found:
        raise CgroupUnavailable(f"no {kind} cgroup hierarchy is mounted here")
    root = os.path.join(found[kind], f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}")
    with signals_as_exit():
        owner.record("cgroup", root)
        try:
            try:
                os.mkdir(root)
            except OSError as e:
                raise CgroupUnavailable(f"cannot make {root}: {e.strerror}") from None
            yield CgroupTree(root)
        finally:
            if os.path.exists(root):
                remove_tree(root)
            owner.forget("cgroup", root)
