"""Port selection and bind() conflicts: one test per rule of reference §7 and §8.

Tests read like socket calls on one host: `net.connect(dst)` picks an ephemeral port the way
`__inet_hash_connect()` does (the four-tuple check is a set of established tuples),
`net.bind(sock, addr, port)` goes through `inet_csk_get_port()`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timewait.config import KernelConfig
from timewait.errors import AddressInUse, AddressNotAvailable, InvalidArgument
from timewait.model.clock import HostClocks
from timewait.model.ports import (
    FASTREUSE_CONNECT,
    PortTable,
    addresses_overlap,
    local_port_range,
    parse_ip_local_port_range,
)
from timewait.model.segment import FourTuple

SRC = "198.18.0.1"
DST = "198.18.0.2"
SMALL = KernelConfig(ip_local_port_range=(40000, 40009))  # Lab E4/E5 range


@dataclass(frozen=True, slots=True, kw_only=True)
class Sock:
    """A socket or minisocket as the port table sees it (implements PortOwner)."""

    bind_addr: str = "0.0.0.0"
    reuseaddr: bool = False
    reuseport: bool = False
    uid: int = 1000
    is_listener: bool = False
    is_timewait: bool = False


def listener(**kw: object) -> Sock:
    return Sock(is_listener=True, **kw)  # type: ignore[arg-type]


def tw(addr: str = "127.0.0.1", **kw: object) -> Sock:
    """A TIME_WAIT child of a listener: bound to the specific local address it was accepted on."""
    return Sock(bind_addr=addr, is_timewait=True, **kw)  # type: ignore[arg-type]


class FixedRandrange(random.Random):
    """A seeded RNG whose randrange() always answers `value` (pins the random perturbation)."""

    def __init__(self, value: int, seed: int = 0) -> None:
        super().__init__(seed)
        self.value = value

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        return self.value


@dataclass
class Net:
    """One host: its port table, settings, RNG, keyed clocks and established four-tuples."""

    config: KernelConfig = SMALL
    seed: int = 1
    rng: random.Random = field(init=False)
    clocks: HostClocks = field(init=False)
    table: PortTable = field(default_factory=PortTable)
    established: set[FourTuple] = field(default_factory=set)
    checked: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.clocks = HostClocks.from_rng(self.rng)

    def connect(
        self,
        dst: str = DST,
        dport: int = 80,
        *,
        src: str = SRC,
        now: int = 0,
        local_range: tuple[int, int] | None = None,
        port_offset: int | None = None,
    ) -> int:
        """Autobinding connect(); records the four-tuple as established."""

        def check(port: int) -> bool:
            self.checked.append(port)
            return FourTuple(src, port, dst, dport) not in self.established

        sock = Sock(bind_addr=src)
        port = self.table.connect_port(
            sock,
            src,
            dst,
            dport,
            now=now,
            config=self.config,
            port_offset=(
                self.clocks.port_offset(src, dst, dport, now)
                if port_offset is None
                else port_offset
            ),
            rng=self.rng,
            check=check,
            local_range=local_range,
        )
        self.established.add(FourTuple(src, port, dst, dport))
        return port

    def close(self, port: int, dst: str = DST, dport: int = 80, src: str = SRC) -> None:
        """The connection on `port` goes away entirely (no TIME_WAIT)."""
        self.established.discard(FourTuple(src, port, dst, dport))
        owner = next(o for o in self.table.holders(port) if o.bind_addr == src)
        self.table.release(owner, port)

    def bind(
        self,
        sock: Sock,
        port: int = 0,
        *,
        local_range: tuple[int, int] | None = None,
        address_no_port: bool = False,
    ) -> int:
        return self.table.bind(
            sock,
            sock.bind_addr,
            port,
            now=0,
            config=self.config,
            rng=self.rng,
            local_range=local_range,
            address_no_port=address_no_port,
        )

    def reject_and_record(self, port: int) -> bool:
        """A four-tuple check that records the candidate and always says 'in use'."""
        self.checked.append(port)
        return False


def connect_until_exhausted(net: Net, **kw: object) -> list[int]:
    picks: list[int] = []
    with pytest.raises(AddressNotAvailable):
        for _ in range(70000):
            picks.append(net.connect(**kw))  # type: ignore[arg-type]
    return picks


def bind0_until_exhausted(net: Net, local_range: tuple[int, int] | None = None) -> list[int]:
    picks: list[int] = []
    with pytest.raises(AddressInUse):
        for _ in range(70000):
            picks.append(net.bind(Sock(), 0, local_range=local_range))
    return picks


# -- ref 7.2: connect() -----------------------------------------------------------------------


def test_connect_prefers_even_ports_first() -> None:
    """Ref 7.2 step 5 / Lab E4-E5: range 40000-40009 gives the 5 even ports, then the 5 odd ones."""
    picks = connect_until_exhausted(Net())
    assert len(picks) == 10
    assert all(p % 2 == 0 for p in picks[:5])
    assert all(p % 2 == 1 for p in picks[5:])
    assert sorted(picks) == list(range(40000, 40010))


def test_connect_eaddrnotavail_when_all_tuples_taken() -> None:
    """Ref 7.2 step 8: nothing found after both passes -> EADDRNOTAVAIL naming the destination."""
    net = Net()
    connect_until_exhausted(net)
    with pytest.raises(AddressNotAvailable) as exc:
        net.connect()
    assert "198.18.0.2:80" in str(exc.value) and "40000-40009" in str(exc.value)
    assert exc.value.errno == 99  # EADDRNOTAVAIL


def test_connect_skips_reserved_ports() -> None:
    """Ref 7.1 / 7.2 step 6: ip_local_reserved_ports are never picked nor even checked."""
    reserved = frozenset({40000, 40003, 40008})
    net = Net(config=SMALL.replace(ip_local_reserved_ports=reserved))
    picks = connect_until_exhausted(net)
    assert sorted(picks) == sorted(set(range(40000, 40010)) - reserved)
    assert not reserved & set(net.checked)


def test_connect_skips_ports_held_by_bind() -> None:
    """Ref 7.2 step 6: a bucket made by bind()/listen() (fastreuse >= 0) is never shared."""
    net = Net()
    net.bind(listener(), 40004)
    bound0 = net.bind(Sock(), 0)
    picks = connect_until_exhausted(net)
    assert 40004 not in picks and bound0 not in picks
    assert len(picks) == 8
    assert {40004, bound0}.isdisjoint(net.checked)
    assert net.table.ports_held_by_bind() == {40004, bound0}


def test_connect_shares_port_across_destinations() -> None:
    """Ref 7.3 / Lab E4b: only the four-tuple must be unique: other destinations reuse ports."""
    net = Net()
    picks = connect_until_exhausted(net, dport=80)
    port = net.connect(dport=81)
    assert port in picks
    assert len(net.table.holders(port)) == 2


def test_connect_creates_connect_only_bucket() -> None:
    """Ref 7.2 step 6: no bucket -> create one marked fastreuse = fastreuseport = -1."""
    net = Net()
    port = net.connect()
    bucket = net.table.buckets[port]
    assert (bucket.fastreuse, bucket.fastreuseport) == (FASTREUSE_CONNECT, FASTREUSE_CONNECT)
    assert not net.table.bound_by_bind(port)


def test_connect_first_accepting_candidate_wins() -> None:
    """Ref 3 'Scan order matters': the first port whose check passes wins, free or TIME_WAIT."""
    net = Net()
    order: list[int] = []

    def check(port: int) -> bool:
        order.append(port)
        return len(order) == 2  # reject the first candidate, accept the second

    port = net.table.connect_port(
        Sock(bind_addr=SRC),
        SRC,
        DST,
        80,
        now=0,
        config=SMALL,
        port_offset=net.clocks.port_offset(SRC, DST, 80, 0),
        rng=net.rng,
        check=check,
    )
    assert order == [order[0], order[0] + 2 if order[0] + 2 < 40010 else order[0] - 8]
    assert port == order[1]


def test_connect_scan_covers_remaining_rounded_to_even() -> None:
    """Ref 7.2 step 2 (K __inet_hash_connect): remaining &= ~1, so an 11-port range scans 10."""
    net = Net(config=KernelConfig(ip_local_port_range=(40000, 40010)))
    with pytest.raises(AddressNotAvailable):
        net.table.connect_port(
            Sock(bind_addr=SRC),
            SRC,
            DST,
            80,
            now=0,
            config=net.config,
            port_offset=12345,
            rng=net.rng,
            check=net.reject_and_record,
        )
    assert len(net.checked) == 10 == len(set(net.checked))


def test_perturbation_moves_start_for_same_destination() -> None:
    """Ref 7.2 step 7: after a success table_perturb[index] grows, so the next start moves on."""
    net = Net(config=KernelConfig(ip_local_port_range=(40000, 40999)))
    first = net.connect(port_offset=777)
    net.close(first)
    second = net.connect(port_offset=777)  # same hash, first port free again
    assert second != first
    assert second % 2 == 0  # still the even pass


def test_perturbation_increment_is_random_steps_plus_step() -> None:
    """K __inet_hash_connect(): table += max(i, rand(0..7) * step) + step; rand = 3 -> +8."""
    net = Net(config=KernelConfig(ip_local_port_range=(40000, 40999)))
    net.rng = FixedRandrange(3)
    first = net.connect(port_offset=4242)
    net.close(first)
    assert net.connect(port_offset=4242) == 40000 + (first - 40000 + 8) % 1000


def test_perturbation_increment_counts_scanned_candidates() -> None:
    """K __inet_hash_connect(): with rand = 0 the increment is i + step (i = candidates passed)."""
    net = Net(config=KernelConfig(ip_local_port_range=(40000, 40999)))
    net.rng = FixedRandrange(0)
    p1 = net.connect(port_offset=99)  # i = 0 -> start moves by 2
    p2 = net.connect(port_offset=99)
    assert p2 == p1 + 2
    net.established.add(FourTuple(SRC, p2 + 2, DST, 80))  # next start is taken: found at i = 2
    p3 = net.connect(port_offset=99)
    assert p3 == p2 + 4
    # That success added i + step = 4: the next start is p3 + 2 (p2 + 6), still free.
    net.close(p3)
    assert net.connect(port_offset=99) == p2 + 6


def test_port_offset_deterministic_for_seed() -> None:
    """Ref 7.2 step 3: the start depends only on the keyed hash and the seeded RNG."""
    runs = []
    for _ in range(2):
        net = Net(config=KernelConfig(), seed=7)
        runs.append([net.connect(dport=d) for d in (80, 443, 80, 8080, 80)])
    assert runs[0] == runs[1]
    other = Net(config=KernelConfig(), seed=8)
    assert [other.connect(dport=d) for d in (80, 443, 80, 8080, 80)] != runs[0]


def test_explicit_bind_onto_connect_port_makes_it_bind_held() -> None:
    """K inet_csk_update_fastreuse(): a bind() joining a connect bucket sets fastreuseport >= 0."""
    net = Net()
    port = net.connect()
    # The connected socket has no SO_REUSEADDR: a plain bind over its specific address conflicts.
    with pytest.raises(AddressInUse):
        net.bind(Sock(bind_addr=SRC, reuseaddr=True), port)
    net2 = Net()
    shared = net2.table.connect_port(
        Sock(bind_addr=SRC, reuseaddr=True),
        SRC,
        DST,
        80,
        now=0,
        config=SMALL,
        port_offset=5,
        rng=net2.rng,
        check=lambda p: True,
    )
    net2.bind(Sock(bind_addr=SRC, reuseaddr=True), shared)  # both SO_REUSEADDR, no listener
    assert net2.table.bound_by_bind(shared)


def test_bind_port0_skips_ports_used_by_connect() -> None:
    """K inet_csk_find_open_port(): relax=false, so any overlapping owner is a conflict."""
    net = Net()
    used = {net.connect() for _ in range(5)}
    picks = bind0_until_exhausted(net)
    assert used.isdisjoint(picks) and len(picks) == 5


# -- ref 7.4: options -------------------------------------------------------------------------


def test_ip_local_port_range_scans_every_port_no_parity() -> None:
    """Ref 7.2 step 5 (Linux 6.8): with IP_LOCAL_PORT_RANGE connect() steps by 1, no parity."""
    net = Net()
    picks = connect_until_exhausted(net, local_range=(40002, 40005))
    assert sorted(picks) == [40002, 40003, 40004, 40005]
    start = picks[0] - 40002
    assert picks == [40002 + (start + k) % 4 for k in range(4)]


def test_ip_local_port_range_clamped_to_netns_range() -> None:
    """K inet_sk_get_local_port_range(): each bound applies only if inside the netns range."""
    assert local_port_range(SMALL, None) == (40000, 40009)
    assert local_port_range(SMALL, (30000, 40005)) == (40000, 40005)
    assert local_port_range(SMALL, (40003, 50000)) == (40003, 40009)
    assert local_port_range(SMALL, (40003, 40005)) == (40003, 40005)
    assert local_port_range(SMALL, (50000, 60000)) == (40000, 40009)
    assert local_port_range(SMALL, (0, 40001)) == (40000, 40001)


def test_ip_local_port_range_outside_bounds_still_disables_parity() -> None:
    """K __inet_hash_connect(): step = 1 whenever the option is set, even if no bound applied."""
    net = Net()
    picks = connect_until_exhausted(net, local_range=(1, 2))
    assert sorted(picks) == list(range(40000, 40010))
    assert len({p % 2 for p in picks[:5]}) == 2  # consecutive ports, both parities early


def test_parse_ip_local_port_range_encoding() -> None:
    """K do_ip_setsockopt(IP_LOCAL_PORT_RANGE): u32 hi<<16|lo; 0 resets; lo > hi is EINVAL."""
    assert parse_ip_local_port_range(40005 << 16 | 40001) == (40001, 40005)
    assert parse_ip_local_port_range(0) is None
    assert parse_ip_local_port_range(40005 << 16) == (0, 40005)
    assert parse_ip_local_port_range(40001) == (40001, 0)
    for bad in (40001 << 16 | 40005, -1, 2**32):
        with pytest.raises(InvalidArgument):
            parse_ip_local_port_range(bad)


def test_bind_port0_uses_ip_local_port_range() -> None:
    """Ref 7.4 / Lab E9c: bind(0) also honours IP_LOCAL_PORT_RANGE (odd first still)."""
    net = Net()
    picks = bind0_until_exhausted(net, local_range=(40004, 40007))
    assert picks[:2] in ([40005, 40007], [40007, 40005])
    assert sorted(picks) == [40004, 40005, 40006, 40007]


def test_bind_address_no_port_defers_port_to_connect() -> None:
    """Ref 7.4 / Lab E9b: bind(ip, 0) with IP_BIND_ADDRESS_NO_PORT takes no port (port 0)."""
    net = Net()
    sock = Sock(bind_addr=SRC)
    assert net.bind(sock, 0, address_no_port=True) == 0
    assert net.table.port_of(sock) is None and not net.table.buckets


def test_bind_address_no_port_ignored_for_explicit_port() -> None:
    """K __inet_bind(): get_port() runs whenever snum != 0, flag or not."""
    net = Net()
    sock = Sock(bind_addr=SRC)
    assert net.bind(sock, 45000, address_no_port=True) == 45000
    assert net.table.bound_by_bind(45000)


# -- ref 7.2 contrast: bind(port 0) -----------------------------------------------------------


def test_bind_port0_picks_odd_ports_first() -> None:
    """Ref 7.2 step 5 / Lab E9: bind(0) starts at a random odd offset, leaving even ports."""
    net = Net()
    picks = [net.bind(Sock(), 0) for _ in range(5)]
    assert sorted(picks) == [40001, 40003, 40005, 40007, 40009]


def test_bind_port0_eaddrinuse_when_range_full() -> None:
    """Ref 7.2 step 8 contrast: a full range fails bind(0) with EADDRINUSE, not EADDRNOTAVAIL."""
    net = Net()
    picks = bind0_until_exhausted(net)
    assert sorted(picks) == list(range(40000, 40010))
    assert all(p % 2 for p in picks[:5]) and not any(p % 2 for p in picks[5:])
    with pytest.raises(AddressInUse) as exc:
        net.bind(Sock(), 0)
    assert exc.value.errno == 98 and "IP_BIND_ADDRESS_NO_PORT" in str(exc.value)


def test_bind_port0_skips_reserved_ports() -> None:
    """Ref 7.1: inet_csk_find_open_port() skips ip_local_reserved_ports too."""
    net = Net(config=SMALL.replace(ip_local_reserved_ports=frozenset({40001, 40002})))
    picks = bind0_until_exhausted(net)
    assert sorted(picks) == [40000, *range(40003, 40010)]


def test_bind_port0_with_reuseaddr_tries_lower_half_first() -> None:
    """K inet_csk_find_open_port(): sk_reuse sockets scan [low, half) before [half, high)."""
    net = Net(config=KernelConfig(ip_local_port_range=(40000, 40019)))
    picks = [net.bind(Sock(reuseaddr=True), 0) for _ in range(20)]
    assert sorted(picks[:5]) == [40001, 40003, 40005, 40007, 40009]
    assert sorted(picks[5:10]) == [40000, 40002, 40004, 40006, 40008]
    assert sorted(picks[10:15]) == [40011, 40013, 40015, 40017, 40019]


def test_ip_autobind_reuse_relaxes_port0_bind() -> None:
    """Ref 7.4: with ip_autobind_reuse=1 an exhausted bind(0) may share a SO_REUSEADDR port."""
    net = Net(config=SMALL.replace(ip_autobind_reuse=1))
    ports = {net.bind(Sock(reuseaddr=True), 0) for _ in range(10)}
    assert ports == set(range(40000, 40010))
    shared = net.bind(Sock(reuseaddr=True), 0)
    assert len(net.table.holders(shared)) == 2
    strict = Net(config=SMALL)
    for _ in range(10):
        strict.bind(Sock(reuseaddr=True), 0)
    with pytest.raises(AddressInUse):
        strict.bind(Sock(reuseaddr=True), 0)


def test_ip_autobind_reuse_needs_reuseaddr_on_both() -> None:
    """K inet_bind_conflict(relax=true, reuseport_ok=false): no SO_REUSEADDR, no sharing."""
    net = Net(config=SMALL.replace(ip_autobind_reuse=1))
    for _ in range(10):
        net.bind(Sock(reuseaddr=True), 0)
    with pytest.raises(AddressInUse):
        net.bind(Sock(reuseaddr=False), 0)
    full = Net(config=SMALL.replace(ip_autobind_reuse=1))
    for _ in range(10):
        full.bind(Sock(reuseaddr=False), 0)
    with pytest.raises(AddressInUse):
        full.bind(Sock(reuseaddr=True), 0)


# -- ref 8: explicit bind() conflicts ---------------------------------------------------------


def test_restart_old_listener_without_reuseaddr_blocks_new_bind_even_with_reuseaddr() -> None:
    """Ref 8 / Lab E6: TIME_WAIT children inherit tw_reuse=0, so the new SO_REUSEADDR bind fails."""
    net = Net()
    net.bind(tw(reuseaddr=False), 8080)
    with pytest.raises(AddressInUse) as exc:
        net.bind(Sock(reuseaddr=True), 8080)
    assert "TIME_WAIT" in str(exc.value)


def test_restart_both_reuseaddr_succeeds() -> None:
    """Ref 8 / Lab E6: old listener and new socket both with SO_REUSEADDR -> bind succeeds."""
    net = Net()
    net.bind(tw(reuseaddr=True), 8080)
    assert net.bind(Sock(reuseaddr=True), 8080) == 8080


def test_new_without_reuseaddr_fails() -> None:
    """Ref 8 / Lab E6: SO_REUSEADDR only on the old side is not enough."""
    net = Net()
    net.bind(tw(reuseaddr=True), 8080)
    with pytest.raises(AddressInUse):
        net.bind(Sock(reuseaddr=False), 8080)


def test_reuseport_both_succeeds() -> None:
    """Ref 8 / Lab E6: SO_REUSEPORT on old and new -> bind succeeds, even beside a listener."""
    net = Net()
    net.bind(tw(reuseport=True), 8080)
    net.bind(listener(reuseport=True), 8080)
    assert net.bind(Sock(reuseport=True), 8080) == 8080


def test_live_listener_blocks_reuseaddr_bind() -> None:
    """Ref 8: SO_REUSEADDR never shares with a socket in LISTEN (sk2->sk_state != TCP_LISTEN)."""
    net = Net()
    net.bind(listener(reuseaddr=True), 8080)
    with pytest.raises(AddressInUse) as exc:
        net.bind(Sock(reuseaddr=True), 8080)
    assert "listening" in str(exc.value)


def test_reuseport_needs_same_uid_except_time_wait() -> None:
    """K inet_bind_conflict(): SO_REUSEPORT needs uid_eq(), TIME_WAIT owners are exempt."""
    net = Net()
    net.bind(listener(reuseport=True, uid=1000), 8080)
    with pytest.raises(AddressInUse):
        net.bind(Sock(reuseport=True, uid=2000), 8080)
    assert net.bind(Sock(reuseport=True, uid=1000), 8080) == 8080
    tw_only = Net()
    tw_only.bind(tw(reuseport=True, uid=1000), 9090)
    assert tw_only.bind(Sock(reuseport=True, uid=2000), 9090) == 9090


def test_wildcard_overlaps_specific_address() -> None:
    """K inet_rcv_saddr_equal(match_wildcard=true): 0.0.0.0 conflicts with any IPv4 address."""
    net = Net()
    net.bind(Sock(bind_addr="198.18.0.1"), 80)
    with pytest.raises(AddressInUse):
        net.bind(Sock(bind_addr="0.0.0.0"), 80)
    other = Net()
    other.bind(Sock(bind_addr="0.0.0.0"), 80)
    with pytest.raises(AddressInUse):
        other.bind(Sock(bind_addr="198.18.0.1"), 80)


def test_distinct_specific_addresses_share_port() -> None:
    """K inet_rcv_saddr_equal(): two different specific addresses never overlap."""
    net = Net()
    net.bind(Sock(bind_addr="198.18.0.1"), 80)
    assert net.bind(Sock(bind_addr="198.18.0.2"), 80) == 80


def test_ipv6_wildcard_is_dual_stack() -> None:
    """K ipv6_rcv_saddr_equal(): '::' (bindv6only=0) overlaps IPv4; specific v6 does not."""
    assert addresses_overlap("::", "0.0.0.0")
    assert addresses_overlap("::", "198.18.0.1")
    assert addresses_overlap("::ffff:198.18.0.1", "198.18.0.1")
    assert addresses_overlap("0.0.0.0", "::ffff:198.18.0.1")
    assert not addresses_overlap("2001:db8::1", "0.0.0.0")
    assert not addresses_overlap("2001:db8::1", "2001:db8::2")
    net = Net()
    net.bind(Sock(bind_addr="::"), 80)
    with pytest.raises(AddressInUse):
        net.bind(Sock(bind_addr="0.0.0.0"), 80)


def test_second_listen_on_reuseaddr_port_fails() -> None:
    """K inet_csk_listen_start(): get_port() again in LISTEN state; a live listener blocks it."""
    net = Net()
    a, b = Sock(reuseaddr=True), Sock(reuseaddr=True)
    net.bind(a, 8080)
    net.bind(b, 8080)  # both SO_REUSEADDR, neither listening: allowed
    a_listening, b_listening = listener(reuseaddr=True), listener(reuseaddr=True)
    net.table.transfer(a, a_listening, 8080)  # same socket, state now LISTEN
    net.table.listen(a_listening, 8080)
    net.table.transfer(b, b_listening, 8080)
    with pytest.raises(AddressInUse):
        net.table.listen(b_listening, 8080)


def test_explicit_bind_ignores_reserved_ports_and_range() -> None:
    """Ref 7.1: reserved ports and ip_local_port_range restrict only automatic selection."""
    net = Net(config=SMALL.replace(ip_local_reserved_ports=frozenset({40000})))
    assert net.bind(Sock(), 40000) == 40000
    assert net.bind(Sock(), 5000) == 5000


def test_bind_twice_is_einval() -> None:
    """K __inet_bind(): a socket that already has a port gets EINVAL."""
    net = Net()
    sock = Sock()
    net.bind(sock, 8080)
    with pytest.raises(InvalidArgument):
        net.bind(sock, 8081)


def test_failed_bind_leaves_table_unchanged() -> None:
    """A refused bind records nothing (K inet_csk_get_port() fail_unlock path)."""
    net = Net()
    old = listener()
    net.bind(old, 8080)
    loser = Sock()
    with pytest.raises(AddressInUse):
        net.bind(loser, 8080)
    assert net.table.holders(8080) == (old,) and net.table.port_of(loser) is None


# -- ref 1.2: the bucket outlives the full socket ---------------------------------------------


def test_accepted_child_inherits_listener_port() -> None:
    """K __inet_inherit_port(): an accepted child joins the listener's bucket without a check."""
    net = Net()
    parent = listener(reuseaddr=False)
    net.bind(parent, 8080)
    child = Sock(bind_addr="127.0.0.1")  # would conflict with the LISTEN parent via bind()
    assert net.table.inherit(parent, child) == 8080
    assert net.table.holders(8080) == (parent, child)


