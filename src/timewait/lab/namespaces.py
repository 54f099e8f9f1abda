"""Throwaway network namespaces, and running Python code inside them.

Theory of operation
-------------------
`throwaway_netns()` creates a named namespace with `ip netns add tw-<pid>-<random>` (so `ip
netns exec`, `ss` and `timewait --netns` can all reach it), brings its loopback up, and removes
it on every way out: normal exit, exception, Ctrl-C (KeyboardInterrupt) and SIGTERM (turned
into SystemExit while the context is active, then the previous handler is restored). Processes
still inside it are killed first (`ip netns pids`), so nothing keeps the namespace alive.
`cleanup_leftovers()` removes every namespace with the prefix (after a SIGKILL, say): it is what
`timewait lab cleanup` runs.

Code runs inside a namespace in a forked child that calls setns() first: `run_in_netns()`
returns the function's result (pickled through a pipe); `NetnsProcess` keeps a child alive (it
holds sockets: listeners, bound ports, peers that never close) until stopped. Children ask the
kernel for SIGKILL when their parent dies (PR_SET_PDEATHSIG), so they never outlive the test.

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


def delete_netns(name: str) -> None:
    """Kill what runs inside `name`, then delete it; silent if it is already gone."""
    if not (Path(_netns.NETNS_RUN_DIR) / name).exists():
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


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit(143) so `finally` blocks run; restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


sigterm_as_exit = _sigterm_as_exit  # public name, for code that creates several namespaces


def veth_pair(ns_a: str, addr_a: str, ns_b: str, addr_b: str, plen: int = 24) -> tuple[str, str]:
    """A veth pair created directly inside two lab namespaces (never in the host's), addressed
    and up; returns the interface names. It disappears with either namespace.

    Addresses must be in 198.18.0.0/15 or a documentation range (DESIGN.md, network rule).
    """
    import ipaddress

    allowed = [ipaddress.ip_network(n) for n in LAB_NETWORKS]
    for addr in (addr_a, addr_b):
        ip = ipaddress.ip_address(addr)
        if not any(ip in net for net in allowed):
            raise LabUnavailable(f"{addr} is outside the lab's ranges ({', '.join(LAB_NETWORKS)})")
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


@contextlib.contextmanager
def throwaway_netns(prefix: str = PREFIX) -> Iterator[str]:
    """A fresh named network namespace with lo up; deleted on exit, error, Ctrl-C or SIGTERM."""
    require_root()
    name = f"{prefix}{os.getpid()}-{secrets.token_hex(3)}"
    with _sigterm_as_exit():
        res = _ip("netns", "add", name)
        if res.returncode != 0:
            raise LabUnavailable(f"`ip netns add {name}` failed: {res.stderr.strip()}")
        try:
            res = _ip("-n", name, "link", "set", "lo", "up")
            if res.returncode != 0:
                raise LabUnavailable(f"could not bring lo up in {name}: {res.stderr.strip()}")
            yield name
        finally:
            delete_netns(name)


# -- running code inside a namespace ---------------------------------------------------------


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


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
        _die_with_parent()
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
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(rfd)
        _child_main(name, fn, args, wfd)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        timer = threading.Timer(timeout, lambda: _kill_quietly(pid))
        timer.start()
        try:
            data = r.read()
        finally:
            timer.cancel()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise LabChildFailed(f"child in {name} died ({_describe(status)}) without a result")
    kind, value = pickle.loads(data)
    if kind != "ok":
        raise LabChildFailed(f"inside {name}: {value}")
    return value


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
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(rfd)
            os.close(ctl_w)
            self._child(wfd, ctl_r)
        os.close(wfd)
        os.close(ctl_r)
        self.pid = pid
        self._ctl_w = ctl_w
        with os.fdopen(rfd, "rb") as r:
            timer = threading.Timer(timeout, lambda: _kill_quietly(pid))
            timer.start()
            try:
                data = r.read()
            finally:
                timer.cancel()
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
            _die_with_parent()
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
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = 0

    def __enter__(self) -> NetnsProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
