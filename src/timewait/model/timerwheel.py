"""When a kernel timer really fires: the timer wheel's rounding (kernel/time/timer.c).

Theory of operation
-------------------
Since Linux 4.8 (commit 500462a9de65, the non-cascading wheel) a timer is filed in a bucket of
one of several levels; level n holds timers due between LVL_START(n) and LVL_START(n+1) jiffies
ahead, in buckets LVL_GRAN(n) = 8**n jiffies wide. `calc_index()` rounds the expiry *up* to the
next bucket boundary ("the timer wheel has to guarantee that a timer does not fire early"), so a
timer fires late by up to one bucket. For TIME_WAIT, armed for TCP_TIMEWAIT_LEN = 60 s = 15,000
jiffies at HZ=250, that is level 3 with 512-jiffy (2.048 s) buckets: the minisocket is killed
60-62 s after it was armed. Measured on 6.18.44 (HZ=250): lifetimes 60.53-61.94 s
(simulators-and-tests.md section 6) and 61.54 s in the lab's fin-timeout-myth run, while
sock_diag reports the armed time (59.997 s left).

`fires_at(armed_at, expires, hz)` gives that moment in model time. The jiffies clock starts at
model time 0 (a real kernel's phase is arbitrary), so results stay deterministic.
"""

from __future__ import annotations

from typing import Final

from timewait.units import SEC

LVL_CLK_SHIFT: Final = 3  # each level is 8x coarser
LVL_BITS: Final = 6  # 64 buckets per level
LVL_SIZE: Final = 1 << LVL_BITS


def lvl_start(n: int) -> int:
    """LVL_START(n): jiffies ahead from which a timer goes to level n."""
    return (LVL_SIZE - 1) << ((n - 1) * LVL_CLK_SHIFT)


def lvl_depth(hz: int) -> int:
    """LVL_DEPTH: 9 levels when HZ > 100, else 8."""
    return 9 if hz > 100 else 8


def fires_at(armed_at: int, expires: int, hz: int) -> int:
    """Model time (ns) at which a timer armed at `armed_at` for `expires` actually fires."""
    tick = SEC // hz
    clk = armed_at // tick
    exp = -(-expires // tick)  # the timeout in jiffies, rounded up (msecs_to_jiffies())
    delta = exp - clk
    lvl = 0
    while lvl < lvl_depth(hz) - 1 and delta >= lvl_start(lvl + 1):
        lvl += 1
    shift = lvl * LVL_CLK_SHIFT
    bucket = ((exp >> shift) + 1) << shift  # calc_index(): round up to the level's granularity
    return bucket * tick


def level_of(ticks: int, hz: int) -> int:
    """The wheel level a timer `ticks` jiffies ahead is filed in (calc_wheel_index())."""
    lvl = 0
    while lvl < lvl_depth(hz) - 1 and ticks >= lvl_start(lvl + 1):
        lvl += 1
    return lvl


def mean_fire_delay(timeout: int, hz: int) -> int:
    """How long after arming (ns), on average over the unknown jiffies phase, a timer armed
    `timeout` ns ahead fires: the timeout in whole jiffies (usecs_to_jiffies() rounds up),
    then calc_index() rounds the expiry up to the next bucket of its level, 1 to 8**level
    jiffies later, while arming happened somewhere inside the current jiffy. Level 0 (under
    63 jiffies: delayed ACKs, a 200 ms RTO): half a tick late on average; level 1 (up to 511
    jiffies, 2 s at HZ=250: backed-off RTOs, the 1 s SYN timer): 16 ms. The connection timers
    use this mean, not `fires_at()`'s fixed phase: the kernel's phase is unknown to the model,
    and the mean halves the worst error."""
    tick = SEC // hz
    ticks = -(-timeout // tick)
    gran = 1 << (level_of(ticks, hz) * LVL_CLK_SHIFT)
    return ticks * tick + gran * tick // 2
