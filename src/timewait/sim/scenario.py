"""The contract every scenario follows, and the catalog that lists them.

Theory of operation
-------------------
A Scenario answers one question ("does TIME_WAIT protect against a lost final ACK?") by running
two or more *variants* side by side (with TIME_WAIT / without) on the model and comparing
numbers. `run(params, seed)` is deterministic: the same params and seed give the same
ScenarioResult, byte for byte when serialized. Parameters are declared (name, default, type,
bounds, help) so the CLI can list them, validate `--set key=value` and TOML files, and document
them, all from one place.

A ScenarioResult carries:
  * `variants`: {variant name: {result name: number/str/None}} -- what `--json` prints;
  * `verdict`: one line answering the question with the numbers;
  * `series`: {variant: {metric: (times_s, values)}} -- what `--plot` draws, variants overlaid;
  * `trace`: ladder rungs of one interesting connection -- what `--trace` prints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from timewait.errors import TimewaitError
from timewait.sim.trace import Rung

ParamValue = int | float | bool | str


class ScenarioError(TimewaitError):
    """Unknown scenario, unknown parameter, or a value out of its bounds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Param:
    """One tunable of a scenario."""

    name: str
    default: ParamValue
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None

    def parse(self, text: str | ParamValue) -> ParamValue:
        """Convert text (from --set or TOML) to the default's type and check bounds."""
        kind = type(self.default)
        try:
            if kind is bool:
                if isinstance(text, bool):
                    value: ParamValue = text
                elif str(text).lower() in ("1", "true", "yes", "on"):
                    value = True
                elif str(text).lower() in ("0", "false", "no", "off"):
                    value = False
                else:
                    raise ValueError(text)
            elif kind is int:
                if isinstance(text, float) and not text.is_integer():
                    raise ValueError(text)
                value = int(text)
            elif kind is float:
                value = float(text)
            else:
                value = str(text)
        except (TypeError, ValueError):
            raise ScenarioError(
                f"parameter {self.name}={text!r}: expected {kind.__name__} ({self.help})"
            ) from None
        if self.choices is not None and value not in self.choices:
            raise ScenarioError(
                f"parameter {self.name}={value!r}: choose one of {', '.join(self.choices)}"
            )
        if isinstance(value, int | float) and not isinstance(value, bool):
            if self.min is not None and value < self.min:
                raise ScenarioError(f"parameter {self.name}={value}: must be >= {self.min}")
            if self.max is not None and value > self.max:
                raise ScenarioError(f"parameter {self.name}={value}: must be <= {self.max}")
        return value


Series = dict[str, tuple[Sequence[float], Sequence[float]]]


@dataclass
class ScenarioResult:
    """What a scenario run produced; see the module docstring."""

    scenario: str
    params: dict[str, ParamValue]
    variants: dict[str, dict[str, Any]]
    verdict: str
    series: dict[str, Series] = field(default_factory=dict)
    trace: list[Rung] = field(default_factory=list)
    trace_title: tuple[str, str] = ("left", "right")

    def to_json(self) -> dict[str, Any]:
        """The documented --json shape: scenario, params, variants, verdict."""
        return {
            "scenario": self.scenario,
            "params": dict(self.params),
            "variants": self.variants,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class Scenario:
    """A question, its parameters, and the function that answers it."""

    name: str
    question: str
    params: Sequence[Param]
    run_fn: Callable[[dict[str, ParamValue], int], ScenarioResult]

    def resolve(self, overrides: Mapping[str, str | ParamValue]) -> dict[str, ParamValue]:
        """Defaults with overrides applied and validated (ScenarioError names the problem)."""
        by_name = {p.name: p for p in self.params}
        values: dict[str, ParamValue] = {p.name: p.default for p in self.params}
        for key, text in overrides.items():
            if key not in by_name:
                raise ScenarioError(
                    f"scenario {self.name} has no parameter {key!r}: "
                    f"choose from {', '.join(by_name) or '(none)'}"
                )
            values[key] = by_name[key].parse(text)
        return values

    def run(
        self, overrides: Mapping[str, str | ParamValue] | None = None, seed: int = 1
    ) -> ScenarioResult:
        return self.run_fn(self.resolve(overrides or {}), seed)


CATALOG: dict[str, Scenario] = {}


def register(scenario: Scenario) -> Scenario:
    """Add a scenario to the catalog; names are unique."""
    if scenario.name in CATALOG:
        raise ScenarioError(f"scenario {scenario.name!r} registered twice: rename one of them")
    CATALOG[scenario.name] = scenario
    return scenario


def get(name: str) -> Scenario:
    """A scenario by name (loads the catalog); ScenarioError lists the names."""
    load_catalog()
    try:
        return CATALOG[name]
    except KeyError:
        raise ScenarioError(
            f"unknown scenario {name!r}: `timewait sim list` shows {', '.join(sorted(CATALOG))}"
        ) from None


def load_catalog() -> Mapping[str, Scenario]:
    """Import the scenario modules (each registers its scenarios)."""
    from timewait.sim.scenarios import load_all

    load_all()
    return CATALOG
