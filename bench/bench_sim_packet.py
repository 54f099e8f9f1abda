"""Packet-level simulator speed: segment events per second for a churn workload, compiled
(mypyc, what `make` builds) and pure Python, against a bare heapq loop, all in the same run.

Target (issue 3 item 7): >= 200,000 segment events/s. The pure-Python figure runs the same
sources without their extensions in a child interpreter (timewait.compiled explains the build).
"""

from __future__ import annotations

import heapq
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timewait import compiled
from timewait.model.host import Host
from timewait.sim.link import LinkParams
from timewait.sim.network import Network
from timewait.sim.workloads import RequestClient, Server
from timewait.units import MS, SEC, US

CONNECTIONS = 5_000  # 10 segments each: SYN, SYN-ACK, ACK, request, response, FIN/ACK pairs
RUNS = 3


def heapq_events_per_s(n: int = 500_000) -> float:
    h: list[tuple[int, int, object]] = []
    t0 = time.perf_counter()
    for i in range(n):
        heapq.heappush(h, (i * 7 % 1000, i, None))
    while h:
        heapq.heappop(h)
    return n / (time.perf_counter() - t0)


def churn(n: int = CONNECTIONS) -> Network:
    net = Network(rng=random.Random(1), link=LinkParams(delay=50 * US))
    c = net.add_host(Host(name="c", addrs=["198.18.0.1"], rng=random.Random(2)))
    s = net.add_host(Host(name="s", addrs=["198.18.0.2"], rng=random.Random(3)))
    Server(net, s, port=80)
    RequestClient(net, c, dests=[("198.18.0.2", 80)], interval=1 * MS, count=n)
    return net


def churn_rates(runs: int = RUNS) -> tuple[list[float], int, int]:
    """Segment events/s of `runs` fresh runs; also segments and engine events of one run."""
    rates = []
    segs = events = 0
    for _ in range(runs):
        net = churn()
        t0 = time.perf_counter()
        net.run(70 * SEC)
        dt = time.perf_counter() - t0
        assert net.capture is not None
        segs, events = len(net.capture), net.engine.events
        rates.append(segs / dt)
    return rates, segs, events


def pure_python_rates() -> list[float]:
    """The same measurement on the sources without their extensions, in a child interpreter."""
    src_root = Path(compiled.__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="timewait-pure-") as tmp:
        shutil.copytree(
            src_root, Path(tmp) / "timewait", ignore=shutil.ignore_patterns("*.so", "__pycache__")
        )
        env = {**os.environ, "PYTHONPATH": tmp, "PYTHONDONTWRITEBYTECODE": "1"}
        out = subprocess.run(
            [sys.executable, __file__, "--json"], env=env, capture_output=True, text=True,
            check=True,
        )  # fmt: skip
    data = json.loads(out.stdout)
    assert data["build"] == "pure Python", data["build"]
    return list(data["rates"])


def main() -> list[str]:
    ref = heapq_events_per_s()
    rates, segs, events = churn_rates()
    rate = statistics.median(rates)
    pure = statistics.median(pure_python_rates())
    verdict = "met" if rate >= 200_000 else "NOT met"
    return [
        f"bare heapq loop:              {ref / 1e6:6.2f} M events/s (reference)",
        f"packet churn, {compiled.describe()}: {rate:10,.0f} segment events/s "
        f"(median of {RUNS}; {segs:,} segments, {events:,} engine events; "
        f"target 200,000/s: {verdict})",
        f"packet churn, pure Python:    {pure:10,.0f} segment events/s "
        f"(same sources, no extensions; compiled/pure {rate / pure:.1f}x)",
        f"ratio to the bare heapq loop: compiled {rate / ref:.3f}, pure {pure / ref:.3f}",
    ]


if __name__ == "__main__":
    if "--json" in sys.argv:
        r, _, _ = churn_rates()
        print(json.dumps({"build": compiled.describe(), "rates": r}))
    else:
        for line in main():
            print(line)
