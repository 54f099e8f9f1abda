"""Flow-level scenarios: the big-number questions about ephemeral ports, on timewait.sim.flow.

Each scenario runs its variants on the flow engine (one client namespace at connection
granularity, cross-checked against the packet model in tests/sim/test_flow.py) and compares the
numbers with the closed forms derived here:

* Capacity of one destination tuple (ref 7.3). Every successful connect() holds one of the
  `usable` ports for `lifetime` (connect -> TIME_WAIT entry) plus TCP_TIMEWAIT_LEN = 60 s
  (include/net/tcp.h). A port therefore serves at most one connection per (lifetime + 60 s):
      capacity = usable / (60 s + lifetime)                              (~470/s by default)
* Exhaustion onset. Offered rate R > capacity: the first `usable` connections all succeed, and
  nothing frees before the first TIME_WAIT expires 60 s + lifetime after the first connect. If
  usable / R < 60 s + lifetime, attempt number `usable` (0-based) is the first to fail, at
      t_fail = usable / R.
* Steady TIME_WAIT count (Little's law: arrivals x time in state). Below capacity every
  connection spends 60 s in TIME_WAIT: TW = R x 60 s. Above capacity every usable port is held,
  all but the ~R_ok x lifetime open ones in TIME_WAIT:  TW = min(R x 60 s, usable) (within the
  R x lifetime open connections).
* tcp_tw_reuse (ref 3, `tcp_twsk_unique()`): with reuse enabled (1, or 2 on loopback) and
  timestamps seen, connect() takes over a TIME_WAIT once now_ms > entry_ms + delay, so a port is
  reused every lifetime + delay + ~1 ms (the strict ms comparison):
      sustainable = usable / (lifetime + delay + 1 ms)       (usable / (delay + epsilon))
  Otherwise (reuse 0, reuse 2 off loopback, or no timestamps) the capacity above applies.
* N destination tuples (distinct dst IP/port, or source IPs) each have their own usable ports
  (the four-tuple only has to be unique, ref 7.3): capacity x N.
* A pool of K connections recycled every L seconds opens K / L connections per second, so
  TW = (K / L) x 60 s, and K if L >= 60 s; a pool that never recycles holds no TIME_WAIT.
"""

from __future__ import annotations

import random
from typing import Any

from timewait.config import KernelConfig, parse_port_list
from timewait.errors import ConfigError
from timewait.model.states import TCP_TIMEWAIT_LEN
from timewait.sim.flow import FlowResult, FlowWorkload, simulate, usable_ports
from timewait.sim.scenario import (
    Param,
    ParamValue,
    Scenario,
    ScenarioError,
    ScenarioResult,
    register,
)
from timewait.units import SEC, from_seconds

TW_S = TCP_TIMEWAIT_LEN / SEC  # 60.0
WINDOW_S = 60.0  # steady-state window: one TIME_WAIT length covers one full port cycle

# -- shared parameters --------------------------------------------------------------------------


def _p_range(default: str = "32768-60999") -> Param:
    return Param(
        name="port_range",
        default=default,
        help="net.ipv4.ip_local_port_range as LOW-HIGH (or 'LOW HIGH')",
    )


P_RESERVED = Param(
    name="reserved_ports",
    default="",
    help="net.ipv4.ip_local_reserved_ports, e.g. 40000-40999,50000",
)
P_LIFETIME = Param(
    name="lifetime_ms",
    default=10.0,
    min=0,
    max=3_600_000,
    help="ms from connect() to TIME_WAIT (request time plus the close handshake)",
)
P_ARRIVALS = Param(
    name="arrivals",
    default="fixed",
    choices=("fixed", "poisson"),
    help="connection arrivals: evenly spaced, or Poisson (seeded)",
)
P_TIMESTAMPS = Param(
    name="timestamps", default=True, help="net.ipv4.tcp_timestamps on, and the peer answers"
)
P_LOOPBACK = Param(name="loopback", default=False, help="the destination is a loopback address")