def test_time_wait_keeps_bind_bucket() -> None:
    """Ref 1.2: the minisocket keeps the bind-bucket reference; expiry drops it."""
    net = Net()
    parent, child = listener(), Sock(bind_addr="127.0.0.1")
    net.bind(parent, 8080)
    net.table.inherit(parent, child)
    net.table.release(parent, 8080)  # listener closed
    minisock = tw()
    net.table.transfer(child, minisock, 8080)  # child closed first: TIME_WAIT
    assert net.table.holders(8080) == (minisock,)
    assert net.table.bound_by_bind(8080)  # still not usable by connect()
    with pytest.raises(AddressInUse):
        net.bind(Sock(reuseaddr=True), 8080)  # Lab E6 again, through the real hand-over
    net.table.release(minisock, 8080)  # TIME_WAIT expiry: inet_twsk_bind_unhash()
    assert 8080 not in net.table.buckets


def test_release_drops_empty_bucket() -> None:
    """K inet_bind_bucket_destroy(): the bucket goes with its last owner, connect() may use it."""
    net = Net()
    held = net.bind(Sock(), 40004)
    net.table.release(net.table.holders(held)[0], held)
    assert not net.table.buckets
    picks = connect_until_exhausted(net)
    assert 40004 in picks


# -- properties -------------------------------------------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[KernelConfig, tuple[int, int] | None, int]:
    lo = draw(st.integers(1024, 65535 - 1))
    hi = draw(st.integers(lo, min(65535, lo + 40)))
    reserved = draw(st.frozensets(st.integers(lo - 2, min(65535, hi + 2)), max_size=6))
    sock_range = draw(
        st.none()
        | st.tuples(st.integers(0, 65535), st.integers(0, 65535)).filter(
            lambda r: r != (0, 0) and not (r[0] and r[1] and r[0] > r[1])
        )
        | st.tuples(st.integers(lo, hi), st.integers(lo, hi)).map(lambda r: (min(r), max(r)))
    )
    seed = draw(st.integers(0, 2**32))
    return (
        KernelConfig(ip_local_port_range=(lo, hi), ip_local_reserved_ports=reserved),
        (sock_range),
        seed,
    )


