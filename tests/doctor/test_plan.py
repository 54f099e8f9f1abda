"""plan(): the flow engine run forward from a capture reproduces the closed forms (issue 16).

Captures are built as the kernel would show them after `t0` seconds of churn at rate R to one
destination (TIME_WAITs with ages spread over [0, t0)), five seconds apart so the churn is
measured (to one event in 150: the counts are whole TIME_WAITs). Closed forms (ref 7.3):
onset = usable / R - t0 after the capture, steady failures = R - usable / 60 s, TIME_WAIT at
steady state = usable.
"""

from __future__ import annotations

import pytest

from timewait.config import KernelConfig
from timewait.doctor import analyze
from timewait.doctor.plan import AS_IS, PlanError, plan

from .helpers import S1, C, snap, tw

RANGE = KernelConfig(ip_local_port_range=(40000, 40999), tcp_tw_reuse=0)  # 1,000 ports
RATE, T0, GAP = 30.0, 10.0, 5.0


def capture_at(t: float, rate: float = RATE, cfg: KernelConfig = RANGE) -> object:
    """The table after t seconds at `rate` to S1:80, TIME_WAITs' time left from their age."""
    n = round(rate * t)
    rows = [
        tw(C, 40000 + i, S1, 80, left_ms=round(60_000 - (t - i / rate) * 1000)) for i in range(n)
    ]
    return snap(rows, cfg, monotonic_ns=round(t * 1e9))


def planned(**kw: object) -> object:
    now, before = capture_at(T0), capture_at(T0 - GAP)
    a = analyze(now, before)  # type: ignore[arg-type]
    return plan(now, a, horizon_s=300, **kw)  # type: ignore[arg-type]


def test_as_is_onset_and_steady_failures_are_the_closed_forms() -> None:
    p = planned()
    (d,) = p.destinations
    assert d.churn_per_s == pytest.approx(RATE, rel=0.02)
    assert d.as_is.option == AS_IS
    assert d.as_is.onset_s == pytest.approx(1000 / RATE - T0, rel=0.02)
    assert d.as_is.failures_per_s == pytest.approx(RATE - 1000 / 60, rel=0.02)
    assert d.as_is.headroom == 0
    assert "between two captures" in p.churn_basis


def test_every_remedy_that_applies_is_run_and_ranked() -> None:
    (d,) = planned().destinations
    by = {o.option: o for o in d.options}
    assert set(by) == {"pool", "tw-reuse", "peer-closes-first", "more-destinations", "widen-range"}
    for name in ("pool", "tw-reuse", "peer-closes-first", "widen-range"):
        assert by[name].failures_per_s == 0 and by[name].onset_s is None, name
    # Half the churn moves to a new destination, but the first still holds the capture's 300
    # TIME_WAITs for up to 60 s: at 15/s it fills at (1000 - 300) / 15 s, before they expire,
    # then recovers. A transient the plan shows, then no failure at steady state.
    more = by["more-destinations"]
    assert more.failures_per_s == 0
    assert more.onset_s == pytest.approx(700 / (RATE / 2), rel=0.02)
    assert by["more-destinations"].usable == 1000 and by["widen-range"].usable == 64_512
    order = [o.option for o in d.options]
    assert order[0] == "pool"  # ties: the doctor's order of preference
    assert order[-1] == "more-destinations"  # a transient ranks last
    assert all(o.risk for o in d.options)
    # Ports left as the doctor counts them: under tcp_tw_reuse only the TIME_WAITs younger than
    # tcp_tw_reuse_delay (1 s: 30 of them at 30/s) are held.
    assert by["tw-reuse"].headroom == pytest.approx(1000 - RATE * 1.0, abs=2)


def test_a_remedy_too_small_still_fails_and_ranks_below_those_that_do_not() -> None:
    (d,) = planned(tries=("widen-range=40000-41199", "more-destinations=2")).destinations
    wide, more = sorted(d.options, key=lambda o: o.option != "widen-range")
    assert wide.value == "40000-41199" and wide.failures_per_s == pytest.approx(
        RATE - 1200 / 60, rel=0.02
    )
    assert more.failures_per_s == 0
    assert [o.option for o in d.options] == ["more-destinations", "widen-range"]


def test_tw_reuse_rate_is_usable_over_delay_plus_lifetime() -> None:
    """ref 3: with reuse, one destination sustains usable / tcp_tw_reuse_delay connections/s."""
    cfg = RANGE.replace(tcp_tw_reuse_delay=60_000 // 2)  # 30 s: capacity 1000 / 30 = 33/s
    now, before = capture_at(T0, 50.0, cfg), capture_at(T0 - GAP, 50.0, cfg)
    (d,) = plan(now, analyze(now, before), tries=("tw-reuse",)).destinations
    (reuse,) = d.options
    assert reuse.failures_per_s == pytest.approx(50 - 1000 / 30, rel=0.03)


def test_bad_tries_are_one_line_errors() -> None:
    with pytest.raises(PlanError, match="no such remedy"):
        planned(tries=("recycle",))
    with pytest.raises(PlanError, match="pool=x: expected a whole number"):
        planned(tries=("pool=x",))
    with pytest.raises(PlanError, match="expected LOW-HIGH"):
        planned(tries=("widen-range=wide",))
    with pytest.raises(PlanError, match="nothing to try"):
        planned(tries=("tw-reuse",)) if False else plan(
            capture_at(T0, cfg=RANGE.replace(tcp_timestamps=0)),
            analyze(capture_at(T0, cfg=RANGE.replace(tcp_timestamps=0))),
            tries=("tw-reuse",),
        )


def test_one_snapshot_says_its_churn_is_littles_law() -> None:
    now = capture_at(T0)
    p = plan(now, analyze(now))  # type: ignore[arg-type]
    assert "Little's law" in p.churn_basis and "--interval" in p.churn_basis


def test_plan_on_the_simulators_own_snapshots_reproduces_the_closed_forms() -> None:
    """Issue 16 item 4: the packet-level simulator churns 30 connections a second into 1,000
    ports; its client host is captured (snapshot.from_host) at 5 s and at 10 s, and the plan from
    those captures gives the closed forms within 2%."""
    import random

    from timewait.model.host import Host
    from timewait.sim.network import Network
    from timewait.sim.workloads import RequestClient, Server
    from timewait.snapshot import from_host
    from timewait.units import SEC

    net = Network(rng=random.Random(1))
    client = net.add_host(Host(name="client", addrs=[C], config=RANGE, rng=random.Random(2)))
    server = net.add_host(Host(name="server", addrs=[S1], rng=random.Random(3)))
    Server(net, server, port=80)
    RequestClient(net, client, dests=[(S1, 80)], interval=SEC // 30, count=30 * 11)
    net.run(5 * SEC)
    before = from_host(client, net.now)
    net.run(10 * SEC)
    now = from_host(client, net.now)
    p = plan(now, analyze(now, before), horizon_s=300)
    (d,) = p.destinations
    assert d.time_wait_now == pytest.approx(300, abs=2)  # what the simulator holds at 10 s
    assert d.churn_per_s == pytest.approx(RATE, rel=0.02)
    assert d.as_is.onset_s == pytest.approx(1000 / RATE - 10, rel=0.02)
    assert d.as_is.failures_per_s == pytest.approx(RATE - 1000 / 60, rel=0.02)
    assert all(o.failures_per_s == 0 for o in d.options if o.option != "more-destinations")
