"""Custom scenarios from a TOML file: a base scenario, its parameters, and optional variants.

    # my-check.toml               run with: timewait sim run my-check.toml
    scenario = "port-exhaustion"  # the base scenario (`timewait sim list`)
    name = "api-gateway"          # optional: the name shown in the output
    seed = 7                      # optional; --seed wins
    [params]                      # overrides for every variant (--set wins over these)
    rate = 800
    port_range = "32768-60999"
    [variants.today]              # optional: one run of the base scenario per variant
    [variants.wider-range]
    port_range = "1024-65535"

Validation happens before anything runs, with one-line errors that name the file and line:
bad TOML (tomllib's own line/column), an unknown key, a value of the wrong TOML type (strict:
a number where a string is expected is refused), or a value out of bounds (Param.parse).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from timewait.sim.scenario import Param, ParamValue, Scenario, ScenarioError, ScenarioResult, get

TOP_KEYS: Final = ("scenario", "name", "description", "seed", "params", "variants")


class TomlScenarioError(ScenarioError):
    """A custom scenario file that cannot be run; the message names file, line and fix."""


@dataclass(frozen=True)
class CustomScenario:
    """A validated TOML scenario: base scenario + overrides (+ variants)."""

    source: str
    name: str
    base: Scenario
    params: dict[str, ParamValue]
    variants: dict[str, dict[str, ParamValue]] = field(default_factory=dict)
    seed: int | None = None
    description: str = ""


def _line_of(text: str, key: str, section: str | None) -> int | None:
    """1-based line where `key = ...` appears (inside [section] if given), for error messages."""
    current: str | None = None
    pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
    fallback = None
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.strip("[]").strip().replace('"', "").replace("'", "")
            continue
        if pattern.search(line):
            if current == section or (section is None and current is None):
                return n
            fallback = fallback or n
        elif section is not None and current == section.rpartition(".")[0] and key in line:
            fallback = fallback or n
    return fallback


def _where(source: str, text: str, key: str, section: str | None) -> str:
    line = _line_of(text, key, section)
    return f"{source}:{line}" if line else source


def _check_value(param: Param, value: object, where: str) -> ParamValue:
    kind = type(param.default)
    ok = (
        isinstance(value, bool)
        if kind is bool
        else (isinstance(value, int) and not isinstance(value, bool))
        if kind is int
        else (isinstance(value, int | float) and not isinstance(value, bool))
        if kind is float
        else isinstance(value, str)
    )
    if not ok:
        want = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
        raise TomlScenarioError(
            f"{where}: {param.name} = {value!r} has the wrong type: expected "
            f"{want.get(kind, kind.__name__)} ({param.help})"
        )
    try:
        return param.parse(value)  # type: ignore[arg-type]
    except ScenarioError as e:
        raise TomlScenarioError(f"{where}: {e}") from None


def _check_table(
    scenario: Scenario, table: object, text: str, source: str, section: str
) -> dict[str, ParamValue]:
    if not isinstance(table, dict):
        raise TomlScenarioError(
            f"{_where(source, text, section.rpartition('.')[2], None)}: [{section}] must be a "
            f"table of parameter = value"
        )
    by_name = {p.name: p for p in scenario.params}
    out: dict[str, ParamValue] = {}
    for key, value in table.items():
        where = _where(source, text, key, section)
        if key not in by_name:
            raise TomlScenarioError(
                f"{where}: unknown key {key!r} in [{section}]: scenario {scenario.name} has "
                f"{', '.join(by_name) or 'no parameters'}"
            )
        out[key] = _check_value(by_name[key], value, where)
    return out


def loads(text: str, source: str = "<toml>") -> CustomScenario:
    """Parse and validate a custom scenario; TomlScenarioError names what is wrong and where."""
    try:
        doc: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TomlScenarioError(f"{source}: invalid TOML: {e}") from None
    for key in doc:
        if key not in TOP_KEYS:
            raise TomlScenarioError(
                f"{_where(source, text, key, None)}: unknown key {key!r}: a scenario file has "
                f"{', '.join(TOP_KEYS)}"
            )
    base_name = doc.get("scenario")
    if not isinstance(base_name, str):
        raise TomlScenarioError(
            f'{source}: missing scenario = "NAME" (the base scenario; `timewait sim list` '
            "shows the names)"
        )
    try:
        base = get(base_name)
    except ScenarioError as e:
        raise TomlScenarioError(f"{_where(source, text, 'scenario', None)}: {e}") from None
    seed = doc.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TomlScenarioError(
            f"{_where(source, text, 'seed', None)}: seed = {seed!r}: expected an integer"
        )
    for key in ("name", "description"):
        if key in doc and not isinstance(doc[key], str):
            raise TomlScenarioError(
                f"{_where(source, text, key, None)}: {key} = {doc[key]!r}: expected a string"
            )
    params = _check_table(base, doc.get("params", {}), text, source, "params")
    variants: dict[str, dict[str, ParamValue]] = {}
    raw_variants = doc.get("variants", {})
    if not isinstance(raw_variants, dict):
        raise TomlScenarioError(
            f"{_where(source, text, 'variants', None)}: variants must be tables, "
            'e.g. [variants.wide] port_range = "1024-65535"'
        )
    for vname, table in raw_variants.items():
        variants[vname] = _check_table(base, table, text, source, f"variants.{vname}")
    return CustomScenario(
        source=source,
        name=str(doc.get("name", base.name)),
        base=base,
        params=params,
        variants=variants,
        seed=seed,
        description=str(doc.get("description", "")),
    )


def load(path: str | Path) -> CustomScenario:
    """Read a TOML scenario file (TomlScenarioError if missing or invalid)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TomlScenarioError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TomlScenarioError(f"{p}: cannot read: {e}") from None
    return loads(text, str(p))


def _describe(overrides: Mapping[str, ParamValue]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "(base parameters)"


def run(
    custom: CustomScenario, sets: Mapping[str, str] | None = None, seed: int | None = None
) -> ScenarioResult:
    """Run every variant (or the base once) with params < variant < --set; merged result.

    With variants, result variants are named "VARIANT / BASE-VARIANT", each with an `overrides`
    entry; the verdict joins the variants' verdicts.
    """
    sets = dict(sets or {})
    seed = seed if seed is not None else (custom.seed if custom.seed is not None else 1)
    common = custom.base.resolve({**custom.params, **sets})
    if not custom.variants:
        res = custom.base.run({**custom.params, **sets}, seed)
        res.scenario = custom.name
        return res
    variants: dict[str, dict[str, Any]] = {}
    series = {}
    verdicts: list[str] = []
    first: ScenarioResult | None = None
    for vname, overrides in custom.variants.items():
        res = custom.base.run({**custom.params, **overrides, **sets}, seed)
        first = first or res
        for inner, results in res.variants.items():
            key = f"{vname} / {inner}"
            variants[key] = {"overrides": _describe(overrides), **results}
            if inner in res.series:
                series[key] = res.series[inner]
        verdicts.append(f"{vname}: {res.verdict}")
    assert first is not None
    return ScenarioResult(
        scenario=custom.name,
        params=common,
        variants=variants,
        verdict=" | ".join(verdicts),
        series=series,
        trace=first.trace,
        trace_title=first.trace_title,
    )