def _p_tw_reuse(note: str) -> Param:
    return Param(
        name="tw_reuse", default=0, min=0, max=2, help=f"net.ipv4.tcp_tw_reuse (2 = {note})"
    )


P_MAX_TW = Param(
    name="max_tw_buckets",
    default=131072,
    min=0,
    max=2**31 - 1,
    help="net.ipv4.tcp_max_tw_buckets",
)


def _duration(default: float) -> Param:
    return Param(name="duration_s", default=default, min=1, max=100_000, help="simulated seconds")


def _rate(default: float, help: str = "new connections per second") -> Param:
    # > 0: a scenario with no connections answers nothing (issue 17: rate=0 gave a verdict).
    return Param(name="rate", default=default, min=0.001, max=10_000_000, help=help)


def parse_range(text: str) -> tuple[int, int]:
    """'32768-60999' or '32768 60999' -> (32768, 60999); ScenarioError otherwise."""
    parts = text.replace("-", " ").split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ScenarioError(f"port range {text!r}: expected LOW-HIGH, e.g. 32768-60999")
    return int(parts[0]), int(parts[1])


def kernel(
    p: dict[str, ParamValue],
    *,
    port_range: str | None = None,
    reserved: str | None = None,
    **changes: object,
) -> KernelConfig:
    """KernelConfig from the common params (ConfigError explains a value Linux would refuse)."""
    rng = parse_range(str(port_range if port_range is not None else p.get("port_range", "")))
    values: dict[str, object] = {"ip_local_port_range": rng}
    reserved = str(p.get("reserved_ports", "")) if reserved is None else reserved
    if reserved:
        values["ip_local_reserved_ports"] = parse_port_list(reserved)
    if "timestamps" in p:
        values["tcp_timestamps"] = 1 if p["timestamps"] else 0
    if "max_tw_buckets" in p:
        values["tcp_max_tw_buckets"] = int(p["max_tw_buckets"])
    values.update(changes)
    try:
        return KernelConfig(**values)  # type: ignore[arg-type]
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # pragma: no cover - KernelConfig raises ConfigError
        raise ScenarioError(str(e)) from None


def workload(p: dict[str, ParamValue], **changes: Any) -> FlowWorkload:
    values: dict[str, Any] = {
        "rate": float(p.get("rate", 0.0)),
        "duration": from_seconds(float(p["duration_s"])),
        "lifetime": from_seconds(float(p["lifetime_ms"]) / 1000),
        "arrivals": str(p.get("arrivals", "fixed")),
    }
    values.update(changes)
    return FlowWorkload(**values)


def capacity(usable: int, lifetime_s: float, hold_s: float = TW_S) -> float:
    """Connections per second one destination tuple sustains (module docstring)."""
    return usable / (hold_s + lifetime_s)


def _r(x: float, nd: int = 3) -> float:
    return round(x, nd)


def _steady(res: FlowResult, duration_s: float) -> dict[str, Any]:
    """Steady-state numbers. They are steady once duration_s exceeds the fill time
    (usable / R) plus 60 s; `sustained_rate` is FlowResult.recent_rate (one full port rotation).
    """
    window = min(WINDOW_S, duration_s / 2)
    return {
        "steady_time_wait": round(res.mean_time_wait(min(10.0, window))),
        "peak_time_wait": max(res.time_wait, default=0),
        "sustained_rate": _r(res.recent_rate),
        "failures_per_s": _r(
            (sum(res.failures_per_s[-round(window) :]) / max(1, round(window))), 1
        ),
    }


def _fmt(n: float) -> str:
    """Rates for verdicts: whole numbers from 100, one decimal from 1, three significant
    digits below (a one-port range sustains 0.0167/s, not "0/s")."""
    if abs(n) >= 100 or float(n).is_integer():
        return f"{n:,.0f}"
    return f"{n:,.1f}" if abs(n) >= 1 else f"{n:.3g}"


def _fmt_s(seconds: float) -> str:
    """Durations for verdicts: "28.2 s", "1 ms" (a one-port range fills at once)."""
    return f"{seconds:,.1f} s" if seconds >= 1 else f"{seconds * 1000:.3g} ms"


