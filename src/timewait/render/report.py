"""The doctor's terminal report: totals, the pools a port comes from, top destinations with usage
bars, the TIME_WAIT timer histogram, findings with remedies. Pure: builds rich renderables from a
Diagnosis; the CLI prints.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable

from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from timewait.doctor import Diagnosis, Finding, Severity
from timewait.doctor.analysis import Analysis, Destination
from timewait.doctor.pools import KIND_BIND, Pool

SEVERITY_STYLE = {
    Severity.OK: "green",
    Severity.INFO: "cyan",
    Severity.WARNING: "yellow",
    Severity.CRITICAL: "bold red",
}
STATUS_STYLE = {"healthy": "bold green", "warning": "bold yellow", "critical": "bold red"}


def bar(fraction: float, width: int = 20) -> Text:
    """A usage bar: green below 70 %, yellow below 90 %, red above."""
    f = max(0.0, min(fraction, 1.0))
    filled = round(f * width)
    style = "red" if fraction >= 0.9 else "yellow" if fraction >= 0.7 else "green"
    t = Text("█" * filled, style=style)
    t.append("░" * (width - filled), style="dim")
    return t


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{n} B"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s <= 0:
        return "full"
    if s < 1:
        return "<1 s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.0f} d"


def header(d: Diagnosis) -> Text:
    snap = d.snapshot
    when = (
        _dt.datetime.fromtimestamp(snap.time_ns / 1e9, tz=_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if snap.time_ns
        else "time unknown"
    )
    t = Text("timewait doctor  ", style="bold")
    t.append(d.status.upper(), style=STATUS_STYLE[d.status])
    where = snap.namespace + (f" on {snap.hostname}" if snap.hostname else "")
    t.append(f"\n{where} · {snap.source} · kernel {snap.kernel or '?'} · {when}", style="dim")
    if d.analysis.interval_s:
        t.append(f" · rates over {d.analysis.interval_s:.1f} s", style="dim")
    elif d.analysis.rate_window_s:
        t.append(f" · churn now: counters over {d.analysis.rate_window_s:.2f} s", style="dim")
    elif d.analysis.churn_method == "traced":
        t.append(" · churn traced in the kernel (--trace)", style="dim")
    return t


def totals_table(a: Analysis) -> Table:
    t, p = a.totals, a.ports
    tab = Table.grid(padding=(0, 2))
    tab.add_column(style="bold")
    tab.add_column(justify="right")
    tab.add_column(style="dim")
    tab.add_row("sockets", f"{t.sockets:,}", "")
    guessed = (
        f" ({t.time_wait_server_guessed:,} of a listener that exited)"
        if t.time_wait_server_guessed
        else ""
    )
    tab.add_row(
        "TIME_WAIT",
        f"{t.time_wait:,}",
        f"{t.time_wait_client:,} client side, {t.time_wait_server:,} server side{guessed}",
    )
    tab.add_row("FIN_WAIT2 orphans", f"{t.fin_wait2:,}", "minisockets waiting for the peer's FIN")
    if t.fin_wait2_full:
        tab.add_row("FIN_WAIT2 held", f"{t.fin_wait2_full:,}", "full sockets an app still holds")
    tab.add_row("ESTABLISHED", f"{t.established:,}", "")
    tab.add_row("LISTEN", f"{t.listen:,}", "")
    if t.sockstat_tw is not None:
        tab.add_row("sockstat tw", f"{t.sockstat_tw:,}", "kernel count: TIME_WAIT + FIN_WAIT2")
    window = a.interval_s or a.rate_window_s or 0.0
    method = {
        "littles_law": "TIME_WAIT / 60 s: the last minute's average (one snapshot)",
        "tw_counter": f"TcpExt TW counter over {window:.2f} s: the rate now",
        "tw_timers": "TIME_WAITs created during the interval",
        "traced": "active closes counted in the kernel (doctor --trace): the rate now",
    }[a.churn_method]
    tab.add_row("churn", f"{a.churn_per_s:,.1f}/s", method)
    m = a.memory
    tab.add_row(
        "kernel memory",
        human_bytes(m.total),
        f"{human_bytes(m.minisockets)} minisockets, {human_bytes(m.full_sockets)} sockets, "
        f"{human_bytes(m.file_objects)} files",
    )
    lo, hi = p.port_range
    parts = [f"range {lo}-{hi} ({p.range_size:,})"]
    if p.reserved:
        parts.append(f"- {p.reserved:,} reserved")
    if p.listener_ports:
        parts.append(f"- {len(p.listener_ports):,} listening")
    held = len(p.bound_ports) + p.inferred_ports + len(p.orphan_server_ports)
    if held:
        parts.append(f"- {held:,} held by bind()")
    tab.add_row("usable ports", f"{p.capacity:,}", " ".join(parts))
    return tab


def pools_table(a: Analysis, rows: int = 8) -> Table:
    """Every place a port comes from (timewait.doctor.pools), the fullest first."""
    pools = [
        p for p in a.pools(top=3) if not (p.kind == KIND_BIND and p.address == "" and p.held == 0)
    ]
    tab = Table(
        title="Pools: where the next port comes from, and what is left",
        title_justify="left",
        title_style="bold",
        show_edge=False,
    )
    tab.add_column("pool", no_wrap=True)
    tab.add_column("held/size", justify="right", no_wrap=True)
    tab.add_column("left", justify="right")
    tab.add_column("usage", no_wrap=True)
    tab.add_column("note", style="dim", no_wrap=True)
    for p in pools[:rows]:
        tab.add_row(
            p.label,
            f"{p.held:,}/{p.size:,}",
            f"{p.headroom:,}",
            Text.assemble(bar(p.usage, 10), f" {p.usage:4.0%}"),
            pool_note(p),
        )
    return tab


def pool_note(p: Pool) -> str:
    if p.kind == KIND_BIND:
        return f"{p.exclusive:,} by bind()" if p.exclusive else ""
    if p.reusable:
        return f"{p.reusable:,} TIME_WAIT reusable now (tcp_tw_reuse)"
    return ""


def nat_table(a: Analysis, rows: int = 10) -> Table | None:
    """The NAT pools (doctor/nat.py): translated ports per translated address and
    destination, by conntrack state; and the table's fill (issue 15)."""
    nat = a.nat
    if nat is None or not nat.present or not nat.pools:
        return None
    fill = f"{nat.count:,}/{nat.max:,} entries ({nat.fill:.0%})" if nat.fill is not None else ""
    drops = (
        f"insert_failed {nat.counters.get('insert_failed', 0):,}, "
        f"drop {nat.counters.get('drop', 0):,}"
    )
    tab = Table(
        title=f"NAT pools: translated ports per destination (conntrack {fill}; {drops}; "
        f"TIME_WAIT {nat.time_wait_s} s)",
        title_justify="left",
        title_style="bold",
        show_edge=False,
    )
    tab.add_column("translated -> destination", no_wrap=True)
    tab.add_column("TW", justify="right")
    tab.add_column("ESTAB", justify="right")
    tab.add_column("other", justify="right")
    tab.add_column("held/ports", justify="right", no_wrap=True)
    tab.add_column("left", justify="right")
    tab.add_column("usage", no_wrap=True)
    tab.add_column("evictable", justify="right")
    tab.add_column("churn/s", justify="right")
    tab.add_column("full in", justify="right", no_wrap=True)
    for p in nat.pools[:rows]:
        st = p.by_state
        other = p.entries - st.get("time_wait", 0) - st.get("established", 0)
        tab.add_row(
            p.label.removeprefix("NAT "),
            f"{st.get('time_wait', 0):,}",
            f"{st.get('established', 0):,}",
            f"{other:,}",
            f"{p.held:,}/{p.size:,}",
            f"{p.headroom:,}",
            Text.assemble(bar(p.usage, 10), f" {p.usage:4.0%}"),
            f"{p.reclaimable:,}" if nat.eviction else "never",
            f"{p.churn_per_s:,.1f}",
            human_seconds(p.eta_s),
        )
    return tab


