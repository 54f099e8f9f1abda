"""Links: loss, duplication, delayed duplicates and jitter match their parameters."""

from __future__ import annotations

import math
import random

import pytest

from timewait.model.segment import Flags, Segment
from timewait.sim.engine import Engine
from timewait.sim.link import Captured, Link, LinkError, LinkParams
from timewait.units import MS, US

N = 20_000


def _seg(i: int, flags: Flags = Flags.ACK) -> Segment:
    return Segment(src="198.18.0.1", sport=40000, dst="198.18.0.2", dport=80, seq=i, flags=flags)


def _run(
    params: LinkParams, n: int = N, drop=None
) -> tuple[Link, list[tuple[int, int]], list[Captured]]:  # type: ignore[no-untyped-def]
    eng = Engine()
    cap: list[Captured] = []
    got: list[tuple[int, int]] = []
    link = Link(
        eng, params, random.Random(3), lambda seg, rec: got.append((eng.now, seg.seq)),
        capture=cap, drop=drop,
    )  # fmt: skip
    for i in range(n):
        eng.schedule(link.send, _seg(i), at=i * 10 * US)
    eng.run()
    return link, got, cap


def _within_4_sigma(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1


def test_fixed_delay_delivers_everything_in_order_after_delay() -> None:
    _, got, cap = _run(LinkParams(delay=50 * US), n=1000)
    assert got == [(i * 10 * US + 50 * US, i) for i in range(1000)]
    assert all(c.delivered == c.sent + 50 * US and not c.lost for c in cap)


@pytest.mark.parametrize("p", [0.01, 0.1, 0.5])
def test_loss_rate_matches_p(p: float) -> None:
    link, got, cap = _run(LinkParams(loss=p))
    lost = sum(c.lost for c in cap)
    assert _within_4_sigma(lost, N, p)
    assert len(got) == N - lost and link.stats["lost"] == lost
    assert all(c.delivered is None for c in cap if c.lost)


def test_duplicates_arrive_with_the_original() -> None:
    _, got, cap = _run(LinkParams(duplicate=0.1))
    dups = [c for c in cap if c.duplicate]
    assert _within_4_sigma(len(dups), N, 0.1)
    assert len(got) == N + len(dups)
    assert all(c.delivered == c.sent + 50 * US for c in dups)


def test_delayed_duplicates_arrive_within_one_msl() -> None:
    msl = 30 * MS
    _, _, cap = _run(LinkParams(delay=100 * US, delayed_duplicate=0.05, msl=msl))
    late = [c for c in cap if c.duplicate]
    assert _within_4_sigma(len(late), N, 0.05)
    delays = [c.delivered - c.sent for c in late if c.delivered is not None]
    assert len(delays) == len(late)
    assert min(delays) >= 100 * US and max(delays) <= 100 * US + msl
    assert sum(delays) / len(delays) == pytest.approx(100 * US + msl / 2, rel=0.05)  # U[0, msl]


def test_jitter_keeps_fifo_order_unless_reorder() -> None:
    _, got, _ = _run(LinkParams(delay=50 * US, jitter=40 * US), n=2000)
    assert [s for _, s in got] == list(range(2000))
    _, got_r, _ = _run(LinkParams(delay=50 * US, jitter=40 * US, reorder=True), n=2000)
    assert [s for _, s in got_r] != list(range(2000))
    assert sorted(s for _, s in got_r) == list(range(2000))


def test_drop_predicate_targets_segments() -> None:
    """A targeted loss (e.g. "the final ACK"): exactly the picked segments are lost."""
    _, got, cap = _run(LinkParams(), n=100, drop=lambda seg, now: seg.seq % 10 == 0)
    assert [s for _, s in got] == [i for i in range(100) if i % 10]
    assert [c.segment.seq for c in cap if c.lost] == list(range(0, 100, 10))


@pytest.mark.parametrize(
    "kw", [{"loss": 1.5}, {"duplicate": -0.1}, {"delay": -1}, {"delayed_duplicate": 2.0}]
)
def test_bad_parameters_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(LinkError):
        LinkParams(**kw)  # type: ignore[arg-type]
