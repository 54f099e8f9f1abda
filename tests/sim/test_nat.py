"""The NAT gateway model (model/nat.py) and the snat-exhaustion closed forms (sim/nat.py)."""

from __future__ import annotations

import random

import pytest

from timewait.model.nat import NatGateway
from timewait.sim.nat import NatWorkload, capacity, simulate_nat
from timewait.sim.scenario import get
from timewait.units import MS, SEC

DST = ("198.18.0.2", 80)


def gw(ports: tuple[int, int] = (40000, 40009), **kw: object) -> NatGateway:
    return NatGateway(rng=random.Random(7), port_range=ports, **kw)  # type: ignore[arg-type]


def key(client: int, port: int) -> tuple[str, int, str, int]:
    return (f"198.18.1.{client}", port, *DST)


def test_nat_keeps_the_client_port_when_in_range_and_unique() -> None:
    g = gw()
    assert g.syn(0, key(1, 40005), 1).tport == 40005
    # another client with the same port: the reply tuple is taken, so the search moves it
    v = g.syn(0, key(2, 40005), 1)
    assert v.accepted and v.tport != 40005 and 40000 <= v.tport <= 40009  # type: ignore[operator]


def test_nat_random_fully_does_not_keep_the_port() -> None:
    """get_unique_tuple(): NF_NAT_RANGE_PROTO_RANDOM_ALL skips keeping the client's port."""
    g = gw((40000, 40099), random_fully=True)
    got = [g.syn(0, key(1, 40000 + i), 1).tport for i in range(20)]
    assert g.counters.kept_port == 0
    assert sum(p == 40000 + i for i, p in enumerate(got)) < 5


def test_nat_pool_full_without_eviction_drops_the_syn() -> None:
    g = gw(evict=False)
    for i in range(10):
        assert g.syn(0, key(1, 50000 + i), 1).accepted
        g.close(MS, key(1, 50000 + i), 3)
    v = g.syn(2 * MS, key(1, 50100), 10)
    assert not v.accepted and g.counters.insert_failed == g.counters.drop == 1


def test_nat_evicts_a_closing_entry_only_when_the_sequence_has_advanced() -> None:
    g = gw()
    for i in range(10):
        g.syn(0, key(1, 50000 + i), 100)
        g.close(MS, key(1, 50000 + i), 102)
    assert not g.syn(2 * MS, key(1, 50100), 50).accepted  # behind every old td_end
    v = g.syn(2 * MS, key(1, 50101), 1000)  # ahead: nf_seq_has_advanced()
    assert v.accepted and v.evicted == 1 and g.counters.evicted == 1


def test_nat_never_evicts_an_established_entry() -> None:
    g = gw()
    for i in range(10):
        g.syn(0, key(1, 50000 + i), 100)
    assert not g.syn(MS, key(1, 50100), 10**6).accepted


def test_nat_time_wait_entry_expires_after_ct_time_wait() -> None:
    g = gw(evict=False, time_wait=120 * SEC)
    for i in range(10):
        g.syn(0, key(1, 50000 + i), 1)
        g.close(MS, key(1, 50000 + i), 3)
    assert not g.syn(MS + 120 * SEC - 1, key(1, 50100), 5).accepted
    assert g.syn(MS + 120 * SEC, key(1, 50101), 5).accepted


def test_nat_syn_reopens_its_own_time_wait_entry() -> None:
    g = gw(evict=False)
    for i in range(10):
        g.syn(0, key(1, 50000 + i), 1)
        g.close(MS, key(1, 50000 + i), 3)
    v = g.syn(2 * MS, key(1, 50003), 7)  # the same original tuple: tcp_packet() reopens it
    assert v.accepted and v.reopened and g.counters.reopened == 1 and g.entries() == 10


@pytest.mark.parametrize("rate", [5.0, 20.0])
def test_snat_closed_forms_without_eviction_within_2_percent(rate: float) -> None:
    """capacity = ports / (ct_time_wait + lifetime); onset = ports / R; steady entries =
    min(R x (ct_time_wait + lifetime), ports); after the first expiries drops/s = R - capacity.
    100 ports: one search round covers the range, so the pool is exact."""
    ports, tw_s, life_s = 100, 30.0, 0.001
    g = gw((40000, 40099), evict=False, time_wait=int(tw_s * SEC))
    wl = NatWorkload(rate=rate, duration=120 * SEC, clients=3, lifetime=MS)
    res = simulate_nat(g, wl, rng=random.Random(3))
    cap = capacity(ports, life_s, tw_s)
    assert res.first_drop is not None
    assert res.first_drop / SEC == pytest.approx(ports / rate, rel=0.02)
    assert res.entries[-1] == pytest.approx(min(rate * (tw_s + life_s), ports), rel=0.02)
    steady = res.drops_per_s_after(60, 120)
    assert steady == pytest.approx(rate - cap, rel=0.02)
    assert (120 - ports / rate) * rate > res.drops > 0


