"""Every lab experiment in its quick form on the real kernel, next to the model (root needed).

Each test runs one experiment (<= 20 s), checks the kernel's headline numbers against the
reference facts (linux-timewait.md), and checks that every kernel-vs-model difference above 5%
is reported as a MODEL DEFECT -- and that the only ones are the known, explained ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from timewait.lab.experiments import get, load_catalog
from timewait.lab.experiments.base import LabResult
from timewait.lab.namespaces import PREFIX

from .helpers import need_root

pytestmark = pytest.mark.root

# (experiment, variant, metric): model defects found by the lab and handed to the lead
# (README-lab.md "Model defects"); the output must keep saying MODEL DEFECT until fixed.
KNOWN_DEFECTS: set[tuple[str, str, str]] = {
    # The one open item: server-side TIME_WAITs taken over by a new SYN (TCP_TW_SYN) after the
    # port search's 10 s re-salt happen on the kernel in some runs and not others (934-1000 of
    # 1000); a single run against a single model run can differ by > 5%. Reported, not hidden.
    ("nginx-keepalive", "no upstream keepalive", "time_wait_toward_backend"),
    ("who-closes-first", "server closes first", "server_time_wait"),
}


def _run(name: str) -> LabResult:
    need_root()
    exp = get(name)
    before = {n for n in _namespaces()}
    result = exp.run(dict(exp.quick))  # how long it takes is not a behaviour: no bound here
    mine = {n for n in _namespaces() if n.startswith(f"{PREFIX}{__import__('os').getpid()}-")}
    assert not (mine - before), f"{name} left namespaces behind: {mine - before}"
    defects = {(name, r.variant, r.metric) for r in result.defects}
    assert defects <= KNOWN_DEFECTS, f"unexpected model defects: {defects - KNOWN_DEFECTS}"
    js = result.to_json()
    assert {d["metric"] for d in js["model_defects"]} == {r.metric for r in result.defects}
    assert all(d["status"] == "MODEL DEFECT" for d in js["model_defects"])
    assert result.rows, "no kernel-vs-model rows"
    return result


def _namespaces() -> list[str]:
    p = Path("/run/netns")
    return sorted(x.name for x in p.iterdir()) if p.exists() else []


def test_catalog_has_the_thirteen_experiments() -> None:
    assert set(load_catalog()) == {
        "exhaustion", "tw-reuse", "reuseaddr-restart", "lost-final-ack", "fin-timeout-myth",
        "max-tw-buckets", "who-closes-first", "bind-before-connect", "http-pooling",
        "nginx-keepalive", "pool-headroom", "snat-exhaustion", "plan",
    }  # fmt: skip


def test_pool_headroom_doctor_equals_kernel_in_the_quick_form() -> None:
    """The quick form (the bind-before-connect exhaustion) through the lab command's path;
    tests/doctor/test_pools_kernel.py holds every population to the same standard."""
    r = _run("pool-headroom")
    assert r.rows and all(row.kernel == row.model for row in r.rows)
    assert r.kernel["bind-before-connect-full"]["bind(198.18.0.1, 0)"] == 0


def test_exhaustion_first_failure_at_usable_over_rate() -> None:
    r = _run("exhaustion")
    (k,) = r.kernel.values()
    assert k["first_failure_s"] == pytest.approx(200 / 200.0, abs=0.02)
    assert k["time_wait_plateau"] == 200
    assert k["failures_per_s"] == pytest.approx(200, rel=0.05)


def test_tw_reuse_takes_over_only_with_timestamps_and_after_the_delay() -> None:
    r = _run("tw-reuse")
    k = r.kernel
    assert k["reuse=0"]["tw_recycled"] == 0 and k["reuse=0"]["connections"] == 50
    assert k["reuse=1"]["tw_recycled"] == 100
    assert k["reuse=2 (loopback)"]["tw_recycled"] == 100
    assert k["reuse=1 timestamps=0"]["tw_recycled"] == 0
    assert k["reuse=1 delay=2000ms"]["tw_recycled"] == 50


def test_reuseaddr_restart_bind_matrix() -> None:
    r = _run("reuseaddr-restart")
    binds = {k: v["bind"] for k, v in r.kernel.items() if "bind" in v}
    assert binds == {
        "old=off,new=off": "EADDRINUSE",
        "old=off,new=on": "EADDRINUSE",
        "old=on,new=off": "EADDRINUSE",
        "old=on,new=on": "ok",
    }
    assert r.kernel["client reuseaddr=on"]["eaddrnotavail"] == 50


def test_lost_final_ack_is_reacked_from_time_wait_and_linger_zero_resets() -> None:
    r = _run("lost-final-ack")
    tw, lz = r.kernel["time-wait"], r.kernel["linger-zero"]
    assert tw["final_acks_lost"] == 5 and tw["fin_retransmits"] >= 5
    assert tw["reacks_from_time_wait"] >= 5 and tw["clean_closes"] == 5 and tw["resets"] == 0
    assert lz["client_time_wait"] == 0 and lz["peer_resets"] == 5 and lz["aborts"] == 5
    # One RST per abort on the kernel and, since the model closes after the peer's ACK as
    # loopback does, on the model too (it was 2 per abort before: a fixed model defect).
    model_rsts = next(row for row in r.rows if row.metric == "rsts_sent").model
    assert lz["rsts_sent"] == 5 and model_rsts == 5


def test_fin_timeout_does_not_change_time_wait_length() -> None:
    r = _run("fin-timeout-myth")
    five, sixty = r.kernel["tcp_fin_timeout=5"], r.kernel["tcp_fin_timeout=60"]
    assert five["time_wait_s"] == pytest.approx(60, abs=0.1)
    assert sixty["time_wait_s"] == pytest.approx(60, abs=0.1)
    assert five["fin_wait2_s"] == pytest.approx(5, abs=0.1)
    assert sixty["fin_wait2_s"] == pytest.approx(60, abs=0.1)


def test_max_tw_buckets_caps_and_counts_overflow() -> None:
    r = _run("max-tw-buckets")
    k = r.kernel["max_tw_buckets=50"]
    assert k["time_wait_max"] == 50 and k["tcp_time_wait_overflow"] == 250
    assert r.kernel["default (131072)"]["tcp_time_wait_overflow"] == 0


def test_who_closes_first_puts_time_wait_on_the_active_closer() -> None:
    r = _run("who-closes-first")
    c, s = r.kernel["client closes first"], r.kernel["server closes first"]
    assert c["server_time_wait"] == 0 and c["client_time_wait"] == c["connections"]
    assert s["client_time_wait"] == 0
    # Not always every one: after the 10 s re-salt of the port search, a new SYN from a port whose
    # four-tuple still sits in the server's TIME_WAIT takes it over (TCP_TW_SYN, ref 1.3/1.6);
    # seen here as 397 of 400 in one run, as with nginx-keepalive.
    assert 0.9 * s["connections"] <= s["server_time_wait"] <= s["connections"]


def test_bind_before_connect_locks_a_port_per_connection() -> None:
    r = _run("bind-before-connect")
    assert r.kernel["bind"] == {"capacity": 100, "first_failure": "EADDRINUSE", "time_wait": 100}
    assert r.kernel["bind-no-port"]["capacity"] == 400
    assert r.kernel["bind-no-port"]["first_failure"] == "EADDRNOTAVAIL"


def test_http_pooling_session_and_pool_open_one_connection() -> None:
    r = _run("http-pooling")
    g = r.kernel["requests.get"]
    assert g["connections"] == g["requests"] == 100 and g["eaddrnotavail"] == 50
    for kind in ("requests.Session", "urllib3.PoolManager"):
        assert r.kernel[kind]["connections"] == 1 and r.kernel[kind]["failures"] == 0


def test_nginx_upstream_keepalive_removes_backend_time_wait() -> None:
    r = _run("nginx-keepalive")
    no, ka = r.kernel["no upstream keepalive"], r.kernel["upstream keepalive 16"]
    assert no["backend_connections"] == 400
    # The backend closes first; a new SYN may take one of its TIME_WAITs over (TCP_TW_SYN), so
    # a few may be missing (934-1000 of 1000 seen in full runs).
    assert 0.9 * 400 <= no["time_wait_toward_backend"] <= 400
    assert ka["time_wait_toward_backend"] == 0
    assert not list(Path("/tmp").glob(f"timewait-lab-{__import__('os').getpid()}-*"))
