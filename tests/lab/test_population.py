"""The mass TIME_WAIT generator makes exactly what it says (the benchmark relies on it)."""

from __future__ import annotations

import numpy as np
import pytest

from timewait.lab.namespaces import throwaway_netns
from timewait.lab.population import MASS_SYSCTLS, mass_time_wait
from timewait.live.capture import capture
from timewait.snapshot import TCP_TIME_WAIT

from .helpers import need_root, ss_lines

pytestmark = pytest.mark.root


def test_mass_time_wait_makes_exactly_n_client_time_waits() -> None:
    need_root()
    with throwaway_netns() as ns:
        mass_time_wait(ns, 6_000, procs=2, ports_per_proc=3)
        snap = capture(netns=ns)
        tw = snap.sockets[snap.sockets["state"] == TCP_TIME_WAIT]
        assert len(tw) == len(ss_lines(ns, "time-wait")) == 6_000
        assert snap.counters["TCPTimeWaitOverflow"] == 0
        assert snap.config.tcp_max_tw_buckets == int(MASS_SYSCTLS["tcp_max_tw_buckets"])
        # client side: the remote ports are the 6 listeners, 1,000 TIME_WAITs each
        ports, counts = np.unique(tw["dport"], return_counts=True)
        assert ports.tolist() == [20000, 20001, 20002, 20003, 20004, 20005]
        assert counts.tolist() == [1_000] * 6
