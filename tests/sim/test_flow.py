"""The flow-level engine: its rules one by one, and the cross-check against the packet model.

The cross-check (`test_flow_model_matches_packet_model_*`) runs the SAME workload on the flow
engine and on two timewait.model.Host instances joined by a Wire, and asserts identical outcomes
for every connect() attempt, identical first-failure times and identical TIME_WAIT counts over
time. It is what makes the fast path honest: the flow engine is only allowed to skip segments,
not to change what connect() answers.
"""

from __future__ import annotations

import random

import pytest

from timewait.config import KernelConfig
from timewait.errors import AddressNotAvailable
from timewait.model.host import Host
from timewait.model.states import TcpState
from timewait.model.wire import Wire
from timewait.sim.flow import FlowResult, FlowWorkload, InvalidWorkload, simulate, usable_ports
from timewait.units import MS, SEC, US

CLIENT_IP = "198.18.0.1"
SERVER_IP = "198.18.0.2"
PORT = 80
DELAY = 50 * US  # one-way wire delay
CLOSE_AT = 5 * MS  # the client closes 5 ms after connect()
SERVER_CLOSE_AT = 7 * MS  # the server closes 2 ms later (it has seen the client's FIN)
# The client enters TIME_WAIT when the server's FIN arrives: one wire delay after the server's
# close(). That is the flow model's `lifetime`.
LIFETIME = SERVER_CLOSE_AT + DELAY


def packet_run(
    config: KernelConfig, rate_per_s: int, duration_s: int, timer_hz: int | None = None
) -> tuple[list[bool], list[int]]:
    """One connection per request on the packet model; returns (outcome per attempt, TIME_WAIT
    count sampled every second before that second's connect())."""
    client = Host(
        name="client", addrs=[CLIENT_IP], config=config, rng=random.Random(1), timer_hz=timer_hz
    )
    server = Host(name="server", addrs=[SERVER_IP], config=config, rng=random.Random(2))
    wire = Wire(client, server, delay=DELAY)
    lfd = server.socket()
    server.bind(lfd, "0.0.0.0", PORT, 0)
    server.listen(lfd, 0)
    interval = SEC // rate_per_s
    actions: list[tuple[int, int, str, int]] = []  # (time, order, what, attempt index)
    outcomes: list[bool] = []
    tw_counts: list[int] = []
    cfds: dict[int, int] = {}
    n = duration_s * rate_per_s
    for i in range(n):
        actions.append((i * interval, 1, "connect", i))
    for s in range(duration_s + 1):
        actions.append((s * SEC, 0, "sample", s))
    actions.sort()
    pending = list(reversed(actions))
    while pending:
        t, _, what, i = pending.pop()
        wire.run(t)
        if what == "sample":
            tw_counts.append(client.count_state(TcpState.TIME_WAIT))
        elif what == "connect":
            fd = client.socket()
            try:
                client.connect(fd, SERVER_IP, PORT, t)
            except AddressNotAvailable:
                client.close(fd, t)
                outcomes.append(False)
                continue
            outcomes.append(True)
            cfds[i] = fd
            follow = [(t + MS, 2, "accept", i), (t + CLOSE_AT, 2, "cclose", i)]
            for a in follow:
                pending.append(a)
            pending.sort(reverse=True)
        elif what == "accept":
            sfd = server.accept(lfd)
            assert sfd is not None
            pending.append((t + SERVER_CLOSE_AT - MS, 2, "sclose", sfd))
            pending.sort(reverse=True)
        elif what == "cclose":
            client.close(cfds.pop(i), t)
        elif what == "sclose":
            server.close(i, t)
    return outcomes, tw_counts


def flow_run(
    config: KernelConfig, rate_per_s: int, duration_s: int, timer_hz: int | None = None
) -> tuple[list[bool], list[int]]:
    """The same workload on the flow engine."""
    outcomes: list[tuple[int, bool]] = []
    res = simulate(
        config,
        FlowWorkload(rate=rate_per_s, duration=duration_s * SEC, lifetime=LIFETIME),
        rng=random.Random(1),
        outcomes=outcomes,
        timer_hz=timer_hz,
    )
    return [ok for _, ok in outcomes], res.time_wait


