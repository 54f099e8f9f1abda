"""Capture every network namespace of the machine, one after the other (issue 14).

    from timewait.live.discover import discover
    from timewait.live.scan import capture_all, Captured, Skipped
    for item in capture_all(discover().namespaces):
        if isinstance(item, Captured): item.snapshot ...   # labels in snapshot.labels
        else: item.reason                                   # it vanished, say

Theory of operation
-------------------
Streaming, so memory holds a few namespaces at a time whatever the machine runs: reader
threads (READERS, one per core up to two) enter namespaces in turn and read them
(capture.read: standard library, mostly kernel time outside the GIL) into a small bounded
queue, while the caller's thread decodes and analyzes what they read. Why two: a sock_diag dump
walks the kernel's hash tables, which are global unless a namespace was made with its own
(tcp_child_ehash_entries), so each namespace's dump costs in proportion to every socket of the
MACHINE (200 namespaces x 1,000 TIME_WAITs: ~10 ms each, whatever the namespace holds). That
walk is kernel time on the reading thread, and two threads walk on two cores at once. Results
come in the order they are read, which is not quite discovery's.

Entering: each namespace is opened by the first of its paths that still opens AND has the
discovered inode (a pid may have been reused by a process of another namespace, a /run/netns
entry may be a stale empty file), then entered through /proc/self/fd/N, so what is read is the
namespace that was discovered or nothing. The fd stays open until its snapshot is built (the
rate window may enter again). A namespace that cannot be opened any more vanished between
discovery and its turn: it becomes `Skipped` with a note, never an error.

Dumps use one walk for both families (netlink.dump_one_walk): with many small namespaces the
walk of the kernel's global hash tables, not the sockets, is the cost.

Rate window (rate_window=True, the doctor's default): a single table cannot tell the churn
now (capture.py). Instead of a window per namespace (>= 0.1 s each: 20 s for 200), the
counters of every namespace are read first, in one quick pass ("arming", ~0.3 ms each); the
reading pass starts once RATE_MIN_WINDOW_S has passed since the first of them, so each
namespace's window runs from its arming read to its own read, at least 0.1 s. While
TIME_WAITs keep coming, build() stretches a window up to RATE_MAX_WAIT_S from its arming read
as it does for one namespace; those deadlines are all within one arming pass of each other,
so the whole scan waits at most about one second more, not one per namespace.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from timewait.live import capture as _capture
from timewait.live import netns as _netns
from timewait.live import procnet
from timewait.live.discover import FoundNamespace

if TYPE_CHECKING:
    from timewait.snapshot import Snapshot

QUEUE_SIZE: Final = 4  # namespaces read ahead of the analysis
READERS: Final = min(2, os.cpu_count() or 1)
GONE: Final = "vanished during the scan"


@dataclass(frozen=True, slots=True)
class Captured:
    """A namespace and its Snapshot (labels in snapshot.labels)."""

    found: FoundNamespace
    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class Skipped:
    """A namespace that could not be read; `reason` is one line ("vanished during the scan")."""

    found: FoundNamespace
    reason: str


def open_verified(found: FoundNamespace) -> int | None:
    """An O_RDONLY fd on the namespace `found` names (checked by inode), or None if gone."""
    for path in found.paths or (found.path,):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if os.fstat(fd).st_ino == found.inode:
                return fd
        except OSError:
            pass
        os.close(fd)
    return None


def target_of(found: FoundNamespace, fd: int) -> _netns.Target:
    """A Target entering `found` through our fd on it."""
    return _netns.Target(path=f"/proc/self/fd/{fd}", label=found.netns)


def arm(
    namespaces: Sequence[FoundNamespace],
) -> tuple[dict[int, tuple[dict[str, int], int]], list[Skipped]]:
    """Read every namespace's counters once (the rate window's start); inode -> (counters,
    monotonic ns). Namespaces already gone come back as Skipped. NeedRoot propagates."""
    out: dict[int, tuple[dict[str, int], int]] = {}
    gone: list[Skipped] = []
    for found in namespaces:
        fd = open_verified(found)
        if fd is None:
            gone.append(Skipped(found, GONE))
            continue
        try:
            with _netns.entered(target_of(found, fd)):
                out[found.inode] = (procnet.read_counters(), time.monotonic_ns())
        except _netns.NeedRoot:
            raise
        except (_netns.NamespaceError, OSError):
            gone.append(Skipped(found, GONE))
        finally:
            os.close(fd)
    return out, gone


_Item = tuple[FoundNamespace, "_capture.Raw", int] | Skipped


def read_all(
    namespaces: Sequence[FoundNamespace],
    *,
    source: str = "auto",
    rate_window: bool = True,
    queue_size: int = QUEUE_SIZE,
    before_each: Callable[[FoundNamespace], None] | None = None,
    readers: int = READERS,
) -> Iterator[_Item]:
    """Read each namespace on reader threads: (found, Raw, fd) -- close fd once built -- or
    Skipped. NeedRoot propagates (no namespace but our own can be read without it).

    `before_each(found)` runs on the reader thread just before each namespace is opened (a
    test deletes a namespace there, to see it skipped).
    """
    skipped: list[Skipped] = []
    armed: dict[int, tuple[dict[str, int], int]] = {}
    todo = list(namespaces)
    if rate_window and todo:
        armed, skipped = arm(todo)
        gone = {s.found.inode for s in skipped}
        todo = [f for f in todo if f.inode not in gone]
        if armed:
            first = min(t for _, t in armed.values())
            wait = first + int(_capture.RATE_MIN_WINDOW_S * 1e9) - time.monotonic_ns()
            if wait > 0:
                time.sleep(wait / 1e9)
    yield from skipped

    q: queue.Queue[_Item | BaseException | None] = queue.Queue(maxsize=queue_size)
    stop = threading.Event()
    pending = iter(todo)
    take = threading.Lock()

    def next_one() -> FoundNamespace | None:
        with take:
            return next(pending, None)

    def put(item: _Item | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            while (found := next_one()) is not None:
                if stop.is_set():
                    return
                if before_each is not None:
                    before_each(found)
                fd = open_verified(found)
                if fd is None:
                    item: _Item = Skipped(found, GONE)
                else:
                    try:
                        raw = _capture.read(
                            source=source, target=target_of(found, fd), labels=found.labels,
                            before=armed.get(found.inode), one_walk=True,
                        )  # fmt: skip
                        item = (found, raw, fd)
                    except _netns.NeedRoot:
                        os.close(fd)
                        raise
                    except _netns.NamespaceError:
                        os.close(fd)
                        item = Skipped(found, GONE)
                    except Exception as e:  # one namespace's failure is not the scan's
                        os.close(fd)
                        item = Skipped(found, f"could not be read: {e}")
                if not put(item):
                    if not isinstance(item, Skipped):
                        os.close(item[2])
                    return
            put(None)
        except BaseException as e:  # NeedRoot, or a bug: re-raised in the caller's thread
            put(e)

    n = max(1, min(readers, len(todo)))
    threads = [
        threading.Thread(target=reader, name=f"timewait-scan-{i}", daemon=True) for i in range(n)
    ]
    for t in threads:
        t.start()
    try:
        done = 0
        while done < n:
            got = q.get()
            if got is None:
                done += 1
                continue
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        stop.set()
        for t in threads:
            t.join()
        while True:  # fds of items read ahead that nobody will build
            try:
                left = q.get_nowait()
            except queue.Empty:
                break
            if isinstance(left, tuple):
                with contextlib.suppress(OSError):
                    os.close(left[2])


def capture_all(
    namespaces: Sequence[FoundNamespace],
    *,
    source: str = "auto",
    rate_window: bool = True,
    queue_size: int = QUEUE_SIZE,
    before_each: Callable[[FoundNamespace], None] | None = None,
    readers: int = READERS,
) -> Iterator[Captured | Skipped]:
    """Snapshots of `namespaces` (from discover()), in order, built on the caller's thread.

    Errors: NeedRoot (entering another namespace needs CAP_SYS_ADMIN). Everything that goes
    wrong with one namespace makes it Skipped instead.
    """
    for item in read_all(
        namespaces, source=source, rate_window=rate_window, queue_size=queue_size,
        before_each=before_each, readers=readers,
    ):  # fmt: skip
        if isinstance(item, Skipped):
            yield item
            continue
        found, raw, fd = item
        try:
            snap = _capture.build(raw)
        except _netns.NamespaceError:
            yield Skipped(found, GONE)
            continue
        except Exception as e:
            yield Skipped(found, f"could not be read: {e}")
            continue
        finally:
            os.close(fd)
        yield Captured(found, snap)
