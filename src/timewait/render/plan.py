"""`timewait plan` output: the ranked table, the --json document, and the series for --plot.

Pure: builds rich renderables and dicts from a doctor.plan.Plan; the CLI prints and writes.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from timewait.doctor.nat import KIND_NAT
from timewait.doctor.plan import AS_IS, DestinationPlan, OptionResult, Plan
from timewait.render.report import human_seconds

PLAN_SCHEMA = "timewait-plan/2"
# What "onset" and "failures" are, per kind: connect()'s EADDRNOTAVAIL on a client; a SYN the
# NAT drops (no translated port: insert_failed) on a masquerading router.
HEADINGS = {KIND_NAT: ("first drop", "drops/s")}
SOCKET_HEADINGS = ("first EADDRNOTAVAIL", "failures/s")


def headings(d: DestinationPlan) -> tuple[str, str]:
    """The onset and failure column names for this kind of pool."""
    return HEADINGS.get(d.kind, SOCKET_HEADINGS)


def option_label(o: OptionResult) -> str:
    if o.option == AS_IS:
        return "as is"
    return f"{o.option}={o.value}" if o.value else o.option


def _onset(o: OptionResult) -> str:
    return "never" if o.onset_s is None else f"in {human_seconds(o.onset_s)}"


def destination_table(d: DestinationPlan, horizon_s: float) -> Table:
    held = "translated ports" if d.kind == KIND_NAT else "ports"
    tab = Table(
        title=f"{d.label}: churn {d.churn_per_s:,.1f}/s, {d.held_now:,} {held} held now "
        f"({d.time_wait_now:,} TIME_WAIT); {horizon_s:,.0f} s ahead",
        title_justify="left",
        title_style="bold",
        show_edge=False,
    )
    onset, failures = headings(d)
    tab.add_column("#", justify="right")
    tab.add_column("option", no_wrap=True)
    tab.add_column(onset, justify="right", no_wrap=True)
    tab.add_column(failures, justify="right")
    tab.add_column("ports left", justify="right")
    tab.add_column("usable", justify="right")
    rows = [("-", d.as_is), *((str(i), o) for i, o in enumerate(d.options, 1))]
    for rank, o in rows:
        style = "bold red" if o.failures_per_s > 0 else ("yellow" if o.onset_s else "green")
        tab.add_row(
            rank,
            Text(option_label(o), style="bold" if o.option == AS_IS else ""),
            _onset(o),
            Text(f"{o.failures_per_s:,.1f}", style=style),
            f"{o.headroom:,}",
            f"{o.usable:,}",
        )
    return tab


def render_plan(plan: Plan) -> RenderableType:
    parts: list[RenderableType] = [Text("timewait plan", style="bold")]
    if plan.destinations:  # NAT pools' churn is said in a note: it comes from their timers
        parts.append(Text(f"churn: {plan.churn_basis}", style="dim"))
    parts.append(Text())
    for d in plan.all:
        parts += [destination_table(d, plan.horizon_s), Text()]
        for i, o in enumerate(d.options, 1):
            t = Text(f"{i}) {option_label(o)}: ", style="bold")
            if o.note:
                t.append(f"[{o.note}] ", style="italic")
            t.append(o.changes + " ")
            t.append("Risk: ", style="dim")
            t.append(o.risk)
            parts.append(t)
        parts.append(Text())
    for n in plan.notes:
        parts.append(Text(f"note: {n}", style="yellow"))
    if not plan.all:
        parts.append(Text("Nothing to plan: no destination or NAT pool is churning now."))
    return Group(*parts)


def option_json(o: OptionResult) -> dict[str, Any]:
    return {
        "option": o.option,
        "value": o.value,
        "onset_s": None if o.onset_s is None else round(o.onset_s, 3),
        "failures_per_s": o.failures_per_s,
        "headroom": o.headroom,
        "usable": o.usable,
        "changes": o.changes,
        "risk": o.risk,
        "note": o.note,
    }


def _pool_json(d: DestinationPlan) -> dict[str, Any]:
    return {
        "kind": d.kind,
        "label": d.label,
        "churn_per_s": round(d.churn_per_s, 3),
        "held_now": d.held_now,
        "time_wait_now": d.time_wait_now,
        "as_is": option_json(d.as_is),
        "options": [option_json(o) for o in d.options],
    }


def plan_json(plan: Plan) -> dict[str, Any]:
    """The --json document ("timewait-plan/2"):

    schema, horizon_s, churn_basis (how the destinations' churn was known), notes [..],
    destinations [{kind "socket", label, churn_per_s, held_now, time_wait_now, as_is {option,
    value, onset_s (s after the capture to the first EADDRNOTAVAIL, null = never within the
    horizon), failures_per_s (steady state: the mean over the horizon's last 60 s), headroom
    (fewest ports left over those 60 s), usable, changes, risk, note}, options [same, best
    first]}], nat [the same per NAT pool, kind "nat": label "NAT translated -> dst:port/proto",
    held_now translated ports held, time_wait_now conntrack TIME_WAIT entries; onset_s is the
    first SYN dropped for want of a translated port, failures_per_s SYNs dropped per second
    over the horizon's last conntrack TIME_WAIT life, headroom the fewest free ports then in the
    fullest translated address's pool (on Linux >= 6.5 TIME_WAIT entries count as free: a SYN
    may evict them), usable the range times the addresses the churning clients reach; note
    says how clients hash over several addresses].

    /2 added: `kind` on every destination, `note` on every option, and the `nat` list.
    """
    return {
        "schema": PLAN_SCHEMA,
        "horizon_s": plan.horizon_s,
        "churn_basis": plan.churn_basis,
        "notes": list(plan.notes),
        "destinations": [_pool_json(d) for d in plan.destinations],
        "nat": [_pool_json(d) for d in plan.nat],
    }


def plan_series(d: DestinationPlan) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """{option: {metric: (times, values)}}: ports in use and failures/s per option (for a NAT
    pool: translated ports held and SYNs dropped per second)."""
    held, failed = (
        ("translated_ports_held", "syns_dropped_per_s")
        if d.kind == KIND_NAT
        else ("ports_in_use", "failures_per_s")
    )
    out = {}
    for o in (d.as_is, *d.options):
        out[option_label(o)] = {
            held: (list(o.times), list(o.ports_in_use)),
            failed: (list(o.times), list(o.failures_series)),
        }
    return out
