"""Load generator throughput: lab.loadgen (several processes) vs a single-process socket loop.

Both run flat out for a few seconds on the loopback of a fresh namespace (tcp_tw_reuse=0 and a
high tcp_max_tw_buckets, so every connection leaves a real TIME_WAIT); the reference is the
plainest possible Python loop (connect, accept, close, close) in one process, measured in the
same run. Issue 5 asks for >= 10,000 connections per second. Needs root.
"""

from __future__ import annotations

import os
import socket
import time

DURATION = 3.0


def _reference_loop(duration: float) -> float:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 30999))
    ls.listen(4096)
    n = 0
    end = time.monotonic() + duration
    t0 = time.monotonic()
    while time.monotonic() < end:
        c = socket.socket()
        c.connect(("127.0.0.1", 30999))
        s, _ = ls.accept()
        c.close()
        s.close()
        n += 1
    return n / (time.monotonic() - t0)


def main() -> list[str]:
    if os.geteuid() != 0:
        return ["skipped: needs root (network namespaces)"]
    from timewait.lab.experiments.base import set_sysctls
    from timewait.lab.loadgen import LoadSpec, run_load
    from timewait.lab.namespaces import run_in_netns, throwaway_netns

    lines = []
    sysctls = {"tcp_tw_reuse": "0", "tcp_max_tw_buckets": "2000000"}
    with throwaway_netns() as ns:
        run_in_netns(ns, set_sysctls, sysctls)
        ref = run_in_netns(ns, _reference_loop, DURATION)
    lines.append(f"reference single-process socket loop: {ref:,.0f} conn/s")
    for procs in (1, 2, 4):
        with throwaway_netns() as ns:
            run_in_netns(ns, set_sysctls, sysctls)
            res = run_load(ns, LoadSpec(procs=procs, duration=DURATION))
        ok = "ok" if res.rate >= 10_000 else "BELOW 10k/s"
        lines.append(
            f"loadgen procs={procs}: {res.rate:,.0f} conn/s sustained over {res.elapsed_s:.1f} s "
            f"({res.connections:,} connections, {res.failures} failures), "
            f"{res.rate / ref:.2f}x the reference [{ok}]"
        )
    return lines


if __name__ == "__main__":
    for line in main():
        print(line)
