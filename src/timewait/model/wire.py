"""Wire: the smallest deterministic driver for model hosts, used by tests and the demo.

It joins hosts by address, delivers every segment after a fixed one-way delay (optionally
dropping the ones a filter picks), runs host timers when due, and records a capture. Events at the
same time run in the order they were scheduled (a heap of (time, seq, ...), as in SimPy), so the
same inputs give the same capture byte for byte. The full simulator (timewait.sim) adds jitter,
loss models and workloads on top of the same host interface.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

from timewait.errors import ModelError
from timewait.model.host import Host
from timewait.model.segment import Segment, is_loopback
from timewait.units import US


@dataclass(frozen=True, slots=True)
class Captured:
    """One segment on the wire: when it was sent, and whether the filter dropped it."""

    time: int
    segment: Segment
    dropped: bool


class Wire:
    """Connects hosts; `run(until)` advances model time to `until`."""

    def __init__(
        self,
        *hosts: Host,
        delay: int = 50 * US,
        drop: Callable[[Segment, int], bool] | None = None,
    ) -> None:
        self.hosts = hosts
        self.delay = delay
        self.drop = drop
        self.now = 0
        self.capture: list[Captured] = []
        self._arrivals: list[tuple[int, int, Segment, Host]] = []
        self._seq = 0

    def _route(self, seg: Segment, sender: Host) -> Host | None:
        if is_loopback(seg.dst):
            return sender  # loopback never leaves the namespace
        for h in self.hosts:
            if h.owns(seg.dst):
                return h
        return None

    def flush(self) -> None:
        """Move every host's queued output onto the wire."""
        for h in self.hosts:
            for seg in h.segments_to_send(self.now):
                dropped = bool(self.drop and self.drop(seg, self.now))
                self.capture.append(Captured(self.now, seg, dropped))
                if not dropped:
                    self._seq += 1
                    heapq.heappush(self._arrivals, (self.now + self.delay, self._seq, seg, h))

    def next_time(self) -> int | None:
        times = [t for h in self.hosts if (t := h.next_deadline()) is not None]
        if self._arrivals:
            times.append(self._arrivals[0][0])
        return min(times) if times else None

    def run(self, until: int) -> None:
        """Deliver segments and fire timers up to and including `until` (ns)."""
        if until < self.now:
            raise ModelError(f"run(until={until}) is before now={self.now}: pass a later time")
        self.flush()
        while (t := self.next_time()) is not None and t <= until:
            self.now = max(self.now, t)
            while self._arrivals and self._arrivals[0][0] <= self.now:
                _, _, seg, sender = heapq.heappop(self._arrivals)
                host = self._route(seg, sender)
                if host is not None:
                    host.receive(seg, self.now)
                self.flush()
            for h in self.hosts:
                d = h.next_deadline()
                if d is not None and d <= self.now:
                    h.on_timer(self.now)
            self.flush()
        self.now = until
