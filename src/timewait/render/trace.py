"""What `timewait trace` prints, and the doctor report's traced section. Pure: builds text and
rich renderables from timewait.doctor.trace tables; the CLI prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from timewait.doctor import trace as T

# The call that failed, by Kind.label (the JSON's "kind"): the terminal and the HTML report.
CALL: Final = {
    T.Kind.CONNECT_ERROR.label: "connect()",
    T.Kind.CONNECT_ASYNC_ERROR.label: "connect() async",
    T.Kind.BIND_ERROR.label: "bind()",
}


def _rate(n: int, window_s: float) -> str:
    return f"{n / window_s:,.1f}/s" if window_s > 0 else f"{n:,}"


def interval_line(label: str, tr: T.Traced, *, clock: str, top: int = 3) -> list[str]:
    """One namespace's counts over one interval (a delta table): a line, then up to `top`
    lines of failing (process, destination)."""
    w = tr.window_s
    fails = tr.total(*T.CONNECT_KINDS)
    by = ", ".join(f"{k} {v:,}" for k, v in tr.by_errno(*T.CONNECT_KINDS).items())
    line = (
        f"{clock}  {label}  connect() failures {_rate(fails, w)}"
        + (f" ({by})" if by else "")
        + f" · bind() failures {_rate(tr.total(T.Kind.BIND_ERROR), w)}"
        + f" · active closes {_rate(tr.total(T.Kind.ACTIVE_CLOSE), w)}"
        + f" · passive {_rate(tr.total(T.Kind.PASSIVE_CLOSE), w)}"
        + f" · opened {_rate(tr.total(T.Kind.OPENED), w)}"
    )
    out = [line]
    pad = " " * len(clock)
    for g in tr.groups(*T.CONNECT_KINDS, T.Kind.BIND_ERROR, keys=T.FAILURE_KEYS, top=top):
        what = "bind()" if g.kind == T.Kind.BIND_ERROR else "connect()"
        out.append(
            f"{pad}    {g.errno_name:<13} {g.count:>8,}  {g.process} {_container(g)}-> "
            f"{g.destination} ({what})"
        )
    return out


def _container(g: T.Group) -> str:
    return f"({g.container}) " if g.container and g.container != "/" else ""


def failures_table(tr: T.Traced, *, netns: int | None = None, top: int = 10) -> Table:
    """connect() and bind() failures per (errno, process, destination), most first."""
    tab = Table(
        title=f"connect() and bind() failures in the last {tr.window_s:.1f} s",
        title_justify="left",
        title_style="bold",
        show_edge=False,
    )
    tab.add_column("errno", no_wrap=True)
    tab.add_column("count", justify="right")
    tab.add_column("per s", justify="right")
    tab.add_column("call")
    tab.add_column("process", no_wrap=True)
    tab.add_column("cgroup", no_wrap=True)
    tab.add_column("destination", no_wrap=True)
    groups = tr.groups(*T.CONNECT_KINDS, keys=T.FAILURE_KEYS, netns=netns) + tr.groups(
        T.Kind.BIND_ERROR, keys=T.BIND_KEYS, netns=netns
    )
    groups.sort(key=lambda g: -g.count)
    for g in groups[:top]:
        call = CALL[g.kind.label]
        tab.add_row(
            Text(g.errno_name, style="bold red" if g.errno == T.EADDRNOTAVAIL else ""),
            f"{g.count:,}",
            f"{g.count / tr.window_s:,.1f}" if tr.window_ns else "-",
            call,
            g.process,
            g.container,
            g.destination,
        )
    if not groups:
        tab.add_row("(none)", "0", "", "", "", "", "")
    return tab


def churn_table(tr: T.Traced, *, netns: int | None = None, top: int = 10) -> Table:
    """Active and passive closes per destination (or listening port), most first."""
    tab = Table(
        title=f"Closes in the last {tr.window_s:.1f} s (active: this side holds the TIME_WAIT)",
        title_justify="left",
        title_style="bold",
        show_edge=False,
    )
    tab.add_column("destination", no_wrap=True)
    tab.add_column("side")
    tab.add_column("active", justify="right")
    tab.add_column("active/s", justify="right")
    tab.add_column("passive", justify="right")
    rows = tr.rows if netns is None else tr.rows[tr.rows["netns"] == netns]
    sub = T.Traced(rows=rows, window_ns=tr.window_ns)
    active = {_close_key(g): g for g in sub.groups(T.Kind.ACTIVE_CLOSE, keys=T.CLOSE_KEYS)}
    passive = {_close_key(g): g for g in sub.groups(T.Kind.PASSIVE_CLOSE, keys=T.CLOSE_KEYS)}

    def count(groups: dict[_Key, T.Group], k: _Key) -> int:
        g = groups.get(k)
        return g.count if g is not None else 0

    keys = sorted(set(active) | set(passive), key=lambda k: (-count(active, k), -count(passive, k)))
    for k in keys[:top]:
        g = active.get(k) or passive[k]
        a, p = count(active, k), count(passive, k)
        label = f"{g.laddr} -> {g.destination}" if g.side == T.SIDE_CLIENT else g.destination
        tab.add_row(
            label,
            "server" if g.side == T.SIDE_SERVER else "client",
            f"{a:,}",
            f"{a / tr.window_s:,.1f}" if tr.window_ns else "-",
            f"{p:,}",
        )
    if not keys:
        tab.add_row("(none)", "", "0", "", "0")
    return tab


_Key = tuple[int, int, str, int, str, int]


def _close_key(g: T.Group) -> _Key:
    return (g.netns, g.side, g.laddr, g.lport, g.raddr, g.rport)


def totals_line(tr: T.Traced, *, netns: int | None = None) -> Text:
    rows = tr.rows if netns is None else tr.rows[tr.rows["netns"] == netns]
    sub = T.Traced(rows=rows, window_ns=tr.window_ns)
    w = tr.window_s
    t = Text()
    for label, kinds in (
        ("connect() failures", T.CONNECT_KINDS),
        ("bind() failures", (T.Kind.BIND_ERROR,)),
        ("active closes", (T.Kind.ACTIVE_CLOSE,)),
        ("passive closes", (T.Kind.PASSIVE_CLOSE,)),
        ("opened", (T.Kind.OPENED,)),
        ("accepted", (T.Kind.ACCEPTED,)),
    ):
        n = sub.total(*kinds)
        if t:
            t.append(" · ", style="dim")
        t.append(f"{label} ", style="bold")
        t.append(f"{n:,}" + (f" ({n / w:,.1f}/s)" if w > 0 else ""))
    return t


def summary(
    tr: T.Traced,
    labels: Mapping[int, str],
    *,
    notes: Sequence[str] = (),
    top: int = 10,
) -> RenderableType:
    """The end of `timewait trace`: per namespace, totals, failures and closes."""
    parts: list[RenderableType] = [Text(f"timewait trace: {tr.window_s:.1f} s", style="bold")]
    namespaces = sorted(set(labels) | set(tr.namespaces()))
    for ino in namespaces:
        label = labels.get(ino) or f"netns:[{ino}]"
        parts += [Text(), Text(f"{label}  (netns inode {ino})", style="bold cyan")]
        parts += [totals_line(tr, netns=ino), Text()]
        parts += [failures_table(tr, netns=ino, top=top), Text()]
        parts.append(churn_table(tr, netns=ino, top=top))
    for note in notes:
        parts += [Text(), Text(f"not seen: {note}", style="yellow")]
    return Group(*parts)


def report_section(tr: T.Traced, *, top: int = 10) -> list[RenderableType]:
    """The doctor report's part: what the trace counted in this namespace."""
    head = Text(f"Traced for {tr.window_s:.1f} s: ", style="bold")
    head.append_text(totals_line(tr))
    out: list[RenderableType] = [head, Text(), failures_table(tr, top=top), Text()]
    if tr.total(T.Kind.ACTIVE_CLOSE, T.Kind.PASSIVE_CLOSE):
        out += [churn_table(tr, top=top), Text()]
    return out