def destinations_table(rows: Iterable[Destination], total: int) -> Table:
    rows = list(rows)
    tab = Table(
        title=f"Top destinations by port usage ({len(rows)} of {total:,})",
        title_justify="left",
        title_style="bold",
        show_edge=False,
    )
    tab.add_column("source -> destination", no_wrap=True)
    tab.add_column("TW", justify="right")
    tab.add_column("ESTAB", justify="right")
    tab.add_column("used/ports", justify="right", no_wrap=True)
    tab.add_column("left", justify="right")
    tab.add_column("usage", no_wrap=True)
    tab.add_column("churn/s", justify="right")
    tab.add_column("full in", justify="right", no_wrap=True)
    for d in rows:
        label = Text(d.label)
        if d.bind_like:
            label.append(" bind()", style="yellow")
        tab.add_row(
            label,
            f"{d.time_wait:,}",
            f"{d.established:,}",
            f"{d.bound:,} bound" if d.bind_like else f"{d.in_use:,}/{d.capacity:,}",
            f"{d.headroom:,}",
            Text.assemble(bar(d.usage, 10), f" {d.usage:4.0%}"),
            f"{d.churn_per_s:,.1f}",
            human_seconds(d.eta_s),
        )
    return tab


def histogram(a: Analysis, width: int = 30) -> Table:
    counts = a.timer_histogram
    peak = max(counts) or 1
    tab = Table.grid(padding=(0, 1))
    tab.add_column(justify="right", style="dim")
    tab.add_column()
    tab.add_column(justify="right")
    n = len(counts)
    for i, c in enumerate(counts):
        label = f"{i * 10}-{(i + 1) * 10} s" + ("+" if i == n - 1 else "")
        tab.add_row(
            label, Text("▇" * max(round(c / peak * width), 1 if c else 0), "blue"), f"{c:,}"
        )
    return tab


