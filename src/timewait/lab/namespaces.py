"""Throwaway network namespaces, and running Python code inside them.

Theory of operation
-------------------
`throwaway_netns()` creates a named namespace with `ip netns add tw-<pid>-<random>` (so `ip
netns exec`, `ss` and `timewait --netns` can all reach it), brings its loopback up, and removes
it on every way out: normal exit, exception, Ctrl-C, SIGTERM and SIGHUP (a closed terminal, a
dropped SSH session). While `signals_as_exit()` is active -- a lab run holds it for its whole
length -- SIGTERM and SIGHUP raise SystemExit(128 + signal) and SIGINT KeyboardInterrupt, once:
a second signal during the unwinding is ignored, so it cannot cut the cleanup short. Processes
still inside the namespace are killed first (`ip netns pids`), so nothing keeps it alive.

SIGKILL runs no cleanup, so everything made here is recorded first (lab.owner: the owner's pid
and start time with each namespace, child, table and temp dir); `timewait lab cleanup` and the
next `timewait lab run` remove what gone runs left and nothing of runs still going.
`cleanup_leftovers(prefix)` is the blunt tool for tests with a private prefix: it deletes every
namespace whose name starts with it.

Code runs inside a namespace in a forked child that calls setns() first: `run_in_netns()`
returns the function's result (pickled through a pipe); `NetnsProcess` keeps a child alive (it
holds sockets: listeners, bound ports, peers that never close) until stopped. Every child comes
from `fork_child()`: it asks the kernel for SIGKILL when its parent dies (PR_SET_PDEATHSIG, and
exits at once if the parent died before that), and takes the default action on SIGINT, SIGTERM
and SIGHUP, so a signal kills it instead of running the parent's handlers and `finally` blocks
in a copy of the parent. PR_SET_PDEATHSIG fires when the *thread* that forked exits: fork from
a thread that outlives the child (the main thread, in the lab).

The network rule (DESIGN.md): traffic only inside namespaces created here, on their loopback.
`write_sysctl()` refuses to write unless the calling thread is in a namespace other than the
one the process started in, so the host's own settings are never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import secrets
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Final

from timewait.errors import TimewaitError
from timewait.lab import owner
from timewait.live import netns as _netns

PREFIX: Final = "tw-"
PR_SET_PDEATHSIG: Final = 1  # include/uapi/linux/prctl.h

# The namespace this process started in: write_sysctl() refuses to write there.
_HOME_NETNS: Final = os.stat("/proc/self/ns/net")


class LabUnavailable(TimewaitError):
    """The lab needs root and iproute2 (`ip netns`)."""


class LabChildFailed(TimewaitError):
    """Code run inside a namespace raised or died; the message carries its error."""


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabUnavailable("the lab creates network namespaces and needs root: run with sudo")
    if not Path("/usr/sbin/ip").exists() and not Path("/sbin/ip").exists():
        raise LabUnavailable("the lab needs iproute2 (`ip`): apt-get install iproute2")


def list_namespaces(prefix: str = PREFIX) -> list[str]:
    try:
        names = os.listdir(_netns.NETNS_RUN_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def _kill_pids(name: str) -> None:
    out = _ip("netns", "pids", name)
    for tok in out.stdout.split():
        if tok.isdigit() and int(tok) != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(tok), signal.SIGKILL)


def netns_exists(name: str) -> bool:
    return (Path(_netns.NETNS_RUN_DIR) / name).exists()


def delete_netns(name: str) -> None:
    """Kill what runs inside `name`, then delete it; silent if it is already gone."""
    if not netns_exists(name):
        return
    _kill_pids(name)
    res = _ip("netns", "del", name)
    if res.returncode != 0 and (Path(_netns.NETNS_RUN_DIR) / name).exists():
        raise LabUnavailable(f"could not delete namespace {name}: {res.stderr.strip()}")


def cleanup_leftovers(prefix: str = PREFIX) -> list[str]:
    """Delete every namespace whose name starts with `prefix`; returns their names."""
    if not prefix:
        raise ValueError("refusing to delete every namespace: give a prefix")
    names = list_namespaces(prefix)
    for name in names:
        delete_netns(name)
    return names


TERMINATING: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_state: dict[str, int] = {"depth": 0, "fired": 0}


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _state["fired"]:
        return  # already unwinding: let the cleanup finish
    _state["fired"] = 1
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def signals_as_exit() -> Iterator[None]:
    """SIGTERM/SIGHUP raise SystemExit(128 + signal), SIGINT KeyboardInterrupt, so `finally`
    blocks run; later signals are ignored until the outermost block exits. Nests; main thread
    only (elsewhere a no-op). A signal that was ignored (nohup) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old: dict[signal.Signals, Any] = {}
    if _state["depth"] == 0:
        _state["fired"] = 0
        for sig in TERMINATING:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                old[sig] = signal.signal(sig, _on_signal)
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        for sig, handler in old.items():
            signal.signal(sig, handler)