def test_snat_below_capacity_never_drops() -> None:
    g = gw((40000, 40099), evict=False, time_wait=30 * SEC)
    res = simulate_nat(g, NatWorkload(rate=3.0, duration=90 * SEC), rng=random.Random(1))
    assert res.drops == 0
    assert res.entries[-1] == pytest.approx(3.0 * 30, rel=0.02)


def test_snat_scenario_variants() -> None:
    r = get("snat-exhaustion").run({"nat_ports": "40000-40099", "duration_s": 10})
    old, new, held = r.variants.values()
    assert old["first_drop_s"] == pytest.approx(old["expected_onset_s"], rel=0.02)
    assert old["drops_per_s"] == pytest.approx(50.0, rel=0.02)
    assert new["time_wait_entries"] == 100 and new["evicted"] > 0
    assert held["first_drop_s"] == pytest.approx(2.0, rel=0.02) and held["time_wait_entries"] == 0


def test_seeded_entries_hold_their_ports_until_their_timers_end() -> None:
    """seed(): a captured table. An open entry holds its port for good; a closed one until its
    own timer ends, even when that is after entries closed later under a shorter timeout."""
    g = gw(evict=False, time_wait=10 * SEC)
    g.seed(0, ("captured", 40000, *DST), 40000, td_end=1, left=None)
    g.seed(0, ("captured", 40001, *DST), 40001, td_end=1, left=5 * SEC)
    for i in range(2, 10):
        g.seed(0, ("captured", 40000 + i, *DST), 40000 + i, td_end=1, left=(30 + i) * SEC)
    assert g.held(*DST) == 10 and g.time_wait_entries(0) == 9
    assert not g.syn(SEC, key(1, 50000), 5).accepted  # full, nothing evictable before 6.5
    v = g.syn(5 * SEC, key(1, 50001), 5)
    assert v.accepted and v.tport == 40001
    g.close(5 * SEC, key(1, 50001), 7)  # expires at 15 s, before the seeded ones (32..39 s)
    g.expire(15 * SEC)
    assert g.held(*DST) == 9 and g.time_wait_entries(15 * SEC) == 8
    with pytest.raises(ValueError, match="outside the range"):
        g.seed(0, ("captured", 1, *DST), 1, td_end=1, left=None)


def test_nat_workload_starts_from_a_captured_pool() -> None:
    """held_at_start/time_wait_at_start: 40 ports held open and 60 in TIME_WAIT for 30 s of a
    100-port pool: without eviction every SYN is dropped until the TIME_WAITs end, then 60 get
    through and the pool is full again."""
    g = gw((40000, 40099), evict=False, time_wait=120 * SEC)
    tw = tuple((p, 30 * SEC) for p in range(40040, 40100))
    wl = NatWorkload(rate=10.0, duration=40 * SEC, lifetime=MS,
                     held_at_start=tuple(range(40000, 40040)), time_wait_at_start=tw)  # fmt: skip
    res = simulate_nat(g, wl, rng=random.Random(1))
    assert res.first_drop == 0 and res.drops == 300 + 40  # every attempt of the first 30 s
    assert res.connections == 60 and res.entries[-1] == 100


def test_snat_address_index_is_what_the_kernel_chose() -> None:
    """find_best_ips_proto() on Linux 6.18.44: 8 clients 198.18.{1..8}.2 toward 198.18.0.2
    through `snat ip to 198.18.0.10-198.18.0.13` used these addresses (conntrack -L on the
    router; tests/live/test_nat_plan_kernel.py measures it again on every run)."""
    from timewait.model.nat import snat_address_index

    measured = [2, 2, 0, 1, 2, 1, 0, 3]
    got = [snat_address_index(f"198.18.{i}.2", "198.18.0.2", 4) for i in range(1, 9)]
    assert got == measured
    assert snat_address_index("198.18.1.2", "198.18.0.2", 1) == 0
    assert all(snat_address_index(f"198.18.1.{i}", "198.18.0.2", 3) in (0, 1, 2)
               for i in range(1, 200))  # fmt: skip
    # `persistent` leaves the destination out of the hash: the same address everywhere
    per = {snat_address_index("198.18.1.2", f"198.18.0.{d}", 4, persistent=True)
           for d in range(2, 40)}  # fmt: skip
    assert len(per) == 1