def test_flow_model_matches_packet_model_without_reuse() -> None:
    """10 ports, 1 connection/s (capacity 10 per 60 s), 3 minutes, tcp_tw_reuse=0: the same
    answer for every connect(), the same first EADDRNOTAVAIL, the same TIME_WAIT count each
    second."""
    cfg = KernelConfig(ip_local_port_range=(40000, 40009), tcp_tw_reuse=0)
    p_ok, p_tw = packet_run(cfg, 1, 180)
    f_ok, f_tw = flow_run(cfg, 1, 180)
    assert len(p_ok) == len(f_ok) == 180
    assert p_ok.index(False) == f_ok.index(False) == 10  # first failure at t = 10 s
    assert sum(p_ok) == sum(f_ok)
    assert p_ok == f_ok
    assert p_tw == f_tw
    assert max(f_tw) == 10


def test_flow_model_matches_packet_model_with_tw_reuse() -> None:
    """10 ports, 20 connections/s, tcp_tw_reuse=1 with timestamps (takeover after 1 s): the
    same answer for every connect() and the same TIME_WAIT counts; the takeover path of
    tcp_twsk_unique() agrees with the model host's."""
    cfg = KernelConfig(ip_local_port_range=(40000, 40009), tcp_tw_reuse=1)
    p_ok, p_tw = packet_run(cfg, 20, 20)
    f_ok, f_tw = flow_run(cfg, 20, 20)
    assert p_ok.index(False) == f_ok.index(False) == 10
    assert sum(p_ok) == sum(f_ok)
    assert p_ok == f_ok
    assert p_tw == f_tw


def test_flow_model_matches_packet_model_with_timer_wheel_hz250() -> None:
    """Both engines with the kernel's timer-wheel rounding (timer_hz=250, TIME_WAIT dies at the
    next 2.048 s bucket after 60 s): still the same answer for every connect() and the same
    TIME_WAIT count each second; ports come back later than without rounding."""
    cfg = KernelConfig(ip_local_port_range=(40000, 40009), tcp_tw_reuse=0)
    p_ok, p_tw = packet_run(cfg, 1, 180, timer_hz=250)
    f_ok, f_tw = flow_run(cfg, 1, 180, timer_hz=250)
    assert p_ok == f_ok
    assert p_tw == f_tw
    _, exact_tw = flow_run(cfg, 1, 180)
    assert f_tw != exact_tw  # TIME_WAITs outlive 60 s: the counts shift, as on the kernel


# -- the rules one by one ------------------------------------------------------------------------


def run(cfg: KernelConfig, **kw: object) -> FlowResult:
    kw.setdefault("duration", 10 * SEC)
    return simulate(cfg, FlowWorkload(**kw), rng=random.Random(1))  # type: ignore[arg-type]


TEN = KernelConfig(ip_local_port_range=(40000, 40009), tcp_tw_reuse=0)


def test_usable_ports_is_range_minus_reserved_minus_bind_held() -> None:
    """ref 7.1-7.3; an odd-sized range scans one port fewer (remaining rounded down to even)."""
    assert usable_ports(KernelConfig()) == 28232
    assert usable_ports(TEN) == 10
    assert usable_ports(TEN.replace(ip_local_reserved_ports=frozenset({40001, 39000}))) == 9
    assert usable_ports(TEN, bind_held=3) == 7
    assert usable_ports(KernelConfig(ip_local_port_range=(40000, 40010))) == 10


def test_time_wait_expires_exactly_60_s_after_entry() -> None:
    """TCP_TIMEWAIT_LEN: a TIME_WAIT entered at 10 ms is gone at 60.010 s, not at 60.009 s."""
    res = run(TEN, rate=1, duration=1, lifetime=10 * MS, sample_every=1 * MS)
    assert res.connections == 1
    full = simulate(
        TEN,
        FlowWorkload(rate=1 / 100, duration=61 * SEC, lifetime=10 * MS, sample_every=MS),
        rng=random.Random(1),
    )
    i_before = round(60.009 * 1000)
    assert full.time_wait[i_before] == 1 and full.time_wait[i_before + 1] == 0
    assert full.counters["TW"] == 1


