"""Enter another network namespace for a moment: by name, by path, or by a process's pid.

Theory of operation
-------------------
Python 3.11 has no os.setns, so this calls libc setns(fd, CLONE_NEWNET) through ctypes.
setns() changes the namespace of the calling *thread* only (setns(2)), so `entered()` is a
context manager that opens the target, switches, lets the caller open what it needs (a netlink
socket stays bound to the namespace it was created in; /proc/thread-self/net and
/proc/sys/net read the current thread's namespace), and switches back in `finally`, whatever
happens inside.

A target that is the caller's own namespace (same inode, e.g. `--pid 1` on the host or
`--pid $$`) is not entered at all, so looking at oneself never needs root. Entering any other
namespace needs CAP_SYS_ADMIN (setns(2): "CAP_SYS_ADMIN in its own user namespace and in the
user namespace that owns the target").

Names resolve like `ip netns` does: /run/netns/NAME (iproute2 mounts named namespaces there).
`own_label()` names the namespace we run in the same way, so `ip netns exec NAME timewait ...`
reports `netns:NAME`: a named namespace is the /run/netns file with our namespace's device and
inode; the machine's own is the namespace of PID 1, or inode PROC_NET_INIT_INO when /proc/1 is
not readable (no root); anything else is labelled by its inode, as `ip netns identify` would
leave it unnamed.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

from timewait.errors import TimewaitError

CLONE_NEWNET: Final = 0x40000000  # include/uapi/linux/sched.h
NETNS_RUN_DIR: Final = "/run/netns"  # iproute2 ip/ipnetns.c NETNS_RUN_DIR
SELF_NETNS: Final = "/proc/thread-self/ns/net"
INIT_NETNS: Final = "/proc/1/ns/net"
# include/linux/proc_ns.h: init_net's fixed inode number (net:[4026531833], checked on 6.18)
PROC_NET_INIT_INO: Final = 0xEFFFFFF9
HOST_LABEL: Final = "host"


class NamespaceError(TimewaitError):
    """A namespace could not be found or entered."""


class NamespaceNotFound(NamespaceError):
    """No namespace by that name, path or pid."""


class NeedRoot(NamespaceError):
    """Entering another namespace needs CAP_SYS_ADMIN."""


@dataclass(frozen=True, slots=True)
class Target:
    """A namespace to look into: the file that names it and the Snapshot label."""

    path: str
    label: str


def resolve(netns: str | None = None, pid: int | None = None) -> Target | None:
    """The namespace named by --netns NAME|PATH or --pid PID; None for the caller's own.

    Raises NamespaceNotFound with the name and what to do; ValueError if both are given.
    """
    if netns is not None and pid is not None:
        raise NamespaceError("give either --netns or --pid, not both")
    if pid is not None:
        path = f"/proc/{pid}/ns/net"
        if not os.path.exists(f"/proc/{pid}"):
            raise NamespaceNotFound(
                f"no process with pid {pid}: check the pid (e.g. `ps -p {pid}`)"
            )
        return Target(path=path, label=f"pid:{pid}")
    if netns is None:
        return None
    if "/" in netns:
        if not os.path.exists(netns):
            raise NamespaceNotFound(
                f"no network namespace file at {netns}: give /run/netns/NAME, "
                "/proc/PID/ns/net or a bind-mounted namespace file"
            )
        return Target(path=netns, label=f"netns:{netns}")
    path = os.path.join(NETNS_RUN_DIR, netns)
    if not netns or netns in (".", "..") or not os.path.exists(path):
        raise NamespaceNotFound(
            f"no network namespace named {netns!r} (looked for {path}): "
            "list them with `ip netns list`"
        )
    return Target(path=path, label=f"netns:{netns}")


@functools.cache
def _libc() -> ctypes.CDLL:
    """libc, loaded once (each CDLL() builds its function classes anew: --all-netns enters
    hundreds of namespaces)."""
    return ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    """setns(fd, CLONE_NEWNET) for the calling thread; OSError with errno on failure."""
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def same_namespace(path: str, other: str = SELF_NETNS) -> bool:
    """Whether two namespace files name the same namespace (same dev and inode)."""
    a, b = os.stat(path), os.stat(other)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def own_label(run_dir: str = NETNS_RUN_DIR) -> str:
    """The label of the calling thread's namespace: "netns:NAME", "host" or "netns:[INODE]"."""
    me = os.stat(SELF_NETNS)
    key = (me.st_dev, me.st_ino)
    try:
        names = sorted(os.listdir(run_dir))
    except OSError:
        names = []
    for name in names:
        try:
            st = os.stat(os.path.join(run_dir, name))
        except OSError:  # a stale or half-created entry: not ours
            continue
        if (st.st_dev, st.st_ino) == key:
            return f"netns:{name}"
    try:
        init = os.stat(INIT_NETNS)
        is_init = (init.st_dev, init.st_ino) == key
    except OSError:  # no root: /proc/1/ns is not ours to stat
        is_init = me.st_ino == PROC_NET_INIT_INO
    return HOST_LABEL if is_init else f"netns:[{me.st_ino}]"


def _need_root(target: Target) -> NeedRoot:
    return NeedRoot(
        f"looking into {target.label} needs root (CAP_SYS_ADMIN to setns): run with sudo, "
        "or run timewait inside that namespace (`ip netns exec NAME timewait ...`)"
    )


@contextmanager
def entered(target: Target | None) -> Iterator[bool]:
    """Run the body inside `target`'s network namespace, then return to the caller's.

    Yields True if the thread switched, False if the target is already the current namespace
    (or None). Errors: NamespaceNotFound, NeedRoot. If switching back fails (which setns(2)
    cannot do for a namespace we came from, short of a kernel bug) NamespaceError is raised:
    the thread must not go on in the wrong namespace.
    """
    if target is None:
        yield False
        return
    try:
        fd = os.open(target.path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NamespaceNotFound(
            f"{target.label} is gone ({target.path}): list namespaces with `ip netns list`"
        ) from None
    except PermissionError:
        raise _need_root(target) from None
    try:
        try:
            same = same_namespace(f"/proc/self/fd/{fd}")
        except OSError:
            same = False
        if same:
            yield False
            return
        home = os.open(SELF_NETNS, os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                setns(fd)
            except OSError as e:
                if e.errno in (_errno.EPERM, _errno.EACCES):
                    raise _need_root(target) from None
                if e.errno == _errno.EINVAL:
                    raise NamespaceError(
                        f"{target.path} is not a network namespace file: give --netns NAME, "
                        "a /run/netns path or --pid"
                    ) from None
                raise NamespaceError(f"cannot enter {target.label}: {e.strerror}") from None
            try:
                yield True
            finally:
                try:
                    setns(home)
                except OSError as e:  # pragma: no cover - kernel refuses to let us go home
                    raise NamespaceError(
                        f"could not return to the original network namespace: {e.strerror}"
                    ) from None
        finally:
            os.close(home)
    finally:
        os.close(fd)
