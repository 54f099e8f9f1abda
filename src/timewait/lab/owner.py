"""Who owns what the lab makes, so that cleanup removes only what belongs to runs that are gone.

Theory of operation
-------------------
Everything the lab makes outside its own process -- a network namespace, a temp directory, an
nftables table, a child process -- gets a *record* before it is made (a child right after the
fork, since it has no pid before), and loses it once it has been removed. A record is one small
JSON file in the state directory: what the thing is (kind, key, details) and its owner, the pid
of the process that made it together with that process's start time (field 22 of
/proc/PID/stat, clock ticks since boot). A pid alone would not do: the kernel reuses pids, so a
new process that got a dead run's pid would keep that run's leftovers alive for ever. Pid and
start time name one process for the life of the boot; a zombie counts as gone.

`sweep()` -- `timewait lab cleanup`, and the start of every `timewait lab run` -- removes what
the records of gone owners name, in the order that frees things: children (a child may hold the
rest), nftables tables, namespaces (with every process still inside them), temp directories;
then the records. Records of live owners are left alone, so a run in progress survives a
concurrent cleanup. Things without a record (made by an older timewait, or recorded in another
state directory) are never touched, only counted.

The state directory is /run/timewait/lab (a tmpfs: records vanish at reboot together with the
namespaces they name); TIMEWAIT_LAB_STATE overrides it, which is how tests keep their records
apart from every other run on the machine. A sweep holds an flock on the directory, so two at
once do not trip over each other.

Children still die with their run without any of this: every lab child asks the kernel for
SIGKILL when its parent dies (PR_SET_PDEATHSIG, lab.namespaces.fork_child), and nginx runs as
the init of its own PID namespace, whose death takes every worker with it (lab.experiments.apps).
Records are for what the kernel does not clean: namespaces, directories, tables.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

ENV: Final = "TIMEWAIT_LAB_STATE"
DEFAULT_STATE_DIR: Final = "/run/timewait/lab"
TMP_PREFIX: Final = "timewait-lab-"  # temp directories: timewait-lab-<pid>-<random>

# Removal order: children may hold namespaces and files open; tables live in namespaces;
# cgroups (lab.cgroups, issue 14) are emptied once their children are gone.
KINDS: Final = ("child", "cgroup", "nft", "netns", "tmpdir")


def state_dir() -> Path:
    return Path(os.environ.get(ENV) or DEFAULT_STATE_DIR)


# -- owners: a process, named by pid and start time ---------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (after the command name, which may hold spaces and ')')."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return data.rpartition(")")[2].split()


def start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), or None if there is none (or only
    its zombie, which no longer holds anything)."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22, starttime (proc(5))


@dataclass(frozen=True, slots=True)
class Owner:
    """A process: its pid and its start time (so a reused pid is not mistaken for it)."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> Owner | None:
        start = start_time(pid)
        return None if start is None else cls(pid, start)

    def alive(self) -> bool:
        return start_time(self.pid) == self.start

    def __str__(self) -> str:
        return f"pid {self.pid}"


_ME: list[Owner] = []


def me() -> Owner:
    """The calling process (recomputed after a fork)."""
    pid = os.getpid()
    if not _ME or _ME[0].pid != pid:
        owner = Owner.of(pid)
        assert owner is not None  # we are running
        _ME[:] = [owner]
    return _ME[0]


# -- records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One thing the lab made: kind ("child", "nft", "netns", "tmpdir"), key, owner, details."""

    kind: str
    key: str
    owner: Owner
    details: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "child":
            return f"process {self.key} ({self.details.get('what', 'lab child')})"
        if self.kind == "nft":
            return f"nftables table {self.details.get('table')} in {self.details.get('netns')}"
        if self.kind == "netns":
            return f"namespace {self.key}"
        if self.kind == "cgroup":
            return f"cgroup {self.key}"
        return f"directory {self.key}"


def _path(kind: str, key: str) -> Path:
    return state_dir() / f"{kind}--{quote(key, safe='')}.json"


def record(kind: str, key: str, *, owner: Owner | None = None, **details: Any) -> None:
    """Write the record of `kind`/`key` (atomically); call it before making the thing."""
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}")
    d = state_dir()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    o = owner or me()
    data = {"kind": kind, "key": key, "owner": {"pid": o.pid, "start": o.start}, **details}
    tmp = d / f".{os.getpid()}-{secrets.token_hex(4)}.tmp"
    tmp.write_text(json.dumps(data))
    tmp.replace(_path(kind, key))


def forget(kind: str, key: str) -> None:
    """Drop the record; call it once the thing is gone."""
    with contextlib.suppress(FileNotFoundError):
        _path(kind, key).unlink()


