"""capture() on a private namespace with a known population: counts equal ss and the population.

Root tests (marked `root`): each module shares one namespace filled once (~0.2 s). The FIN_WAIT2
minisockets live tcp_fin_timeout = 20 s there, far longer than this module runs.
"""

from __future__ import annotations

import collections
import os
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from timewait.lab.namespaces import run_in_netns, throwaway_netns
from timewait.lab.population import Expected, populated
from timewait.live import netns as live_netns
from timewait.live.capture import NOTE_PROC, NOTE_UNPRIVILEGED, CaptureError, capture
from timewait.live.netns import NamespaceNotFound, NeedRoot
from timewait.snapshot import (
    TCP_BOUND_INACTIVE,
    TCP_CLOSE_WAIT,
    TCP_ESTABLISHED,
    TCP_FIN_WAIT2,
    TCP_LISTEN,
    TCP_TIME_WAIT,
    Snapshot,
    addr_str,
)

from ..lab.helpers import need_root, ss_lines

SS_STATE = {
    "time-wait": TCP_TIME_WAIT,
    "fin-wait-2": TCP_FIN_WAIT2,
    "close-wait": TCP_CLOSE_WAIT,
    "established": TCP_ESTABLISHED,
    "listening": TCP_LISTEN,
}


@pytest.fixture(scope="module")
def pop() -> Iterator[tuple[str, Expected, int]]:
    need_root()
    with throwaway_netns() as ns, populated(ns) as holder:
        yield ns, holder.report, holder.pid


@pytest.fixture(scope="module")
def snap(pop: tuple[str, Expected, int]) -> Snapshot:
    return capture(netns=pop[0])


def quads(s: Snapshot, state: int) -> set[tuple[str, int, str, int]]:
    a = s.sockets[s.sockets["state"] == state]
    return {(addr_str(r["src"]), int(r["sport"]), addr_str(r["dst"]), int(r["dport"])) for r in a}


@pytest.mark.root
@pytest.mark.parametrize("state", sorted(SS_STATE))
def test_counts_by_state_equal_ss_and_the_population(
    pop: tuple[str, Expected, int], snap: Snapshot, state: str
) -> None:
    ns, exp, _ = pop
    ours = int((snap.sockets["state"] == SS_STATE[state]).sum())
    assert ours == len(ss_lines(ns, state)) == exp.counts()[state]


@pytest.mark.root
def test_time_wait_four_tuples_equal_the_population(
    pop: tuple[str, Expected, int], snap: Snapshot
) -> None:
    assert quads(snap, TCP_TIME_WAIT) == set(pop[1].time_wait)


@pytest.mark.root
def test_fin_wait2_minisockets_are_not_time_wait(
    pop: tuple[str, Expected, int], snap: Snapshot
) -> None:
    """Orphaned FIN_WAIT2 minisockets: state 5, timer 3, <= tcp_fin_timeout left (ref 2.2)."""
    ns, exp, _ = pop
    assert quads(snap, TCP_FIN_WAIT2) == set(exp.fin_wait2)
    a = snap.sockets[snap.sockets["state"] == TCP_FIN_WAIT2]
    assert a["minisock"].all() and (a["expires_ms"] <= 20_000).all()
    ss_fw2 = ss_lines(ns, "fin-wait-2", "-o")
    assert all("timer:(timewait," in ln for ln in ss_fw2)  # ss shows them as minisockets too


@pytest.mark.root
def test_sockstat_tw_is_time_wait_plus_fin_wait2(
    pop: tuple[str, Expected, int], snap: Snapshot
) -> None:
    c = pop[1].counts()
    assert snap.counters["sockstat.tw"] == c["time-wait"] + c["fin-wait-2"]


@pytest.mark.root
def test_ipv6_sockets_are_captured(pop: tuple[str, Expected, int], snap: Snapshot) -> None:
    v6 = snap.sockets[snap.sockets["family"] == 10]
    ss6 = ss_lines(pop[0], "all", "-6")
    # ss's "all" leaves out bind()-only sockets; we keep the one on [::1]:41003.
    assert (v6["state"] != TCP_BOUND_INACTIVE).sum() == len(ss6)
    assert (v6["state"] == TCP_BOUND_INACTIVE).sum() == 1
    assert (v6["state"] == TCP_TIME_WAIT).sum() == 10