@settings(max_examples=60, deadline=None)
@given(scenarios())
def test_property_auto_ports_in_range_and_not_reserved(
    case: tuple[KernelConfig, tuple[int, int] | None, int],
) -> None:
    """Ref 7.1/7.2: connect() and bind(0) only pick ports of the clamped range, never reserved."""
    config, sock_range, seed = case
    lo, hi = local_port_range(config, sock_range)
    net = Net(config=config, seed=seed)
    auto = connect_until_exhausted(net, local_range=sock_range)
    auto += bind0_until_exhausted(Net(config=config, seed=seed), local_range=sock_range)
    assert all(lo <= p <= hi and p not in config.ip_local_reserved_ports for p in auto)


@settings(max_examples=60, deadline=None)
@given(scenarios())
def test_property_connect_picks_never_repeat_while_held(
    case: tuple[KernelConfig, tuple[int, int] | None, int],
) -> None:
    """Ref 7.3: to one destination no port repeats while held; exhaustion = usable ports."""
    config, sock_range, seed = case
    lo, hi = local_port_range(config, sock_range)
    usable = sum(1 for p in range(lo, hi + 1) if p not in config.ip_local_reserved_ports)
    picks = connect_until_exhausted(Net(config=config, seed=seed), local_range=sock_range)
    assert len(picks) == len(set(picks))
    if sock_range is not None or (hi - lo + 1) % 2 == 0:
        assert len(picks) == usable
    else:  # odd-sized range without a per-socket range: each scan misses one port
        assert usable - 1 <= len(picks) <= usable


@settings(max_examples=30, deadline=None)
@given(scenarios(), st.lists(st.sampled_from(["c80", "c81", "b0", "close"]), max_size=30))
def test_property_same_seed_same_picks(
    case: tuple[KernelConfig, tuple[int, int] | None, int], ops: list[str]
) -> None:
    """STYLE 2/7: the same seed and the same calls give the same ports, byte for byte."""
    config, sock_range, seed = case

    def run() -> list[object]:
        net = Net(config=config, seed=seed)
        out: list[object] = []
        for op in ops:
            try:
                if op == "c80":
                    out.append(net.connect(dport=80, local_range=sock_range))
                elif op == "c81":
                    out.append(net.connect(dport=81, local_range=sock_range))
                elif op == "b0":
                    out.append(net.bind(Sock(), 0, local_range=sock_range))
                elif net.established:
                    ft = min(net.established)
                    net.close(ft.lport, dport=ft.rport)
            except (AddressInUse, AddressNotAvailable) as e:
                out.append(type(e).__name__)
        return out

    assert run() == run()
