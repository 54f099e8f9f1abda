"""The flow simulator against the closed forms of timewait.sim.scenarios.flow (within 2%).

Derivations (see the scenarios module docstring for the long form): a successful connect() holds
one of `usable` ports for lifetime + 60 s (TCP_TIMEWAIT_LEN, include/net/tcp.h), so
  * capacity to one destination tuple        C = usable / (60 s + lifetime)
  * onset of EADDRNOTAVAIL at offered R > C   t = usable / R    (nothing frees before 60 s)
  * steady TIME_WAIT (Little's law)           TW = min(R x 60 s, usable)
  * N destination tuples (ref 7.3)            N x C
  * tcp_tw_reuse=1 + timestamps (ref 3)       usable / (lifetime + delay + 1 ms)
"""

from __future__ import annotations

import random

import pytest

from timewait.config import KernelConfig
from timewait.sim.flow import FlowWorkload, simulate, usable_ports
from timewait.sim.scenario import load_catalog
from timewait.units import MS, SEC

LIFE_S = 0.010


def within_2pct(value: float, expected: float) -> bool:
    return abs(value - expected) <= 0.02 * abs(expected)


def cfg(lo: int, hi: int, **kw: object) -> KernelConfig:
    return KernelConfig(ip_local_port_range=(lo, hi), tcp_tw_reuse=0).replace(**kw)


@pytest.mark.parametrize(("ports", "rate"), [(1000, 50.0), (2000, 100.0), (28232, 1000.0)])
def test_exhaustion_onset_is_usable_over_rate(ports: int, rate: float) -> None:
    """t_fail = usable / R when usable / R < 60 s."""
    c = cfg(40000, 40000 + ports - 1) if ports < 28232 else KernelConfig(tcp_tw_reuse=0)
    res = simulate(
        c, FlowWorkload(rate=rate, duration=60 * SEC, lifetime=10 * MS), rng=random.Random(1)
    )
    assert res.first_failure is not None
    assert within_2pct(res.first_failure / SEC, usable_ports(c) / rate)


@pytest.mark.parametrize("rate", [5.0, 20.0, 100.0])
def test_steady_time_wait_is_min_of_rate_times_60_s_and_usable(rate: float) -> None:
    """Below capacity TW = R x 60 s; above, every usable port is a TIME_WAIT."""
    c = cfg(40000, 41999)  # 2000 ports, capacity 33.3/s
    res = simulate(
        c, FlowWorkload(rate=rate, duration=150 * SEC, lifetime=10 * MS), rng=random.Random(1)
    )
    assert within_2pct(res.mean_time_wait(10), min(rate * 60, 2000))


def test_steady_time_wait_matches_with_poisson_arrivals() -> None:
    """Little's law holds for random arrivals too (mean over 30 s, 1,200 TIME_WAITs)."""
    res = simulate(
        cfg(40000, 41999),
        FlowWorkload(rate=20, duration=150 * SEC, arrivals="poisson"),
        rng=random.Random(3),
    )
    assert within_2pct(res.mean_time_wait(30), 20 * 60)


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_n_destinations_multiply_capacity_by_n(n: int) -> None:
    """N destination tuples: N x usable / (60 s + lifetime)."""
    c = cfg(40000, 40999)
    res = simulate(
        c,
        FlowWorkload(rate=200, duration=150 * SEC, lifetime=10 * MS, destinations=n),
        rng=random.Random(1),
    )
    assert within_2pct(res.recent_rate, n * 1000 / (60 + LIFE_S))


@pytest.mark.parametrize(
    ("lo", "hi", "reserved"),
    [(40000, 40499, 0), (40000, 40999, 0), (40000, 42999, 0), (40000, 42999, 1000)],
)
def test_capacity_is_linear_in_range_width_minus_reserved(lo: int, hi: int, reserved: int) -> None:
    """C = (width - reserved) / (60 s + lifetime)."""
    c = cfg(lo, hi, ip_local_reserved_ports=frozenset(range(lo, lo + reserved)))
    res = simulate(
        c, FlowWorkload(rate=150, duration=150 * SEC, lifetime=10 * MS), rng=random.Random(1)
    )
    assert within_2pct(res.recent_rate, (hi - lo + 1 - reserved) / (60 + LIFE_S))


@pytest.mark.parametrize("delay_ms", [200, 1000, 5000])
def test_tw_reuse_rate_is_usable_over_delay(delay_ms: int) -> None:
    """tcp_tw_reuse=1, timestamps: usable / (lifetime + delay + 1 ms) ~ usable / (delay + eps)."""
    c = cfg(40000, 40499, tcp_tw_reuse=1, tcp_tw_reuse_delay=delay_ms)
    expected = 500 / (LIFE_S + (delay_ms + 1) / 1000)
    res = simulate(
        c,
        FlowWorkload(rate=2 * expected, duration=30 * SEC, lifetime=10 * MS),
        rng=random.Random(1),
    )
    assert within_2pct(res.recent_rate, expected)


def test_scenarios_report_their_closed_forms() -> None:
    """The catalog's own expected_* numbers agree with its measurements (small, fast params)."""
    cat = load_catalog()
    pe = cat["port-exhaustion"].run({"port_range": "40000-41999", "rate": 100, "duration_s": 150})
    for v in pe.variants.values():
        assert within_2pct(v["steady_time_wait"], v["expected_steady_time_wait"])
        if v["expected_first_failure_s"] is not None:
            assert within_2pct(v["first_failure_s"], v["expected_first_failure_s"])
    tw = cat["tw-reuse"].run({"port_range": "40000-40199", "rate": 400, "duration_s": 70})
    for v in tw.variants.values():
        assert within_2pct(v["sustainable_rate"], v["expected_rate"])
    lb = cat["load-balancing"].run(
        {"port_range": "40000-40499", "rate": 100, "duration_s": 130, "destinations": "1,4"}
    )
    for v in lb.variants.values():
        assert within_2pct(v["sustainable_rate"], v["capacity_per_s"])
