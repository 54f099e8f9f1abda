"""Shared by tests/lab and tests/live: the root rule (skip locally, fail under CI=true)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest


def need_root() -> None:
    """Skip a namespace test when not root; under CI=true such a skip is a failure (DESIGN.md)."""
    if os.geteuid() == 0 and shutil.which("ip") and shutil.which("ss"):
        return
    reason = "needs root, iproute2 (ip, ss) and network namespaces"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true runs as root and must not skip this test")
    pytest.skip(reason)


def need_bpftrace() -> None:
    """need_root(), and bpftrace (the tracer's tests); under CI=true a skip is a failure."""
    need_root()
    if shutil.which("bpftrace") is None:
        reason = "needs bpftrace (Debian package bpftrace; `make test` installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; under CI=true this test must run")
        pytest.skip(reason)


T = TypeVar("T")


def wait_for(cond: Callable[[], T], what: str, timeout: float = 20.0) -> T:
    """Poll `cond` until it returns something true; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


SS_STATES = ("time-wait", "fin-wait-2", "close-wait", "established", "listening")


def ss_lines(ns: str, state: str, *extra: str) -> list[str]:
    """`ip netns exec NS ss -tanH state STATE` output lines (the reference tool)."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-tanH", *extra, "state", state],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


TIMEWAIT = str(Path(sys.executable).with_name("timewait"))
_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@functools.cache
def _nobody_reaches_checkout() -> bool:
    """Whether uid 65534 can run this checkout's `timewait` (not when it lives under a
    directory others cannot traverse: /root, `mkdir -m 700`, `mktemp -d`)."""
    r = subprocess.run(
        [*_NOBODY, TIMEWAIT, "--version"], capture_output=True, text=True, check=False
    )
    return r.returncode == 0


def as_nobody(*caps: str) -> list[str]:
    """setpriv(1) prefix: run as nobody (uid/gid 65534, no groups) with exactly `caps` (e.g.
    "sys_admin") as ambient capabilities.

    When nobody cannot reach the checkout, CAP_DAC_READ_SEARCH is added: it lets nobody read
    and search the checkout's files (the program under test) and changes nothing timewait
    does -- sock_diag, setns() and /proc/PID/ns are governed by CAP_NET_ADMIN, CAP_SYS_ADMIN
    and the ptrace check, none of which it grants, and every file timewait reads is
    world-readable. Where nobody can reach the checkout, the capability set is exactly `caps`.
    """
    wanted = list(caps) if _nobody_reaches_checkout() else [*caps, "dac_read_search"]
    if not wanted:
        return list(_NOBODY)
    spec = ",".join(f"+{c}" for c in wanted)
    return [*_NOBODY, f"--inh-caps={spec}", f"--ambient-caps={spec}"]