# -- port-exhaustion ----------------------------------------------------------------------------


def run_port_exhaustion(p: dict[str, ParamValue], seed: int) -> ScenarioResult:
    cfg = kernel(p, tcp_tw_reuse=int(p["tw_reuse"]))
    lifetime_s = float(p["lifetime_ms"]) / 1000
    usable = usable_ports(cfg)
    if usable == 0:
        raise ScenarioError("no usable ports: the range is fully reserved")
    cap = capacity(usable, lifetime_s)
    rate = float(p["rate"])
    below = 0.9 * cap
    duration_s = float(p["duration_s"])
    variants: dict[str, dict[str, Any]] = {}
    series = {}
    for name, r in ((f"{_fmt(rate)}/s", rate), (f"{_fmt(below)}/s (90% of capacity)", below)):
        res = simulate(cfg, workload(p, rate=r), rng=random.Random(seed))
        ff = res.first_failure / SEC if res.first_failure is not None else None
        expected_ff = usable / r if r > cap and usable / r < TW_S + lifetime_s else None
        variants[name] = {
            "rate": r,
            "usable_ports": usable,
            "connections": res.connections,
            "failures": res.failures,
            "first_failure_s": _r(ff) if ff is not None else None,
            "expected_first_failure_s": _r(expected_ff) if expected_ff is not None else None,
            **_steady(res, duration_s),
            "expected_steady_time_wait": round(min(r * TW_S, usable)),
            "capacity_per_s": _r(cap),
        }
        series[name] = res.series()
    first = next(iter(variants.values()))
    if first["first_failure_s"] is not None:
        verdict = (
            f"At {_fmt(rate)} conn/s to one destination the {usable:,} usable port(s) run out "
            f"after {_fmt_s(first['first_failure_s'])} (usable/R = {_fmt_s(usable / rate)}); then "
            f"{first['failures_per_s']:,.0f} connect()/s fail with EADDRNOTAVAIL on average and "
            f"TIME_WAIT holds {first['steady_time_wait']:,} (min(R x 60 s, usable)); "
            f"at {_fmt(below)}/s (below usable/60 s = {_fmt(cap)}/s) nothing fails."
        )
    else:
        verdict = (
            f"{_fmt(rate)} conn/s stays below the capacity of one destination "
            f"({usable:,} ports / 60 s = {_fmt(cap)}/s): no EADDRNOTAVAIL, TIME_WAIT levels at "
            f"{first['steady_time_wait']:,} = R x 60 s."
        )
    return ScenarioResult(
        scenario="port-exhaustion", params=p, variants=variants, verdict=verdict, series=series
    )


register(
    Scenario(
        name="port-exhaustion",
        question="When does one connection per request to one destination run out of ports?",
        params=(
            _rate(1000.0),
            _duration(180.0),
            _p_range(),
            P_RESERVED,
            _p_tw_reuse("loopback only; the destination is not loopback"),
            P_TIMESTAMPS,
            P_MAX_TW,
            P_LIFETIME,
            P_ARRIVALS,
        ),
        run_fn=run_port_exhaustion,
    )
)

# -- tw-reuse -----------------------------------------------------------------------------------


