"""Throwaway namespaces: created, usable, and removed on every way out; sysctls stay inside."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from timewait.lab.namespaces import (
    LabChildFailed,
    LabUnavailable,
    NetnsProcess,
    cleanup_leftovers,
    in_private_netns,
    list_namespaces,
    reap,
    run_in_netns,
    throwaway_netns,
    write_sysctl,
)

from .helpers import need_root

pytestmark = pytest.mark.root


def _exists(name: str) -> bool:
    return (Path("/run/netns") / name).exists()


def test_throwaway_netns_has_lo_up_and_is_removed_on_exit() -> None:
    need_root()
    with throwaway_netns() as ns:
        assert ns.startswith("tw-") and _exists(ns)
        out = subprocess.run(["ip", "-n", ns, "link", "show", "lo"], capture_output=True, text=True)
        assert "UP" in out.stdout
    assert not _exists(ns)


def test_throwaway_netns_is_removed_on_exception() -> None:
    need_root()
    name = ""
    with pytest.raises(RuntimeError), throwaway_netns() as ns:
        name = ns
        raise RuntimeError("boom")
    assert name and not _exists(name)


def test_processes_inside_are_killed_at_removal() -> None:
    """Deleting the namespace first kills what runs inside (`ip netns pids`)."""
    need_root()
    with throwaway_netns() as ns:
        holder = NetnsProcess(ns, lambda: ("ready", None))
        holder.start()
        pid = holder.pid
    status = reap(pid)  # waitpid() and drop the child's record
    assert status is not None
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    holder.pid = 0
    holder.stop()


_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from timewait.lab.namespaces import throwaway_netns
    with throwaway_netns(prefix=sys.argv[1]) as ns:
        print(ns, flush=True)
        time.sleep(60)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "ctrl-c"])
def test_throwaway_netns_is_removed_on_signal(sig: signal.Signals) -> None:
    need_root()
    prefix = f"tw-sig{os.getpid()}-"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, prefix], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        name = proc.stdout.readline().strip()
        assert _exists(name)
        proc.send_signal(sig)
        proc.wait(timeout=10)
        assert not _exists(name)
        assert list_namespaces(prefix) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        cleanup_leftovers(prefix)


def test_cleanup_leftovers_removes_only_the_prefix() -> None:
    need_root()
    prefix = f"tw-left{os.getpid()}-"
    subprocess.run(["ip", "netns", "add", f"{prefix}a"], check=True)
    subprocess.run(["ip", "netns", "add", f"{prefix}b"], check=True)
    with throwaway_netns() as other:
        assert cleanup_leftovers(prefix) == [f"{prefix}a", f"{prefix}b"]
        assert _exists(other)
    assert list_namespaces(prefix) == []
    with pytest.raises(ValueError):
        cleanup_leftovers("")


def test_write_sysctl_refuses_the_home_namespace() -> None:
    """The network rule: never write a sysctl of the machine's own namespace."""
    assert not in_private_netns()
    with pytest.raises(LabUnavailable, match="refusing"):
        write_sysctl("tcp_fin_timeout", "5")


def _fin_timeout_after_write() -> tuple[bool, str]:
    write_sysctl("tcp_fin_timeout", "7")
    return in_private_netns(), Path("/proc/sys/net/ipv4/tcp_fin_timeout").read_text().strip()


def test_write_sysctl_changes_only_the_private_namespace() -> None:
    need_root()
    host_before = Path("/proc/sys/net/ipv4/tcp_fin_timeout").read_text()
    with throwaway_netns() as ns:
        assert run_in_netns(ns, _fin_timeout_after_write) == (True, "7")
    assert Path("/proc/sys/net/ipv4/tcp_fin_timeout").read_text() == host_before


def _boom() -> None:
    raise ValueError("inside")


def test_run_in_netns_reports_the_childs_error() -> None:
    need_root()
    with throwaway_netns() as ns, pytest.raises(LabChildFailed, match="ValueError: inside"):
        run_in_netns(ns, _boom)
