"""Scenario modules. Each module registers its scenarios with timewait.sim.scenario.register
when imported; `load_all()` imports every module listed here."""

from __future__ import annotations

import importlib

MODULES = ("packet", "flow", "nat")


def load_all() -> None:
    for name in MODULES:
        importlib.import_module(f"timewait.sim.scenarios.{name}")