def run_tw_reuse(p: dict[str, ParamValue], seed: int) -> ScenarioResult:
    lifetime_s = float(p["lifetime_ms"]) / 1000
    delay_ms = int(p["delay_ms"])
    loopback = bool(p["loopback"])
    duration_s = float(p["duration_s"])
    variants: dict[str, dict[str, Any]] = {}
    series = {}
    for reuse in (0, 1, 2):
        for ts in (True, False):
            cfg = kernel(p, tcp_tw_reuse=reuse, tcp_tw_reuse_delay=delay_ms, tcp_timestamps=int(ts))
            usable = usable_ports(cfg)
            reuses = ts and (reuse == 1 or (reuse == 2 and loopback))
            # tcp_twsk_unique(): a port comes back after lifetime + delay + 1 ms, else after 60 s.
            expected = (
                usable / (lifetime_s + (delay_ms + 1) / 1000)
                if reuses
                else capacity(usable, lifetime_s)
            )
            wl = workload(p, loopback=loopback)
            res = simulate(cfg, wl, rng=random.Random(seed))
            name = f"reuse={reuse} ts={'on' if ts else 'off'}"
            st = _steady(res, duration_s)
            variants[name] = {
                "tcp_tw_reuse": reuse,
                "timestamps": ts,
                "usable_ports": usable,
                "sustainable_rate": st["sustained_rate"],
                "expected_rate": _r(min(expected, float(p["rate"]))),
                "connections": res.connections,
                "failures": res.failures,
                "steady_time_wait": st["steady_time_wait"],
                "tw_recycled": res.counters["TWRecycled"],
            }
            series[name] = res.series()
    off = variants["reuse=0 ts=on"]["sustainable_rate"]
    on = variants["reuse=1 ts=on"]["sustainable_rate"]
    lb = variants["reuse=2 ts=on"]["sustainable_rate"]
    verdict = (
        f"To one destination, tcp_tw_reuse=1 with timestamps lifts the sustainable rate from "
        f"{off:,.1f}/s (ports / 60 s) to {on:,.0f}/s (ports / {delay_ms} ms delay); without "
        f"timestamps it does nothing ({variants['reuse=1 ts=off']['sustainable_rate']:,.1f}/s), "
        f"and reuse=2 gives {lb:,.1f}/s because the destination is "
        f"{'loopback' if loopback else 'not loopback'}."
    )
    return ScenarioResult(
        scenario="tw-reuse", params=p, variants=variants, verdict=verdict, series=series
    )


register(
    Scenario(
        name="tw-reuse",
        question="How much does tcp_tw_reuse raise the connection rate to one destination, "
        "and when does it do nothing?",
        params=(
            _rate(2000.0, "offered connections per second (above every variant's capacity)"),
            _duration(90.0),
            _p_range("40000-40999"),
            P_RESERVED,
            Param(
                name="delay_ms",
                default=1000,
                min=1,
                max=60000,
                help="net.ipv4.tcp_tw_reuse_delay (ms, Linux 6.14+)",
            ),
            P_LOOPBACK,
            P_LIFETIME,
            P_ARRIVALS,
        ),
        run_fn=run_tw_reuse,
    )
)

# -- port-range ---------------------------------------------------------------------------------


def run_port_range(p: dict[str, ParamValue], seed: int) -> ScenarioResult:
    lifetime_s = float(p["lifetime_ms"]) / 1000
    duration_s = float(p["duration_s"])
    cases: list[tuple[str, KernelConfig]] = []
    for text in str(p["ranges"]).split(","):
        if text.strip():
            lo, hi = parse_range(text)
            cases.append((f"{lo}-{hi}", kernel(p, port_range=text, reserved="", tcp_tw_reuse=0)))
    if not cases:
        raise ScenarioError("ranges: give at least one LOW-HIGH range, e.g. 32768-60999")
    if p["reserved_ports"]:
        base = cases[0][1]
        lo, hi = base.ip_local_port_range
        cfg = base.replace(ip_local_reserved_ports=parse_port_list(str(p["reserved_ports"])))
        cases.append((f"{lo}-{hi} reserved {p['reserved_ports']}", cfg))
    variants: dict[str, dict[str, Any]] = {}
    series = {}
    for name, cfg in cases:
        usable = usable_ports(cfg)
        res = simulate(cfg, workload(p), rng=random.Random(seed))
        st = _steady(res, duration_s)
        cap = capacity(usable, lifetime_s)
        variants[name] = {
            "usable_ports": usable,
            "capacity_per_s": _r(cap),
            "sustainable_rate": st["sustained_rate"],
            "connections": res.connections,
            "failures": res.failures,
            "first_failure_s": _r(res.first_failure / SEC)
            if res.first_failure is not None
            else None,
            "steady_time_wait": st["steady_time_wait"],
        }
        series[name] = res.series()
    parts = [f"{k}: {v['usable_ports']:,} ports -> {v['sustainable_rate']:,.0f}/s" for k, v in
             variants.items()]  # fmt: skip
    verdict = (
        "Capacity to one destination is usable ports / 60 s, linear in the range width and "
        "reduced by reserved ports: " + "; ".join(parts) + "."
    )
    return ScenarioResult(
        scenario="port-range", params=p, variants=variants, verdict=verdict, series=series
    )


