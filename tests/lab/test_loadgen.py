"""The load generator: paced schedules, EADDRNOTAVAIL accounting, bind modes, throughput."""

from __future__ import annotations

import pytest

from timewait.lab.experiments.base import set_sysctls
from timewait.lab.loadgen import LoadSpec, run_load
from timewait.lab.namespaces import run_in_netns, throwaway_netns

from .helpers import need_root

pytestmark = pytest.mark.root


def test_paced_rate_makes_exactly_rate_times_duration_attempts() -> None:
    need_root()
    with throwaway_netns() as ns:
        res = run_load(ns, LoadSpec(rate=500, duration=1.0))
    assert res.connections == 500 and res.failures == 0


def test_narrow_range_fails_with_eaddrnotavail_after_usable_ports() -> None:
    need_root()
    with throwaway_netns() as ns:
        run_in_netns(ns, set_sysctls, {"ip_local_port_range": "40000 40009", "tcp_tw_reuse": "0"})
        res = run_load(ns, LoadSpec(rate=100, duration=0.5))
    assert res.connections == 10 and res.eaddrnotavail == 40
    assert res.first_failure_s == pytest.approx(0.1, abs=0.01)


def test_bind_zero_runs_out_with_eaddrinuse_and_stops_on_failure() -> None:
    need_root()
    with throwaway_netns() as ns:
        run_in_netns(ns, set_sysctls, {"ip_local_port_range": "40000 40009", "tcp_tw_reuse": "0"})
        res = run_load(ns, LoadSpec(bind="bind", count=100, duration=5, stop_on_failure=True))
    assert res.connections == 10 and res.eaddrinuse == 1


def test_server_closes_first_leaves_no_client_time_wait() -> None:
    need_root()
    from timewait.lab.experiments.base import count_tw
    from timewait.live.capture import capture

    with throwaway_netns() as ns:
        run_load(ns, LoadSpec(count=50, duration=5, client_closes_first=False))
        snap = capture(netns=ns)
    assert count_tw(snap, sport=20000) == 50 and count_tw(snap, dport=20000) == 0


def test_flat_out_counts_every_connection_it_made() -> None:
    """Flat out with four processes: each connection it counts is a TIME_WAIT in the namespace.
    Its speed (issue 5 item 4: 10,000/s) is a benchmark's question: bench/bench_loadgen.py."""
    need_root()
    from timewait.lab.experiments.base import count_tw
    from timewait.live.capture import capture

    with throwaway_netns() as ns:
        cfg = {
            "tcp_tw_reuse": "0",
            "tcp_max_tw_buckets": "1000000",
            "ip_local_port_range": "1024 65535",
        }
        run_in_netns(ns, set_sysctls, cfg)
        res = run_load(ns, LoadSpec(procs=4, duration=1.0))
        snap = capture(netns=ns)
    assert res.failures == 0 and res.connections > 0
    assert count_tw(snap) == res.connections  # every worker its own server port