# Old names, for code that creates several namespaces.
sigterm_as_exit = _sigterm_as_exit = signals_as_exit


def veth_pair(ns_a: str, addr_a: str, ns_b: str, addr_b: str, plen: int = 24) -> tuple[str, str]:
    """A veth pair created directly inside two lab namespaces (never in the host's), addressed
    and up; returns the interface names. It disappears with either namespace.

    Addresses must be in 198.18.0.0/15 or a documentation range (DESIGN.md, network rule).
    """
    for addr in (addr_a, addr_b):
        _check_lab_address(addr)
    tag = secrets.token_hex(3)
    a, b = f"{PREFIX}{tag}a", f"{PREFIX}{tag}b"
    res = _ip("link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b)
    if res.returncode != 0:
        raise LabUnavailable(f"could not create a veth pair: {res.stderr.strip()}")
    for ns, dev, addr in ((ns_a, a, addr_a), (ns_b, b, addr_b)):
        for args in (("addr", "add", f"{addr}/{plen}", "dev", dev), ("link", "set", dev, "up")):
            res = _ip("-n", ns, *args)
            if res.returncode != 0:
                raise LabUnavailable(f"`ip -n {ns} {' '.join(args)}` failed: {res.stderr.strip()}")
    return a, b


LAB_NETWORKS: Final = ("198.18.0.0/15", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")


def _check_lab_address(addr: str) -> None:
    import ipaddress

    ip = ipaddress.ip_address(addr)
    if not any(ip in ipaddress.ip_network(n) for n in LAB_NETWORKS):
        raise LabUnavailable(f"{addr} is outside the lab's ranges ({', '.join(LAB_NETWORKS)})")


def add_address(ns: str, dev: str, addr: str, plen: int = 24) -> None:
    """One more address on an interface of a lab namespace (lab ranges only, as veth_pair)."""
    _check_lab_address(addr)
    res = _ip("-n", ns, "addr", "add", f"{addr}/{plen}", "dev", dev)
    if res.returncode != 0:
        raise LabUnavailable(f"`ip -n {ns} addr add {addr}/{plen} dev {dev}` failed: "
                             f"{res.stderr.strip()}")  # fmt: skip


@contextlib.contextmanager
def throwaway_netns(prefix: str = PREFIX) -> Iterator[str]:
    """A fresh named network namespace with lo up; deleted on exit, error, Ctrl-C or SIGTERM."""
    require_root()
    name = f"{prefix}{os.getpid()}-{secrets.token_hex(3)}"
    with signals_as_exit():
        owner.record("netns", name)  # before it exists: a SIGKILL at any point leaves a record
        try:
            res = _ip("netns", "add", name)
            if res.returncode != 0:
                raise LabUnavailable(f"`ip netns add {name}` failed: {res.stderr.strip()}")
            res = _ip("-n", name, "link", "set", "lo", "up")
            if res.returncode != 0:
                raise LabUnavailable(f"could not bring lo up in {name}: {res.stderr.strip()}")
            yield name
        finally:
            delete_netns(name)
            owner.forget("netns", name)


# -- running code inside a namespace ---------------------------------------------------------


_PRCTL: list[Any] = []


def _prctl() -> Any:
    """libc prctl, looked up once in the parent (a forked child should not dlopen)."""
    if not _PRCTL:
        _PRCTL.append(ctypes.CDLL(None, use_errno=True).prctl)
    return _PRCTL[0]


def _die_with_parent(parent: int | None = None) -> None:
    """In a child: SIGKILL when the parent dies; exit now if `parent` is gone already."""
    _prctl()(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent is not None and os.getppid() != parent:
        os._exit(1)  # the parent died between fork() and prctl(): nobody will stop us


def fork_child(what: str = "lab child") -> int:
    """os.fork() for the lab: returns 0 in the child, the child's pid in the parent.

    The child dies with its parent (PR_SET_PDEATHSIG), and INT/TERM/HUP take their default
    action in it (signals are blocked across the fork, so none can run a parent's handler in
    the child). The parent records the child (lab.owner); `reap(pid)` waits for it and drops
    the record.
    """
    parent = os.getpid()
    _prctl()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, TERMINATING)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            for s in TERMINATING:
                signal.signal(s, signal.SIG_DFL)
            _state["fired"], _state["depth"] = 0, 0
            _die_with_parent(parent)
        except BaseException:
            os._exit(1)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return 0
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    owner.child_started(pid, what)
    return pid


def reap(pid: int, flags: int = 0) -> int | None:
    """waitpid() a child of fork_child() and drop its record; returns its status (None: still
    running with WNOHANG, or reaped already)."""
    try:
        got, status = os.waitpid(pid, flags)
    except ChildProcessError:
        owner.child_gone(pid)
        return None
    if got == 0:
        return None
    owner.child_gone(pid)
    return status


def exec_dies_with_parent() -> Callable[[], None]:
    """A Popen preexec_fn: the program dies with us (PR_SET_PDEATHSIG survives execve of a
    program that is not set-user-ID), or does not start if we died before it could ask."""
    parent = os.getpid()
    prctl = _prctl()

    def preexec() -> None:  # pragma: no cover - runs in the child
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def enter_for_good(name_or_path: str) -> None:
    """setns() this thread into a namespace without coming back (for forked children only)."""
    path = name_or_path if "/" in name_or_path else f"{_netns.NETNS_RUN_DIR}/{name_or_path}"
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _netns.setns(fd)
    finally:
        os.close(fd)


def in_private_netns() -> bool:
    """True if this thread is in another namespace than the one the process started in."""
    st = os.stat(_netns.SELF_NETNS)
    return (st.st_dev, st.st_ino) != (_HOME_NETNS.st_dev, _HOME_NETNS.st_ino)


def write_sysctl(name: str, value: str) -> None:
    """Write net.ipv4.NAME in the current (private) namespace; refuses in the home namespace."""
    if not in_private_netns():
        raise LabUnavailable(f"refusing to write net.ipv4.{name} outside a lab namespace")
    Path("/proc/sys/net/ipv4", name).write_text(value)


def _child_main(name: str, fn: Callable[..., Any], args: tuple[Any, ...], wfd: int) -> None:
    code = 0
    try:
        enter_for_good(name)
        result: tuple[str, Any] = ("ok", fn(*args))
    except BaseException as e:
        result = ("err", f"{type(e).__name__}: {e}")
        code = 1
    try:
        data = pickle.dumps(result)
    except Exception as e:
        data = pickle.dumps(("err", f"result not picklable: {e}"))
        code = 1
    with os.fdopen(wfd, "wb") as w:
        w.write(data)
    os._exit(code)


def run_in_netns(name: str, fn: Callable[..., Any], *args: Any, timeout: float = 120.0) -> Any:
    """Run fn(*args) in a forked child inside namespace `name`; return its (picklable) result.

    Raises LabChildFailed with the child's exception text, or on timeout (the child is killed).
    """
    rfd, wfd = os.pipe()
    pid = fork_child(f"run_in_netns {getattr(fn, '__name__', 'fn')}")
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(rfd)
            _child_main(name, fn, args, wfd)
        finally:
            os._exit(1)
    os.close(wfd)
    try:
        with os.fdopen(rfd, "rb") as r:
            timer = _watchdog(timeout, pid)
            try:
                data = r.read()
            finally:
                timer.cancel()
    except BaseException:  # interrupted (a signal): the child goes with us
        _kill_quietly(pid)
        reap(pid)
        raise
    status = reap(pid) or 0
    if not data:
        raise LabChildFailed(f"child in {name} died ({_describe(status)}) without a result")
    kind, value = pickle.loads(data)
    if kind != "ok":
        raise LabChildFailed(f"inside {name}: {value}")
    return value


def _watchdog(timeout: float, pid: int) -> threading.Timer:
    """A started timer that kills `pid` after `timeout` s unless cancelled. A daemon thread:
    a signal can interrupt start() after the thread is running, before the caller's `try`
    that cancels it, and a non-daemon timer then holds the process at exit for `timeout` s."""
    timer = threading.Timer(timeout, lambda: _kill_quietly(pid))
    timer.daemon = True
    timer.start()
    return timer


def _kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit {os.WEXITSTATUS(status)}"


class NetnsProcess:
    """A child inside a namespace that runs `fn(*args)`, reports its result, then stays alive
    (holding whatever sockets fn keeps referenced in its return value's `keep` or globals) until
    `stop()`. Use as a context manager: the child is killed on exit whatever happens.

    fn returns (report, keep): `report` (picklable) comes back through `.report`; `keep` is
    held by the child so its sockets stay open.
    """

    def __init__(self, name: str, fn: Callable[..., tuple[Any, Any]], *args: Any) -> None:
        self.name = name
        self.fn = fn
        self.args = args
        self.pid = 0
        self.report: Any = None
        self._ctl_w = -1

    def start(self, timeout: float = 120.0) -> Any:
        rfd, wfd = os.pipe()
        ctl_r, ctl_w = os.pipe()
        pid = fork_child(f"NetnsProcess {getattr(self.fn, '__name__', 'fn')}")
        if pid == 0:  # pragma: no cover - child
            try:
                os.close(rfd)
                os.close(ctl_w)
                self._child(wfd, ctl_r)
            finally:
                os._exit(1)
        os.close(wfd)
        os.close(ctl_r)
        self.pid = pid
        self._ctl_w = ctl_w
        try:
            with os.fdopen(rfd, "rb") as r:
                timer = _watchdog(timeout, pid)
                try:
                    data = r.read()
                finally:
                    timer.cancel()
        except BaseException:  # interrupted (a signal): the child goes with us
            self.stop()
            raise
        if not data:
            self.stop()
            raise LabChildFailed(f"child in {self.name} died before reporting")
        kind, value = pickle.loads(data)
        if kind != "ok":
            self.stop()
            raise LabChildFailed(f"inside {self.name}: {value}")
        self.report = value
        return value

    def _child(self, wfd: int, ctl_r: int) -> None:  # pragma: no cover - child
        try:
            enter_for_good(self.name)
            report, keep = self.fn(*self.args)
            data = pickle.dumps(("ok", report))
        except BaseException as e:
            keep = None
            data = pickle.dumps(("err", f"{type(e).__name__}: {e}"))
        with os.fdopen(wfd, "wb") as w:
            w.write(data)
        # Hold `keep` until the parent closes the control pipe (stop() or parent death).
        os.read(ctl_r, 1)
        del keep
        os._exit(0)

    def stop(self) -> None:
        if self._ctl_w >= 0:
            with contextlib.suppress(OSError):
                os.close(self._ctl_w)
            self._ctl_w = -1
        if self.pid:
            _kill_quietly(self.pid)
            reap(self.pid)
            self.pid = 0

    def __enter__(self) -> NetnsProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
