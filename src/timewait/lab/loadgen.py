"""Connection churn on the real kernel: paced or flat-out, several processes, plain sockets.

Theory of operation
-------------------
A `LoadSpec` says what every connection does: connect() to one of `dests`, optionally after
bind(ip, 0) (with or without IP_BIND_ADDRESS_NO_PORT), then close in the given order. `procs`
forked workers share the offered `rate` (0 = as fast as the kernel allows); each enters the
namespace with setns() and runs a plain `socket` loop, so there is no framework between the
program and the syscalls. Arrivals are evenly spaced: worker w of P makes attempt i at
(i * P + w) / rate seconds after the common start, and a late worker catches up without
sleeping (the schedule, not the previous attempt, decides), so failures cannot slow the offered
rate down.

Where the server is: `local_server=True` (the default) gives each worker its own listeners in
the same namespace, and the worker does both ends: connect, accept, close, close. On loopback
every segment is delivered before the sending syscall returns, so the order of the close() calls
decides who closes first and each connection ends in well under a millisecond; that is what
makes >= 10,000 connections/s possible on two cores (bench/bench_loadgen.py). With
`local_server=False` the listeners belong to someone else (`serve()` in another namespace, or an
HTTP server); the worker then closes first, or waits for the server's FIN (server closes first).

Results come back through a shared anonymous mmap (MAP_SHARED, inherited by fork): per worker
the number of successes, EADDRNOTAVAIL, other failures and the first failure time, so the
parent can read progress while the workers run (`poll()`), e.g. to sample failures per second
next to the kernel's socket table. Workers die with the parent (PR_SET_PDEATHSIG) and are killed
by `stop()`; deleting the namespace kills them too.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import signal
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from timewait.lab import owner
from timewait.lab.namespaces import LabChildFailed, enter_for_good, fork_child

IP_BIND_ADDRESS_NO_PORT: Final = 24  # include/uapi/linux/in.h
BIND_MODES: Final = ("none", "bind", "bind-no-port")
_SLOT: Final = struct.Struct("<qqqqqq")  # ok, EADDRNOTAVAIL, EADDRINUSE, other, first fail ns, done
_LINGER0: Final = struct.pack("ii", 1, 0)


@dataclass(frozen=True, kw_only=True)
class LoadSpec:
    """What each worker does. Addresses must be on the namespace's loopback or its veth."""

    # With local_server, worker w uses port + w: one destination tuple per worker, so a
    # single-destination experiment runs one worker.
    dests: Sequence[tuple[str, int]] = (("127.0.0.1", 20000),)
    rate: float = 0.0  # attempts per second over all workers; 0 = flat out
    duration: float = 1.0  # seconds of attempts
    count: int = 0  # stop after this many attempts in total (0 = no limit)
    procs: int = 1
    client_closes_first: bool = True
    local_server: bool = True  # each worker owns listeners on `dests` (bind needs the address)
    bind: str = "none"  # "none" | "bind" (bind(src, 0)) | "bind-no-port"
    source: str = "127.0.0.1"  # the address bound by bind modes
    linger_zero: bool = False  # SO_LINGER {1,0}: RST instead of FIN, no TIME_WAIT
    stop_on_failure: bool = False  # a worker stops at its first failure (capacity tests)
    payload: bytes = b""  # sent by the client before closing (local_server only)

    def __post_init__(self) -> None:
        if self.rate < 0 or self.duration <= 0 or self.procs < 1 or self.count < 0:
            raise ValueError("rate >= 0, duration > 0, procs >= 1 and count >= 0, please")
        if self.bind not in BIND_MODES:
            raise ValueError(f"bind={self.bind!r}: choose one of {', '.join(BIND_MODES)}")
        if not self.dests:
            raise ValueError("give at least one destination")


