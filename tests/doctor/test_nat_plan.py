"""plan() on NAT pools (issue 16 item 1): a masquerading router's conntrack table run forward
on the NAT model, as it is and with more SNAT addresses, a wider range, a shorter conntrack
TIME_WAIT; the closed forms within 2% on synthetic captures (tests/doctor/nat_helpers.py).

Closed forms (sim/nat.py; before Linux 6.5, or where nothing may be evicted), for a rate R into
P translated ports with conntrack TIME_WAIT T and lifetime L: from an empty pool the first drop
comes at P / R, so t0 seconds into the churn at P / R - t0 after the capture; at steady state
R - P / (T + L) SYNs a second are dropped. On 6.5+ a SYN evicts a TIME_WAIT entry, so a pool
that only TIME_WAIT fills drops nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from timewait.doctor import analyze
from timewait.doctor.plan import AS_IS, Plan, PlanError, plan
from timewait.model.nat import snat_address_index

from .nat_helpers import SERVER, client, router_capture

P, R, T0, GAP = 100, 4.0, 10.0, 5.0
T, L = 120.0, 0.010  # conntrack TIME_WAIT, the plan's connection lifetime
HORIZON = 300.0


def planned(rate: float = R, horizon: float = HORIZON, **kw: Any) -> Plan:
    tries = kw.pop("tries", ())
    now, before = router_capture(T0, rate, **kw), router_capture(T0 - GAP, rate, **kw)
    return plan(now, analyze(now, before), horizon_s=horizon, tries=tries)


def by_option(p: Plan) -> dict[str, Any]:
    (pool,) = p.nat
    return {AS_IS: pool.as_is} | {o.option: o for o in pool.options}


def test_doctor_churn_counts_the_whole_ten_seconds() -> None:
    """ctnetlink rounds timers down: entries that entered TIME_WAIT within 10 s show >= 110 s
    left. (Counting > 110 s saw 9 s of churn: 10% low.)"""
    a = analyze(router_capture(T0, R))
    assert a.nat is not None
    assert a.nat.pools[0].churn_per_s == R


def test_doctor_churn_of_a_full_pool_that_evicts_counts_the_evicted_ones_too() -> None:
    """6.5+: in a full pool each SYN evicts a random TIME_WAIT entry, so the young entries are
    survivors: at R = 20/s over 40 TIME_WAIT entries (60 ports held open) each lives ~2 s, and
    counting them gives 4/s. Their ages (exponential, rate R / 40) give R back within 2%; the
    same table on 6.1 (nothing evicted: every entry's age counts) is the plain count."""
    import math

    from timewait import conntrack as C

    rate, n_tw = 20.0, 40
    mu = rate / n_tw
    rows = [dict(src=client(i % 3), sport=50000 + i, dst=SERVER, dport=80,
                 nat_src="198.18.0.1", nat_sport=40060 + i, state=C.TCP_CONNTRACK_TIME_WAIT,
                 timeout_s=math.floor(120 + math.log(1 - (i + 0.5) / n_tw) / mu))
            for i in range(n_tw)]  # fmt: skip
    new = analyze(router_capture(0.0, 1.0, held_open=60, kernel="6.18.44", extra_rows=rows))
    assert new.nat is not None and new.nat.pools[0].headroom == 0
    assert new.nat.pools[0].churn_per_s == pytest.approx(rate, rel=0.02)
    old = analyze(router_capture(0.0, 1.0, held_open=60, kernel="6.1.0", extra_rows=rows))
    assert old.nat is not None and old.nat.pools[0].churn_per_s == n_tw / 10


def test_pre_6_5_as_is_onset_and_steady_drops_are_the_closed_forms() -> None:
    p = planned()
    (pool,) = p.nat
    assert pool.kind == "nat" and pool.label == f"NAT 198.18.0.1 -> {SERVER}:80/tcp"
    assert pool.churn_per_s == R and pool.held_now == pool.time_wait_now == R * T0
    o = pool.as_is
    assert o.onset_s == pytest.approx(P / R - T0, rel=0.02)
    assert o.failures_per_s == pytest.approx(R - P / (T + L), rel=0.02)
    assert (o.headroom, o.usable) == (0, P)
    assert any("Linux < 6.5" in n for n in p.notes)
    assert p.destinations == ()  # a router: no socket of its own churns


def test_a_wider_range_and_a_shorter_ct_time_wait_follow_the_same_forms() -> None:
    """nat-range=40000-40127 (128 ports: one search round, exact) and ct-time-wait=60 and 90:
    the same closed forms with P and T changed; the captured entries keep their 120 s timers,
    which the steady window (the last T + L of the horizon) no longer sees."""
    opts = by_option(planned(tries=("nat-range=40000-40127", "ct-time-wait=60")))
    wide, short = opts["nat-range"], opts["ct-time-wait"]
    assert wide.onset_s == pytest.approx(128 / R - T0, rel=0.02)
    assert wide.failures_per_s == pytest.approx(R - 128 / (T + L), rel=0.02)
    assert wide.usable == 128
    assert short.onset_s == pytest.approx(P / R - T0, rel=0.02)  # fills before anything expires
    assert short.failures_per_s == pytest.approx(R - P / (60 + L), rel=0.02)
    (ninety,) = planned(tries=("ct-time-wait=90",)).nat[0].options
    assert ninety.failures_per_s == pytest.approx(R - P / (90 + L), rel=0.02)
    # ranked: the fewest drops first
    assert planned().nat[0].options[0].option == "nat-range"


def test_6_5_plus_drops_nothing_while_only_time_wait_fills() -> None:
    """Linux >= 6.5 (nf_nat_used_tuple_harder()): the same load, every SYN past the full mark
    evicts a TIME_WAIT entry. Ports left count TIME_WAIT entries as free (the doctor's hard
    usage)."""
    p = planned(kernel="6.18.44")
    o = p.nat[0].as_is
    assert o.onset_s is None and o.failures_per_s == 0 and o.headroom == P
    assert any("Linux >= 6.5" in n for n in p.notes)


def test_6_5_plus_drops_when_the_eviction_window_meets_open_entries() -> None:
    """Eviction is tried only in the last 32 probes of a search round (NF_NAT_HARDER_THRESH):
    with every port held and a block of H open entries, a SYN whose round (here all 100 ports
    from a random offset) ends in that block cannot evict -- (H - 31) / P of the offsets -- and
    one whose window holds m TIME_WAIT entries fails when none is behind its sequence number
    (1/2 each): sum 2^-m over the windows sticking out of either end of the block, about 2 / P.
    So 37 open entries cost 8% of the SYNs once TIME_WAIT fills the rest, 90 cost 61%; before
    6.5 it is R - (P - H) / (T + L). Ports left: P - H either way."""
    for held, rate in ((37, R), (90, 1.0)):
        f = (held - 31) / P + 2 / P
        new = planned(rate=rate, held_open=held, kernel="6.18.44").nat[0].as_is
        assert new.headroom == P - held
        assert new.failures_per_s == pytest.approx(rate * f, rel=0.15), held
        old = planned(rate=rate, held_open=held).nat[0].as_is
        assert old.failures_per_s == pytest.approx(rate - (P - held) / (T + L), rel=0.02)
        assert old.headroom == 0
    full = planned(rate=1.0, held_open=90)
    assert full.nat[0].as_is.onset_s == 0.0  # before 6.5 the pool is full now
    assert any("90 open entries" in n and "held for the whole horizon" in n for n in full.notes)


def test_snat_addresses_do_not_help_one_client() -> None:
    """find_best_ips_proto() hashes (client, destination) to one address: one client behind
    the NAT keeps one address however many there are, so the steady drops do not move (its
    hashed address may start empty: a later first drop, then the same steady state)."""
    p = planned(tries=("snat-addresses=4",))
    (more,) = p.nat[0].options
    assert more.usable == P
    assert more.failures_per_s == pytest.approx(p.nat[0].as_is.failures_per_s, rel=0.02)
    assert "1 churning client(s) hash to 1 of 4 addresses" in more.note
    assert "one client uses one address" in more.note


def test_snat_addresses_split_many_clients_by_the_kernels_hash() -> None:
    """8 clients at 1/s each over 4 addresses: the kernel's hash (measured: 3 + 2 + 2 + 1
    clients) sets each address's load. Each address's pool gets its own clients' churn; the
    captured entries stay on the first. Steady drops = sum over addresses of R_a - P / (T + L);
    the first drop comes on the captured address, (P - 80) / R_0 after the capture."""
    rate, clients = 8.0, 8
    idx = [snat_address_index(client(i), SERVER, 4) for i in range(clients)]
    per = [rate / clients * idx.count(a) for a in range(4)]
    assert sorted(idx.count(a) for a in range(4)) == [1, 2, 2, 3]
    p = planned(rate=rate, clients=clients, tries=("snat-addresses=4",))
    (more,) = p.nat[0].options
    assert more.usable == 4 * P and "8 churning client(s) hash to 4 of 4 addresses" in more.note
    expected = sum(max(r - P / (T + L), 0.0) for r in per)
    assert more.failures_per_s == pytest.approx(expected, rel=0.02)
    assert more.onset_s == pytest.approx((P - rate * T0) / per[0], rel=0.02)
    assert p.nat[0].as_is.failures_per_s == pytest.approx(rate - P / (T + L), rel=0.02)
    # 2 addresses: the same hash at n = 2
    (two,) = planned(rate=rate, clients=clients, tries=("snat-addresses=2",)).nat[0].options
    idx2 = [snat_address_index(client(i), SERVER, 2) for i in range(clients)]
    per2 = [rate / clients * idx2.count(a) for a in range(2)]
    expected2 = sum(max(r - P / (T + L), 0.0) for r in per2)
    assert two.failures_per_s == pytest.approx(expected2, rel=0.02)


def test_risk_and_changes_are_the_doctors_own_texts() -> None:
    from timewait.doctor import nat_rules as NR
    from timewait.doctor.rules import context

    now = router_capture(T0, R)
    a = analyze(now)
    assert a.nat is not None
    pool, ctx = a.nat.pools[0], context(now)
    opts = by_option(plan(now, a, tries=("snat-addresses", "nat-range", "ct-time-wait")))
    assert opts["snat-addresses"].risk == NR.more_snat_addresses(ctx, pool).risk
    wide = NR.wide_port_range(ctx, pool)
    assert wide is not None and opts["nat-range"].changes == wide.changes
    short = NR.ct_time_wait(ctx, a.nat)
    assert short is not None and opts["ct-time-wait"].risk == short.risk
    assert "shortens a protection" in opts["ct-time-wait"].risk


def test_bad_nat_tries_are_one_line_errors() -> None:
    with pytest.raises(PlanError, match="not below 60 s"):
        planned(tries=("ct-time-wait=30",))
    with pytest.raises(PlanError, match="not shorter than the 60 s"):
        planned(tries=("ct-time-wait=60",), ct_time_wait_s=60)
    with pytest.raises(PlanError, match="not wider than the rule's range 40000-40099"):
        planned(tries=("nat-range=40000-40049",))
    with pytest.raises(PlanError, match="expected LOW-HIGH"):
        planned(tries=("nat-range=wide",))
    with pytest.raises(PlanError, match=r"snat-addresses=1: must be 2\.\.1024"):
        planned(tries=("snat-addresses=1",))
    with pytest.raises(PlanError, match="no such remedy"):
        planned(tries=("nat-recycle",))


def test_try_names_pick_which_pools_are_planned() -> None:
    """--try with only socket remedies leaves NAT pools out, and the other way round."""
    assert planned(tries=("pool=4",)).nat == ()
    from .test_plan import planned as socket_planned

    assert socket_planned(tries=("snat-addresses=2",)).destinations == ()  # type: ignore[attr-defined]


def test_a_busy_pool_runs_scaled_and_says_so() -> None:
    """800 connections a second into 1024-65535 for 300 s: run at 1/k scale (rate, range and
    captured entries alike); the steady drops are still R - P / (T + L)."""
    p = planned(rate=800.0, ports=(1024, 65535))
    o = p.nat[0].as_is
    assert any("scale" in n for n in p.notes)
    assert o.failures_per_s == pytest.approx(800 - 64512 / (T + L), rel=0.03)


# -- the command -------------------------------------------------------------------------------


def test_plan_command_from_saved_router_captures(tmp_path: Path) -> None:
    """`timewait plan --from A --from B --json` on two saved router snapshots holding their
    conntrack tables: schema /2, the NAT pool with its options, exit 0 (one avoids drops)."""
    from ..test_cli import run

    a, b = tmp_path / "before.npz", tmp_path / "now.npz"
    router_capture(T0 - GAP, R, clients=8).save(a)
    router_capture(T0, R, clients=8).save(b)
    r = run("plan", "--from", str(a), "--from", str(b), "--json")
    assert r.exit_status == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == "timewait-plan/2" and doc["destinations"] == []
    (pool,) = doc["nat"]
    assert pool["kind"] == "nat" and pool["label"] == f"NAT 198.18.0.1 -> {SERVER}:80/tcp"
    assert pool["as_is"]["onset_s"] == pytest.approx(P / R - T0, rel=0.02)
    assert pool["options"][0]["option"] == "nat-range"
    assert {o["option"] for o in pool["options"]} == {"nat-range", "snat-addresses",
                                                       "ct-time-wait"}  # fmt: skip
    assert all(o["risk"] and o["changes"] for o in pool["options"])
    t = run("plan", "--from", str(a), "--from", str(b), "--try", "ct-time-wait=30")
    assert t.exit_status == 3 and "not below 60 s" in t.stderr
    text = run("plan", "--from", str(a), "--from", str(b), "--try", "snat-addresses=4")
    assert "first drop" in text.stdout and "drops/s" in text.stdout
    assert "hash to 4 of 4 addresses" in " ".join(text.stdout.split())