def test_exhaustion_fails_with_eaddrnotavail_until_the_first_expiry() -> None:
    """10 ports at 2/s: 10 successes, then failures until t = 60 s + lifetime frees a port."""
    out: list[tuple[int, bool]] = []
    simulate(
        TEN, FlowWorkload(rate=2, duration=70 * SEC, lifetime=0), rng=random.Random(1),
        outcomes=out,
    )  # fmt: skip
    oks = [t for t, ok in out if ok]
    assert oks[:10] == [i * SEC // 2 for i in range(10)]
    assert oks[10] == 60 * SEC  # the port of the t=0 connection, freed at exactly 60 s


def test_server_closing_first_moves_time_wait_to_the_server_and_frees_the_port() -> None:
    """ref 1.1: the passive closer never enters TIME_WAIT, so the client keeps no port."""
    res = run(TEN, rate=100, duration=10 * SEC, client_closes_first=False)
    assert res.failures == 0 and res.connections == 1000
    assert max(res.time_wait) == 0 and res.counters["TW"] == 0
    assert res.server_time_wait[-1] == 1000  # all still within their 60 s
    assert "server_time_wait" in res.series()


def test_max_tw_buckets_overflow_skips_time_wait_and_frees_the_port() -> None:
    """ref 5: at the limit the wait is skipped, TCPTimeWaitOverflow counts it, no failure."""
    cfg = TEN.replace(tcp_max_tw_buckets=4)
    res = run(cfg, rate=10, duration=10 * SEC)
    assert max(res.time_wait) == 4
    assert res.failures == 0
    assert res.counters["TCPTimeWaitOverflow"] == res.connections - 4
    assert res.counters["TW"] == 4


@pytest.mark.parametrize(
    ("reuse", "timestamps", "loopback", "recycles"),
    [
        (0, 1, False, False),
        (1, 1, False, True),
        (1, 0, False, False),  # tw_ts_recent_stamp == 0: never (Lab E7c)
        (2, 1, False, False),  # loopback only
        (2, 1, True, True),
    ],
)
def test_tw_reuse_takeover_follows_tcp_twsk_unique(
    reuse: int, timestamps: int, loopback: bool, recycles: bool
) -> None:
    """tcp_twsk_unique() (ref 3): reuse 1, or 2 on loopback, and timestamps seen."""
    cfg = TEN.replace(tcp_tw_reuse=reuse, tcp_timestamps=timestamps)
    res = run(cfg, rate=20, duration=10 * SEC, loopback=loopback, peer_timestamps=True)
    assert (res.counters["TWRecycled"] > 0) is recycles
    assert (res.failures < 150) is recycles


def test_tw_reuse_waits_strictly_longer_than_the_delay_in_ms() -> None:
    """now_ms > entry_ms + tcp_tw_reuse_delay (strict, ms): with lifetime 0 and one port the
    second connection succeeds at 1.001 s, not at 1.000 s."""
    one = KernelConfig(ip_local_port_range=(40000, 40000), tcp_tw_reuse=1)
    out: list[tuple[int, bool]] = []
    simulate(
        one, FlowWorkload(rate=1000, duration=1100 * MS, lifetime=0), rng=random.Random(1),
        outcomes=out,
    )  # fmt: skip
    oks = [t for t, ok in out if ok]
    assert oks[:2] == [0, 1001 * MS]


def test_peer_without_timestamps_prevents_reuse() -> None:
    cfg = TEN.replace(tcp_tw_reuse=1)
    res = run(cfg, rate=20, peer_timestamps=False)
    assert res.counters["TWRecycled"] == 0


def test_destinations_each_have_their_own_ports() -> None:
    """ref 7.3: the four-tuple must be unique, so 3 destinations hold 30 ports' worth."""
    res = run(TEN, rate=10, duration=10 * SEC, destinations=3)
    assert res.connections == 30 and res.failures == 70
    assert res.ports_in_use[-1] == 30


def test_pool_opened_at_start_holds_no_time_wait() -> None:
    res = run(TEN, rate=0, open_at_start=8, lifetime=20 * SEC)
    assert res.connections == 8 and max(res.time_wait) == 0 and res.established[-1] == 8


def test_poisson_arrivals_are_deterministic_per_seed() -> None:
    """Same seed -> identical result; another seed -> different arrivals."""
    wl = FlowWorkload(rate=50, duration=30 * SEC, arrivals="poisson")
    a = simulate(TEN, wl, rng=random.Random(5))
    b = simulate(TEN, wl, rng=random.Random(5))
    c = simulate(TEN, wl, rng=random.Random(6))
    assert a == b
    assert (a.attempts, a.time_wait) != (c.attempts, c.time_wait)
    assert 1300 < a.attempts < 1700


@pytest.mark.parametrize(
    "kw",
    [
        {"rate": -1},
        {"rate": 1, "duration": 0},
        {"rate": 1, "destinations": 0},
        {"rate": 1, "arrivals": "bursty"},
        {"rate": 1, "lifetime": -1},
    ],
)
def test_invalid_workloads_are_refused(kw: dict[str, object]) -> None:
    kw.setdefault("duration", SEC)
    with pytest.raises(InvalidWorkload):
        FlowWorkload(**kw)  # type: ignore[arg-type]