@pytest.mark.root
def test_listeners_are_captured(pop: tuple[str, Expected, int], snap: Snapshot) -> None:
    a = snap.sockets[snap.sockets["state"] == TCP_LISTEN]
    assert {(addr_str(r["src"]), int(r["sport"])) for r in a} == set(pop[1].listeners)


@pytest.mark.root
def test_bind_only_sockets_are_bound_inactive(
    pop: tuple[str, Expected, int], snap: Snapshot
) -> None:
    """bind() without listen/connect holds a port: state 13 (Linux 6.5+). ss 6.1 cannot list
    them (no 'bound-inactive' state name), so the population is the reference here."""
    a = snap.sockets[snap.sockets["state"] == TCP_BOUND_INACTIVE]
    assert {(addr_str(r["src"]), int(r["sport"])) for r in a} == set(pop[1].bound_only)


@pytest.mark.root
def test_sysctls_are_those_of_that_namespace(snap: Snapshot) -> None:
    """Settings written inside the namespace, not the host's (containers have their own)."""
    cfg = snap.config
    assert cfg.ip_local_port_range == (40000, 49999)
    assert cfg.ip_local_reserved_ports == frozenset(range(40000, 40010)) | {45000}
    assert cfg.tcp_fin_timeout == 20 and cfg.tcp_tw_reuse == 0
    host = capture()
    assert host.config.ip_local_port_range != cfg.ip_local_port_range


@pytest.mark.root
def test_snapshot_metadata(pop: tuple[str, Expected, int], snap: Snapshot) -> None:
    assert snap.namespace == f"netns:{pop[0]}"
    assert snap.source == "sock_diag"
    assert snap.kernel == os.uname().release
    assert snap.time_ns > 0 and snap.monotonic_ns > 0
    assert "ActiveOpens" in snap.counters and "TW" in snap.counters
    assert not snap.sockets.flags.writeable


@pytest.mark.root
def test_proc_source_sees_the_same_sockets_except_bind_only(
    pop: tuple[str, Expected, int], snap: Snapshot
) -> None:
    p = capture(netns=pop[0], source="proc")
    assert p.source == "proc" and NOTE_PROC in p.notes
    want = collections.Counter(snap.sockets["state"].tolist())
    del want[TCP_BOUND_INACTIVE]
    assert collections.Counter(p.sockets["state"].tolist()) == want
    assert quads(p, TCP_TIME_WAIT) == quads(snap, TCP_TIME_WAIT)


@pytest.mark.root
def test_namespace_by_path_and_by_pid(pop: tuple[str, Expected, int], snap: Snapshot) -> None:
    ns, _, holder_pid = pop
    by_path = capture(netns=f"/run/netns/{ns}")
    by_pid = capture(pid=holder_pid)
    assert by_path.namespace == f"netns:/run/netns/{ns}" and by_pid.namespace == f"pid:{holder_pid}"
    for s in (by_path, by_pid):
        assert np.array_equal(np.sort(s.sockets["state"]), np.sort(snap.sockets["state"]))


@pytest.mark.root
def test_capture_returns_to_the_callers_namespace(pop: tuple[str, Expected, int]) -> None:
    before = os.stat(live_netns.SELF_NETNS).st_ino
    capture(netns=pop[0])
    with pytest.raises(CaptureError):
        capture(netns=pop[0], source="nope")
    assert os.stat(live_netns.SELF_NETNS).st_ino == before


def _capture_as_nobody(netns: str | None) -> dict[str, Any]:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    try:
        s = capture(netns=netns)
    except NeedRoot as e:
        return {"error": str(e)}
    return {
        "states": collections.Counter(s.sockets["state"].tolist()),
        "notes": s.notes,
        "range": s.config.ip_local_port_range,
        "tw": s.counters.get("sockstat.tw"),
    }


@pytest.mark.root
def test_unprivileged_capture_of_own_namespace_is_complete(
    pop: tuple[str, Expected, int], snap: Snapshot
) -> None:
    """As uid 65534 inside the namespace: sock_diag dumps every socket, sysctls are readable."""
    got = run_in_netns(pop[0], _capture_as_nobody, None)
    assert got["states"] == collections.Counter(snap.sockets["state"].tolist())
    assert got["range"] == (40000, 49999) and got["tw"] == snap.counters["sockstat.tw"]
    assert NOTE_UNPRIVILEGED in got["notes"]


