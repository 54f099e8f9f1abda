"""The event core: deterministic order, integer time, run(until) rules, failures propagate."""

from __future__ import annotations

import random

import pytest

from timewait.model.host import Host
from timewait.sim.engine import LATE, URGENT, EmptySchedule, Engine, FifoTimers, SimulationError
from timewait.sim.link import LinkParams
from timewait.sim.network import Network
from timewait.sim.workloads import RequestClient, Server
from timewait.units import MS, SEC, US


def test_equal_times_run_in_schedule_order() -> None:
    """Entries at the same time and priority run in the order they were scheduled (seq)."""
    eng = Engine()
    seen: list[int] = []
    for i in range(50):
        eng.schedule(seen.append, i, at=10)
    eng.run()
    assert seen == list(range(50))


def test_priority_breaks_ties_before_seq() -> None:
    """URGENT before NORMAL before LATE at one instant, as SimPy's named priorities."""
    eng = Engine()
    seen: list[str] = []
    eng.schedule(seen.append, "late", at=5, priority=LATE)
    eng.schedule(seen.append, "normal", at=5)
    eng.schedule(seen.append, "urgent", at=5, priority=URGENT)
    eng.schedule(seen.append, "early", at=4, priority=LATE)
    eng.run()
    assert seen == ["early", "urgent", "normal", "late"]


def test_run_until_rejects_the_past_with_the_value() -> None:
    eng = Engine()
    eng.run(until=100)
    assert eng.now == 100
    with pytest.raises(SimulationError, match="until=99"):
        eng.run(until=99)
    with pytest.raises(SimulationError, match="at=50"):
        eng.schedule(print, at=50)
    with pytest.raises(SimulationError, match="negative"):
        eng.schedule(print, delay=-1)


def test_run_until_is_inclusive_and_stops_there() -> None:
    eng = Engine()
    seen: list[int] = []
    for t in (10, 20, 30):
        eng.schedule(seen.append, t, at=t)
    eng.run(until=20)
    assert seen == [10, 20] and eng.now == 20
    assert eng.peek() == 30


def test_exception_in_handler_stops_the_run() -> None:
    """Never swallowed: the error propagates and `now` is the failing entry's time."""
    eng = Engine()
    seen: list[int] = []

    def boom() -> None:
        raise RuntimeError("handler failed")

    eng.schedule(seen.append, 1, at=1)
    eng.schedule(boom, at=2)
    eng.schedule(seen.append, 3, at=3)
    with pytest.raises(RuntimeError, match="handler failed"):
        eng.run()
    assert eng.now == 2 and seen == [1]


def test_step_peek_and_empty_schedule() -> None:
    eng = Engine()
    assert eng.peek() is None
    with pytest.raises(EmptySchedule):
        eng.step()
    eid = eng.schedule(print, delay=7)
    eng.cancel(eid)
    assert eng.peek() is None
    seen: list[int] = []
    eng.schedule(seen.append, 1, delay=3)
    eng.step()
    assert seen == [1] and eng.now == 3


def test_fifo_timers_fire_in_push_order_at_push_time_plus_delay() -> None:
    eng = Engine()
    fifo = FifoTimers(eng, 60 * SEC)
    seen: list[tuple[int, int]] = []
    for i in range(5):
        eng.schedule(lambda i=i: fifo.push(lambda: seen.append((eng.now, i))), at=i * SEC)
    eng.run()
    assert seen == [((60 + i) * SEC, i) for i in range(5)]
    assert len(fifo) == 0


def _churn_capture(seed: int) -> list[tuple[object, ...]]:
    net = Network(
        rng=random.Random(seed),
        link=LinkParams(delay=100 * US, jitter=50 * US, loss=0.05, delayed_duplicate=0.05,
                        msl=10 * MS),
    )  # fmt: skip
    c = net.add_host(Host(name="c", addrs=["198.18.0.1"], rng=random.Random(seed + 1)))
    s = net.add_host(Host(name="s", addrs=["198.18.0.2"], rng=random.Random(seed + 2)))
    Server(net, s, port=80)
    RequestClient(net, c, dests=[("198.18.0.2", 80)], interval=1 * MS, count=100)
    net.run(5 * SEC)
    assert net.capture is not None
    return [rec.as_tuple() for rec in net.capture]


def test_same_seed_gives_identical_capture() -> None:
    """Determinism (issue item 1): same seed and inputs -> the same capture, record by record."""
    a = _churn_capture(7)
    assert a == _churn_capture(7)
    assert a != _churn_capture(8)
    assert any(lost for *_, lost, _dup, _d in a)
