"""Pools (timewait.doctor.pools): each inference rule and each pool on synthetic tables.

The kernel itself checks the same numbers in tests/doctor/test_pools_kernel.py; here each rule
is pinned down on a table built by hand, including the cases it must not fire on.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from timewait.config import KernelConfig
from timewait.doctor import Severity, analyze, diagnose
from timewait.doctor.pools import bind_pool_for, is_loopback
from timewait.snapshot import TCP_ESTABLISHED, TCP_LISTEN, addr_bytes

from .helpers import S1, C, bound, est, fw2, listener, snap, tw

RANGE = KernelConfig(ip_local_port_range=(40000, 40199), tcp_tw_reuse=0)  # 200 ports
EVEN = list(range(40000, 40200, 2))  # connect()'s first parity (the range's low end)
ODD = list(range(40001, 40200, 2))  # bind(0)'s first parity


def dst(i: int) -> str:
    return f"198.18.1.{i}"


def ids(rows: list[dict[str, object]], cfg: KernelConfig = RANGE) -> dict[str, object]:
    return {f.id: f for f in diagnose(snap(rows, cfg)).findings}


# -- rule 3: which destinations' sockets bound before connecting --------------------------------


def test_connect_only_one_destination_shares_every_port() -> None:
    """connect() fills the first parity, then the other: both full -> still connect()'s."""
    rows = [tw(C, p, S1, 80) for p in EVEN + ODD[:50]]
    a = analyze(snap(rows, RANGE))
    assert a.ports.inferred_ports == 0 and a.ports.capacity == 200
    assert a.new_destination.headroom == 200
    (d,) = a.destinations()
    assert (d.in_use, d.headroom, d.bind_like) == (150, 50, False)


def test_parity_rule_other_parity_only_is_bind() -> None:
    """bind(0) takes the other parity first (ref 7.2 step 5): odd ports with no even one held
    toward the destination did not come from connect()."""
    rows = [tw(C, p, dst(i % 4), 80) for i, p in enumerate(ODD[:40])]
    a = analyze(snap(rows, RANGE))
    p = a.ports
    assert (p.parity_destinations, p.inferred_ports, p.capacity) == (4, 40, 160)
    assert a.new_destination.headroom == 160
    assert all(d.bind_like and d.bound == 10 and d.in_use == 0 for d in a.destinations())


def test_parity_rule_ignores_a_parity_blind_search() -> None:
    """A per-socket IP_LOCAL_PORT_RANGE search (6.8+) takes both parities at random: a
    destination with a chance excess of odd ports is not called bind()'s (the z test)."""
    r = random.Random(7)
    ports = r.sample(range(40000, 40200), 60)
    odd_heavy = sorted(ports, key=lambda q: q % 2 == 0)[:30]  # 30 ports, mostly odd
    assert sum(q % 2 for q in odd_heavy) > 20
    a = analyze(snap([tw(C, q, S1, 80) for q in odd_heavy] + [tw(C, 40000, S1, 80)], RANGE))
    assert a.ports.parity_destinations == 0 and a.ports.inferred_ports == 0


def test_no_sharing_rule_exhausted_range_over_many_destinations() -> None:
    """The headline case: every port held once, six destinations, no port shared -- connect()
    would have shared about k*(K-k)/ports of each destination's ports."""
    rows = [tw(C, p, dst(i % 6), 80) for i, p in enumerate(ODD + EVEN)]
    a = analyze(snap(rows, RANGE))
    assert a.ports.sharing_destinations == 6 and a.ports.capacity == 0
    assert a.new_destination.headroom == 0
    assert bind_pool_for(a.bind_pools, C).headroom == 0


def test_shared_ports_keep_destinations_connect_like() -> None:
    """Twelve destinations on the same even ports: shared, so nothing is exclusive."""
    rows = [tw(C, p, dst(i), 80) for i in range(12) for p in EVEN[i * 5 : i * 5 + 40]]
    a = analyze(snap(rows, RANGE))
    assert a.ports.inferred_ports == 0 and a.ports.capacity == 200


