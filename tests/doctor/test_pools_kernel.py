"""The doctor's predicted headroom equals what the kernel then allows, pool by pool (issue 10).

Each population (timewait.lab.pools.POPULATIONS) is built in a throwaway namespace, diagnosed by
the doctor, then probed: connect() or bind(0) until the kernel refuses. The kernel's searches
are exhaustive (both parities, every port), so the counts are exact, and so is the assertion.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from timewait.lab.namespaces import NetnsProcess, run_in_netns, throwaway_netns
from timewait.lab.pools import POPULATIONS, POPULATIONS_BY_NAME, Probe, ask_kernel, build, check

from ..lab.helpers import need_root

pytestmark = pytest.mark.root


@pytest.mark.parametrize("pop", POPULATIONS, ids=lambda p: p.name)
def test_predicted_headroom_equals_what_the_kernel_allows(pop: object) -> None:
    need_root()
    checks, _ = check(pop)  # type: ignore[arg-type]
    assert checks, "no probe"
    wrong = [f"{c.pool}: predicted {c.predicted}, kernel allowed {c.allowed}" for c in checks
             if not c.exact]  # fmt: skip
    assert not wrong, "; ".join(wrong)


def test_bind_before_connect_exhaustion_doctor_cli_exits_2_naming_the_bind_pool() -> None:
    """Done means (issue 10): a client that binds before connecting exhausts the range; the
    doctor, run as a user would inside the namespace, exits 2 with a critical finding that
    names the bind() pool and IP_BIND_ADDRESS_NO_PORT, and its headroom is the kernel's."""
    need_root()
    pop = POPULATIONS_BY_NAME["bind-before-connect-full"]
    with throwaway_netns() as ns, NetnsProcess(ns, build, pop) as holder:
        assert holder.report["bind_failed"] == 1  # the client itself hit EADDRINUSE
        run = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "timewait", "doctor", "--json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        allowed = run_in_netns(ns, ask_kernel, [Probe(kind="bind", src="198.18.0.1")], ())
    assert run.returncode == 2, run.stderr
    doc = json.loads(run.stdout)
    assert doc["snapshot"]["namespace"] == f"netns:{ns}"
    first = doc["findings"][0]
    assert (first["id"], first["severity"]) == ("bind-pool-exhaustion", "critical")
    assert "bind(198.18.0.1, 0)" in first["title"]
    assert first["remedies"][0]["id"] == "bind-address-no-port"
    assert "IP_BIND_ADDRESS_NO_PORT" in first["remedies"][0]["code_c"]
    pool = next(b for b in doc["pools"]["bind"] if b["address"] == "198.18.0.1")
    assert pool["headroom"] == allowed[0] == 0
    assert doc["pools"]["connect_new"]["headroom"] == 0
