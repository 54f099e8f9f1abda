"""Analysis numbers against hand computations on small synthetic snapshots (and model hosts)."""

from __future__ import annotations

import numpy as np
import pytest

from timewait.config import KernelConfig
from timewait.doctor.analysis import FD_OBJECT_BYTES, FULL_SOCK_BYTES, TW_SOCK_BYTES, analyze
from timewait.snapshot import Snapshot, from_host

from ..model.host_helpers import CLIENT_IP, SERVER_IP, listen, make_net, one_request
from .helpers import (
    C2,
    S1,
    S2,
    SMALL,
    V6C,
    V6S,
    C,
    bound,
    bulk_tw,
    est,
    fw2,
    listener,
    snap,
    syn_sent,
    tw,
    tws,
)


def test_capacity_is_range_minus_reserved_listeners_and_bound_in_range() -> None:
    """ref 7.1/7.2 step 6: 100 ports - 3 reserved - 2 listeners - 1 bound = 94; ports outside
    the range and a listener that is also reserved are not subtracted twice."""
    cfg = SMALL.replace(ip_local_reserved_ports=frozenset({40010, 40011, 40012, 50000}))
    rows = [
        listener(40020), listener(40021), listener(40012), listener(8080),
        bound(40030), bound(40020), bound(9000),
    ]  # fmt: skip
    p = analyze(snap(rows, cfg)).ports
    assert (p.range_size, p.reserved) == (100, 3)
    assert p.listener_ports == (40020, 40021)
    assert p.bound_ports == (40030,)
    assert p.capacity == 100 - 3 - 2 - 1


def test_usage_is_in_use_over_capacity_per_destination() -> None:
    rows = tws(C, S1, 80, range(40000, 40050)) + tws(C, S2, 80, range(40000, 40010))
    a = analyze(snap([*rows, listener(40099)]))
    d1, d2 = a.destinations()
    assert (d1.dst, d1.in_use, d1.capacity) == (S1, 50, 99)
    assert d1.usage == pytest.approx(50 / 99)
    assert (d2.dst, d2.in_use) == (S2, 10)


def test_destination_key_is_src_dst_dport() -> None:
    """ref 7.3: another source IP, destination IP or destination port is another budget."""
    rows = [
        tw(C, 40000, S1, 80),
        tw(C, 40000, S1, 443),
        tw(C, 40000, S2, 80),
        tw(C2, 40000, S1, 80),
    ]
    a = analyze(snap(rows))
    assert a.n_destinations == 4
    assert {(d.src, d.dst, d.dport) for d in a.destinations()} == {
        (C, S1, 80), (C, S1, 443), (C, S2, 80), (C2, S1, 80)
    }  # fmt: skip
    assert all(d.in_use == 1 for d in a.destinations())


def test_in_use_counts_every_state_and_only_ports_of_the_budget() -> None:
    cfg = SMALL.replace(ip_local_reserved_ports=frozenset({40010}))
    rows = [
        tw(C, 40000, S1, 80), est(C, 40001, S1, 80), syn_sent(C, 40002, S1, 80),
        fw2(C, 40003, S1, 80), fw2(C, 40004, S1, 80, mini=False),
        est(C, 20000, S1, 80),  # explicit bind outside the range: no budget taken
        est(C, 40010, S1, 80),  # explicit bind to a reserved port: not in the budget either
    ]  # fmt: skip
    (d,) = analyze(snap(rows, cfg)).destinations()
    assert (d.in_use, d.capacity) == (5, 99)
    assert (d.time_wait, d.established, d.syn_sent, d.fin_wait2) == (1, 3, 1, 2)


def test_server_side_time_wait_is_split_by_listening_port() -> None:
    """ref 12.1: local port == a listening port -> server side, not a destination."""
    rows = [listener(80), tw(S1, 80, C, 40000), tw(S1, 80, C, 40001), tw(C, 40005, S2, 443)]
    a = analyze(snap(rows))
    t = a.totals
    assert (t.time_wait, t.time_wait_server, t.time_wait_client) == (3, 2, 1)
    assert a.server_time_wait_by_port == {80: 2}
    assert [(d.dst, d.dport) for d in a.destinations()] == [(S2, 443)]


def test_fin_wait2_minisockets_are_kept_apart_from_time_wait_and_full_fin_wait2() -> None:
    """ref 9.2: sockstat tw = TIME_WAIT + FIN_WAIT2 minisockets; ss state time-wait = TIME_WAIT."""
    rows = [tw(C, 40000, S1, 80), fw2(C, 40001, S1, 80), fw2(C, 40002, S1, 80, mini=False)]
    t = analyze(snap(rows, counters={"sockstat.tw": 2})).totals
    assert (t.time_wait, t.fin_wait2, t.fin_wait2_full, t.minisockets) == (1, 1, 1, 2)
    assert t.sockstat_tw == 2
    assert t.by_state["FIN-WAIT-2"] == 2 and t.by_state["TIME-WAIT"] == 1


def test_ipv6_destinations_group_and_print() -> None:
    a = analyze(snap([tw(V6C, 40000, V6S, 443), tw(V6C, 40001, V6S, 443), tw(C, 40000, S1, 443)]))
    d = a.destinations()[0]
    assert (d.src, d.dst, d.in_use) == (V6C, V6S, 2)
    assert d.label == f"{V6C} -> [{V6S}]:443"


def test_timer_histogram_has_six_10s_buckets() -> None:
    lefts = [0, 9_999, 10_000, 25_000, 59_999, 60_400]  # 60.4 s: timer-wheel slack -> last bucket
    rows = [tw(C, 40000 + i, S1, 80, left) for i, left in enumerate(lefts)]
    assert analyze(snap(rows)).timer_histogram == (2, 1, 1, 0, 0, 2)


