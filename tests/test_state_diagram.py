"""docs/state-machine.md is generated from the transition table and must match it."""

from __future__ import annotations

from pathlib import Path

from timewait.render.statediagram import markdown

DOC = Path(__file__).resolve().parents[1] / "docs" / "state-machine.md"


def test_committed_state_diagram_matches_the_table() -> None:
    """Regenerate with `python -m timewait.render.statediagram > docs/state-machine.md`."""
    assert DOC.read_text() == markdown()


def test_every_state_appears_in_the_diagram() -> None:
    text = markdown()
    for name in ("SYN_SENT", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSING", "TIME_WAIT", "LAST_ACK"):
        assert name in text
