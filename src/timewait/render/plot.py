"""Plots of scenario time series: one panel per metric, variants overlaid (`timewait sim --plot`).

Draws whatever `ScenarioResult.series` holds ({variant: {metric: (times_s, values)}}), so flow and
packet scenarios plot the same way. matplotlib is imported lazily with the Agg backend (no
display needed) and only through its object API (`Figure`), so nothing global is touched. The
file type follows the extension: .png or .svg.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Final

from timewait.errors import TimewaitError

if TYPE_CHECKING:
    from timewait.sim.scenario import ScenarioResult

FORMATS: Final = (".png", ".svg")
# Preferred panel order and axis labels; other metrics follow in first-seen order.
LABELS: Final = {
    "time_wait": "TIME_WAIT sockets",
    "ports_in_use": "ports in use",
    "failures_per_s": "EADDRNOTAVAIL / s",
    "server_time_wait": "server TIME_WAIT",
    "translated_ports_held": "translated ports held",
    "syns_dropped_per_s": "SYNs dropped / s",
}


class PlotError(TimewaitError):
    """The plot cannot be made: wrong extension, unwritable path, nothing to plot, no matplotlib."""


def check_plot_path(path: str | Path) -> Path:
    """Validate the target before a long run: a .png/.svg file in an existing directory."""
    p = Path(path)
    if p.suffix.lower() not in FORMATS:
        raise PlotError(f"--plot {p}: use a .png or .svg file name (got {p.suffix or 'none'!r})")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise PlotError(f"--plot {p}: directory {parent} does not exist")
    if p.is_dir():
        raise PlotError(f"--plot {p}: is a directory; give a file name ending in .png or .svg")
    return p


def metric_order(result: ScenarioResult) -> list[str]:
    seen: dict[str, None] = {}
    for series in result.series.values():
        for metric in series:
            seen.setdefault(metric, None)
    preferred = [m for m in LABELS if m in seen]
    return preferred + [m for m in seen if m not in LABELS]


def plot_result(result: ScenarioResult, path: str | Path) -> Path:
    """Write the result's time series to `path` (.png or .svg); returns the path.

    Raises PlotError with a one-line reason; nothing is written then.
    """
    p = check_plot_path(path)
    metrics = metric_order(result)
    if not metrics:
        raise PlotError(f"scenario {result.scenario} has no time series to plot")
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError(
            "--plot needs matplotlib: pip install matplotlib (or timewait[plot])"
        ) from None

    fig = Figure(figsize=(10, 2.6 * len(metrics) + 1.2), layout="constrained")
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    # One colour per variant across all panels, so "model" is the same colour everywhere.
    colors = {v: f"C{i % 10}" for i, v in enumerate(result.series)}
    for ax, metric in zip(axes, metrics, strict=True):
        for variant, series in result.series.items():
            if metric in series:
                times, values = series[metric]
                ax.plot(
                    list(times), list(values), label=variant, linewidth=1.4, color=colors[variant]
                )
        ax.set_ylabel(LABELS.get(metric, metric.replace("_", " ")))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(result.scenario + "\n" + textwrap.fill(result.verdict, 120), fontsize="medium")
    fmt = p.suffix.lower().lstrip(".")
    # No creation date or software version in the file: the same run gives the same bytes.
    metadata: dict[str, str | None] = {"Date": None} if fmt == "svg" else {"Software": None}
    try:
        fig.savefig(p, format=fmt, dpi=110, metadata=metadata)
    except OSError as e:
        raise PlotError(f"cannot write plot {p}: {e.strerror or e}") from None
    return p
