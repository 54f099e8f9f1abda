"""Every namespace of a node on the terminal (issue 14): the doctor's ranking table with the
reports of the worst namespaces (`doctor --all-netns`), and `top --all-netns`'s frame. Pure:
builds rich renderables from doctor.fleet's Ranking; the CLI prints and loops.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from timewait.doctor import Diagnosis, diagnose
from timewait.doctor.fleet import Member, Ranking, member_of
from timewait.render.report import STATUS_STYLE, bar, human_seconds, render_report
from timewait.render.top import HISTORY, cbreak, sparkline, wait_for_key
from timewait.snapshot import Snapshot

DEFAULT_ROWS = 20


def _where(m: Member) -> str:
    """The netns column: the `ip netns` name or [inode] (empty when it is the name shown)."""
    v = m.labels.get("netns", "")
    return "" if v == m.name or m.host else v


def ranking_table(members: Sequence[Member], *, rows: int | None = DEFAULT_ROWS,
                  total: int | None = None, skipped: int = 0) -> Table:  # fmt: skip
    """Namespaces nearest exhaustion first, each with its worst pool."""
    total = len(members) if total is None else total
    shown = list(members if rows is None else members[:rows])
    extra = f", {skipped} skipped" if skipped else ""
    tab = Table(
        title=f"Network namespaces by nearness to exhaustion ({len(shown)} of {total}{extra})",
        title_justify="left",
        title_style="bold",
        show_edge=False,
    )
    tab.add_column("#", justify="right")
    tab.add_column("namespace", no_wrap=True)
    tab.add_column("kind")
    tab.add_column("netns", no_wrap=True, style="dim")
    tab.add_column("sockets", justify="right")
    tab.add_column("TW", justify="right")
    tab.add_column("worst pool", no_wrap=True)
    tab.add_column("usage", no_wrap=True)
    tab.add_column("left", justify="right")
    tab.add_column("full in", justify="right", no_wrap=True)
    tab.add_column("status")
    for i, m in enumerate(shown, 1):
        tab.add_row(
            str(i),
            Text(m.name, style="bold" if i == 1 else ""),
            m.kind,
            _where(m),
            f"{m.sockets:,}",
            f"{m.time_wait:,}",
            m.worst_label,
            Text.assemble(bar(m.worst_usage, 10), f" {m.worst_usage:4.0%}"),
            f"{m.worst_headroom:,}",
            human_seconds(m.eta_s),
            Text(m.status, style=STATUS_STYLE[m.status]),
        )
    return tab


def render_ranking(
    ranking: Ranking,
    *,
    hostname: str = "",
    notes: Sequence[str] = (),
    rows: int | None = DEFAULT_ROWS,
    top: int = 10,
) -> RenderableType:
    """`doctor --all-netns`: the ranking table, then the full report of each kept namespace
    that is not healthy (Ranking(keep=N) decides how many)."""
    members = ranking.members()
    head = Text("timewait doctor --all-netns  ", style="bold")
    head.append(ranking.status.upper(), style=STATUS_STYLE[ranking.status])
    where = f"{len(members)} network namespaces" + (f" on {hostname}" if hostname else "")
    head.append(f"\n{where}", style="dim")
    parts: list[RenderableType] = [head, Text()]
    parts.append(
        ranking_table(members, rows=rows, total=len(members), skipped=len(ranking.skipped))
    )
    if rows is not None and len(members) > rows:
        parts.append(Text(f"... {len(members) - rows} more (--rows 0 lists all)", style="dim"))
    shared = ranking.host_network()
    if shared:
        parts.append(
            Text(
                f"host network: {', '.join(shared)} share the node's own namespace (counted "
                "once, in host)",
                style="dim",
            )
        )
    for s in ranking.skipped:
        parts.append(Text(f"skipped {s.name} ({s.labels.get('netns', '?')}): {s.reason}",
                          style="dim"))  # fmt: skip
    for n in notes:
        parts.append(Text(f"note: {n}", style="dim"))
    worst = [(m, d) for m, d in ranking.worst_diagnoses() if m.status != "healthy"]
    if ranking.status == "healthy" and members:
        m = members[0]
        parts += [
            Text(),
            Text(
                f"All healthy; nearest exhaustion: {m.name}, {m.worst_label} at "
                f"{m.worst_usage:.0%}.",
                style="green",
            ),
        ]
    for m, d in worst:
        i = _rank_of(members, m)
        title = f"{i}. {m.name}  ({m.kind}" + (f", netns {_where(m)}" if _where(m) else "") + ")"
        parts += [Text(), Rule(title, align="left"), render_report(d, top=top)]
    return Group(*parts)


def _rank_of(members: Sequence[Member], m: Member) -> int:
    for i, x in enumerate(members, 1):
        if x.inode == m.inode:
            return i
    return 0


# -- top --all-netns --------------------------------------------------------------------------


@dataclass
class FleetTopState:
    """What `top --all-netns` remembers between frames: each namespace's last snapshot (for
    rates over the refresh interval), and the node's TIME_WAIT total for the sparkline."""

    previous: dict[int, Snapshot] = field(default_factory=dict)
    history_tw: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    members: list[Member] = field(default_factory=list)
    skipped: int = 0
    frames: int = 0

    def update(self, snaps: Sequence[Snapshot], skipped: int = 0) -> list[Member]:
        """Diagnose every namespace against its previous snapshot; forget the ones gone."""
        members: list[Member] = []
        seen: dict[int, Snapshot] = {}
        for snap in snaps:
            inode = int(snap.labels.get("inode", "0") or 0)
            prev = self.previous.get(inode)
            older = prev is not None and snap.monotonic_ns > prev.monotonic_ns
            try:
                d: Diagnosis = diagnose(snap, prev if older else None)
            except Exception:  # one namespace's bad table is not the view's
                skipped += 1
                continue
            members.append(member_of(d))
            seen[inode] = snap
        self.previous = seen
        self.members = sorted(members, key=lambda m: m.key)
        self.skipped = skipped
        self.history_tw.append(float(sum(m.time_wait for m in members)))
        self.frames += 1
        return self.members


