"""Charts for the HTML report, as inline SVG text (`timewait report -o FILE.html`).

matplotlib draws them (the same library as --plot), through its object API only, into SVG that
the page embeds: text stays text (svg.fonttype "none": the reader's sans-serif, nothing to
fetch), no width/height (the viewBox scales it to a phone's width), no date, and ids salted per
chart so two charts on one page never share a clip-path id.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from timewait.doctor.plan import DestinationPlan


# Any: matplotlib types rc keys as a Literal of every name, which a plain dict never matches.
STYLE: Final[Any] = {"svg.fonttype": "none", "font.size": 9.0, "axes.titlesize": 9.0}


def _figure(width_in: float, height_in: float) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), layout="constrained")


def to_svg(fig: Figure, salt: str, title: str) -> str:
    """The figure as an <svg> element for an HTML page, with an accessible title."""
    import matplotlib

    buf = io.StringIO()
    rc: Any = {**STYLE, "svg.hashsalt": salt}
    with matplotlib.rc_context(rc):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]  # the XML declaration and DOCTYPE belong to files, not pages
    # Scale with the page: keep the viewBox, drop the fixed size.
    svg = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r"<svg\1", svg, count=1)
    svg = svg.replace("<svg", f'<svg role="img" aria-label="{_attr(title)}"', 1)
    # The page sets the font; matplotlib names DejaVu Sans, which a phone may lack.
    return svg.replace("font-family:'DejaVu Sans'", "font-family:inherit").replace(
        "font-family: 'DejaVu Sans'", "font-family: inherit"
    )


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def timer_histogram_svg(counts: Sequence[int], bucket_s: int, salt: str = "timers") -> str:
    """TIME_WAITs by time left: one bar per bucket, the last one open-ended."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        return _timer_histogram(counts, bucket_s, salt)


def _timer_histogram(counts: Sequence[int], bucket_s: int, salt: str) -> str:
    fig = _figure(6.4, 2.2)
    ax = fig.subplots()
    n = len(counts)
    labels = [f"{i * bucket_s}-{(i + 1) * bucket_s}" for i in range(n)]
    labels[-1] += "+"
    bars = ax.bar(range(n), list(counts), color="#3b6ea8")
    ax.bar_label(bars, labels=[f"{c:,}" for c in counts], fontsize="small")
    ax.set_xticks(range(n), labels)
    ax.set_xlabel("seconds of TIME_WAIT left")
    ax.set_ylabel("sockets")
    ax.spines[["top", "right"]].set_visible(False)
    ax.margins(y=0.15)
    return to_svg(fig, salt, "TIME_WAIT sockets by time left")


def plan_svg(d: DestinationPlan, labels: Sequence[str], salt: str) -> str:
    """Ports in use and failures per second over time, one line per option (as is dashed); for
    a NAT pool, translated ports held (the fullest address's) and SYNs dropped."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        return _plan(d, labels, salt)


def _plan(d: DestinationPlan, labels: Sequence[str], salt: str) -> str:
    fig = _figure(7.0, 4.0)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for k, (o, label) in enumerate(zip((d.as_is, *d.options), labels, strict=True)):
        style = {"color": "black", "linestyle": "--"} if k == 0 else {"color": f"C{k - 1}"}
        top.plot(list(o.times), list(o.ports_in_use), label=label, linewidth=1.4, **style)
        bottom.plot(list(o.times), list(o.failures_series), linewidth=1.4, **style)
    top.axhline(d.as_is.usable, color="grey", linewidth=0.8, linestyle=":")
    from timewait.doctor.nat import KIND_NAT

    nat = d.kind == KIND_NAT
    top.set_ylabel("translated ports held" if nat else "ports in use")
    bottom.set_ylabel("SYNs dropped / s" if nat else "EADDRNOTAVAIL / s")
    bottom.set_xlabel("seconds after the capture")
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    top.legend(fontsize="small", loc="best")
    what = "ports held and drops" if nat else "ports in use and failures"
    return to_svg(fig, salt, f"{d.label}: {what} per option")
