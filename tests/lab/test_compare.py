"""Kernel-vs-model comparison rows: relative errors and the 5% MODEL DEFECT rule (no root)."""

from __future__ import annotations

import io
import math

from timewait.lab import compare as cmp
from timewait.lab.experiments.base import Experiment, LabError
from timewait.sim.scenario import Param


def test_relative_error_of_numbers_strings_and_zero() -> None:
    assert cmp.relative_error(100, 104) == 0.04
    assert cmp.relative_error("ok", "ok") == 0.0
    assert cmp.relative_error("ok", "EADDRINUSE") == 1.0
    assert cmp.relative_error(0, 0) == 0.0
    assert math.isinf(cmp.relative_error(0, 1))
    assert cmp.relative_error(None, None) == 0.0


def test_difference_above_five_percent_is_a_model_defect_in_table_and_json() -> None:
    rows = cmp.compare(
        {"v": {"a": 100, "b": 100, "c": 0}}, {"v": {"a": 105, "b": 106, "c": 3}}, ["a", "b", "c"]
    )
    assert [r.status for r in rows] == ["ok", "MODEL DEFECT", "MODEL DEFECT"]
    assert rows[2].to_json()["rel_error"] is None
    out = io.StringIO()
    cmp.render(rows, out)
    assert out.getvalue().count("MODEL DEFECT") == 2


def test_experiment_rejects_unknown_and_bad_parameters() -> None:
    exp = Experiment(
        name="x",
        question="?",
        params=(Param(name="rate", default=1.0, min=1, help="r"),),
        run_fn=lambda p, progress: None,  # type: ignore[arg-type,return-value]
    )
    for bad in ({"nope": "1"}, {"rate": "abc"}, {"rate": "0"}):
        try:
            exp.resolve(bad)
        except LabError as e:
            assert "\n" not in str(e)
        else:
            raise AssertionError(f"{bad} accepted")
