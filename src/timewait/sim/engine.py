"""The discrete-event core: one heap of (time, priority, seq, callback, args), integer ns time.

Theory of operation
-------------------
The engine is SimPy's `Environment` reduced to callbacks (STYLE.md rule 7; SimPy
`src/simpy/core.py`): `schedule()` pushes `(time, priority, seq, fn, args)` on a heap, `step()`
pops the earliest entry, sets `now` and calls `fn(*args)`. `seq` is a counter, so entries at
the same time and priority run in the order they were scheduled; nothing else (no hash order,
no wall clock, no global RNG) decides the order, which is why the same seed and inputs give the
same results and trace byte for byte.

An exception raised by a callback propagates out of `step()`/`run()` unchanged and leaves the
engine stopped at that event's time (SimPy: a failed event that nobody defused crashes the
run). Nothing is swallowed.

`FifoTimers` is the fast path for delays of one constant length (simulators-and-tests.md 4.2,
technique 2): when every entry is `now + d` for the same `d`, insertion order is expiry order,
so entries go in a deque and only the head sits in the heap. Links with a fixed one-way delay
use it for every delivery.
"""

from __future__ import annotations

import gc
import heapq
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from timewait.errors import TimewaitError

# Named priorities, as SimPy's URGENT/NORMAL: at equal times URGENT entries run first.
URGENT: Final = 0
NORMAL: Final = 1
LATE: Final = 2  # after everything else due at the same instant (samplers, end-of-run probes)


class SimulationError(TimewaitError):
    """The engine was driven in a way that has no meaning (a bug in the caller)."""


class EmptySchedule(SimulationError):
    """step() was called with nothing scheduled."""


class Engine:
    """Deterministic event loop. `now` is read-only integer nanoseconds."""

    __slots__ = ("_cancelled", "_heap", "_now", "_seq", "events")

    def __init__(self, start: int = 0) -> None:
        self._now = start
        self._heap: list[tuple[int, int, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = 0
        self._cancelled: set[int] = set()
        self.events = 0  # callbacks run so far

    @property
    def now(self) -> int:
        return self._now

    def schedule(
        self,
        fn: Callable[..., Any],
        *args: Any,
        at: int | None = None,
        delay: int | None = None,
        priority: int = NORMAL,
    ) -> int:
        """Run `fn(*args)` at absolute time `at` or after `delay` ns (exactly one of them).

        Returns an id for `cancel()`. Raises SimulationError for a time before `now` or a
        negative delay (SimPy's Timeout refuses negative delays too).
        """
        if (at is None) == (delay is None):
            raise SimulationError("schedule() needs exactly one of at= or delay=")
        if delay is not None:
            if delay < 0:
                raise SimulationError(f"schedule(delay={delay}): negative delay")
            at = self._now + delay
        assert at is not None
        if at < self._now:
            raise SimulationError(f"schedule(at={at}) is before now={self._now}")
        self._seq += 1
        heapq.heappush(self._heap, (at, priority, self._seq, fn, args))
        return self._seq

    def at(self, time: int, fn: Callable[..., Any], *args: Any) -> None:
        """Hot-path schedule at an absolute time with NORMAL priority, no checks, no id.

        For the network's own layers, which compute `time >= now` by construction.
        """
        self._seq += 1
        heapq.heappush(self._heap, (time, NORMAL, self._seq, fn, args))

    def cancel(self, event_id: int) -> None:
        """Forget a scheduled entry (lazily: it is skipped when it comes up)."""
        self._cancelled.add(event_id)

    def peek(self) -> int | None:
        """Time of the next entry, or None when nothing is scheduled (SimPy returns Infinity)."""
        heap = self._heap
        while heap and self._cancelled and heap[0][2] in self._cancelled:
            self._cancelled.discard(heapq.heappop(heap)[2])
        return heap[0][0] if heap else None

    def step(self) -> None:
        """Run the next entry. Raises EmptySchedule if there is none."""
        if self.peek() is None:
            raise EmptySchedule("step(): nothing is scheduled")
        t, _, _, fn, args = heapq.heappop(self._heap)
        self._now = t
        self.events += 1
        fn(*args)

    def run(self, until: int | None = None) -> None:
        """Run entries up to and including time `until` (ns), then set `now = until`.

        Without `until`, run until nothing is scheduled. Raises SimulationError if `until` is
        before `now`. Exceptions from callbacks propagate; `now` is then the failing entry's time.
        """
        if until is not None and until < self._now:
            raise SimulationError(f"run(until={until}) is before now={self._now}")
        heap = self._heap
        pop = heapq.heappop
        cancelled = self._cancelled
        n = 0
        # A run allocates millions of short-lived, acyclic objects (segments, heap entries); at
        # the default gen-0 threshold (700) the cyclic collector runs every few segments. Raise it
        # meanwhile (refcounting still frees them at once; only cycles wait longer). Measured,
        # bench_sim_packet: 700 -> 185-193k, 70,000 -> 224-226k, 500,000 -> 230k segment events/s.
        threshold = gc.get_threshold()
        gc.set_threshold(max(threshold[0], 500_000), *threshold[1:])
        try:
            while heap:
                entry = heap[0]
                if until is not None and entry[0] > until:
                    break
                pop(heap)
                if cancelled and entry[2] in cancelled:
                    cancelled.discard(entry[2])
                    continue
                self._now = entry[0]
                n += 1
                entry[3](*entry[4])
        finally:
            self.events += n
            gc.set_threshold(*threshold)
        if until is not None:
            self._now = until


class FifoTimers:
    """Entries that all fire a constant `delay` after they were pushed (technique 2 of ref 4.2).

    `push(fn, *args)` is O(1): the entry goes to the back of a deque, and only the deque's head
    has an entry in the engine's heap. Entries fire in push order, each at its own push time +
    `delay`, interleaved with the heap by the engine's usual (time, priority, seq) order.
    """

    __slots__ = ("_armed", "_engine", "_queue", "delay")

    def __init__(self, engine: Engine, delay: int) -> None:
        if delay < 0:
            raise SimulationError(f"FifoTimers(delay={delay}): negative delay")
        self._engine = engine
        self.delay = delay
        self._queue: deque[tuple[int, Callable[..., Any], tuple[Any, ...]]] = deque()
        self._armed = False

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, fn: Callable[..., Any], *args: Any) -> int:
        """Run `fn(*args)` at now + delay; returns that time."""
        t = self._engine.now + self.delay
        self._queue.append((t, fn, args))
        if not self._armed:
            self._armed = True
            self._engine.at(t, self._fire)
        return t

    def push_at(self, t: int, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` at `t`, which must not be before the last pushed time (FIFO order)."""
        q = self._queue
        if q and t < q[-1][0]:
            raise SimulationError(f"push_at({t}) before the queue's last entry {q[-1][0]}")
        if t < self._engine.now:
            raise SimulationError(f"push_at({t}) is before now={self._engine.now}")
        q.append((t, fn, args))
        if not self._armed:
            self._armed = True
            self._engine.at(t, self._fire)

    @property
    def last(self) -> int | None:
        """Time of the last queued entry (None when empty)."""
        return self._queue[-1][0] if self._queue else None

    def _fire(self) -> None:
        q = self._queue
        _, fn, args = q.popleft()
        if q:
            self._engine.at(q[0][0], self._fire)
        else:
            self._armed = False
        fn(*args)