def records() -> list[Record]:
    """Every record in the state directory (unreadable or foreign files are skipped)."""
    try:
        files = sorted(state_dir().glob("*--*.json"))
    except OSError:
        return []
    out = []
    for f in files:
        try:
            data = json.loads(f.read_text())
            owner = Owner(int(data["owner"]["pid"]), int(data["owner"]["start"]))
            kind, key = str(data.pop("kind")), str(data.pop("key"))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if kind in KINDS:
            data.pop("owner")
            out.append(Record(kind, key, owner, data))
    return out


# -- what the lab makes, recorded ---------------------------------------------------------


def make_temp_dir() -> str:
    """A fresh 0700 directory /tmp/timewait-lab-<pid>-<random>, recorded before it exists.

    The caller removes it with `remove_temp_dir()` (which also drops the record)."""
    path = os.path.join(tempfile.gettempdir(), f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
    record("tmpdir", path)
    try:
        os.mkdir(path, 0o700)
    except BaseException:
        forget("tmpdir", path)
        raise
    return path


def remove_temp_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.exists(path):
        forget("tmpdir", path)


def child_started(pid: int, what: str, *, group: bool = False) -> None:
    """Record a child (pid, start time); `group`: it leads its own process group. Best effort:
    the child dies with us anyway (PR_SET_PDEATHSIG), so a record we cannot write (no root,
    say) is no reason to fail after the fork."""
    start = start_time(pid)
    if start is not None:
        with contextlib.suppress(OSError):
            record("child", str(pid), pid=pid, start=start, what=what, group=group)


def child_gone(pid: int) -> None:
    forget("child", str(pid))


# -- sweeping what gone runs left -----------------------------------------------------------


@dataclass
class Swept:
    """What a sweep did: removed things, runs left alone, failures, unrecorded namespaces."""

    removed: list[str] = field(default_factory=list)
    live_runs: list[Owner] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)


# Each returns whether there was something to remove (False: it was gone already).


def _remove_child(r: Record) -> bool:
    pid, start = int(r.details["pid"]), int(r.details["start"])
    if start_time(pid) != start:
        return False  # gone already (or the pid belongs to someone else now)
    with contextlib.suppress(ProcessLookupError):
        if r.details.get("group"):
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    return True


def _remove_nft(r: Record) -> bool:
    from timewait.lab import nft
    from timewait.lab.namespaces import netns_exists

    ns, table = str(r.details["netns"]), str(r.details["table"])
    if not table.startswith(nft.PREFIX) or not netns_exists(ns):
        return False  # not ours to touch, or gone with its namespace
    res = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", table],
        capture_output=True,
        check=False,
    )
    return res.returncode == 0  # else: no such table (never loaded, or deleted already)


def _remove_netns(r: Record) -> bool:
    from timewait.lab.namespaces import PREFIX, delete_netns, netns_exists

    if not r.key.startswith(PREFIX) or not netns_exists(r.key):
        return False
    delete_netns(r.key)
    return True


def _remove_cgroup(r: Record) -> bool:
    from timewait.lab.cgroups import PREFIX, remove_tree

    if not os.path.basename(r.key).startswith(PREFIX) or not os.path.isdir(r.key):
        return False
    remove_tree(r.key)
    return True


def _remove_tmpdir(r: Record) -> bool:
    if not os.path.basename(r.key).startswith(TMP_PREFIX) or not os.path.isdir(r.key):
        return False
    shutil.rmtree(r.key, ignore_errors=True)
    if os.path.exists(r.key):
        raise OSError(f"could not remove {r.key}")
    return True


_REMOVE = {"child": _remove_child, "cgroup": _remove_cgroup, "nft": _remove_nft,
           "netns": _remove_netns, "tmpdir": _remove_tmpdir}  # fmt: skip


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    d = state_dir()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def sweep() -> Swept:
    """Remove everything recorded by owners that are gone; see the module docstring."""
    from timewait.lab.namespaces import PREFIX, list_namespaces

    out = Swept()
    with _locked():
        recs = records()
        live: dict[Owner, None] = {}
        alive = {o: o.alive() for o in {r.owner for r in recs}}
        for kind in KINDS:
            for r in recs:
                if r.kind != kind:
                    continue
                if alive[r.owner]:
                    live.setdefault(r.owner, None)
                    continue
                try:
                    existed = _REMOVE[kind](r)
                except Exception as e:
                    out.failed.append(f"{r.describe()}: {e}")
                    continue
                forget(r.kind, r.key)
                if existed:
                    out.removed.append(f"{r.describe()} (left by {r.owner})")
        out.live_runs = sorted(live, key=lambda o: o.pid)
        recorded = {r.key for r in recs if r.kind == "netns"}
        out.unrecorded = [n for n in list_namespaces(PREFIX) if n not in recorded]
    return out
