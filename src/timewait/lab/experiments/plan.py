"""Experiment `plan`: does `timewait plan`, run on an early capture, predict what the kernel
then does -- as is, and with two remedies applied at the moment of the capture?

Three identical namespaces churn connections to one destination on their loopback at a rate
above what the range sustains. At a third of the time to exhaustion, namespace "as is" is
captured twice (`interval` apart) and `timewait.doctor.plan` runs forward from that capture:
as is, with a wider range, and with tcp_tw_reuse=1 (the namespaces' tcp_tw_reuse_delay is set
long so that reuse helps only part of the way, a prediction worth checking). At that same moment
the other two namespaces get the remedy (their sysctls change under the running load). The
kernel's first EADDRNOTAVAIL and its failures per second over the last TIME_WAIT life of the run
are then compared with the plan's, within 5 % (lab.compare).
"""

from __future__ import annotations

import time
from typing import Any

from timewait.lab import compare as cmp
from timewait.lab.experiments.base import (
    Experiment,
    LabResult,
    Progress,
    check_port_range,
    set_sysctls,
)
from timewait.lab.experiments.registry import register
from timewait.lab.loadgen import LoadGen, LoadSpec
from timewait.lab.namespaces import run_in_netns, throwaway_netns
from timewait.live.capture import capture
from timewait.sim.scenario import Param, ParamValue, Series

VARIANTS = ("as is", "widen-range", "tw-reuse")
STEADY_S = 60.0  # one TIME_WAIT life: the failure rate averages over a full cycle of ports


def _windowed(times: list[float], cumulative: list[float], lo: float, hi: float) -> float:
    """Failures per second between lo and hi from cumulative samples."""
    pts = [(t, c) for t, c in zip(times, cumulative, strict=True) if lo <= t <= hi]
    if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
        return 0.0
    return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])


