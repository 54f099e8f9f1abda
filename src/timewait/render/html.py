"""The shareable report: one self-contained HTML file (`timewait report -o FILE.html`).

Pure: builds the page from a Diagnosis (and a Plan when there is one) and returns its text; the
CLI writes it. The numbers come from the same functions as `doctor --json` and `plan --json`
(doctor.schema, render.plan), so the page and the JSON never disagree. Jinja2 lays the page out
(templates/report.html.j2, escaping every value); the stylesheet (templates/report.css) and the
charts (render.charts, SVG) are inlined: the file fetches nothing, so it opens offline and in a
chat client's preview. The layout is one column that fits a phone, with tables that scroll
sideways inside their box, and a print stylesheet (no backgrounds, sections kept whole).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from timewait import __version__
from timewait.config import KernelConfig
from timewait.doctor.pools import KIND_BIND
from timewait.doctor.schema import to_json
from timewait.render.report import human_bytes, human_seconds, pool_note
from timewait.render.trace import CALL

if TYPE_CHECKING:
    from timewait.doctor import Diagnosis
    from timewait.doctor.fleet import Ranking
    from timewait.doctor.plan import Plan

CHURN_METHOD: Final = {
    "littles_law": "TIME_WAIT / 60 s: the average over the last minute (one capture)",
    "tw_counter": "the kernel's TcpExt TW counter over the capture window: the rate now",
    "tw_timers": "TIME_WAITs created between the two captures",
    "traced": "the active closes counted in the kernel (eBPF trace)",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Capture:
    """How the report was made (shown at its foot)."""

    command: str = ""  # the command line that made it
    generated_ns: int = 0  # wall clock when the page was written
    extra: dict[str, str] = field(default_factory=dict)


def _utc(ns: int) -> str:
    if not ns:
        return "unknown"
    return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pools(d: Diagnosis) -> list[dict[str, Any]]:
    out = []
    for p in d.analysis.pools(top=3):
        if p.kind == KIND_BIND and p.address == "" and p.held == 0:
            continue  # "any other address" with nothing bound: noise
        out.append(
            {
                "label": p.label, "kind": p.kind, "held": p.held, "size": p.size,
                "headroom": p.headroom, "usage": p.usage, "note": pool_note(p),
            }
        )  # fmt: skip
    return out


def _settings(d: Diagnosis) -> list[dict[str, Any]]:
    now, default = d.snapshot.config.to_text(), KernelConfig().to_text()
    return [
        {
            "name": k,
            "value": v or "(empty)",
            "default": default.get(k, "") or "(empty)",
            "changed": v != default.get(k, ""),
        }
        for k, v in now.items()
    ]


def _plan_context(plan: Plan | None, prefix: str) -> dict[str, Any] | None:
    if plan is None:
        return None
    from timewait.render.charts import plan_svg
    from timewait.render.plan import headings, option_label, plan_json

    doc = plan_json(plan)
    pairs = zip(plan.all, doc["destinations"] + doc["nat"], strict=True)
    for i, (d, dj) in enumerate(pairs):
        labels = [option_label(o) for o in (d.as_is, *d.options)]
        dj["labels"] = labels
        dj["chart"] = plan_svg(d, labels, f"{prefix}plan{i}")
        dj["onset_heading"], dj["failures_heading"] = headings(d)
    return doc


def _summary(doc: dict[str, Any], d: Diagnosis) -> list[dict[str, str]]:
    a = d.analysis
    worst = doc["pools"]["worst"]
    counts: dict[str, int] = {}
    for f in doc["findings"]:
        counts[f["severity"]] = counts.get(f["severity"], 0) + 1
    found = ", ".join(
        f"{counts[s]} {s}" for s in ("critical", "warning", "info", "ok") if counts.get(s)
    )
    return [
        {"label": "TIME_WAIT", "value": f"{doc['totals']['time_wait']:,}",
         "note": f"{doc['totals']['time_wait_client']:,} client side"},
        {"label": "churn", "value": f"{doc['churn_per_s']:,.1f}/s",
         "note": "TIME_WAITs made per second"},
        {"label": "usable ports", "value": f"{doc['ports']['capacity']:,}",
         "note": "range {}-{}".format(*doc["ports"]["range"])},
        {"label": "fullest pool", "value": f"{worst['usage']:.0%}",
         "note": f"{worst['label']}: {worst['headroom']:,} left"},
        {"label": "kernel memory", "value": human_bytes(a.memory.total),
         "note": "TIME_WAIT and sockets"},
        {"label": "findings", "value": str(len(doc["findings"])), "note": found},
    ]  # fmt: skip


def context(
    d: Diagnosis,
    plan: Plan | None = None,
    *,
    top: int = 10,
    capture: Capture | None = None,
    prefix: str = "",
) -> dict[str, Any]:
    """Everything the template shows of one namespace, as plain values. `prefix` keeps the
    element ids (and the charts' SVG ids) of several namespaces on one page apart."""
    from timewait.render.charts import timer_histogram_svg

    capture = capture or Capture()
    doc = to_json(d, top=top)
    a = d.analysis
    window = a.interval_s or a.rate_window_s
    hist = doc["timer_histogram"]
    return {
        "doc": doc,
        "title": f"timewait report: {d.status} · {d.snapshot.namespace}"
        + (f" on {d.snapshot.hostname}" if d.snapshot.hostname else ""),
        "captured": _utc(d.snapshot.time_ns),
        "generated": _utc(capture.generated_ns),
        "command": capture.command,
        "extra": capture.extra,
        "churn_method": CHURN_METHOD[doc["churn_method"]]
        + (f" ({window:.2f} s)" if window else ""),
        "summary": _summary(doc, d),
        "pools": _pools(d),
        "destinations": doc["destinations"],
        "nat": doc["nat"] if doc["nat"] and doc["nat"].get("pools") else None,
        "timers_chart": timer_histogram_svg(hist["counts"], hist["bucket_s"], f"{prefix}timers")
        if d.analysis.totals.time_wait
        else "",
        "settings": _settings(d),
        "trace": doc.get("trace"),
        "plan": _plan_context(plan, prefix),
        "prefix": prefix,
    }


def _render(**values: Any) -> str:
    from importlib.resources import files

    import jinja2

    templates = files("timewait.render") / "templates"
    env = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    env.filters["num"] = lambda x: "-" if x is None else f"{x:,}"
    env.filters["pct"] = lambda x: "-" if x is None else f"{x:.0%}"
    env.filters["secs"] = human_seconds
    env.filters["when"] = lambda s: "never" if s is None else f"in {human_seconds(s)}"
    env.filters["call"] = lambda kind: CALL.get(kind, kind)
    page = env.from_string((templates / "report.html.j2").read_text())
    css = (templates / "report.css").read_text()
    return page.render(css=css, version=__version__, **values)


def render_html(
    d: Diagnosis, plan: Plan | None = None, *, top: int = 10, capture: Capture | None = None
) -> str:
    """The page of one namespace, as text."""
    ns = context(d, plan, top=top, capture=capture)
    return _render(title=ns["title"], fleet=None, ns=ns, namespaces=[])


def render_fleet_html(
    ranking: Ranking,
    plans: Mapping[int, Plan],
    *,
    hostname: str,
    kernel: str,
    notes: Sequence[str] = (),
    top: int = 10,
    capture: Capture | None = None,
) -> str:
    """The page of a node (`report --all-netns`): every namespace ranked, nearest exhaustion
    first, and the full report of the ranking's kept (nearest) namespaces, each with its plan
    when `plans` has one for its inode."""
    doc = ranking.to_json(hostname=hostname, kernel=kernel, notes=tuple(notes))
    kept = ranking.worst_diagnoses()
    detailed = {m.inode for m, _ in kept}
    rank_of = {m["inode"]: m["rank"] for m in doc["namespaces"]}
    for m in doc["namespaces"]:
        m["detailed"] = m["inode"] in detailed
    namespaces = []
    for m, d in kept:
        rank = rank_of.get(m.inode, 0)
        ns = context(d, plans.get(m.inode), top=top, capture=capture, prefix=f"ns{rank}-")
        namespaces.append({**ns, "rank": rank, "name": m.name})
    times = [d.snapshot.time_ns for _, d in kept if d.snapshot.time_ns]
    fleet = {**doc, "captured": _utc(min(times)) if times else "unknown"}
    title = f"timewait report: {doc['status']} · {doc['namespaces_total']} namespaces on {hostname}"
    return _render(title=title, fleet=fleet, ns=None, namespaces=namespaces)
