"""`timewait sim list|run`: the scenario catalog on the command line (a thin layer).

Registered in cli.py with `cli.add_command(sim_group, "sim")`. Commands parse options, call
timewait.sim (catalog, TOML loader) and hand results to renderers; errors are TimewaitError
subclasses (ScenarioError, TomlScenarioError, PlotError, ConfigError) that cli.main() prints as
one line with a non-zero exit status. Output goes to the environment's stdout when run under
timewait.cli (obj is a cli.Ctx), else to sys.stdout (CliRunner on the group alone). Progress is
shown on stderr only when stderr is a terminal, so `--json` output stays pure.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import click

from timewait.render.numbers import format_value
from timewait.sim.scenario import ScenarioResult, get, load_catalog


def _streams(obj: Any) -> tuple[TextIO, TextIO]:
    env = getattr(obj, "env", None)
    if env is not None:
        return env.stdout, env.stderr
    return sys.stdout, sys.stderr


def parse_set_options(values: Sequence[str]) -> dict[str, str]:
    """`--set rate=2000 --set port_range=1024-65535` -> {"rate": "2000", ...}."""
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(
                f"{item!r}: expected KEY=VALUE, e.g. --set rate=2000", param_hint="--set"
            )
        out[key.strip()] = value.strip()
    return out


def render_table(result: ScenarioResult, out: TextIO, *, width: int | None = None) -> None:
    """Results as a table: one row per result name, one column per variant, then the verdict."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.scenario}", title_justify="left")
    table.add_column("result", style="bold")
    keys: dict[str, None] = {}
    for results in result.variants.values():
        for k in results:
            keys.setdefault(k, None)
    for variant in result.variants:
        table.add_column(variant, justify="right")
    for k in keys:
        table.add_row(k, *(format_value(v.get(k)) for v in result.variants.values()))
    if width is None:  # a terminal: rich fits the table to it
        Console(file=out, highlight=False, soft_wrap=False).print(table)
    else:  # a pipe or a file: as wide as the table needs, never cut, no trailing blanks
        need = Console(width=1000).measure(table).maximum
        console = Console(file=out, width=max(width, need), highlight=False, soft_wrap=False)
        with console.capture() as cap:
            console.print(table)
        out.write("".join(line.rstrip() + "\n" for line in cap.get().splitlines()))
    # Plain writes: a verdict is one line, never wrapped by the console width.
    params = " ".join(f"{k}={v}" for k, v in result.params.items())
    out.write(f"params: {params}\n")
    out.write(f"verdict: {result.verdict}\n")


@contextlib.contextmanager
def _progress(err: TextIO, text: str) -> Iterator[None]:
    """A spinner on stderr while a scenario runs, only if stderr is a terminal."""
    isatty = getattr(err, "isatty", None)
    if not (isatty and isatty()):
        yield
        return
    from rich.console import Console

    with Console(file=err).status(text):
        yield


@click.group("sim", context_settings={"help_option_names": ["-h", "--help"]})
def sim_group() -> None:
    """Scenarios on the model: each answers one question of the TIME_WAIT story with numbers.

    `timewait sim list` shows the catalog; `timewait sim run NAME` runs one, printing its
    variants side by side and a one-line verdict.
    """


@sim_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.pass_obj
def sim_list(obj: Any, as_json: bool) -> None:
    """List the scenarios: name and the question each answers."""
    out, _ = _streams(obj)
    catalog = load_catalog()
    if as_json:
        data = [
            {
                "name": s.name,
                "question": s.question,
                "params": [
                    {
                        "name": p.name,
                        "default": p.default,
                        "help": p.help,
                        **({"min": p.min} if p.min is not None else {}),
                        **({"max": p.max} if p.max is not None else {}),
                        **({"choices": list(p.choices)} if p.choices else {}),
                    }
                    for p in s.params
                ],
            }
            for s in sorted(catalog.values(), key=lambda s: s.name)
        ]
        json.dump(data, out, indent=2)
        out.write("\n")
        return
    width = max((len(n) for n in catalog), default=10)
    for s in sorted(catalog.values(), key=lambda s: s.name):
        out.write(f"{s.name:<{width}}  {s.question}\n")
    out.write("\nRun one: timewait sim run NAME [--set KEY=VALUE ...]; its parameters: "
              "timewait sim run NAME --help-params\n")  # fmt: skip


@sim_group.command("run")
@click.argument("name", metavar="NAME|FILE.toml")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a scenario parameter, e.g. --set rate=2000. Repeatable.",
)
@click.option("--seed", type=int, default=None, help="Seed of the simulation's RNG [default: 1].")
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON: scenario, params, variants, verdict."
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE.png|FILE.svg",
    help="Draw the time series (TIME_WAIT, ports in use, failures), variants overlaid.",
)
@click.option("--trace", is_flag=True, help="Print the ladder diagram of one connection.")
@click.option("--help-params", is_flag=True, help="List the scenario's parameters and exit.")
@click.pass_obj
def sim_run(
    obj: Any,
    name: str,
    sets: tuple[str, ...],
    seed: int | None,
    as_json: bool,
    plot_path: str | None,
    trace: bool,
    help_params: bool,
) -> None:
    """Run a scenario from the catalog, or a custom one from a TOML file.

    A TOML file names a base scenario and overrides its parameters, optionally in several
    variants (see the README). --set overrides both.
    """
    out, err = _streams(obj)
    if trace and as_json:
        raise click.UsageError("--trace prints a diagram; use it without --json")
    overrides = parse_set_options(sets)
    if help_params:
        scenario = get(name) if not name.endswith(".toml") else _custom(name).base
        out.write(f"{scenario.name}: {scenario.question}\n")
        for p in scenario.params:
            bounds = []
            if p.min is not None:
                bounds.append(f">= {p.min:g}")
            if p.max is not None:
                bounds.append(f"<= {p.max:g}")
            if p.choices:
                bounds.append("one of " + "|".join(p.choices))
            extra = f" ({', '.join(bounds)})" if bounds else ""
            out.write(f"  {p.name}={p.default!s:<22} {p.help}{extra}\n")
        return
    if plot_path is not None:
        from timewait.render.plot import check_plot_path

        check_plot_path(plot_path)  # fail before a long run, not after
    if name.endswith(".toml") or Path(name).is_file():
        from timewait.sim import toml_scenarios

        custom = _custom(name)
        with _progress(err, f"running {custom.name} ({custom.base.name})"):
            result = toml_scenarios.run(custom, overrides, seed)
    else:
        scenario = get(name)
        with _progress(err, f"running {scenario.name}"):
            result = scenario.run(overrides, seed if seed is not None else 1)
    if as_json:
        json.dump(result.to_json(), out, indent=2)
        out.write("\n")
    else:
        isatty = getattr(out, "isatty", None)
        render_table(result, out, width=None if isatty and isatty() else 120)
    if trace:
        if result.trace:
            from timewait.render.ladder import render_ladder

            out.write("\n" + render_ladder(result.trace, *result.trace_title) + "\n")
        else:
            out.write(
                f"\n(no trace: {result.scenario} has no single-connection trace; it counts "
                "connections rather than segments)\n"
            )
    if plot_path is not None:
        from timewait.render.plot import plot_result

        written = plot_result(result, plot_path)
        (err if as_json else out).write(f"plot written to {written}\n")


def _custom(path: str) -> Any:
    from timewait.sim import toml_scenarios

    return toml_scenarios.load(path)