@dataclass
class LoadResult:
    """Totals over every worker; times are seconds since the common start."""

    attempts: int = 0
    connections: int = 0
    eaddrnotavail: int = 0
    eaddrinuse: int = 0
    other_failures: int = 0
    first_failure_s: float | None = None
    elapsed_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return self.eaddrnotavail + self.eaddrinuse + self.other_failures

    @property
    def rate(self) -> float:
        """Successful connections per second over the run."""
        return self.connections / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _worker_dests(spec: LoadSpec, w: int) -> list[tuple[str, int]]:
    """Worker w's destinations: with local listeners, port + w (a listener per worker, so a
    connection is always accepted by the worker that made it); else `dests` as given."""
    if not spec.local_server:
        return list(spec.dests)
    return [(addr, port + w) for addr, port in spec.dests]


def _listeners(dests: list[tuple[str, int]]) -> list[socket.socket]:
    out = []
    for addr, port in dests:
        ls = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((addr, port))
        ls.listen(4096)
        out.append(ls)
    return out


def _worker(spec: LoadSpec, w: int, start_ns: int, slot: memoryview) -> None:
    """The loop of worker `w`: writes its counters into `slot` as it goes."""
    dests = _worker_dests(spec, w)
    lss = _listeners(dests) if spec.local_server else []
    ok = eaddrnotavail = other = done = 0
    first_fail = -1
    eaddrinuse = 0
    ndest = len(spec.dests)
    procs = spec.procs
    period_ns = int(1e9 * procs / spec.rate) if spec.rate > 0 else 0
    end_ns = start_ns + int(spec.duration * 1e9)
    my_count = 0
    if spec.count:
        my_count = spec.count // procs + (1 if w < spec.count % procs else 0)
    offset_ns = int(1e9 * w / spec.rate) if spec.rate > 0 else 0
    AF4, ST = socket.AF_INET, socket.SOCK_STREAM
    client_first = spec.client_closes_first
    local = spec.local_server
    bind = spec.bind
    i = 0
    now = time.monotonic_ns()
    if now < start_ns:
        time.sleep((start_ns - now) / 1e9)
    while True:
        if my_count and i >= my_count:
            break
        due = start_ns + offset_ns + i * period_ns if period_ns else 0
        now = time.monotonic_ns()
        # Paced: every attempt due inside the window is made, late ones too (a loaded machine
        # must not lose attempts: rate x duration is the contract). Flat out: until the end.
        if due >= end_ns if period_ns else now >= end_ns:
            break
        if due > now:
            time.sleep((due - now) / 1e9)
        j = (i * procs + w) % ndest
        addr, port = dests[j]
        i += 1
        c = socket.socket(socket.AF_INET6 if ":" in addr else AF4, ST)
        try:
            if bind != "none":
                if bind == "bind-no-port":
                    c.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                c.bind((spec.source, 0))
            c.connect((addr, port))
        except OSError as e:
            c.close()
            if e.errno == errno.EADDRNOTAVAIL:
                eaddrnotavail += 1
            elif e.errno == errno.EADDRINUSE:
                eaddrinuse += 1
            else:
                other += 1
            if first_fail < 0:
                first_fail = time.monotonic_ns() - start_ns
            slot[:] = _SLOT.pack(ok, eaddrnotavail, eaddrinuse, other, first_fail, 0)
            if spec.stop_on_failure:
                break
            continue
        if local:
            s, _ = lss[j].accept()
            if spec.payload:
                c.sendall(spec.payload)
            if spec.linger_zero:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
            if client_first:
                c.close()
                s.close()  # the client's FIN arrived first: the client ends in TIME_WAIT
            else:
                s.close()
                c.close()  # the server's FIN arrived first: TIME_WAIT on the server's port
        elif client_first:
            if spec.linger_zero:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
            c.close()
        else:
            with contextlib.suppress(OSError):
                c.settimeout(5.0)
                c.recv(1)  # wait for the server's FIN
            c.close()
        ok += 1
        if ok & 63 == 0:
            slot[:] = _SLOT.pack(ok, eaddrnotavail, eaddrinuse, other, first_fail, 0)
    done = 1
    slot[:] = _SLOT.pack(ok, eaddrnotavail, eaddrinuse, other, first_fail, done)


