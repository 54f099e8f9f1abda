"""`timewait top`: a live view of TIME_WAIT, churn and per-destination port usage.

The frame is a pure function of a `TopState` (history of diagnoses), so it is tested without a
terminal; `run_top` is the loop: take a snapshot every `interval` seconds, diagnose it against the
previous one (rates from the counter delta), redraw with rich.live on the alternate screen, and
read keys in cbreak mode. `q` or Ctrl-C leaves; the terminal settings are restored in `finally`
whatever happens. When stdout is not a terminal the CLI prints one frame instead (see cli.top).
"""

from __future__ import annotations

import contextlib
import select
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from timewait.doctor import Diagnosis, Severity, diagnose
from timewait.doctor import trace as T
from timewait.render.report import SEVERITY_STYLE, STATUS_STYLE, bar, human_seconds
from timewait.snapshot import Snapshot

SPARK = "▁▂▃▄▅▆▇█"
HISTORY = 120  # points kept for the sparklines (two minutes at 1 s)


def sparkline(values: list[float], width: int) -> str:
    """The last `width` values as block characters scaled to their maximum."""
    vals = values[-width:]
    if not vals:
        return ""
    top = max(vals)
    if top <= 0:
        return SPARK[0] * len(vals)
    return "".join(SPARK[min(int(v / top * (len(SPARK) - 1) + 0.5), len(SPARK) - 1)] for v in vals)


@dataclass
class TopState:
    """What the view remembers between frames."""

    history_tw: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    history_churn: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    last: Diagnosis | None = None
    previous: Snapshot | None = None
    frames: int = 0
    # top --trace: connect() failures per second, and the last frame's counts
    history_fail: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    traced: T.Traced | None = None

    def update(self, snap: Snapshot) -> Diagnosis:
        """Diagnose `snap` (against the previous snapshot when it is older) and record it."""
        prev = self.previous
        older = prev is not None and snap.monotonic_ns > prev.monotonic_ns
        d = diagnose(snap, prev if older else None)
        self.history_tw.append(float(d.analysis.totals.time_wait))
        self.history_churn.append(d.analysis.churn_per_s)
        self._count_failures(snap, prev)
        self.last, self.previous = d, snap
        self.frames += 1
        return d

    def _count_failures(self, snap: Snapshot, prev: Snapshot | None) -> None:
        """The trace's counts since the previous frame (snapshots carry cumulative ones)."""
        tr = T.traced(snap)
        if tr is None:
            return
        before = T.traced(prev) if prev is not None else None
        same = before is not None and before.start_ns == tr.start_ns
        if before is not None and same and tr.window_ns > before.window_ns:
            tr = T.Traced(
                rows=T.delta(tr.rows, before.rows), window_ns=tr.window_ns - before.window_ns
            )
        self.traced = tr
        self.history_fail.append(tr.per_s(*T.CONNECT_KINDS))


def render_frame(state: TopState, *, width: int = 100, top: int = 10) -> RenderableType:
    d = state.last
    if d is None:
        return Text("waiting for the first snapshot...")
    a, snap = d.analysis, d.snapshot
    spark_w = max(10, min(HISTORY, width - 40))
    head = Text("timewait top  ", style="bold")
    head.append(d.status.upper(), style=STATUS_STYLE[d.status])
    head.append(f"   {snap.namespace} · {snap.source} · kernel {snap.kernel or '?'}", style="dim")
    head.append("   q quits", style="dim")

    g = Table.grid(padding=(0, 2))
    g.add_column(style="bold")
    g.add_column(justify="right")
    g.add_column()
    g.add_row(
        "TIME_WAIT",
        f"{a.totals.time_wait:,}",
        Text(sparkline(list(state.history_tw), spark_w), style="blue"),
    )
    g.add_row(
        "churn/s",
        f"{a.churn_per_s:,.1f}",
        Text(sparkline(list(state.history_churn), spark_w), style="magenta"),
    )
    if state.traced is not None:
        _failure_rows(g, state, spark_w)
    worst = a.pools(top=1)[0]
    g.add_row(
        "fullest pool",
        f"{worst.headroom:,} left",
        Text.assemble(bar(worst.usage, 8), f" {worst.usage:4.0%} ", (worst.label, "bold")),
    )
    new = a.new_destination
    g.add_row(
        "usable ports",
        f"{a.ports.capacity:,}",
        Text(
            f"{a.totals.time_wait_client:,} client TW · {a.totals.time_wait_server:,} server TW · "
            f"{a.totals.fin_wait2:,} FIN_WAIT2 · {a.totals.established:,} ESTAB · "
            f"{a.ports.exclusive:,} held by bind()/listen() · new destination {new.headroom:,}",
            style="dim",
        ),
    )
    if a.bind_pools and a.bind_pools[0] is not worst:
        b = a.bind_pools[0]
        g.add_row(
            "bind(0)",
            f"{b.headroom:,} left",
            Text.assemble(bar(b.usage, 8), f" {b.usage:4.0%} ", (b.label, "bold")),
        )

    tab = Table(show_edge=False, title_justify="left", expand=False)
    tab.add_column("destination", no_wrap=True)
    tab.add_column("TW", justify="right")
    tab.add_column("in use", justify="right")
    tab.add_column("left", justify="right")
    tab.add_column("usage")
    tab.add_column("churn/s", justify="right")
    tab.add_column("full in", justify="right")
    for dest in a.destinations(top):
        tab.add_row(
            dest.label,
            f"{dest.time_wait:,}",
            f"{dest.in_use:,}",
            f"{dest.headroom:,}",
            Text.assemble(bar(dest.usage, 16 if width >= 110 else 8), f" {dest.usage:4.0%}"),
            f"{dest.churn_per_s:,.1f}",
            human_seconds(dest.eta_s),
        )
    if not a.n_destinations:
        tab.add_row("(no client-side connections)", "", "", "", "", "", "")

    notes = Text()
    for f in d.findings:
        if f.severity >= Severity.INFO and f.id != "collector-notes":
            notes.append(f"[{f.severity.label}] ", style=SEVERITY_STYLE[f.severity])
            notes.append(f.title + "\n")
    return Group(head, Text(), g, Text(), tab, Text(), notes)


