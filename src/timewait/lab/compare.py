"""Kernel next to model: the headline numbers side by side, with their relative error.

Theory of operation
-------------------
An experiment measures numbers on the kernel and asks the simulator the same question with the
same parameters. `compare()` pairs them by (variant, metric) and computes the relative error
|model - kernel| / |kernel|. A difference above TOLERANCE (5 %) is a MODEL DEFECT: it is shown
in the table and in the JSON (`"status": "MODEL DEFECT"`, `model_defects`), never dropped. A
known, explained difference (e.g. the timer wheel that makes TIME_WAIT last 60.5-62 s) is still
reported; its explanation goes into the row's `note`.

Values that are not numbers (bind results such as "ok"/"EADDRINUSE") match or do not: error 0
or 1. A kernel value of 0 has no relative error: the model must say 0 too, otherwise the row is a
defect with an infinite error (JSON: null).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TextIO

from timewait.render.numbers import format_value

TOLERANCE: Final = 0.05
OK: Final = "ok"
DEFECT: Final = "MODEL DEFECT"


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One headline number measured on the kernel and predicted by the model."""

    variant: str
    metric: str
    kernel: Any
    model: Any
    rel_error: float  # math.inf when the kernel says 0 and the model does not
    note: str = ""

    @property
    def defect(self) -> bool:
        return not self.rel_error <= TOLERANCE

    @property
    def status(self) -> str:
        return DEFECT if self.defect else OK

    def to_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "metric": self.metric,
            "kernel": self.kernel,
            "model": self.model,
            "rel_error": None if math.isinf(self.rel_error) else round(self.rel_error, 4),
            "status": self.status,
            **({"note": self.note} if self.note else {}),
        }


def relative_error(kernel: Any, model: Any) -> float:
    """|model - kernel| / |kernel| for numbers; 0/1 for anything else (equal or not)."""
    num = (int, float)
    if isinstance(kernel, bool) or isinstance(model, bool) or kernel is None or model is None:
        return 0.0 if kernel == model else 1.0
    if isinstance(kernel, num) and isinstance(model, num):
        if kernel == 0:
            return 0.0 if model == 0 else math.inf
        return abs(float(model) - float(kernel)) / abs(float(kernel))
    return 0.0 if str(kernel) == str(model) else 1.0


def compare(
    kernel: Mapping[str, Mapping[str, Any]],
    model: Mapping[str, Mapping[str, Any]],
    headline: Iterable[str],
    *,
    notes: Mapping[str, str] | None = None,
) -> list[Row]:
    """Rows for every headline metric of every variant that both sides have.

    `notes` maps a metric (or "variant/metric") to an explanation printed beside the row.
    """
    notes = notes or {}
    rows: list[Row] = []
    metrics = list(headline)
    for variant, kv in kernel.items():
        mv = model.get(variant)
        if mv is None:
            continue
        for metric in metrics:
            if metric not in kv or metric not in mv:
                continue
            k, m = kv[metric], mv[metric]
            rows.append(
                Row(
                    variant=variant,
                    metric=metric,
                    kernel=k,
                    model=m,
                    rel_error=relative_error(k, m),
                    note=notes.get(f"{variant}/{metric}", notes.get(metric, "")),
                )
            )
    return rows


def defects(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r.defect]


def _fmt_err(err: float) -> str:
    return "inf" if math.isinf(err) else f"{100 * err:.1f}%"


def render(rows: Sequence[Row], out: TextIO) -> None:
    """A plain-text table (fixed columns, no colour, so it reads the same in a log)."""
    head = ("variant", "metric", "kernel", "model", "error", "status")
    cells = [
        (
            r.variant,
            r.metric,
            format_value(r.kernel),
            format_value(r.model),
            _fmt_err(r.rel_error),
            r.status,
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in
              enumerate(head)]  # fmt: skip
    right = (False, False, True, True, True, False)

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out.write(line(head) + "\n")
    out.write(line(["-" * w for w in widths]) + "\n")
    for c in cells:
        out.write(line(c) + "\n")
    noted = [r for r in rows if r.note]
    seen: set[str] = set()
    for r in noted:
        if r.note not in seen:
            seen.add(r.note)
            out.write(f"  note ({r.metric}): {r.note}\n")
