"""Trace records: what happened to one connection, in time order, for ladder diagrams.

A `Rung` is one line of a ladder: a segment one end sent (lost or not), or a state change of one
end. The simulator builds them (`Network.rungs()`) from its capture and from the hosts'
StateChange records (timewait.model.outcome); the renderer (timewait.render.ladder) draws them.
They are defined here, on the simulator's side, so that the simulator never imports a renderer.
"""

from __future__ import annotations

from dataclasses import dataclass

from timewait.model.segment import Segment


@dataclass(frozen=True, slots=True, kw_only=True)
class Rung:
    """One line of the ladder. Exactly one of `segment` or `state` is set."""

    time: int  # ns
    left: bool  # True: the left end sent it / changed state
    segment: Segment | None = None
    lost: bool = False
    state: str | None = None  # e.g. "FIN-WAIT-1 -> FIN-WAIT-2"
    note: str = ""
