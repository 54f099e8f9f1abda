"""Links: one direction of a path between two hosts, with delay, jitter, loss and duplicates.

Theory of operation
-------------------
`Link.send(segment)` decides the fate of one segment and schedules its delivery on the engine:

1. the drop predicate (`drop(segment, now) -> bool`, for targeted losses such as "the final
   ACK"), then random loss with probability `loss`;
2. otherwise delivery at `now + delay + U[0, jitter]`. A link is a FIFO queue, as a real path
   mostly is: with jitter a segment is never delivered before the one sent ahead of it
   (delivery = max(drawn time, previous delivery)), unless `reorder=True`;
3. with probability `duplicate` an extra copy arrives together with the original (a duplicating
   switch or a spurious retransmission);
4. with probability `delayed_duplicate` an extra copy is delivered up to `msl` later
   (U[delay, delay + msl]): the "old duplicate" of RFC 9293 §3.4.2 / RFC 1337 that TIME_WAIT
   exists to outlive. These copies go on the engine's heap; in-order deliveries use a FIFO
   queue whose head alone sits on the heap (engine.FifoTimers), so a fixed-delay link costs
   O(1) per segment.

Every transmission (original or copy) is recorded in the capture: time sent, time delivered
(None while in flight or when lost), and whether it was lost or is a duplicate. Random draws come
from the `random.Random` passed in, one draw per enabled mechanism per segment, in a fixed order,
so the same seed gives the same fates.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from timewait.errors import TimewaitError
from timewait.model.segment import Segment
from timewait.sim.engine import Engine, FifoTimers
from timewait.units import SEC, US

# RFC 9293 §3.4.2: MSL "is taken to be 2 minutes" -- the bound a delayed duplicate may lag by.
DEFAULT_MSL = 120 * SEC


class LinkError(TimewaitError, ValueError):
    """Link parameters out of range (probability outside [0, 1], negative delay, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkParams:
    """How one direction of a path treats segments. Times in ns, probabilities in [0, 1]."""

    delay: int = 50 * US
    jitter: int = 0
    loss: float = 0.0
    duplicate: float = 0.0
    delayed_duplicate: float = 0.0
    msl: int = DEFAULT_MSL  # upper bound of a delayed duplicate's extra delay
    reorder: bool = False  # let jitter reorder segments (default: FIFO, like one queue)

    def __post_init__(self) -> None:
        if self.delay < 0 or self.jitter < 0 or self.msl < 0:
            raise LinkError(
                f"link delay/jitter/msl must be >= 0 ns: {self.delay}/{self.jitter}/{self.msl}"
            )
        for name in ("loss", "duplicate", "delayed_duplicate"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise LinkError(f"link {name}={p}: a probability must be in [0, 1]")


class Captured:
    """One transmission on a link: sent at `sent`, delivered at `delivered` (None if lost or
    still in flight). `duplicate` marks an extra copy made by the link."""

    __slots__ = ("delivered", "duplicate", "link", "lost", "segment", "sent")

    def __init__(
        self, sent: int, segment: Segment, link: str, *, lost: bool = False, duplicate: bool = False
    ) -> None:
        self.sent = sent
        self.segment = segment
        self.link = link
        self.lost = lost
        self.duplicate = duplicate
        self.delivered: int | None = None

    def as_tuple(self) -> tuple[int, str, str, bool, bool, int | None]:
        """A plain, comparable form (determinism tests compare captures with it)."""
        return (self.sent, self.link, str(self.segment), self.lost, self.duplicate, self.delivered)

    def __repr__(self) -> str:
        fate = "lost" if self.lost else f"-> {self.delivered}"
        dup = " dup" if self.duplicate else ""
        return f"<Captured {self.sent} {self.segment} {fate}{dup}>"


Deliver = Callable[[Segment, Captured], None]
DropPredicate = Callable[[Segment, int], bool]


class Link:
    """One direction between two hosts. `deliver(segment, record)` runs at arrival time."""

    __slots__ = (
        "_fifo",
        "_last",
        "capture",
        "delayed_duplicates",
        "deliver",
        "drop",
        "dropped",
        "duplicates",
        "engine",
        "lost",
        "name",
        "params",
        "rng",
        "sent",
    )

    def __init__(
        self,
        engine: Engine,
        params: LinkParams,
        rng: random.Random,
        deliver: Deliver,
        *,
        name: str = "link",
        capture: list[Captured] | None = None,
        drop: DropPredicate | None = None,
    ) -> None:
        self.engine = engine
        self.params = params
        self.rng = rng
        self.deliver = deliver
        self.name = name
        self.capture = capture
        self.drop = drop
        self._fifo = FifoTimers(engine, params.delay)  # in-order deliveries, O(1) each
        self._last = 0  # latest in-order delivery time (FIFO with jitter)
        self.sent = 0
        self.lost = 0  # random loss and drop predicate
        self.dropped = 0  # by the drop predicate
        self.duplicates = 0
        self.delayed_duplicates = 0

    @property
    def stats(self) -> dict[str, int]:
        """Counts so far: sent, lost (random + predicate), dropped (predicate), duplicates."""
        return {
            "sent": self.sent,
            "lost": self.lost,
            "dropped": self.dropped,
            "duplicates": self.duplicates,
            "delayed_duplicates": self.delayed_duplicates,
        }

    def send(self, seg: Segment) -> None:
        """Put one segment on the link at engine.now (see the module docstring)."""
        engine = self.engine
        now = engine.now
        p = self.params
        self.sent += 1
        cap = self.capture
        lost = False
        if self.drop is not None and self.drop(seg, now):
            lost = True
            self.dropped += 1
        elif p.loss and self.rng.random() < p.loss:
            lost = True
        rec = Captured(now, seg, self.name, lost=lost)
        if cap is not None:
            cap.append(rec)
        if lost:
            self.lost += 1
            return
        if not p.jitter:
            t = self._last = self._fifo.push(self._arrive, seg, rec)  # now + delay, in order
        else:
            t = now + p.delay + self.rng.randint(0, p.jitter)
            if p.reorder:
                engine.at(t, self._arrive, seg, rec)
            else:
                t = max(t, self._last)
                self._last = t
                self._fifo.push_at(t, self._arrive, seg, rec)
        if p.duplicate and self.rng.random() < p.duplicate:
            self.duplicates += 1
            dup = Captured(now, seg, self.name, duplicate=True)
            if cap is not None:
                cap.append(dup)
            engine.at(t, self._arrive, seg, dup)
        if p.delayed_duplicate and self.rng.random() < p.delayed_duplicate:
            self.delayed_duplicates += 1
            late = Captured(now, seg, self.name, duplicate=True)
            if cap is not None:
                cap.append(late)
            extra = self.rng.randint(0, p.msl) if p.msl else 0
            engine.at(now + p.delay + extra, self._arrive, seg, late)

    def inject(self, seg: Segment, at: int) -> Captured:
        """Deliver a copy of `seg` at time `at` (an old duplicate placed by a scenario)."""
        rec = Captured(self.engine.now, seg, self.name, duplicate=True)
        if self.capture is not None:
            self.capture.append(rec)
        self.delayed_duplicates += 1
        self.engine.schedule(self._arrive, seg, rec, at=at)
        return rec

    def _arrive(self, seg: Segment, rec: Captured) -> None:
        rec.delivered = self.engine.now
        self.deliver(seg, rec)