def test_memory_uses_slab_sizes() -> None:
    """ref 9.1: 256 B per minisocket, 2432 B per full socket, 1216 B per open file."""
    rows = [tw(C, 40000, S1, 80), fw2(C, 40001, S1, 80), est(C, 40002, S1, 80), listener(80)]
    m = analyze(snap(rows)).memory
    assert m.minisockets == 2 * TW_SOCK_BYTES
    assert m.full_sockets == 2 * FULL_SOCK_BYTES
    assert m.file_objects == 2 * FD_OBJECT_BYTES


def test_churn_by_littles_law_is_time_wait_over_60s() -> None:
    a = analyze(snap(tws(C, S1, 80, range(40000, 40060))))
    assert a.churn_method == "littles_law"
    assert a.churn_per_s == pytest.approx(1.0)
    assert a.destinations()[0].churn_per_s == pytest.approx(1.0)


def test_one_snapshot_trend_is_young_minus_expiring_over_10s() -> None:
    """30 TIME_WAITs younger than 10 s, 10 about to expire: +2 ports/s; 100-60 free -> 20 s."""
    rows = (
        tws(C, S1, 80, range(40000, 40030), 55_000)
        + tws(C, S1, 80, range(40030, 40040), 5_000)
        + tws(C, S1, 80, range(40040, 40060), 30_000)
    )
    (d,) = analyze(snap(rows)).destinations()
    assert d.trend_per_s == pytest.approx(2.0)
    assert d.eta_s == pytest.approx((100 - 60) / 2.0)


def test_eta_is_none_when_not_trending_up_and_zero_when_full() -> None:
    flat = analyze(snap(tws(C, S1, 80, range(40000, 40010), 30_000))).destinations()[0]
    assert flat.eta_s is None
    full = analyze(snap(tws(C, S1, 80, range(40000, 40100), 30_000))).destinations()[0]
    assert full.eta_s == 0.0 and full.usage == 1.0


def test_two_snapshots_give_interval_churn_trend_and_counter_rate() -> None:
    """Churn: TIME_WAITs younger than the interval / interval; trend: in_use delta / interval;
    host churn: TcpExt TW delta / interval."""
    before = snap(tws(C, S1, 80, range(40000, 40010), 40_000), counters={"TW": 1000},
                  monotonic_ns=10**12)  # fmt: skip
    after = snap(
        tws(C, S1, 80, range(40000, 40010), 35_000) + tws(C, S1, 80, range(40010, 40030), 58_000),
        counters={"TW": 1100, "TCPTimeWaitOverflow": 0},
        monotonic_ns=10**12 + 5 * 10**9,
    )
    a = analyze(after, before)
    assert a.interval_s == 5.0
    (d,) = a.destinations()
    assert d.churn_per_s == pytest.approx(20 / 5)
    assert d.trend_per_s == pytest.approx(20 / 5)
    assert d.eta_s == pytest.approx((100 - 30) / 4)
    assert (a.churn_method, a.churn_per_s) == ("tw_counter", pytest.approx(100 / 5))
    assert a.counters_delta["TW"] == 100


def test_previous_must_be_older() -> None:
    s = snap([])
    with pytest.raises(ValueError, match="older"):
        analyze(s, s)


def test_empty_snapshot() -> None:
    a = analyze(snap([]))
    assert a.n_destinations == 0 and a.totals.sockets == 0 and a.max_usage == 0.0


def test_model_host_snapshot_counts_real_time_waits() -> None:
    """The model's client closes 25 connections: 25 client-side TIME_WAITs to server:80, one
    destination using 25 ports; the server's snapshot has only its listener."""
    net = make_net()
    lfd = listen(net.server)
    for _ in range(25):
        one_request(net, lfd)
    a = analyze(from_host(net.client, net.now))
    assert (a.totals.time_wait, a.totals.time_wait_client, a.totals.time_wait_server) == (25, 25, 0)
    (d,) = a.destinations()
    assert (d.src, d.dst, d.dport, d.in_use) == (CLIENT_IP, SERVER_IP, 80, 25)
    assert d.capacity == KernelConfig().usable_ephemeral_ports
    assert sum(a.timer_histogram) == 25
    srv = analyze(from_host(net.server, net.now))
    assert srv.totals.time_wait == 0 and srv.totals.listen == 1


def test_model_host_server_closing_first_is_server_side() -> None:
    net = make_net()
    lfd = listen(net.server)
    for _ in range(5):
        one_request(net, lfd, client_closes=False)
    a = analyze(from_host(net.server, net.now))
    assert (a.totals.time_wait_server, a.totals.time_wait_client) == (5, 0)
    assert a.n_destinations == 0


def test_200k_rows_vectorized() -> None:
    """200,000 TIME_WAITs to 40 destinations (5,000 ports each) plus reserved/listening ports."""
    arr = bulk_tw(40, 5000)
    cfg = KernelConfig(ip_local_reserved_ports=frozenset({33000, 33001}))
    extra = snap([listener(60000), listener(22)], cfg).sockets
    s = Snapshot(sockets=np.concatenate([arr, extra]), config=cfg, kernel="6.18.44")
    a = analyze(s)
    assert a.totals.time_wait == 200_000 and a.totals.time_wait_client == 200_000
    assert a.n_destinations == 40
    assert a.ports.capacity == 28_232 - 2 - 1
    assert set(a.dest_in_use.tolist()) == {5000 - 2}  # 33000-33001 are among each 5,000 ports
    assert int(a.dest_counts[:, 0].sum()) == 200_000
    assert sum(a.timer_histogram) == 200_000
    assert a.churn_per_s == pytest.approx(200_000 / 60)
