"""Timer-wheel rounding (kernel/time/timer.c calc_wheel_index()/calc_index())."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from timewait.model.timerwheel import fires_at, lvl_start
from timewait.units import MS, SEC


def test_level_starts_match_the_kernel() -> None:
    """LVL_START(1..4) = 63, 504, 4032, 32256 jiffies."""
    assert [lvl_start(n) for n in (1, 2, 3, 4)] == [63, 504, 4032, 32256]


def test_time_wait_at_hz250_fires_on_a_2048ms_bucket_boundary() -> None:
    """60 s = 15,000 jiffies at HZ=250 -> level 3, 512-jiffy buckets of 2.048 s."""
    t = fires_at(0, 60 * SEC, 250)
    assert t == 30 * 512 * 4 * MS  # ceil(15000/512)=30 -> bucket 30*512 jiffies = 61.44 s
    assert 60 * SEC < t <= 60 * SEC + 2048 * MS


def test_time_wait_lifetime_matches_the_measured_60_5_to_62_s() -> None:
    """simulators-and-tests.md section 6: 60.53, 61.94, 61.34, 60.74 s on 6.18.44, HZ=250."""
    for born in (650 * MS, 1250 * MS, 1850 * MS, 2450 * MS):
        life = fires_at(born, born + 60 * SEC, 250) - born
        assert 60 * SEC < life <= 62048 * MS


def test_timers_born_close_together_expire_at_the_same_instant() -> None:
    """Three TIME_WAITs born 0.6 s apart vanished at one instant in the measurement: expiries
    that fall in one 2.048 s bucket fire together (here 60.1, 60.7, 61.3 s -> 61.44 s)."""
    ends = {fires_at(b, b + 60 * SEC, 250) for b in (100 * MS, 700 * MS, 1300 * MS)}
    assert len(ends) == 1


def test_short_timer_fires_one_jiffy_late_at_level_0() -> None:
    """Level 0 rounds up by one jiffy (calc_index: (expires >> 0) + 1)."""
    assert fires_at(0, 40 * MS, 250) == 44 * MS


@given(st.integers(0, 10**12), st.integers(1, 200 * SEC), st.sampled_from([100, 250, 300, 1000]))
def test_never_early_and_late_by_at_most_one_bucket(armed: int, timeout: int, hz: int) -> None:
    t = fires_at(armed, armed + timeout, hz)
    assert t >= armed + timeout
    assert t - (armed + timeout) <= timeout // 7 + 2 * SEC // hz  # granularity <= ~12.5%


def test_calc_index_mean_delay_of_connection_timers() -> None:
    """K kernel/time/timer.c calc_index() rounds an expiry up to its level's next bucket; over
    an unknown jiffies phase a timer fires on average half a bucket after its whole-jiffy
    timeout: +2 ms for a 200 ms RTO (level 0), +16 ms for 1 s (level 1, 8-jiffy buckets),
    +128 ms for 3.2 s (level 2) at HZ=250 (probe rto-chain-whole-jiffies: 212, then 444 ms)."""
    from timewait.model.timerwheel import mean_fire_delay

    assert mean_fire_delay(200 * MS, 250) == 202 * MS
    assert mean_fire_delay(209_500_000, 250) == 214 * MS  # 53 jiffies, then half a tick
    assert mean_fire_delay(1 * SEC, 250) == 1016 * MS
    assert mean_fire_delay(3200 * MS, 250) == 3328 * MS
