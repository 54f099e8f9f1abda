"""Shared by tests/lab and tests/live: the root rule (skip locally, fail under CI=true)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def need_root() -> None:
    """Skip a namespace test when not root; under CI=true such a skip is a failure (DESIGN.md)."""
    if os.geteuid() == 0 and shutil.which("ip") and shutil.which("ss"):
        return
    reason = "needs root, iproute2 (ip, ss) and network namespaces"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true runs as root and must not skip this test")
    pytest.skip(reason)


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
