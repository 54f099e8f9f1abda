"""The catalog of lab experiments (like timewait.sim.scenario's CATALOG)."""

from __future__ import annotations

from collections.abc import Mapping

from timewait.lab.experiments.base import Experiment, LabError

CATALOG: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add an experiment; names are unique."""
    if experiment.name in CATALOG:
        raise ValueError(f"experiment {experiment.name!r} registered twice")
    CATALOG[experiment.name] = experiment
    return experiment


def load_catalog() -> Mapping[str, Experiment]:
    """Import the experiment modules (each registers its experiments)."""
    from timewait.lab.experiments import apps, closing, nat, plan, pools, ports  # noqa: F401

    return CATALOG


def get(name: str) -> Experiment:
    """An experiment by name; LabError lists the names."""
    load_catalog()
    try:
        return CATALOG[name]
    except KeyError:
        raise LabError(
            f"unknown experiment {name!r}: `timewait lab list` shows {', '.join(sorted(CATALOG))}"
        ) from None
