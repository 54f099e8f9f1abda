"""The flow scenarios of the catalog: the keys the issue requires, determinism, the story each
verdict tells, and one-line errors for bad parameters. Params are shrunk to keep tests fast."""

from __future__ import annotations

import json

import pytest

from timewait.errors import ConfigError
from timewait.sim.scenario import ScenarioError, get, load_catalog

FLOW = ("port-exhaustion", "tw-reuse", "port-range", "pooling", "load-balancing")
SMALL = {
    "port-exhaustion": {"port_range": "40000-40999", "rate": 50, "duration_s": 120},
    "tw-reuse": {"port_range": "40000-40099", "rate": 200, "duration_s": 70},
    "port-range": {"ranges": "40000-40499,40000-40999", "reserved_ports": "40000-40099",
                   "rate": 50, "duration_s": 100},
    "pooling": {"port_range": "40000-40999", "rate": 50, "duration_s": 180},
    "load-balancing": {"port_range": "40000-40499", "rate": 50, "duration_s": 100,
                       "destinations": "1,2"},
}  # fmt: skip


def test_flow_scenarios_are_registered_with_a_question_and_params() -> None:
    cat = load_catalog()
    for name in FLOW:
        s = cat[name]
        assert s.question.endswith("?")
        assert s.params and all(p.help for p in s.params)


@pytest.mark.parametrize("name", FLOW)
def test_scenario_is_deterministic_and_json_serializable(name: str) -> None:
    """Same params and seed -> the same JSON, byte for byte; every variant has series."""
    a = get(name).run(SMALL[name], seed=3)
    b = get(name).run(SMALL[name], seed=3)
    assert json.dumps(a.to_json()) == json.dumps(b.to_json())
    assert set(a.to_json()) == {"scenario", "params", "variants", "verdict"}
    assert len(a.variants) >= 2 and a.verdict and "\n" not in a.verdict
    assert set(a.series) == set(a.variants)
    for series in a.series.values():
        assert {"time_wait", "ports_in_use", "failures_per_s"} <= set(series)


def test_port_exhaustion_reports_required_keys_and_a_failing_and_a_safe_variant() -> None:
    """Issue item 5: first_failure_s (null when none), steady_time_wait, failures, connections."""
    res = get("port-exhaustion").run(SMALL["port-exhaustion"])
    given, below = res.variants.values()
    for v in (given, below):
        assert {"first_failure_s", "steady_time_wait", "failures", "connections"} <= set(v)
    assert given["first_failure_s"] == pytest.approx(1000 / 50, rel=0.02)
    assert given["failures"] > 0 and given["steady_time_wait"] == 1000
    assert below["first_failure_s"] is None and below["failures"] == 0
    assert "EADDRNOTAVAIL" in res.verdict and "20.0 s" in res.verdict


def test_port_exhaustion_below_capacity_says_nothing_fails() -> None:
    res = get("port-exhaustion").run({**SMALL["port-exhaustion"], "rate": 5})
    assert all(v["failures"] == 0 for v in res.variants.values())
    assert "no EADDRNOTAVAIL" in res.verdict


def test_tw_reuse_only_helps_with_timestamps_and_reuse_1_or_loopback() -> None:
    res = get("tw-reuse").run(SMALL["tw-reuse"])
    rates = {k: v["sustainable_rate"] for k, v in res.variants.items()}
    assert rates["reuse=1 ts=on"] > 50 * rates["reuse=0 ts=on"]
    assert rates["reuse=1 ts=off"] == rates["reuse=0 ts=on"]
    assert rates["reuse=2 ts=on"] == rates["reuse=0 ts=on"]  # not loopback
    lo = get("tw-reuse").run({**SMALL["tw-reuse"], "loopback": True})
    assert lo.variants["reuse=2 ts=on"]["tw_recycled"] > 0
    assert lo.variants["reuse=2 ts=off"]["tw_recycled"] == 0


def test_port_range_reserved_ports_reduce_capacity() -> None:
    res = get("port-range").run(SMALL["port-range"])
    usable = [v["usable_ports"] for v in res.variants.values()]
    assert usable == [500, 1000, 400]
    assert "reserved" in list(res.variants)[-1]


def test_pooling_keeps_time_wait_near_zero_without_failures() -> None:
    res = get("pooling").run(SMALL["pooling"])
    per_req, keep_alive, recycled = res.variants.values()
    assert per_req["failures"] > 0 and per_req["steady_time_wait"] == 1000
    assert keep_alive["failures"] == 0 and keep_alive["steady_time_wait"] == 0
    assert recycled["failures"] == 0 and recycled["steady_time_wait"] == 32


def test_pooling_warns_when_the_pool_is_too_small_for_the_rate() -> None:
    res = get("pooling").run({**SMALL["pooling"], "pool_size": 1, "request_ms": 100})
    assert "size the pool up" in res.verdict


def test_load_balancing_capacity_doubles_with_two_destinations() -> None:
    res = get("load-balancing").run(SMALL["load-balancing"])
    one, two = (v["sustainable_rate"] for v in res.variants.values())
    assert two == pytest.approx(2 * one, rel=0.02)


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("port-exhaustion", {"port_range": "lots"}, "expected LOW-HIGH"),
        ("port-exhaustion", {"rate": "-1"}, "must be >= 0"),
        ("port-exhaustion", {"speed": "1"}, "has no parameter 'speed'"),
        ("load-balancing", {"destinations": "1,x"}, "expected counts"),
        ("port-range", {"ranges": ""}, "at least one"),
    ],
)
def test_bad_parameters_raise_one_line_scenario_errors(
    name: str, params: dict[str, str], match: str
) -> None:
    with pytest.raises(ScenarioError, match=match):
        get(name).run(params)


def test_a_port_range_linux_refuses_is_a_config_error() -> None:
    """ConfigError (a TimewaitError) explains the kernel's bound."""
    with pytest.raises(ConfigError, match="ip_local_port_range"):
        get("port-exhaustion").run({"port_range": "60999-32768"})