def finding_block(f: Finding, index: int) -> RenderableType:
    parts: list[RenderableType] = []
    head = Text(f"{index}. ", style="bold")
    head.append(f"[{f.severity.label}] ", style=SEVERITY_STYLE[f.severity])
    head.append(f.title, style="bold")
    head.append(f"  ({f.id})", style="dim")
    parts.append(head)
    parts.append(Padding(Text(f.detail), (0, 0, 0, 3), expand=False))
    for k, r in enumerate(f.remedies, 1):
        rt = Text(f"{k}) ", style="bold")
        rt.append(r.title, style="bold")
        if r.requires:
            rt.append(f"  [needs {r.requires.removeprefix('Linux ')}]", style="yellow")
        rt.append("\n")
        rt.append("changes: ", style="dim")
        rt.append(r.changes + "\n")
        rt.append("risk: ", style="dim")
        rt.append(r.risk)
        block: list[RenderableType] = [rt]
        # commands and code never wrap: they must paste as they are
        for line in r.commands:
            shown = line if line.startswith("#") else "$ " + line
            block.append(Text(shown, style="green", no_wrap=True, overflow="ignore"))
        if r.code:
            block.append(Text(r.code.rstrip("\n"), style="green", no_wrap=True, overflow="ignore"))
        if r.code_c:
            block.append(Text("/* C */", style="dim"))
            block.append(
                Text(r.code_c.rstrip("\n"), style="green", no_wrap=True, overflow="ignore")
            )
        parts.append(Padding(Group(*block), (0, 0, 0, 5), expand=False))
    return Group(*parts)


def traced_section(d: Diagnosis, *, top: int = 10) -> list[RenderableType]:
    """doctor --trace: connect() failures in the last S s and the measured churn (issue 13)."""
    from timewait.doctor import trace as T
    from timewait.render.trace import report_section

    tr = T.traced(d.snapshot)
    return [] if tr is None else report_section(tr, top=top)


def render_report(d: Diagnosis, *, top: int = 10) -> RenderableType:
    a = d.analysis
    parts: list[RenderableType] = [header(d), Text(), totals_table(a), Text()]
    parts += [pools_table(a), Text()]
    parts += traced_section(d, top=top)
    if a.n_destinations:
        parts += [destinations_table(a.destinations(top), a.n_destinations), Text()]
    nat = nat_table(a, top)
    if nat is not None:
        parts += [nat, Text()]
    if a.totals.time_wait:
        parts += [Text("TIME_WAIT timers left", style="bold"), histogram(a), Text()]
    parts.append(Text("Findings", style="bold"))
    for i, f in enumerate(d.findings, 1):
        parts += [finding_block(f, i), Text()]
    parts.append(
        Text(
            "Not remedies: tcp_fin_timeout (bounds orphaned FIN_WAIT2, not TIME_WAIT), "
            "tcp_tw_recycle (removed in Linux 4.12), lowering tcp_max_tw_buckets (skips "
            "TIME_WAIT's protection).",
            style="dim",
        )
    )
    return Group(*parts)


def print_report(
    d: Diagnosis, console: Console, *, top: int = 10
) -> None:  # pragma: no cover - thin
    console.print(render_report(d, top=top))