def _failure_rows(g: Table, state: TopState, spark_w: int) -> None:
    """top --trace: connect() failures per second, and who fails toward what."""
    tr = state.traced
    assert tr is not None
    rate = tr.per_s(*T.CONNECT_KINDS)
    by = ", ".join(
        f"{k} {v / tr.window_s:,.1f}/s" for k, v in tr.by_errno().items() if tr.window_ns
    )
    g.add_row(
        "connect() fail/s",
        Text(f"{rate:,.1f}", style="bold red" if rate else ""),
        Text(sparkline(list(state.history_fail), spark_w), style="red"),
    )
    worst = tr.groups(*T.CONNECT_KINDS, keys=T.FAILURE_KEYS, top=3)
    if worst and tr.window_ns:
        who = " · ".join(
            f"{w.process} -> {w.destination} {w.errno_name} {w.count / tr.window_s:,.1f}/s"
            for w in worst
        )
        g.add_row("failing", "", Text(f"{by}: {who}" if by else who, style="dim"))


# -- the loop (terminal I/O) -----------------------------------------------------------------


@contextlib.contextmanager
def cbreak(stream: TextIO) -> Iterator[bool]:
    """Put a terminal in cbreak mode (keys arrive unbuffered, Ctrl-C still works) and restore
    the saved settings on exit, whatever happens. Yields False when it is not a terminal."""
    try:
        fd = stream.fileno()
        is_tty = stream.isatty()
    except (AttributeError, OSError, ValueError):
        yield False
        return
    if not is_tty:
        yield False
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def wait_for_key(stream: TextIO, timeout: float) -> str | None:
    """A key pressed within `timeout` seconds, or None."""
    ready, _, _ = select.select([stream], [], [], max(timeout, 0.0))
    if not ready:
        return None
    ch = stream.read(1)
    return ch if ch else "q"  # EOF on stdin: leave


def run_top(
    source: Callable[[], Snapshot],
    console: Console,
    *,
    interval: float = 1.0,
    top: int = 10,
    keys: TextIO | None = None,
    max_frames: int | None = None,
) -> int:
    """Refresh every `interval` s until q, Ctrl-C or `max_frames`; returns frames drawn."""
    keys = keys or sys.stdin
    state = TopState()
    with cbreak(keys) as interactive:
        try:
            state.update(source())
            with Live(
                render_frame(state, width=console.width, top=top),
                console=console,
                screen=True,
                auto_refresh=False,
                transient=True,
            ) as live:
                live.refresh()
                while max_frames is None or state.frames < max_frames:
                    deadline = time.monotonic() + interval
                    quit_ = False
                    while (left := deadline - time.monotonic()) > 0:
                        if not interactive:
                            time.sleep(left)
                            break
                        key = wait_for_key(keys, left)
                        if key in ("q", "Q"):
                            quit_ = True
                            break
                    if quit_:
                        break
                    state.update(source())
                    live.update(render_frame(state, width=console.width, top=top), refresh=True)
        except KeyboardInterrupt:
            pass  # Ctrl-C is the other documented way out; Live and cbreak restore the terminal
    return state.frames