def render_fleet_frame(state: FleetTopState, *, width: int = 100, top: int = 10) -> RenderableType:
    """One frame of `top --all-netns`: node totals and the namespaces nearest exhaustion."""
    if not state.frames:
        return Text("waiting for the first scan...")
    ms = state.members
    worst = max((m.exit_status for m in ms), default=0)
    status = {2: "critical", 1: "warning"}.get(int(worst), "healthy")
    head = Text("timewait top --all-netns  ", style="bold")
    head.append(status.upper(), style=STATUS_STYLE[status])
    head.append(f"   {len(ms)} namespaces", style="dim")
    if state.skipped:
        head.append(f", {state.skipped} vanished", style="dim")
    head.append("   q quits", style="dim")
    g = Table.grid(padding=(0, 2))
    g.add_column(style="bold")
    g.add_column(justify="right")
    g.add_column()
    spark_w = max(10, min(HISTORY, width - 40))
    g.add_row(
        "TIME_WAIT",
        f"{int(state.history_tw[-1]) if state.history_tw else 0:,}",
        Text(sparkline(list(state.history_tw), spark_w), style="blue"),
    )
    g.add_row("churn/s", f"{sum(m.churn_per_s for m in ms):,.1f}", Text("all namespaces"))
    tab = Table(show_edge=False, expand=False)
    tab.add_column("namespace", no_wrap=True)
    tab.add_column("kind")
    tab.add_column("TW", justify="right")
    tab.add_column("churn/s", justify="right")
    tab.add_column("worst pool", no_wrap=True)
    tab.add_column("usage", no_wrap=True)
    tab.add_column("left", justify="right")
    tab.add_column("full in", justify="right")
    for m in ms[:top]:
        tab.add_row(
            m.name,
            m.kind,
            f"{m.time_wait:,}",
            f"{m.churn_per_s:,.1f}",
            m.worst_label,
            Text.assemble(bar(m.worst_usage, 16 if width >= 110 else 8), f" {m.worst_usage:4.0%}"),
            f"{m.worst_headroom:,}",
            human_seconds(m.eta_s),
        )
    return Group(head, Text(), g, Text(), tab)


def run_fleet_top(
    scan: Callable[[bool], tuple[list[Snapshot], int]],
    console: Console,
    *,
    interval: float = 1.0,
    top: int = 10,
    keys: TextIO | None = None,
    max_frames: int | None = None,
) -> int:
    """`top --all-netns`: rescan every `interval` s until q, Ctrl-C or `max_frames`; returns
    the frames drawn. `scan(first)` returns (snapshots, how many vanished); the first scan
    reads each namespace's churn in a rate window, later ones rate against the frame before.
    The loop is render.top.run_top's, with the same terminal handling."""
    keys = keys or sys.stdin
    state = FleetTopState()
    with cbreak(keys) as interactive:
        try:
            state.update(*scan(True))
            with Live(
                render_fleet_frame(state, width=console.width, top=top),
                console=console,
                screen=True,
                auto_refresh=False,
                transient=True,
            ) as live:
                live.refresh()
                while max_frames is None or state.frames < max_frames:
                    deadline = time.monotonic() + interval
                    while (left := deadline - time.monotonic()) > 0:
                        if not interactive:
                            time.sleep(left)
                            break
                        if wait_for_key(keys, left) in ("q", "Q"):
                            return state.frames
                    state.update(*scan(False))
                    live.update(render_fleet_frame(state, width=console.width, top=top),
                                refresh=True)  # fmt: skip
        except KeyboardInterrupt:
            pass  # Ctrl-C is the other documented way out; Live and cbreak restore the terminal
    return state.frames