def run_plan(p: dict[str, ParamValue], progress: Progress) -> LabResult:
    from timewait.doctor import analyze
    from timewait.doctor.plan import plan

    rate = float(p["rate"])
    lo, hi = check_port_range(str(p["port_range"]))
    wide_hi = hi + int(p["widen_by"])
    delay = int(p["tw_reuse_delay_ms"])
    interval = float(p["interval_s"])
    usable = (hi - lo + 1) & ~1
    onset_s = usable / rate
    t_cap = max(onset_s / 3, interval + 0.5)
    duration = onset_s + STEADY_S + float(p["extra_s"])
    base = {
        "ip_local_port_range": f"{lo} {hi}",
        "tcp_tw_reuse": "0",
        "tcp_tw_reuse_delay": str(delay),
    }
    remedy = {
        "widen-range": {"ip_local_port_range": f"{lo} {wide_hi}"},
        "tw-reuse": {"tcp_tw_reuse": "1"},
    }
    spec = LoadSpec(dests=(("127.0.0.1", 20000),), rate=rate, duration=duration)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    fails: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with throwaway_netns() as a, throwaway_netns() as b, throwaway_netns() as c:
        ns = dict(zip(VARIANTS, (a, b, c), strict=True))
        for name in ns.values():
            run_in_netns(name, set_sysctls, base)
        gens = {v: LoadGen(n, spec) for v, n in ns.items()}
        try:
            for g in gens.values():
                g.start(delay=0.2)
            t0 = min(g.start_ns for g in gens.values()) / 1e9
            previous = current = None
            applied = False
            while True:
                now = time.monotonic() - t0
                if previous is None and now >= t_cap - interval:
                    previous = capture(netns=a)
                if current is None and now >= t_cap:
                    current = capture(netns=a)
                    for v, sysctls in remedy.items():
                        run_in_netns(ns[v], set_sysctls, sysctls)
                    applied = True
                    progress(f"captured at {now:.1f} s, remedies applied; planning")
                for v, g in gens.items():
                    r = g.poll()
                    times[v].append(r.elapsed_s)
                    fails[v].append(float(r.eaddrnotavail))
                if now >= duration + 0.3:
                    break
                time.sleep(0.25)  # the sampling period of the failure series, not a wait
            results = {v: g.wait(timeout=10) for v, g in gens.items()}
        finally:
            for g in gens.values():
                g.stop()
    assert previous is not None and current is not None and applied
    horizon = duration - t_cap
    pl = plan(
        current, analyze(current, previous), horizon_s=horizon, top=1,
        tries=(f"widen-range={lo}-{wide_hi}", "tw-reuse"),
    )  # fmt: skip
    if not pl.destinations:
        raise RuntimeError("the plan found no churning destination in the capture")
    d = pl.destinations[0]
    by = {"as is": d.as_is, **{o.option: o for o in d.options}}
    w_lo, w_hi = duration - STEADY_S, duration
    kernel: dict[str, dict[str, Any]] = {}
    model: dict[str, dict[str, Any]] = {}
    series: dict[str, Series] = {}
    for v in VARIANTS:
        o = by[v]
        abs_t = [t + t_cap for t in o.times]  # the plan's clock starts at the capture
        cum: list[float] = []
        total = 0.0
        for f in o.failures_series:
            total += f
            cum.append(total)
        pred = _windowed(abs_t, cum, w_lo, w_hi)
        first = results[v].first_failure_s
        kernel[v] = {
            "first_failure_s": None if first is None else round(first, 2),
            "failures_per_s": round(_windowed(times[v], fails[v], w_lo, w_hi), 2),
        }
        model[v] = {
            "first_failure_s": None if o.onset_s is None else round(t_cap + o.onset_s, 2),
            "failures_per_s": round(pred, 2),
        }
        series[f"kernel {v}"] = {"failures_per_s": _rates(times[v], fails[v])}
        series[f"plan {v}"] = {"failures_per_s": (abs_t, list(o.failures_series))}
    rows = cmp.compare(kernel, model, ("first_failure_s", "failures_per_s"))
    k, m = kernel["as is"], model["as is"]
    verdict = (
        f"captured at {t_cap:.1f} s, plan predicted the first EADDRNOTAVAIL at "
        f"{m['first_failure_s']} s (kernel {k['first_failure_s']} s) and {m['failures_per_s']}"
        f"/s over the last 60 s (kernel {k['failures_per_s']}/s); widen-range predicted "
        f"{model['widen-range']['failures_per_s']}/s (kernel "
        f"{kernel['widen-range']['failures_per_s']}/s), tw-reuse "
        f"{model['tw-reuse']['failures_per_s']}/s (kernel {kernel['tw-reuse']['failures_per_s']}/s)"
    )
    return LabResult(
        experiment="plan",
        params=dict(p),
        kernel=kernel,
        model=model,
        rows=rows,
        verdict=verdict,
        series=series,
        notes=[
            f"'model' = timewait plan run on the as-is namespace's capture at {t_cap:.1f} s "
            f"(churn {d.churn_per_s:.1f}/s: {pl.churn_basis})",
            f"remedies applied at the capture: ip_local_port_range {lo} {wide_hi}; "
            f"tcp_tw_reuse=1 with tcp_tw_reuse_delay={delay} ms",
        ],
    )


def _rates(times: list[float], cumulative: list[float]) -> tuple[list[float], list[float]]:
    out_t, out_r = [], []
    for i in range(1, len(times)):
        dt = times[i] - times[i - 1]
        if dt > 0:
            out_t.append(times[i])
            out_r.append((cumulative[i] - cumulative[i - 1]) / dt)
    return out_t, out_r


register(
    Experiment(
        name="plan",
        question="Does `timewait plan` on an early capture predict when connect() starts to "
        "fail and how often, as is and with a remedy applied at that moment?",
        params=(
            Param(name="rate", default=40.0, min=1, max=5000, help="connections per second"),
            Param(
                name="port_range",
                default="40000-40599",
                help="ip_local_port_range in the namespaces, LOW-HIGH",
            ),
            Param(
                name="widen_by",
                default=300,
                min=2,
                max=20000,
                help="ports the widen-range remedy adds at the top of the range",
            ),
            Param(
                name="tw_reuse_delay_ms",
                default=30000,
                min=1,
                max=60000,
                help="tcp_tw_reuse_delay: reuse then sustains usable/delay per second",
            ),
            Param(
                name="interval_s",
                default=2.0,
                min=0.5,
                max=30,
                help="between the two captures the plan measures churn over",
            ),
            Param(
                name="extra_s",
                default=0.0,
                min=0,
                max=600,
                help="seconds run beyond onset + one TIME_WAIT life",
            ),
        ),
        run_fn=run_plan,
        quick={"rate": 40.0, "port_range": "40000-40599"},
    )
)
