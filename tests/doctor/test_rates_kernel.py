"""The live doctor's churn is the rate now, measured on the kernel (issue 17 item 3).

After a burst, one snapshot's Little's law averaged the burst over a minute (5-10x below the
real rate while it ran) and its timers kept promising an ETA after it had ended, next to an OK
verdict. The live doctor now reads the TcpExt TW counter around its snapshot: during steady
churn it reports that churn, after the burst it reports ~0 and no ETA, and it never prints OK
beside a warning about the same ports.
"""

from __future__ import annotations

import time

import pytest

from timewait.doctor import diagnose
from timewait.lab.experiments.base import set_sysctls
from timewait.lab.loadgen import LoadGen, LoadSpec, run_load
from timewait.lab.namespaces import run_in_netns, throwaway_netns
from timewait.live.capture import capture

from ..lab.helpers import need_root

pytestmark = pytest.mark.root

SYSCTLS = {"ip_local_port_range": "40000 41999", "tcp_tw_reuse": "0"}  # 2,000 ports


def test_churn_during_steady_load_is_the_offered_rate() -> None:
    need_root()
    with throwaway_netns() as ns:
        run_in_netns(ns, set_sysctls, SYSCTLS)
        spec = LoadSpec(dests=(("127.0.0.1", 20000),), rate=200.0, duration=30.0)
        with LoadGen(ns, spec) as gen:
            gen.start()
            while gen.poll().connections < 300:  # 1.5 s of load: the timers hold recent TIME_WAITs
                time.sleep(0.01)
            d = diagnose(capture(netns=ns, rate_window=True))
        a = d.analysis
        assert a.churn_method == "tw_counter" and a.rate_window_s is not None
        assert a.churn_per_s == pytest.approx(200.0, rel=0.15)
        (dest,) = a.destinations(1)
        assert dest.churn_per_s == pytest.approx(200.0, rel=0.15)


def test_after_a_burst_churn_is_zero_and_nothing_contradicts() -> None:
    need_root()
    with throwaway_netns() as ns:
        run_in_netns(ns, set_sysctls, SYSCTLS)
        burst = run_load(ns, LoadSpec(dests=(("127.0.0.1", 20000),), count=800))
        assert burst.connections == 800  # 40 % of the range, all TIME_WAIT, all young
        live = diagnose(capture(netns=ns, rate_window=True))
        one = diagnose(capture(netns=ns))
    a = live.analysis
    assert a.churn_per_s < 20  # the burst is over (a straggler at most)
    (dest,) = a.destinations(1)
    assert dest.eta_s is None  # not filling any more
    ids = {f.id for f in live.findings}
    assert "port-pressure" not in ids and "ports-healthy" in ids
    # One snapshot still sees the burst in its timers; it says so, and never adds OK to it.
    one_ids = {f.id: f for f in one.findings}
    if "port-pressure" in one_ids:
        assert "ports-healthy" not in one_ids
        assert "one snapshot's TIME_WAIT timers" in one_ids["port-pressure"].title