class LoadGen:
    """Workers inside namespace `ns` running `spec`; `start()`, `poll()`, `wait()`, `stop()`.

    Use as a context manager: the workers are killed on exit whatever happens.
    """

    def __init__(self, ns: str, spec: LoadSpec) -> None:
        self.ns = ns
        self.spec = spec
        self.pids: list[int] = []
        self._mem = mmap.mmap(-1, _SLOT.size * spec.procs)
        self.start_ns = 0
        self._end_ns = 0

    def start(self, delay: float = 0.05) -> LoadGen:
        """Fork the workers; attempts start `delay` s from now (time to fork and set up)."""
        self.start_ns = time.monotonic_ns() + int(delay * 1e9)
        for w in range(self.spec.procs):
            pid = fork_child(f"loadgen worker {w}")
            if pid == 0:  # pragma: no cover - child
                code = 1
                try:
                    enter_for_good(self.ns)
                    view = memoryview(self._mem)[w * _SLOT.size : (w + 1) * _SLOT.size]
                    _worker(self.spec, w, self.start_ns, view)
                    code = 0
                except BaseException as e:
                    with contextlib.suppress(Exception):
                        os.write(2, f"loadgen worker {w}: {type(e).__name__}: {e}\n".encode())
                finally:
                    os._exit(code)
            self.pids.append(pid)
        return self

    def poll(self) -> LoadResult:
        """Totals so far (workers publish every 64 successes and at every failure)."""
        res = LoadResult()
        firsts = []
        for w in range(self.spec.procs):
            ok, na, inuse, other, ff, _ = _SLOT.unpack_from(self._mem, w * _SLOT.size)
            res.connections += ok
            res.eaddrnotavail += na
            res.eaddrinuse += inuse
            res.other_failures += other
            if ff >= 0:
                firsts.append(ff)
        res.attempts = res.connections + res.failures
        res.first_failure_s = min(firsts) / 1e9 if firsts else None
        end = self._end_ns or time.monotonic_ns()
        res.elapsed_s = max(0.0, (end - self.start_ns) / 1e9)
        return res

    def running(self) -> bool:
        alive = False
        for pid in self.pids:
            with contextlib.suppress(ChildProcessError):
                got, _ = os.waitpid(pid, os.WNOHANG)
                if got == 0:
                    alive = True
                else:
                    owner.child_gone(pid)
        return alive

    def wait(self, timeout: float | None = None) -> LoadResult:
        """Wait for every worker to finish; LabChildFailed if one died with an error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bad = []
        for pid in self.pids:
            while True:
                got, status = os.waitpid(pid, os.WNOHANG)
                if got:
                    owner.child_gone(pid)
                    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                        bad.append(pid)
                    break
                if deadline is not None and time.monotonic() > deadline:
                    self.stop()
                    raise LabChildFailed(f"load generator in {self.ns} did not finish in time")
                time.sleep(0.01)
        self.pids = []
        self._end_ns = min(
            time.monotonic_ns(), self.start_ns + int(self.spec.duration * 1e9) + 50_000_000
        )
        res = self.poll()
        if bad:
            raise LabChildFailed(f"{len(bad)} load generator worker(s) in {self.ns} failed")
        return res

    def stop(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            owner.child_gone(pid)
        self.pids = []

    def __enter__(self) -> LoadGen:
        try:
            return self.start()
        except BaseException:  # interrupted while forking: the workers made so far go too
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_load(ns: str, spec: LoadSpec) -> LoadResult:
    """Run `spec` in `ns` to the end and return the totals."""
    with LoadGen(ns, spec) as gen:
        return gen.wait(timeout=spec.duration + 30)


# -- a server in another namespace (two-host experiments) ------------------------------------


def serve(addr: str, port: int, close_first: bool) -> tuple[str, object]:
    """For NetnsProcess: a listener whose accept loop runs in a thread of the holder process.

    close_first: the server closes right after accept (its side gets the TIME_WAIT); else it
    reads until the client's FIN and closes then (the client gets it).
    """
    import threading

    ls = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(4096)

    def loop() -> None:
        while True:
            try:
                s, _ = ls.accept()
            except OSError:
                return
            if not close_first:
                with contextlib.suppress(OSError):
                    s.settimeout(5.0)
                    while s.recv(4096):
                        pass
            s.close()

    threading.Thread(target=loop, daemon=True).start()
    return f"listening on {addr}:{port}", ls
