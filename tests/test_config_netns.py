"""`config show` inside a namespace prints that namespace's live settings (issue 17).

In a namespace with ip_local_port_range 40000-40999 and tcp_tw_reuse 0 it used to print Linux's
defaults (32768-60999, reuse 2). Both ways in are checked: `--netns NAME` from outside, and
`ip netns exec NAME timewait config show` from inside.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .lab.helpers import need_root

pytestmark = pytest.mark.root

TIMEWAIT = str(Path(sys.executable).with_name("timewait"))


@pytest.fixture(scope="module")
def ns() -> Iterator[str]:
    need_root()
    from timewait.lab.experiments.base import set_sysctls
    from timewait.lab.namespaces import run_in_netns, throwaway_netns

    with throwaway_netns() as name:
        run_in_netns(name, set_sysctls, {"ip_local_port_range": "40000 40999", "tcp_tw_reuse": "0"})
        yield name


def show(*args: str, inside: str | None = None) -> str:
    prefix = ["ip", "netns", "exec", inside] if inside else []
    r = subprocess.run(
        [*prefix, TIMEWAIT, "config", "show", *args], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("how", ["--netns", "ip netns exec"])
def test_config_show_prints_the_namespaces_live_settings(ns: str, how: str) -> None:
    out = show("--netns", ns) if how == "--netns" else show(inside=ns)
    assert out.splitlines()[0].startswith(f"live settings of netns:{ns}, read from")
    assert "net.ipv4.ip_local_port_range         40000 40999\n" in out
    assert "net.ipv4.tcp_tw_reuse                0\n" in out
    assert "ephemeral_ports                            1000\n" in out


def test_config_show_json_names_the_namespace(ns: str) -> None:
    data = json.loads(show("--json", inside=ns))
    assert (data["shows"], data["namespace"]) == ("live", f"netns:{ns}")
    assert data["settings"]["ip_local_port_range"] == "40000 40999"


def test_config_show_defaults_inside_the_namespace_are_linuxs(ns: str) -> None:
    out = show("--defaults", inside=ns)
    assert out.startswith("Linux defaults") and "32768 60999" in out
