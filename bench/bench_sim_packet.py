"""Packet-level simulator speed: segment events per second for a churn workload, against a bare
heapq loop measured in the same run (simulators-and-tests.md 4.2: ~2.4 M events/s in CPython).

Target (issue 3 item 7): >= 200,000 segment events/s. The split below shows how much of the time
is the model (Host.receive / on_timer and socket calls) and how much the simulator's own layers.
"""

from __future__ import annotations

import cProfile
import heapq
import pstats
import random
import time

from timewait.model.host import Host
from timewait.sim.link import LinkParams
from timewait.sim.network import Network
from timewait.sim.workloads import RequestClient, Server
from timewait.units import MS, SEC, US


def heapq_events_per_s(n: int = 500_000) -> float:
    h: list[tuple[int, int, object]] = []
    t0 = time.perf_counter()
    for i in range(n):
        heapq.heappush(h, (i * 7 % 1000, i, None))
    while h:
        heapq.heappop(h)
    return n / (time.perf_counter() - t0)


def churn(n: int = 5_000) -> Network:
    net = Network(rng=random.Random(1), link=LinkParams(delay=50 * US))
    c = net.add_host(Host(name="c", addrs=["198.18.0.1"], rng=random.Random(2)))
    s = net.add_host(Host(name="s", addrs=["198.18.0.2"], rng=random.Random(3)))
    Server(net, s, port=80)
    RequestClient(net, c, dests=[("198.18.0.2", 80)], interval=1 * MS, count=n)
    return net


def main() -> list[str]:
    ref = heapq_events_per_s()
    net = churn()
    t0 = time.perf_counter()
    net.run(70 * SEC)
    dt = time.perf_counter() - t0
    assert net.capture is not None
    segs = len(net.capture)
    rate = segs / dt
    # Where the time goes (a second, profiled run; profiling slows both parts alike).
    prof = cProfile.Profile()
    net2 = churn()
    prof.enable()
    net2.run(70 * SEC)
    prof.disable()
    st = pstats.Stats(prof)
    total = max(st.total_tt, 1e-9)  # type: ignore[attr-defined]
    model = 0.0
    for (path, _, fn), (_, _, _, cum, _) in st.stats.items():  # type: ignore[attr-defined]
        if path.endswith("model/host.py") and fn in (
            "receive", "on_timer", "connect", "close", "send", "socket", "accept", "recv",
            "events", "segments_to_send",
        ):  # fmt: skip
            model += cum
    return [
        f"bare heapq loop:              {ref / 1e6:6.2f} M events/s (reference)",
        f"packet churn (5,000 conns):   {rate:10,.0f} segment events/s "
        f"({net.engine.events:,} engine events, ratio to heapq {rate / ref:.3f}; "
        f"target 200,000/s: {'met' if rate >= 200_000 else 'NOT met'})",
        f"time in the model (Host calls): {model / total:.0%}; simulator layers: "
        f"{1 - model / total:.0%}",
    ]


if __name__ == "__main__":
    for line in main():
        print(line)
