"""End to end on the real kernel: a namespace filled with a known mix (issue 4, "Done means").

`timewait doctor --netns NAME --json` must report the same counts as `ss` for that namespace,
the hand-computed capacity per destination, and a critical finding with correct remedies when a
destination is above 90 % of its ports (exit status 2). Traffic stays on the loopback of the
throwaway namespace (DESIGN.md network rule); the namespace and its holder process are removed
on success, failure, Ctrl-C and SIGTERM by throwaway_netns/NetnsProcess.
"""

from __future__ import annotations

import io
import json
import os
import subprocess

import pytest

from timewait.cli import main
from timewait.env import Environment
from timewait.status import ExitStatus

from ..lab.helpers import TIMEWAIT, as_nobody, need_root, ss_lines

pytestmark = pytest.mark.root

# 100 ports (40000-40099, ends of different parity); 5 reserved; 2 bind()-held ports inside the
# range: capacity = 100 - 5 - 2 = 93 per destination (ref 7.1, 7.2 step 6). 85 TIME_WAITs to
# one destination = 91.4 % -> critical.
RANGE = (40000, 40099)
RESERVED = "40000-40004"
BOUND = (("127.0.0.1", 40050), ("::1", 40051), ("127.0.0.1", 50000))  # the last: outside
CAPACITY = 100 - 5 - 2
HOT = ("127.0.0.10", 8080, 85)


def _doctor(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(["doctor", *args], env=Environment(stdout=out, stderr=err, stdout_isatty=False))
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def populated_ns():
    need_root()
    from timewait.lab.namespaces import throwaway_netns
    from timewait.lab.population import PopulationSpec, populated

    spec = PopulationSpec(
        client_tw=(HOT, ("127.0.0.11", 8080, 20), ("127.0.0.10", 9090, 10)),
        bound_only=BOUND,
        sysctls={
            "ip_local_port_range": f"{RANGE[0]} {RANGE[1]}",
            "ip_local_reserved_ports": RESERVED,
            "tcp_fin_timeout": "20",
            "tcp_tw_reuse": "0",
        },
    )
    with throwaway_netns() as ns, populated(ns, spec) as holder:
        yield ns, holder.report


def test_doctor_counts_equal_ss(populated_ns) -> None:
    ns, expected = populated_ns
    status, out, err = _doctor("--netns", ns, "--json", "--top", "0")
    assert status == ExitStatus.CRITICAL, err
    doc = json.loads(out)
    t = doc["totals"]
    assert t["time_wait"] == len(ss_lines(ns, "time-wait")) == len(expected.time_wait)
    assert t["fin_wait2"] == len(ss_lines(ns, "fin-wait-2")) == len(expected.fin_wait2)
    assert t["established"] == len(ss_lines(ns, "established"))
    assert t["listen"] == len(ss_lines(ns, "listening"))
    # Counted from the four-tuples: with a 100-port range a later connection from a recycled
    # client port takes over an earlier server TIME_WAIT (SYN accepted, ref 1.6), so
    # expected.server_tw (connections made) can exceed what is left.
    server = [q for q in expected.time_wait if q[1] == 7070]
    assert t["time_wait_server"] == len(server)
    assert t["sockstat_tw"] == t["time_wait"] + t["fin_wait2"]  # ref 9.2


def test_doctor_capacity_and_per_destination_counts(populated_ns) -> None:
    ns, expected = populated_ns
    doc = json.loads(_doctor("--netns", ns, "--json", "--top", "0")[1])
    assert doc["ports"]["capacity"] == CAPACITY
    assert doc["ports"]["range"] == list(RANGE) and doc["ports"]["reserved"] == 5
    dests = {(d["src"], d["dst"], d["dport"]): d for d in doc["destinations"]}
    est = {}
    for src, sport, dst, dport in expected.established:
        if RANGE[0] <= sport <= RANGE[1]:  # the client end of a pair
            est[(src, dst, dport)] = est.get((src, dst, dport), 0) + 1
    for key, n in expected.client_tw_by_destination.items():
        d = dests[key]
        assert d["time_wait"] == n and d["in_use"] == n + est.get(key, 0), key
        assert d["capacity"] == CAPACITY
        assert d["usage"] == pytest.approx(d["in_use"] / CAPACITY, abs=1e-6)
    top = doc["destinations"][0]
    assert (top["dst"], top["dport"], top["in_use"]) == (HOT[0], HOT[1], HOT[2])


def test_doctor_critical_finding_with_correct_remedies(populated_ns) -> None:
    ns, _ = populated_ns
    doc = json.loads(_doctor("--netns", ns, "--json")[1])
    f = doc["findings"][0]
    assert (f["id"], f["severity"]) == ("port-exhaustion", "critical")
    ids = [r["id"] for r in f["remedies"]]
    assert ids[0] == "pool-connections" and "tw-reuse" in ids and "widen-port-range" in ids
    reuse = next(r for r in f["remedies"] if r["id"] == "tw-reuse")
    assert reuse["commands"][0] == f"ip netns exec {ns} sysctl -w net.ipv4.tcp_tw_reuse=1"
    widen = next(r for r in f["remedies"] if r["id"] == "widen-port-range")
    # every listener of the namespace that lands in 1024-65535 is reserved before widening
    assert all(p in widen["commands"][0] for p in ("5050", "6060", "7070", "8080", "8443"))
    text = json.dumps(doc["findings"])
    assert "tcp_fin_timeout" not in text and "tcp_tw_recycle" not in text


def test_doctor_netns_without_root_is_one_line_error(populated_ns) -> None:
    """An unprivileged user asking for another namespace gets a one-line error, exit 3."""
    ns, _ = populated_ns
    r = subprocess.run(
        [*as_nobody(), TIMEWAIT, "doctor", "--netns", ns],
        capture_output=True, text=True, check=False, env={**os.environ, "HOME": "/tmp"},
    )  # fmt: skip
    assert r.returncode == ExitStatus.ERROR, r.stderr
    assert r.stderr.count("\n") == 1 and "root" in r.stderr and "Traceback" not in r.stderr


def test_doctor_unprivileged_own_namespace_works() -> None:
    """Without root our own namespace is fully visible (the collector notes it)."""
    need_root()  # setpriv to drop privileges needs them first
    r = subprocess.run(
        [*as_nobody(), TIMEWAIT, "doctor", "--json"],
        capture_output=True, text=True, check=False, env={**os.environ, "HOME": "/tmp"},
    )  # fmt: skip
    assert r.returncode in (0, 1, 2), r.stderr
    doc = json.loads(r.stdout)
    assert any(f["id"] == "collector-notes" for f in doc["findings"])
