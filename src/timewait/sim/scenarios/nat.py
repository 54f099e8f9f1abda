"""NAT scenarios: the conntrack TIME_WAIT pool of a masquerading gateway (sim/nat.py).

snat-exhaustion: clients behind one translated address churn connections to one server. Three
variants answer "when does the NAT run out, and what then?":
* `Linux < 6.5` (no eviction): every held port blocks. Closed forms (sim/nat.py):
  capacity = ports / (ct_time_wait + lifetime); when R > capacity the first SYN is dropped at
  t = ports / R; entries level at min(R x (ct_time_wait + lifetime), ports); past the fill every
  SYN is dropped until the first entries expire, then drops/s = R - capacity.
* `Linux 6.5+` (the kernel measured, 6.18): a SYN that finds the pool full evicts a closing
  entry when its sequence number is ahead (model/nat.py); the pool still fills at ports / R and
  stays full of TIME_WAIT entries, but few SYNs drop.
* `held open`: the same rate with connections that stay open for the whole run (ESTABLISHED
  entries cannot be evicted): the classic hard limit, on every kernel.
"""

from __future__ import annotations

import random
from typing import Any

from timewait.model.nat import NatGateway
from timewait.sim.nat import NatWorkload, capacity, simulate_nat
from timewait.sim.scenario import (
    Param,
    ParamValue,
    Scenario,
    ScenarioResult,
    Series,
    register,
)
from timewait.sim.scenarios.flow import parse_range
from timewait.units import SEC, from_seconds


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def run_snat_exhaustion(p: dict[str, ParamValue], seed: int) -> ScenarioResult:
    lo, hi = parse_range(str(p["nat_ports"]))
    ports = hi - lo + 1
    rate = float(p["rate"])
    dur_s = float(p["duration_s"])
    tw_s = float(p["ct_time_wait_s"])
    life_s = float(p["lifetime_ms"]) / 1000
    clients = int(p["clients"])
    cap = capacity(ports, life_s, tw_s)
    variants: dict[str, dict[str, Any]] = {}
    series: dict[str, Series] = {}
    cases = (
        ("Linux < 6.5 (no eviction)", False, life_s),
        ("Linux 6.5+ (evicts closing entries)", True, life_s),
        ("held open (ESTABLISHED)", True, dur_s + 1),
    )
    for name, evict, life in cases:
        gw = NatGateway(rng=random.Random(seed), port_range=(lo, hi),
                        time_wait=from_seconds(tw_s), evict=evict)  # fmt: skip
        wl = NatWorkload(rate=rate, duration=from_seconds(dur_s), clients=clients,
                         lifetime=from_seconds(life), sample_every=SEC // 2)  # fmt: skip
        res = simulate_nat(gw, wl, rng=random.Random(seed + 1))
        fd = res.first_drop / SEC if res.first_drop is not None else None
        full = res.pool_full / SEC if res.pool_full is not None else None
        cap_v = cap if life == life_s else ports / (life + tw_s)
        onset = ports / rate if rate > cap_v and ports / rate < tw_s + life else None
        after = full if full is not None else dur_s
        window_end = min(dur_s, tw_s + life) if not evict or life > dur_s else dur_s
        v: dict[str, Any] = {
            "nat_ports": ports,
            "connections": res.connections,
            "drops": res.drops,
            "evicted": res.evicted,
            "pool_full_s": _r(full),
            "first_drop_s": _r(fd),
            "expected_onset_s": _r(onset),
            "drops_per_s": _r(res.drops_per_s_after(after, window_end), 1),
            "time_wait_entries": res.time_wait[-1] if res.time_wait else 0,
            "entries": res.entries[-1] if res.entries else 0,
            "expected_entries": round(min(rate * (tw_s + life), ports)),
            "capacity_per_s": _r(cap_v),
        }
        variants[name] = v
        series[name] = {
            "time_wait": (res.times, [float(x) for x in res.time_wait]),
            "entries": (res.times, [float(x) for x in res.entries]),
            "drops_per_s": (res.times, res.drops_per_s),
        }
    old, new, held = variants.values()
    verdict = (
        f"{ports} NAT ports, {rate:g} conn/s from {clients} clients: capacity without eviction "
        f"is ports / ({tw_s:g} s + lifetime) = {cap:,.1f}/s. Before Linux 6.5 the pool fills "
        f"at {old['pool_full_s']} s (ports / R = {ports / rate:.2f} s) and then drops "
        f"{old['drops_per_s']}/s; 6.5+ evicts closing entries, so the pool stays full of "
        f"{new['time_wait_entries']:,} TIME_WAIT entries but drops only {new['drops']:,} SYNs; "
        f"held-open connections cannot be evicted: first drop at {held['first_drop_s']} s, "
        f"then {held['drops_per_s']}/s."
    )
    return ScenarioResult(scenario="snat-exhaustion", params=p, variants=variants,
                          verdict=verdict, series=series)  # fmt: skip


register(
    Scenario(
        name="snat-exhaustion",
        question="When do clients behind a masquerading gateway run out of translated ports "
        "toward one server, and what does the conntrack TIME_WAIT (120 s) have to do with it?",
        params=(
            Param(name="rate", default=50.0, min=0.1, max=100_000, help="conn/s, all clients"),
            Param(name="duration_s", default=30.0, min=1, max=100_000, help="simulated seconds"),
            Param(name="nat_ports", default="40000-40199", help="the NAT rule's port range"),
            Param(name="clients", default=3, min=1, max=1000, help="client namespaces"),
            Param(
                name="ct_time_wait_s",
                default=120.0,
                min=1,
                max=3600,
                help="net.netfilter.nf_conntrack_tcp_timeout_time_wait",
            ),
            Param(
                name="lifetime_ms",
                default=1.0,
                min=0,
                max=3_600_000,
                help="ms from connect() to the final ACK",
            ),
        ),
        run_fn=run_snat_exhaustion,
    )
)
