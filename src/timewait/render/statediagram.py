"""The docs' state diagram, generated from the transition table (never drawn by hand).

`python -m timewait.render.statediagram > docs/state-machine.md` rewrites the page; a test fails
when the committed page and the table disagree (h11's make-state-diagrams.py, done as a check).
"""

from __future__ import annotations

from timewait.model.transitions import transition_table_rows


def _node(state: str) -> str:
    return state.replace("-", "_")


def markdown() -> str:
    """A Markdown page: a Mermaid stateDiagram plus the table with each row's source."""
    rows = transition_table_rows()
    lines = [
        "# The connection state machine",
        "",
        "Generated from `timewait.model.transitions.TRANSITIONS` by",
        "`python -m timewait.render.statediagram`; do not edit by hand.",
        "TIME-WAIT and orphaned FIN-WAIT-2 continue as minisockets (`timewait.model.minisock`).",
        "",
        "```mermaid",
        "stateDiagram-v2",
    ]
    seen: set[tuple[str, str, str]] = set()
    for src, inp, dst, _ in rows:
        if src == dst or (src, inp, dst) in seen:
            continue
        seen.add((src, inp, dst))
        lines.append(f"    {_node(src)} --> {_node(dst)}: {inp}")
    lines += ["```", "", "| from | input | to | source |", "|---|---|---|---|"]
    for src, inp, dst, source in rows:
        lines.append(f"| {src} | {inp} | {dst} | {source} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