register(
    Scenario(
        name="port-range",
        question="How does ip_local_port_range (and ip_local_reserved_ports) set the capacity "
        "to one destination?",
        params=(
            _rate(2000.0, "offered connections per second (above every variant's capacity)"),
            _duration(150.0),
            Param(
                name="ranges",
                default="32768-60999,1024-65535,49152-65535",
                help="comma-separated ranges to compare, each LOW-HIGH",
            ),
            Param(
                name="reserved_ports",
                default="40000-44999",
                help="an extra variant: the first range minus these reserved ports ('' = none)",
            ),
            P_LIFETIME,
            P_ARRIVALS,
        ),
        run_fn=run_port_range,
    )
)

# -- pooling ------------------------------------------------------------------------------------


def run_pooling(p: dict[str, ParamValue], seed: int) -> ScenarioResult:
    cfg = kernel(p, tcp_tw_reuse=int(p["tw_reuse"]))
    rate = float(p["rate"])
    k = int(p["pool_size"])
    life = float(p["pool_max_lifetime_s"])
    request_s = float(p["request_ms"]) / 1000
    duration_s = float(p["duration_s"])
    duration = from_seconds(duration_s)
    lifetime = from_seconds(float(p["lifetime_ms"]) / 1000)
    loopback = bool(p["loopback"])
    timer_hz = int(p["timer_hz"]) or None
    # The pool stays open past the run, or the client closes it as the run ends (its k
    # connections then sit in TIME_WAIT at the end, as after a process that closes its pool).
    pool_life = duration if p["pool_closes_at_end"] else duration + SEC
    cases: list[tuple[str, FlowWorkload]] = [
        ("connection per request", workload(p, rate=rate, loopback=loopback)),
        (
            f"keep-alive pool of {k}",
            workload(p, rate=0.0, open_at_start=k, lifetime=pool_life, loopback=loopback),
        ),
    ]
    if life > 0:
        # K connections, each replaced after `life`: K / life opens per second, each held `life`.
        cases.append(
            (
                f"pool of {k}, recycled every {life:g} s",
                workload(
                    p, rate=k / life, lifetime=from_seconds(life) + lifetime, loopback=loopback
                ),
            )
        )
    requests = round(rate * duration_s)
    pool_capacity = k / request_s if request_s > 0 else float("inf")
    variants: dict[str, dict[str, Any]] = {}
    series = {}
    for name, wl in cases:
        res = simulate(cfg, wl, rng=random.Random(seed), timer_hz=timer_hz)
        st = _steady(res, duration_s)
        variants[name] = {
            "requests": requests,
            "connections": res.connections,
            "requests_per_connection": _r(requests / res.connections if res.connections else 0, 1),
            "failures": res.failures,
            "first_failure_s": _r(res.first_failure / SEC)
            if res.first_failure is not None
            else None,
            "steady_time_wait": st["steady_time_wait"],
            "peak_time_wait": st["peak_time_wait"],
            "final_time_wait": res.final_time_wait,
        }
        series[name] = res.series()
    per_req = variants["connection per request"]
    pooled = [
        f"{n}: {v['failures']:,} failures, {v['steady_time_wait']:,} TIME_WAIT"
        for n, v in variants.items()
        if n != "connection per request"
    ]
    verdict = (
        f"{_fmt(rate)} requests/s with a connection each: {per_req['failures']:,} EADDRNOTAVAIL, "
        f"{per_req['steady_time_wait']:,} TIME_WAIT; " + "; ".join(pooled) + "."
    )
    if pool_capacity < rate:
        verdict += (
            f" Note: {k} connections at {p['request_ms']} ms per request serve at most "
            f"{pool_capacity:,.0f} requests/s (Little's law); size the pool up."
        )
    return ScenarioResult(
        scenario="pooling", params=p, variants=variants, verdict=verdict, series=series
    )


