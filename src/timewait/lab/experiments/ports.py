"""Port experiments: exhaustion, tw-reuse, max-tw-buckets, bind-before-connect, who-closes-first.

Each one drives the load generator (lab.loadgen) in throwaway namespaces, samples them with the
live collector, and asks the flow or packet simulator the same question. Single-destination
churn runs on the loopback of one namespace with one worker (one destination tuple, so the
port arithmetic is the simulator's); who-closes-first uses two namespaces joined by a veth pair
(198.18.0.1 -> 198.18.0.2), so client and server are different hosts as in the model.

Loopback and tcp_tw_reuse: a new namespace has tcp_tw_reuse=2 (loopback only, ref 3), so on
loopback connect() would take over TIME_WAITs after 1 s. Experiments that ask about the range
itself write tcp_tw_reuse=0 (a parameter), and the model is told the destination is loopback.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

from timewait.config import KernelConfig
from timewait.lab import compare as cmp
from timewait.lab.experiments.base import (
    TIMER_WHEEL_NOTE,
    Experiment,
    LabResult,
    Probe,
    Progress,
    Sampler,
    count_tw,
    counter_delta,
    counters,
    kernel_hz,
    r3,
    set_sysctls,
)
from timewait.lab.experiments.registry import register
from timewait.lab.loadgen import LoadGen, LoadSpec, serve
from timewait.lab.namespaces import NetnsProcess, run_in_netns, throwaway_netns, veth_pair
from timewait.sim.flow import FlowResult, FlowWorkload, simulate, usable_ports
from timewait.sim.scenario import Param, ParamValue, ScenarioError, Series
from timewait.sim.scenario import get as get_scenario
from timewait.sim.scenarios.flow import parse_range
from timewait.units import SEC, from_seconds

PORT = 5000  # listener port on loopback, outside every ephemeral range used here
LIFETIME_S = 0.0001  # connect() -> TIME_WAIT on loopback: ~50-100 us (measured, loadgen)


def _range_text(p: dict[str, ParamValue]) -> str:
    lo, hi = parse_range(str(p["port_range"]))
    if not (1024 <= lo <= hi <= 65535):
        raise ScenarioError(f"port_range {lo}-{hi}: must lie within 1024-65535")
    return f"{lo} {hi}"


def _mean_after(times: list[float], values: list[float], start: float) -> float | None:
    vals = [v for t, v in zip(times, values, strict=True) if t >= start]
    return sum(vals) / len(vals) if vals else None


def _flow(cfg: KernelConfig, **kw: Any) -> FlowResult:
    return simulate(cfg, FlowWorkload(**kw), rng=random.Random(1), timer_hz=kernel_hz())


# -- exhaustion ---------------------------------------------------------------------------------


def run_exhaustion(p: dict[str, ParamValue], progress: Progress) -> LabResult:
    rate = float(p["rate"])
    duration = float(p["duration_s"])
    every = float(p["sample_every_s"])
    rng_text = _range_text(p)
    reuse = int(p["tw_reuse"])
    sysctls = {"ip_local_port_range": rng_text, "tcp_tw_reuse": str(reuse)}
    cfg = KernelConfig(
        ip_local_port_range=parse_range(rng_text), tcp_tw_reuse=reuse, tcp_tw_reuse_delay=1000
    )
    usable = usable_ports(cfg)
    with throwaway_netns() as ns:
        run_in_netns(ns, set_sysctls, sysctls)
        progress(f"exhaustion: {rate:g} conn/s for {duration:g} s in {ns}")
        spec = LoadSpec(dests=[("127.0.0.1", PORT)], rate=rate, duration=duration)
        with LoadGen(ns, spec) as gen:
            sampler = Sampler({"kernel": ns}, {"time_wait": lambda s: count_tw(s, dport=PORT)})
            sampler.t0 = gen.start_ns / 1e9  # monotonic: sample times are since the first attempt
            fails: list[float] = []
            sampler.every(every, duration, poll=lambda: _poll_failures(gen, fails))
            res = gen.wait(timeout=duration + 30)
    times = sampler.times["kernel"]
    tw = sampler.values["kernel"]["time_wait"]
    ff = res.first_failure_s
    k_fps = res.failures / (duration - ff) if ff is not None and duration > ff else 0.0
    k_plateau = _mean_after(times, tw, (ff or duration) + every) if ff is not None else None
    kernel = {
        "connections": res.connections,
        "failures": res.failures,
        "first_failure_s": r3(ff),
        "time_wait_plateau": round(k_plateau) if k_plateau is not None else None,
        "failures_per_s": round(k_fps, 1),
        "time_wait_end": int(tw[-1]) if tw else 0,
    }
    m = _flow(
        cfg,
        rate=rate,
        duration=from_seconds(duration),
        lifetime=from_seconds(LIFETIME_S),
        loopback=True,
        sample_every=from_seconds(every),
    )
    mff = m.first_failure / SEC if m.first_failure is not None else None
    m_fps = m.failures / (duration - mff) if mff is not None and duration > mff else 0.0
    m_plateau = _mean_after(m.times, [float(v) for v in m.time_wait], (mff or duration) + every)
    model = {
        "connections": m.connections,
        "failures": m.failures,
        "first_failure_s": r3(mff),
        "time_wait_plateau": round(m_plateau) if mff is not None and m_plateau else None,
        "failures_per_s": round(m_fps, 1),
        "time_wait_end": m.time_wait[-1] if m.time_wait else 0,
    }
    name = f"{rate:g}/s, {usable} ports"
    note = (
        "no effect: every TIME_WAIT of this run is younger than 60 s"
        if duration < 60
        else TIMER_WHEEL_NOTE + ": ports come back 0.5-2 s after 60 s on both"
    )
    rows = cmp.compare(
        {name: kernel},
        {name: model},
        ["first_failure_s", "time_wait_plateau", "failures_per_s", "connections"],
        notes={"failures_per_s": f"timer wheel: {note}"},
    )
    verdict = (
        f"{usable:,} ports, {rate:g} conn/s to one destination: the kernel's first EADDRNOTAVAIL "
        f"came at {_s(ff)} (model {_s(mff)}, usable/R = {usable / rate:.3f} s); TIME_WAIT "
        f"plateau {kernel['time_wait_plateau']} (model {model['time_wait_plateau']}); "
        f"{kernel['failures_per_s']}/s failed afterwards (model {model['failures_per_s']})."
    )
    series: dict[str, Series] = {
        "kernel": {"time_wait": (times, tw), "failures_per_s": (times, _rate_of(times, fails))},
        "model": m.series(),
    }
    return LabResult(
        experiment="exhaustion",
        params=p,
        kernel={name: kernel},
        model={name: model},
        rows=rows,
        verdict=verdict,
        series=series,
    )


def _s(x: float | None) -> str:
    return "never" if x is None else f"{x:.3f} s"


def _poll_failures(gen: LoadGen, out: list[float]) -> dict[str, dict[str, float]]:
    out.append(float(gen.poll().failures))
    return {}


def _rate_of(times: list[float], cumulative: list[float]) -> list[float]:
    rates = [0.0]
    for i in range(1, min(len(times), len(cumulative))):
        dt = times[i] - times[i - 1]
        rates.append((cumulative[i] - cumulative[i - 1]) / dt if dt > 0 else 0.0)
    return rates[: len(times)] + [0.0] * (len(times) - len(rates))


register(
    Experiment(
        name="exhaustion",
        question="With a narrow port range and R conn/s to one destination, when does connect() "
        "fail, where does TIME_WAIT level off, and how many fail per second?",
        params=(
            Param(name="rate", default=200.0, min=1, max=5000, help="connections per second"),
            Param(name="duration_s", default=15.0, min=1, max=600, help="seconds of load"),
            Param(
                name="port_range",
                default="40000-40999",
                help="ip_local_port_range inside the namespace, LOW-HIGH",
            ),
            Param(name="tw_reuse", default=0, min=0, max=2, help="tcp_tw_reuse in the namespace"),
            Param(name="sample_every_s", default=0.5, min=0.05, max=10, help="sampling period"),
        ),
        run_fn=run_exhaustion,
        quick={"rate": 200.0, "duration_s": 3.0, "port_range": "40000-40199"},
    )
)


# -- tw-reuse -----------------------------------------------------------------------------------


def run_tw_reuse(p: dict[str, ParamValue], progress: Progress) -> LabResult:
    rate = float(p["rate"])
    duration = float(p["duration_s"])
    delay = int(p["delay_ms"])
    rng_text = _range_text(p)
    cases: list[tuple[str, int, int, int]] = [  # name, reuse, timestamps, delay
        ("reuse=0", 0, 1, delay),
        ("reuse=1", 1, 1, delay),
        ("reuse=2 (loopback)", 2, 1, delay),
        ("reuse=1 timestamps=0", 1, 0, delay),
        (f"reuse=1 delay={2 * delay}ms", 1, 1, 2 * delay),
    ]
    kernel: dict[str, dict[str, Any]] = {}
    model: dict[str, dict[str, Any]] = {}
    series = {}
    with contextlib.ExitStack() as stack:
        gens: dict[str, tuple[str, LoadGen, dict[str, int]]] = {}
        for name, reuse, ts, d in cases:
            ns = stack.enter_context(throwaway_netns())
            run_in_netns(
                ns,
                set_sysctls,
                {
                    "ip_local_port_range": rng_text,
                    "tcp_tw_reuse": str(reuse),
                    "tcp_timestamps": str(ts),
                    "tcp_tw_reuse_delay": str(d),
                },
            )
            gens[name] = (ns, LoadGen(ns, LoadSpec(rate=rate, duration=duration)), counters(ns))
        progress(f"tw-reuse: {len(cases)} namespaces, {rate:g} conn/s for {duration:g} s each")
        for _, gen, _ in gens.values():
            stack.callback(gen.stop)
            gen.start(delay=0.2)
        sampler = Sampler(
            {n: ns for n, (ns, _, _) in gens.items()},
            {"time_wait": lambda s: count_tw(s, dport=PORT)},
        )
        first = next(iter(gens.values()))[1]
        sampler.t0 = first.start_ns / 1e9
        sampler.every(0.25, duration)
        for name, (ns, gen, before) in gens.items():
            res = gen.wait(timeout=duration + 30)
            after = counters(ns)
            kernel[name] = {
                "connections": res.connections,
                "failures": res.failures,
                "tw_recycled": counter_delta(before, after, "TWRecycled"),
                "rate_per_s": round(res.connections / duration, 1),
            }
            series[f"kernel: {name}"] = sampler.series(name)
    for name, reuse, ts, d in cases:
        cfg = KernelConfig(
            ip_local_port_range=parse_range(rng_text),
            tcp_tw_reuse=reuse,
            tcp_timestamps=ts,
            tcp_tw_reuse_delay=d,
        )
        m = _flow(
            cfg,
            rate=rate,
            duration=from_seconds(duration),
            lifetime=from_seconds(LIFETIME_S),
            loopback=True,
            sample_every=SEC // 4,
        )
        model[name] = {
            "connections": m.connections,
            "failures": m.failures,
            "tw_recycled": m.counters["TWRecycled"],
            "rate_per_s": round(m.connections / duration, 1),
        }
        series[f"model: {name}"] = {"time_wait": m.series()["time_wait"]}
    rows = cmp.compare(
        kernel,
        model,
        ["connections", "tw_recycled"],
        notes={"connections": "TIME_WAIT length plays no part: reuse comes after the delay"},
    )
    usable = usable_ports(KernelConfig(ip_local_port_range=parse_range(rng_text)))
    on, off = kernel["reuse=1"], kernel["reuse=0"]
    verdict = (
        f"{usable} ports, {rate:g} conn/s offered for {duration:g} s on loopback: tcp_tw_reuse=1 "
        f"made {on['connections']:,} connections ({on['tw_recycled']:,} TIME_WAIT takeovers) "
        f"against {off['connections']:,} with reuse=0; reuse=2 counts loopback "
        f"({kernel['reuse=2 (loopback)']['connections']:,}); with timestamps off reuse does "
        f"nothing ({kernel['reuse=1 timestamps=0']['connections']:,}); doubling "
        f"tcp_tw_reuse_delay gives {kernel[cases[-1][0]]['connections']:,}."
    )
    return LabResult(
        experiment="tw-reuse",
        params=p,
        kernel=kernel,
        model=model,
        rows=rows,
        verdict=verdict,
        series=series,
    )


register(
    Experiment(
        name="tw-reuse",
        question="When does tcp_tw_reuse (0/1/2) let connect() take over a TIME_WAIT, and what "
        "do tcp_tw_reuse_delay and timestamps change?",
        params=(
            Param(
                name="rate", default=1000.0, min=1, max=5000, help="offered connections per second"
            ),
            Param(name="duration_s", default=5.5, min=1, max=120, help="seconds of load"),
            Param(name="port_range", default="40000-40099", help="ip_local_port_range, LOW-HIGH"),
            Param(
                name="delay_ms",
                default=1000,
                min=1,
                max=30000,
                help="tcp_tw_reuse_delay (ms); one variant uses twice this",
            ),
        ),
        run_fn=run_tw_reuse,
        quick={"duration_s": 2.5, "port_range": "40000-40049"},
    )
)


# -- max-tw-buckets -------------------------------------------------------------------------------


def _overflow_since(before: dict[str, int]) -> Probe:
    base = before.get("TCPTimeWaitOverflow", 0)
    return lambda s: float(s.counters.get("TCPTimeWaitOverflow", 0) - base)


def run_max_tw_buckets(p: dict[str, ParamValue], progress: Progress) -> LabResult:
    cap = int(p["cap"])
    n = int(p["connections"])
    rate = float(p["rate"])
    duration = n / rate + 0.5
    kernel: dict[str, dict[str, Any]] = {}
    model: dict[str, dict[str, Any]] = {}
    series = {}
    for name, buckets in ((f"max_tw_buckets={cap}", cap), ("default (131072)", 131072)):
        with throwaway_netns() as ns:
            run_in_netns(
                ns,
                set_sysctls,
                {"tcp_max_tw_buckets": str(buckets), "tcp_tw_reuse": "0"},
            )
            before = counters(ns)
            progress(f"max-tw-buckets: {name}, {n} connections at {rate:g}/s")
            spec = LoadSpec(rate=rate, duration=duration, count=n)
            with LoadGen(ns, spec) as gen:
                sampler = Sampler(
                    {"k": ns},
                    {
                        "time_wait": lambda s: count_tw(s),
                        "tcp_time_wait_overflow": _overflow_since(before),
                    },
                )
                sampler.t0 = gen.start_ns / 1e9
                sampler.every(0.25, duration)
                res = gen.wait(timeout=duration + 30)
            after = counters(ns)
            tw_series = sampler.values["k"]["time_wait"]
            kernel[name] = {
                "connections": res.connections,
                "time_wait_max": int(max(tw_series)),
                "sockstat_tw": after.get("sockstat.tw", 0),
                "tcp_time_wait_overflow": counter_delta(before, after, "TCPTimeWaitOverflow"),
                "tw_created": counter_delta(before, after, "TW"),
            }
            series[f"kernel: {name}"] = sampler.series("k")
        m = _flow(
            KernelConfig(tcp_max_tw_buckets=buckets, tcp_tw_reuse=0),
            rate=rate,
            duration=from_seconds(n / rate),
            lifetime=from_seconds(LIFETIME_S),
            loopback=True,
            sample_every=SEC // 4,
        )
        model[name] = {
            "connections": m.connections,
            "time_wait_max": max(m.time_wait),
            "sockstat_tw": m.time_wait[-1],
            "tcp_time_wait_overflow": m.counters["TCPTimeWaitOverflow"],
            "tw_created": m.counters["TW"],
        }
        series[f"model: {name}"] = {"time_wait": m.series()["time_wait"]}
    rows = cmp.compare(
        kernel, model, ["time_wait_max", "tcp_time_wait_overflow", "tw_created", "connections"]
    )
    k = kernel[f"max_tw_buckets={cap}"]
    verdict = (
        f"tcp_max_tw_buckets={cap}: {n} active closes left {k['time_wait_max']} TIME_WAIT "
        f"(capped) and TCPTimeWaitOverflow rose by {k['tcp_time_wait_overflow']}: each of those "
        f"connections skipped TIME_WAIT and its protection (no log line on 6.x)."
    )
    return LabResult(
        experiment="max-tw-buckets",
        params=p,
        kernel=kernel,
        model=model,
        rows=rows,
        verdict=verdict,
        series=series,
    )


register(
    Experiment(
        name="max-tw-buckets",
        question="What happens past tcp_max_tw_buckets: is TIME_WAIT capped and counted?",
        params=(
            Param(name="cap", default=100, min=0, max=100000, help="tcp_max_tw_buckets"),
            Param(name="connections", default=1000, min=1, max=100000, help="active closes"),
            Param(name="rate", default=500.0, min=1, max=5000, help="connections per second"),
        ),
        run_fn=run_max_tw_buckets,
        quick={"cap": 50, "connections": 300, "rate": 600.0},
    )
)


# -- bind-before-connect ---------------------------------------------------------------------------


def run_bind_before_connect(p: dict[str, ParamValue], progress: Progress) -> LabResult:
    ports = int(p["ports"])
    ndest = int(p["destinations"])
    lo = 40000
    dests = [(f"127.0.0.{10 + i}", PORT) for i in range(ndest)]
    kernel: dict[str, dict[str, Any]] = {}
    for mode in ("bind", "bind-no-port"):
        with throwaway_netns() as ns:
            run_in_netns(
                ns,
                set_sysctls,
                {"ip_local_port_range": f"{lo} {lo + ports - 1}", "tcp_tw_reuse": "0"},
            )
            progress(f"bind-before-connect: {mode}, {ports} ports, {ndest} destinations")
            spec = LoadSpec(
                dests=dests,
                bind=mode,
                source="127.0.0.1",
                count=2 * ports * ndest,
                duration=30.0,
                stop_on_failure=True,
            )
            with LoadGen(ns, spec) as gen:
                res = gen.wait(timeout=60)
                snap_tw = Sampler({"k": ns}, {"tw": lambda s: count_tw(s)})
                snap_tw.sample()
            failure = (
                "EADDRNOTAVAIL"
                if res.eaddrnotavail
                else "EADDRINUSE"
                if res.eaddrinuse
                else "other"
                if res.other_failures
                else None
            )
            kernel[mode] = {
                "capacity": res.connections,
                "first_failure": failure,
                "time_wait": int(snap_tw.values["k"]["tw"][-1]),
            }
    ms = get_scenario("bind-before-connect").run({"ports": ports, "destinations": ndest})
    model: dict[str, dict[str, Any]] = {}
    for mode, v in ms.variants.items():
        fails = v["failures"]
        model[mode] = {
            "capacity": v["capacity"],
            "first_failure": next(iter(fails)) if fails else None,
        }
    rows = cmp.compare(kernel, model, ["capacity", "first_failure"])
    verdict = (
        f"{ports} ports, {ndest} destinations: bind(ip, 0) before connect() made "
        f"{kernel['bind']['capacity']} connections before {kernel['bind']['first_failure']} "
        f"(one port per connection whatever the destination); IP_BIND_ADDRESS_NO_PORT made "
        f"{kernel['bind-no-port']['capacity']} before {kernel['bind-no-port']['first_failure']} "
        f"(ports shared across destinations)."
    )
    return LabResult(
        experiment="bind-before-connect",
        params=p,
        kernel=kernel,
        model=model,
        rows=rows,
        verdict=verdict,
    )


register(
    Experiment(
        name="bind-before-connect",
        question="Does bind(ip, 0) before connect() waste ports, and does "
        "IP_BIND_ADDRESS_NO_PORT fix it?",
        params=(
            Param(name="ports", default=200, min=2, max=20000, help="port range width"),
            Param(name="destinations", default=4, min=1, max=200, help="destination addresses"),
        ),
        run_fn=run_bind_before_connect,
        quick={"ports": 100, "destinations": 4},
    )
)


# -- who-closes-first (two hosts) ------------------------------------------------------------------

CLIENT_IP = "198.18.0.1"
SERVER_IP = "198.18.0.2"
HTTP_PORT = 80


def run_who_closes_first(p: dict[str, ParamValue], progress: Progress) -> LabResult:
    rate = float(p["rate"])
    duration = float(p["duration_s"])
    kernel: dict[str, dict[str, Any]] = {}
    model: dict[str, dict[str, Any]] = {}
    series = {}
    for name, client_first in (("client closes first", True), ("server closes first", False)):
        with throwaway_netns() as c_ns, throwaway_netns() as s_ns:
            veth_pair(c_ns, CLIENT_IP, s_ns, SERVER_IP)
            progress(f"who-closes-first: {name}, {rate:g} conn/s over a veth for {duration:g} s")
            with NetnsProcess(s_ns, serve, SERVER_IP, HTTP_PORT, not client_first):
                spec = LoadSpec(
                    dests=[(SERVER_IP, HTTP_PORT)],
                    rate=rate,
                    duration=duration,
                    local_server=False,
                    client_closes_first=client_first,
                )
                with LoadGen(c_ns, spec) as gen:
                    sampler = Sampler(
                        {"client": c_ns, "server": s_ns},
                        {"time_wait": lambda s: count_tw(s)},
                    )
                    sampler.t0 = gen.start_ns / 1e9
                    sampler.every(0.5, duration)
                    res = gen.wait(timeout=duration + 30)
                    sampler.sample()
            kernel[name] = {
                "connections": res.connections,
                "client_time_wait": int(sampler.values["client"]["time_wait"][-1]),
                "server_time_wait": int(sampler.values["server"]["time_wait"][-1]),
            }
            series[f"kernel: {name}"] = {
                "time_wait": sampler.series("client")["time_wait"],
                "server_time_wait": sampler.series("server")["time_wait"],
            }
        m = _flow(
            KernelConfig(),
            rate=rate,
            duration=from_seconds(duration),
            lifetime=from_seconds(0.0005),
            client_closes_first=client_first,
            sample_every=SEC // 2,
        )
        model[name] = {
            "connections": m.connections,
            "client_time_wait": m.time_wait[-1],
            "server_time_wait": m.server_time_wait[-1],
        }
        ms = m.series()
        series[f"model: {name}"] = {
            "time_wait": ms["time_wait"],
            "server_time_wait": (m.times, [float(v) for v in m.server_time_wait]),
        }
    rows = cmp.compare(kernel, model, ["client_time_wait", "server_time_wait", "connections"])
    c, s = kernel["client closes first"], kernel["server closes first"]
    verdict = (
        f"{rate:g} conn/s for {duration:g} s between two namespaces: when the client closes "
        f"first the client holds {c['client_time_wait']} TIME_WAIT (server {c['server_time_wait']}"
        f"); when the server closes first the server holds {s['server_time_wait']} and the client "
        f"{s['client_time_wait']}: TIME_WAIT lands on the active closer."
    )
    return LabResult(
        experiment="who-closes-first",
        params=p,
        kernel=kernel,
        model=model,
        rows=rows,
        verdict=verdict,
        series=series,
    )


register(
    Experiment(
        name="who-closes-first",
        question="Where does TIME_WAIT land when the client or the server closes first?",
        params=(
            Param(name="rate", default=200.0, min=1, max=3000, help="connections per second"),
            Param(name="duration_s", default=5.0, min=1, max=55, help="seconds (< 60 s)"),
        ),
        run_fn=run_who_closes_first,
        quick={"rate": 200.0, "duration_s": 2.0},
    )
)