def _in_child(fn: Any, *args: Any) -> Any:
    """Run fn in a forked child of this (host-namespace) process; returns its result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        try:
            out = pickle.dumps(fn(*args))
        except BaseException as e:
            out = pickle.dumps({"raised": f"{type(e).__name__}: {e}"})
        os.write(w, out)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


@pytest.mark.root
def test_unprivileged_capture_of_another_namespace_says_root_is_needed(
    pop: tuple[str, Expected, int],
) -> None:
    got = _in_child(_capture_as_nobody, pop[0])
    assert "needs root (CAP_SYS_ADMIN" in got["error"]


def test_unknown_namespace_name_says_ip_netns_list() -> None:
    with pytest.raises(
        NamespaceNotFound, match=r"no network namespace named 'tw-nope-0'.*ip netns list"
    ):
        capture(netns="tw-nope-0")


def test_unknown_namespace_path_is_named() -> None:
    with pytest.raises(NamespaceNotFound, match="/nonexistent/ns"):
        capture(netns="/nonexistent/ns")


def test_unknown_pid_is_named() -> None:
    with pytest.raises(NamespaceNotFound, match="no process with pid 999999999"):
        capture(pid=999_999_999)


def test_own_namespace_by_pid_needs_no_setns() -> None:
    """--pid of a process in our own namespace is read directly (works without root)."""
    s = capture(pid=os.getpid())
    assert s.namespace == f"pid:{os.getpid()}" and s.source == "sock_diag"


def test_capture_of_own_namespace_works() -> None:
    s = capture()
    assert s.namespace == "host" and s.config.port_range_size > 0


_OWN_LABEL = "from timewait.live.capture import capture; print(capture().namespace)"


@pytest.mark.root
def test_capture_inside_a_named_namespace_is_labelled_with_its_name() -> None:
    """Run under `ip netns exec NAME`, the capture says netns:NAME, not host (issue 10 item 4)."""
    import subprocess
    import sys

    with throwaway_netns() as ns:
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _OWN_LABEL],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    assert out == f"netns:{ns}"


@pytest.mark.root
def test_capture_inside_an_unnamed_namespace_is_labelled_by_inode() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        ["unshare", "-n", sys.executable, "-c",
         _OWN_LABEL + "; import os; print(os.stat('/proc/self/ns/net').st_ino)"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert out[0] == f"netns:[{out[1]}]"


def test_whole_snapshot_from_fixtures_without_root() -> None:
    """capture() takes its sources (issue 11 item 4): a recorded dump, a /proc/net and a
    sysctl directory give the whole Snapshot -- sockets, config, counters -- with no kernel."""
    import json
    from pathlib import Path

    from timewait.doctor import diagnose
    from timewait.live.capture import Sources

    fx = Path(__file__).resolve().parents[1] / "fixtures" / "netns-population"
    want = json.loads((fx / "expected.json").read_text())
    for dump, source in (((fx / "sockdiag-root.bin").read_bytes(), "sock_diag"), (None, "proc")):
        snap = capture(
            source="proc" if dump is None else "auto",
            sources=Sources(dump=dump, proc_net=str(fx / "proc"), sysctl_dir=str(fx / "sys")),
        )
        assert snap.source == source
        lo, hi = want["sysctls"]["ip_local_port_range"].split()
        assert snap.config.ip_local_port_range == (int(lo), int(hi))
        assert snap.counters["sockstat.tw"] > 0 and "TW" in snap.counters
        n_tw = int((snap.sockets["state"] == TCP_TIME_WAIT).sum())
        assert n_tw == want["counts"]["time-wait"]
        assert diagnose(snap).analysis.totals.time_wait == n_tw


def test_capture_works_in_a_forked_child_after_the_parent_captured() -> None:
    """The dump's helper thread does not survive fork(); a child must not wait for it."""
    capture()  # starts the helper thread in this process
    got = _in_child(lambda: len(capture()) >= 0)
    assert got is True
