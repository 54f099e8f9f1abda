"""Model speed: full packet-level connections through two model hosts, against a bare heapq loop.

Reference (simulators-and-tests.md 4.2): a bare heapq loop does ~2.4 M events/s in CPython 3.11;
every segment delivery here is one such event plus the TCP work the model does for it.
"""

from __future__ import annotations

import heapq
import random
import time

from timewait.config import KernelConfig
from timewait.model.host import Host
from timewait.model.wire import Wire
from timewait.units import MS


def heapq_events_per_s(n: int = 500_000) -> float:
    h: list[tuple[int, int]] = []
    t0 = time.perf_counter()
    for i in range(n):
        heapq.heappush(h, (i * 7 % 1000, i))
    while h:
        heapq.heappop(h)
    return n / (time.perf_counter() - t0)


def model_connections(n: int = 2_000) -> tuple[float, float]:
    cfg = KernelConfig(tcp_tw_reuse=0)
    client = Host(name="c", addrs=["198.18.0.1"], config=cfg, rng=random.Random(1))
    server = Host(name="s", addrs=["198.18.0.2"], config=cfg, rng=random.Random(2))
    wire = Wire(client, server, delay=50_000)
    lfd = server.socket()
    server.bind(lfd, "0.0.0.0", 80, 0)
    server.listen(lfd, 0)
    t0 = time.perf_counter()
    for _ in range(n):
        fd = client.socket()
        client.connect(fd, "198.18.0.2", 80, wire.now)
        wire.run(wire.now + MS)
        sfd = server.accept(lfd)
        assert sfd is not None
        client.close(fd, wire.now)
        wire.run(wire.now + MS)
        server.close(sfd, wire.now)
        wire.run(wire.now + MS)
    dt = time.perf_counter() - t0
    return n / dt, len(wire.capture) / dt


def main() -> list[str]:
    ref = heapq_events_per_s()
    conns, segs = model_connections()
    return [
        f"bare heapq loop:            {ref / 1e6:6.2f} M events/s (reference)",
        f"model, full connections:    {conns:8.0f} connections/s "
        f"({segs:,.0f} segment events/s, ratio to heapq {segs / ref:.3f})",
    ]
