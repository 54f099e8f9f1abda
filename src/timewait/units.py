"""Time in the core is an integer count of nanoseconds; convert only at the edges.

Integers keep every comparison exact (no "almost equal" in tests) and cover every clock the kernel
uses: the 64 ns ISN clock, the 1 ms timestamp clock and the 60 s TIME_WAIT timer.
"""

from __future__ import annotations

from typing import Final

NS: Final = 1
US: Final = 1_000
MS: Final = 1_000_000
SEC: Final = 1_000_000_000


def seconds(ns: int) -> float:
    """Nanoseconds -> float seconds, for display only."""
    return ns / SEC


def from_seconds(s: float) -> int:
    """Float seconds (from a user or a file) -> integer nanoseconds."""
    return round(s * SEC)