register(
    Scenario(
        name="pooling",
        question="Does sending the same requests through a pool or keep-alive connections "
        "remove TIME_WAIT and EADDRNOTAVAIL?",
        params=(
            _rate(1000.0, "requests per second"),
            _duration(180.0),
            Param(name="pool_size", default=32, min=1, max=1_000_000, help="pooled connections"),
            Param(
                name="pool_max_lifetime_s",
                default=60.0,
                min=0,
                max=1_000_000,
                help="a pooled connection is replaced after this long (0: never)",
            ),
            Param(
                name="request_ms",
                default=10.0,
                min=0,
                max=3_600_000,
                help="time a request occupies a pooled connection (pool capacity check)",
            ),
            _p_range(),
            _p_tw_reuse("loopback only, see loopback"),
            P_LOOPBACK,
            Param(
                name="timer_hz",
                default=0,
                min=0,
                max=1000,
                help="CONFIG_HZ: round each TIME_WAIT's end up to the kernel timer wheel's "
                "bucket (0 = exactly 60 s)",
            ),
            Param(
                name="pool_closes_at_end",
                default=False,
                help="the client closes the pool as the run ends (its connections then end "
                "in TIME_WAIT)",
            ),
            P_LIFETIME,
            P_ARRIVALS,
        ),
        run_fn=run_pooling,
    )
)

# -- load-balancing -----------------------------------------------------------------------------


def run_load_balancing(p: dict[str, ParamValue], seed: int) -> ScenarioResult:
    cfg = kernel(p, tcp_tw_reuse=0)
    lifetime_s = float(p["lifetime_ms"]) / 1000
    duration_s = float(p["duration_s"])
    usable = usable_ports(cfg)
    counts: list[int] = []
    for text in str(p["destinations"]).split(","):
        if not text.strip().isdigit() or int(text) < 1:
            raise ScenarioError(
                f"destinations={p['destinations']!r}: expected counts like 1,2,4 (each >= 1)"
            )
        counts.append(int(text))
    variants: dict[str, dict[str, Any]] = {}
    series = {}
    for n in counts:
        res = simulate(cfg, workload(p, destinations=n), rng=random.Random(seed))
        st = _steady(res, duration_s)
        name = f"{n} destination{'s' if n > 1 else ''}"
        variants[name] = {
            "destinations": n,
            "capacity_per_s": _r(n * capacity(usable, lifetime_s)),
            "sustainable_rate": st["sustained_rate"],
            "connections": res.connections,
            "failures": res.failures,
            "first_failure_s": _r(res.first_failure / SEC)
            if res.first_failure is not None
            else None,
            "steady_time_wait": st["steady_time_wait"],
        }
        series[name] = res.series()
    parts = [f"{v['destinations']} -> {v['sustainable_rate']:,.0f}/s" for v in variants.values()]
    verdict = (
        f"Each destination tuple has its own {usable:,} ports, so capacity grows N-fold "
        f"({usable / (TW_S + lifetime_s):,.0f}/s each): " + ", ".join(parts) + "."
    )
    return ScenarioResult(
        scenario="load-balancing", params=p, variants=variants, verdict=verdict, series=series
    )


register(
    Scenario(
        name="load-balancing",
        question="How much capacity do more destination addresses or ports add?",
        params=(
            _rate(2000.0, "offered connections per second, spread round robin"),
            _duration(150.0),
            Param(
                name="destinations",
                default="1,2,4",
                help="comma-separated numbers of destination tuples to compare",
            ),
            _p_range(),
            P_LIFETIME,
            P_ARRIVALS,
        ),
        run_fn=run_load_balancing,
    )
)