def test_same_address_rule_follows_the_decided_destinations() -> None:
    """Sequential bind-before-connect: four destinations got the odd ports, the fifth the even
    ones once odd ran out at that address. Nothing about the fifth alone says bind()."""
    rows = [tw(C, p, dst(i // 25), 80) for i, p in enumerate(ODD)]
    rows += [tw(C, p, dst(9), 80) for p in EVEN[:25]]
    a = analyze(snap(rows, RANGE))
    p = a.ports
    assert (p.parity_destinations, p.address_destinations) == (4, 1)
    assert a.new_destination.headroom == 75


def test_same_address_rule_not_when_a_connect_destination_shares_the_address() -> None:
    rows = [tw(C, p, dst(1), 80) for p in ODD[:20]]  # bind()'s
    rows += [tw(C, p, dst(2), 80) for p in EVEN[:30]] + [tw(C, p, dst(3), 80) for p in EVEN[:10]]
    a = analyze(snap(rows, RANGE))
    assert a.ports.address_destinations == 0 and a.ports.inferred_ports == 20


# -- rule 1 and 2 ------------------------------------------------------------------------------


def test_listeners_and_bound_sockets_are_exclusive_for_every_address_and_family() -> None:
    rows = [listener(40010), listener(40011, "::"), bound(40012, "2001:db8::1"), bound(9000)]
    a = analyze(snap(rows, RANGE))
    assert (a.ports.listener_ports, a.ports.bound_ports) == ((40010, 40011), (40012,))
    assert a.ports.capacity == 197 and a.new_destination.headroom == 197


def test_listener_that_exited_leaves_server_side_sockets_not_destinations() -> None:
    """Accepted connections keep the listener's bucket (ref 12.1; issue 17): one local port,
    each from another client port -- server side, and the port stays exclusive."""
    rows = [tw(C, 40100, "198.18.3.1", 50000 + i) for i in range(30)]
    rows += [tw(C, p, S1, 80) for p in EVEN[:10]]
    a = analyze(snap(rows, RANGE))
    assert a.ports.orphan_server_ports == (40100,)
    assert a.totals.time_wait_server == a.totals.time_wait_server_guessed == 30
    assert a.n_destinations == 1 and a.ports.capacity == 199


def test_fan_out_from_one_port_is_not_a_server() -> None:
    """One connection each to many hosts on one service port shares a port: a client."""
    rows = [est(C, 40100, f"198.18.{i // 250}.{i % 250 + 1}", 443) for i in range(30)]
    a = analyze(snap(rows, RANGE))
    assert a.ports.orphan_server_ports == () and a.n_destinations == 30


# -- bind(addr, 0) pools -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("owner", "address", "blocked"),
    [
        ("198.18.0.1", "198.18.0.1", True),  # same address
        ("198.18.0.1", "198.18.0.2", False),  # another address: no conflict
        ("0.0.0.0", "198.18.0.2", True),  # the IPv4 wildcard
        ("::", "198.18.0.2", True),  # dual-stack ::
        ("2001:db8::1", "198.18.0.2", False),  # an IPv6 address
        ("0.0.0.0", "2001:db8::2", False),  # the IPv4 wildcard vs IPv6
        ("::", "2001:db8::2", True),
        ("2001:db8::1", "::", True),  # :: conflicts with every owner
        ("2001:db8::1", "0.0.0.0", False),
        ("198.18.0.1", "0.0.0.0", True),
    ],
)
def test_bind_pool_overlap(owner: str, address: str, blocked: bool) -> None:
    """inet_csk_bind_conflict() / inet_bhash2_addr_any_conflict(), as measured on 6.18."""
    a = analyze(snap([bound(40020, owner)], RANGE))
    assert bind_pool_for(a.bind_pools, address).headroom == (199 if blocked else 200)


def test_bind_pool_counts_connect_sockets_and_time_wait_at_its_address() -> None:
    rows = [tw(C, p, S1, 80) for p in EVEN[:30]] + [fw2(C, 40001, S1, 80)]
    a = analyze(snap(rows, RANGE))
    mine = bind_pool_for(a.bind_pools, C)
    assert (mine.held, mine.exclusive, mine.headroom) == (31, 0, 169)
    assert bind_pool_for(a.bind_pools, "198.18.0.9").headroom == 200


# -- tcp_tw_reuse ----------------------------------------------------------------------------


def test_reusable_time_wait_loopback_with_reuse_2_aged_past_the_delay() -> None:
    """ref 3: reuse 2 = loopback only, older than tcp_tw_reuse_delay, TIME_WAIT substate."""
    cfg = RANGE.replace(tcp_tw_reuse=2)
    old = [tw("127.0.0.1", p, "127.0.0.10", 80, left_ms=55_000) for p in EVEN[:20]]
    young = [tw("127.0.0.1", p, "127.0.0.10", 80, left_ms=59_500) for p in EVEN[20:30]]
    orphan = [fw2("127.0.0.1", EVEN[30], "127.0.0.10", 80)]
    (d,) = analyze(snap(old + young + orphan, cfg)).destinations()
    assert (d.in_use, d.reusable, d.headroom) == (31, 20, 189)
    (d2,) = analyze(snap([tw(C, p, S1, 80, left_ms=55_000) for p in EVEN[:20]], cfg)).destinations()
    assert d2.reusable == 0  # not loopback
    no_ts = cfg.replace(tcp_timestamps=0)
    (d3,) = analyze(snap(old, no_ts)).destinations()
    assert d3.reusable == 0  # no timestamps, no reuse


def test_is_loopback() -> None:
    col = np.array(
        [addr_bytes(a) for a in ("127.0.0.1", "127.255.0.9", "::1", "198.18.0.1", "::2")],
        dtype="V16",
    )
    assert is_loopback(col).tolist() == [True, True, True, False, False]


# -- findings ----------------------------------------------------------------------------------


def test_bind_pool_exhaustion_is_critical_with_bind_users_and_names_no_port_first() -> None:
    rows = [tw(C, p, dst(i % 6), 80) for i, p in enumerate(ODD + EVEN)]
    d = diagnose(snap(rows, RANGE))
    assert int(d.exit_status) == 2
    first = d.findings[0]
    assert (first.id, first.severity) == ("bind-pool-exhaustion", Severity.CRITICAL)
    assert first.title.startswith(f"bind({C}, 0) has 0 of 200 ports left")
    assert first.remedies[0].id == "bind-address-no-port"
    assert "IP_BIND_ADDRESS_NO_PORT" in first.remedies[0].code
    assert "IP_BIND_ADDRESS_NO_PORT" in first.remedies[0].code_c
    held = {f.id: f for f in d.findings}["bind-held-ports"]
    assert held.severity is Severity.CRITICAL and held.evidence["connect_new_headroom"] == 0
    assert "port-exhaustion" not in {f.id for f in d.findings}  # their clients fail in bind()


def test_bind_pool_used_up_by_connect_alone_is_a_latent_warning() -> None:
    """28k TIME_WAIT to one destination also fill bind(addr, 0) at that address."""
    rows = [tw(C, p, S1, 80) for p in EVEN + ODD[:90]]
    f = ids(rows)
    assert f["bind-pool-exhaustion"].severity is Severity.WARNING  # type: ignore[attr-defined]
    assert "latent" in f["bind-pool-exhaustion"].title  # type: ignore[attr-defined]
    assert f["port-exhaustion"].severity is Severity.CRITICAL  # type: ignore[attr-defined]


def test_never_healthy_while_a_pool_is_above_70_percent() -> None:
    """The doctor never says OK when a pool it could see is filling (issue 10)."""
    rows = [tw(C, p, dst(i % 6), 80) for i, p in enumerate(ODD[:80])]
    rows += [est(C, p, dst(7), 80) for p in EVEN[:70]]  # bind(C, 0): 150 of 200
    d = diagnose(snap(rows, RANGE))
    assert "ports-healthy" not in {f.id for f in d.findings}
    assert int(d.exit_status) >= 1


def test_healthy_says_what_it_checked() -> None:
    f = ids([tw(C, p, S1, 80) for p in EVEN[:10]])["ports-healthy"]
    assert "busiest at 5%" in f.title  # type: ignore[attr-defined]
    assert f"bind({C}, 0) at 5%" in f.title  # type: ignore[attr-defined]


def test_states_that_hold_no_port_are_not_owners() -> None:
    rows = [dict(src=C, sport=40002, dst="0.0.0.0", dport=0, state=TCP_LISTEN)]
    rows += [dict(src=C, sport=40004, dst=S1, dport=80, state=TCP_ESTABLISHED)]
    a = analyze(snap(rows, RANGE))
    assert a.ports.listener_ports == (40002,) and bind_pool_for(a.bind_pools, C).held == 2
