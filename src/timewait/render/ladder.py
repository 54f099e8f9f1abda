"""Ladder diagrams: the segments of one connection between two columns, readable in a terminal.

Input is a list of `Rung`s, the simulator's trace records (timewait.sim.trace: a segment sent by
the left or right end, possibly lost, or a state change of one end); output is plain text.
Sequence and ACK numbers are shown relative to each side's ISN, as Wireshark does, so the
diagram stays readable.
"""

from __future__ import annotations

from collections.abc import Iterable

from timewait.model.segment import Segment
from timewait.model.seq import MASK
from timewait.sim.trace import Rung
from timewait.units import MS


def _label(seg: Segment, isn_self: int | None, isn_peer: int | None) -> str:
    seq = (seg.seq - isn_self) & MASK if isn_self is not None else seg.seq
    parts = [str(seg.flags), f"seq={seq}"]
    if seg.has_ack:
        ack = (seg.ack - isn_peer) & MASK if isn_peer is not None else seg.ack
        parts.append(f"ack={ack}")
    if seg.payload:
        parts.append(f"len={len(seg.payload)}")
    return " ".join(parts)


def render_ladder(rungs: Iterable[Rung], left: str, right: str, *, width: int = 96) -> str:
    """Draw the ladder. `left`/`right` are the column titles (e.g. "client 198.18.0.1:40000")."""
    # At equal times a state change comes first: it is what made the end send (stable sort).
    rungs = sorted(rungs, key=lambda r: (r.time, r.state is None))
    isn: dict[bool, int] = {}
    for r in rungs:
        if r.segment is not None and r.segment.syn and r.left not in isn:
            isn[r.left] = r.segment.seq
    tcol = 13
    side = 26  # width of each end's state column
    mid = max(20, width - tcol - 2 * side)
    lines = [f"{'time':>{tcol - 2}}  {left:<{side + mid // 2}}{right:>{side + mid - mid // 2}}"]
    lines.append(" " * tcol + "-" * (2 * side + mid))
    for r in rungs:
        t = f"{r.time / MS:>9.3f} ms "
        if r.state is not None:
            text = f"[{r.state}]"
            if r.left:
                row = f"{text:<{side}}" + " " * mid + " " * side
            else:
                row = " " * side + " " * mid + f"{text:>{side}}"
            lines.append(t + " " + row.rstrip() + (f"   {r.note}" if r.note else ""))
            continue
        assert r.segment is not None
        label = _label(r.segment, isn.get(r.left), isn.get(not r.left))
        shaft = mid - 4
        body = f" {label} "
        if r.lost:
            body += "X lost "
        fill = max(2, shaft - len(body))
        arrow = (
            "-" * (fill // 2) + body + "-" * (fill - fill // 2) + "->"
            if r.left
            else "<-" + "-" * (fill // 2) + body + "-" * (fill - fill // 2)
        )
        row = " " * side + " " + arrow
        lines.append(t + row.rstrip() + (f"   {r.note}" if r.note else ""))
    return "\n".join(lines)
