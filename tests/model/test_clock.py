"""Keyed clocks (K net/core/secure_seq.c): ISN, timestamp offset, port search start."""

from __future__ import annotations

import random

from timewait.model.clock import HostClocks, tsval
from timewait.model.segment import FourTuple
from timewait.units import MS, SEC

FT = FourTuple("198.18.0.1", 40000, "198.18.0.2", 80)


def clocks(seed: int = 1) -> HostClocks:
    return HostClocks.from_rng(random.Random(seed))


def test_isn_advances_with_the_64ns_clock() -> None:
    """seq_scale(): ns >> 6, so one second moves the ISN by 15,625,000."""
    c = clocks()
    assert (c.isn(FT, SEC) - c.isn(FT, 0)) % 2**32 == SEC >> 6


def test_ts_offset_is_per_four_tuple_and_stable_across_incarnations() -> None:
    """RFC 7323 §5.8: the same offset for every incarnation of a four-tuple (tcp_timestamps=1),
    none with tcp_timestamps=2."""
    c = clocks()
    assert c.ts_offset(FT, 1) == c.ts_offset(FT, 1)
    assert c.ts_offset(FT, 1) != c.ts_offset(FT._replace(lport=40001), 1)
    assert c.ts_offset(FT, 2) == 0
    assert tsval(5 * MS, 10) == 15


def test_port_search_start_reshuffles_at_a_10s_boundary_with_a_seeded_phase() -> None:
    """secure_ipv4_port_ephemeral() hashes jiffies / (10 * HZ): constant within a 10 s window,
    new after it; where the window starts depends on the host (its jiffies phase)."""
    c = clocks()
    phase = c.jiffies_phase
    assert 0 <= phase < 10 * SEC
    start = 10 * SEC - phase  # the first boundary after model time 0
    off = c.port_offset("198.18.0.1", "198.18.0.2", 80, start)
    assert c.port_offset("198.18.0.1", "198.18.0.2", 80, start + 10 * SEC - 1) == off
    assert c.port_offset("198.18.0.1", "198.18.0.2", 80, start + 10 * SEC) != off
    assert c.port_offset("198.18.0.1", "198.18.0.2", 80, start - 1) != off
    assert len({clocks(s).jiffies_phase for s in range(20)}) > 15  # varies with the seed
