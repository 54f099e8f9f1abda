"""Interrupting a lab run (SIGINT = Ctrl-C, SIGTERM) removes everything it created.

The run is a subprocess invoking lab_group through timewait.lab.command.main (the `timewait`
CLI may not register `lab` yet). After the signal: no namespace with the run's pid prefix, no
veth or nft table left on the host, no nginx and no temp directory of that run.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import need_root

pytestmark = pytest.mark.root

CODE = "import sys; from timewait.lab.command import main; sys.exit(main(sys.argv[1:]))"


def _mine(pid: int) -> list[str]:
    p = Path("/run/netns")
    return [n.name for n in p.iterdir() if n.name.startswith(f"tw-{pid}-")] if p.exists() else []


def _interrupt(args: list[str], sig: int, wait_for: str = "netns") -> int:
    proc = subprocess.Popen(
        [sys.executable, "-c", CODE, "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # wait until the run has created something
        if _mine(proc.pid) and (wait_for != "nginx" or _nginx_of(proc.pid)):
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the run never created its namespace")
    time.sleep(0.5)
    proc.send_signal(sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the run did not stop after the signal")
    assert not _mine(proc.pid), f"namespaces left: {_mine(proc.pid)}"
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"tw-{proc.pid}" not in links and " tw-" not in links
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert f"tw_{proc.pid}_" not in tables
    assert not list(Path("/tmp").glob(f"timewait-lab-{proc.pid}-*"))
    assert not _nginx_of(proc.pid)
    return proc.returncode


def _nginx_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"timewait-lab-{pid}-"], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_tw_reuse_leaves_nothing(sig: int) -> None:
    need_root()
    rc = _interrupt(["tw-reuse", "--set", "duration_s=20"], sig)
    assert rc == (130 if sig == signal.SIGINT else 128 + signal.SIGTERM)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_lost_final_ack_removes_nft_tables(sig: int) -> None:
    need_root()
    rc = _interrupt(["lost-final-ack", "--set", "wait_s=20", "--set", "connections=3"], sig)
    assert rc != 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_nginx_keepalive_stops_nginx(sig: int) -> None:
    need_root()
    rc = _interrupt(["nginx-keepalive", "--set", "duration_s=30"], sig, wait_for="nginx")
    assert rc != 0


def test_interrupted_who_closes_first_removes_veth_pair() -> None:
    need_root()
    rc = _interrupt(["who-closes-first", "--set", "duration_s=30"], signal.SIGTERM)
    assert rc == 128 + signal.SIGTERM
