"""Ladder diagrams: arrows point from sender to receiver, losses are marked, numbers relative."""

from __future__ import annotations

from timewait.model.segment import Flags, Segment
from timewait.render.ladder import render_ladder
from timewait.sim.trace import Rung
from timewait.units import MS

SYN = Segment(src="198.18.0.1", sport=40000, dst="198.18.0.2", dport=80, seq=1000, flags=Flags.SYN)
SYNACK = Segment(
    src="198.18.0.2", sport=80, dst="198.18.0.1", dport=40000, seq=5000, ack=1001,
    flags=Flags.SYN | Flags.ACK,
)  # fmt: skip


def test_arrows_point_from_sender_and_numbers_are_relative_to_isn() -> None:
    text = render_ladder(
        [
            Rung(time=25 * MS, left=False, segment=SYNACK),
            Rung(time=0, left=True, segment=SYN),
            Rung(time=0, left=True, state="CLOSED -> SYN-SENT"),
        ],
        "client",
        "server",
    )
    lines = text.splitlines()
    assert "client" in lines[0] and "server" in lines[0]
    # state change first at equal times, then the SYN, then the SYN|ACK
    assert "[CLOSED -> SYN-SENT]" in lines[2]
    assert "SYN seq=0 " in lines[3] and lines[3].rstrip().endswith("->")
    assert "SYN|ACK seq=0 ack=1" in lines[4] and "<-" in lines[4]


def test_lost_segment_is_marked() -> None:
    text = render_ladder([Rung(time=0, left=True, segment=SYN, lost=True)], "a", "b")
    assert "X lost" in text
