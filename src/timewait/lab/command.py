"""`timewait lab list|run|cleanup`: the experiments on the command line (a thin layer).

Register in cli.py with `cli.add_command(lab_group, "lab")`. Like `sim`, commands parse options,
call timewait.lab and render; output goes to the cli environment's streams when run under
timewait.cli, else to sys.stdout/sys.stderr. Errors (TimewaitError: LabUnavailable for no root
or a missing nft/nginx, LabError for an unknown experiment or a bad --set) become one line and a
non-zero exit status; with --traceback (cli) they are re-raised. Progress goes to stderr only
when stderr is a terminal, so --json output stays pure. `main()` runs the group on its own (the
interrupt tests and `python -m timewait.lab.command` use it).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

import click

from timewait.errors import TimewaitError
from timewait.sim.command import _streams, parse_set_options
from timewait.status import ExitStatus


class LabCommandError(click.ClickException):
    """A TimewaitError as a one-line click error with the error's exit status."""

    def __init__(self, error: TimewaitError) -> None:
        super().__init__(str(error))
        self.exit_code = int(error.exit_status)  # type: ignore[misc]


def _fail(ctx: click.Context, error: TimewaitError) -> NoReturn:
    root = ctx.find_root()
    if root.meta.get("traceback"):
        raise error
    raise LabCommandError(error) from None


def _verdict(ctx: click.Context, status: ExitStatus) -> None:
    """A result's exit status (1: kernel and model disagree). Under `timewait` the status is the
    Ctx's (click's standalone_mode=False returns ctx.exit's code, and cli.main reads the Ctx);
    invoked alone, as in tests, through ctx.exit."""
    if hasattr(ctx.obj, "exit_status"):
        ctx.obj.exit_status = status
    elif status != ExitStatus.OK:
        ctx.exit(int(status))


def _progress(err: TextIO) -> Any:
    isatty = getattr(err, "isatty", None)
    if not (isatty and isatty()):
        return None

    def show(msg: str) -> None:
        err.write(f"\r\x1b[2K{msg}")
        err.flush()

    return show


@click.group("lab", context_settings={"help_option_names": ["-h", "--help"]})
def lab_group() -> None:
    """Experiments on the running kernel, in throwaway network namespaces, next to the model.

    `timewait lab list` shows them; `timewait lab run NAME` runs one (root needed) and prints
    kernel and model side by side; differences above 5% are reported as MODEL DEFECT.
    """


@lab_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
@click.pass_obj
def lab_list(obj: Any, as_json: bool) -> None:
    """List the experiments: name and the question each asks the kernel."""
    from timewait.lab.experiments import load_catalog

    out, _ = _streams(obj)
    catalog = load_catalog()
    items = sorted(catalog.values(), key=lambda e: e.name)
    if as_json:
        data = [
            {
                "name": e.name,
                "question": e.question,
                "needs": list(e.needs),
                "params": [
                    {"name": p.name, "default": p.default, "help": p.help} for p in e.params
                ],
            }
            for e in items
        ]
        json.dump(data, out, indent=2)
        out.write("\n")
        return
    width = max(len(e.name) for e in items)
    for e in items:
        out.write(f"{e.name:<{width}}  {e.question}\n")
    out.write(
        "\nRun one (as root): timewait lab run NAME [--set KEY=VALUE ...] [--json] [--plot FILE]\n"
    )


@lab_group.command("run")
@click.argument("name")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a parameter.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: kernel, model, comparison.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE.png|FILE.svg",
    help="Draw the kernel's and the model's time series, overlaid.",
)
@click.option("--quick", is_flag=True, help="The short form the test suite runs (seconds).")
@click.option("--help-params", is_flag=True, help="List the experiment's parameters and exit.")
@click.pass_context
def lab_run(
    ctx: click.Context,
    name: str,
    sets: tuple[str, ...],
    as_json: bool,
    plot_path: str | None,
    quick: bool,
    help_params: bool,
) -> None:
    """Run one experiment on the kernel and the same question on the model."""
    from timewait.lab.experiments import get

    out, err = _streams(ctx.obj)
    try:
        experiment = get(name)
        if help_params:
            out.write(f"{experiment.name}: {experiment.question}\n")
            for p in experiment.params:
                out.write(f"  {p.name}={p.default!s:<16} {p.help}\n")
            return
        overrides: dict[str, Any] = dict(experiment.quick) if quick else {}
        overrides.update(parse_set_options(sets))
        experiment.resolve(overrides)  # bad keys/values fail before root is checked
        if plot_path is not None:
            from timewait.render.plot import check_plot_path

            check_plot_path(plot_path)
        from timewait.lab.namespaces import require_root

        require_root()
        _sweep_before_run(err)
        result = experiment.run(overrides, progress=_progress(err))
        if _progress(err):
            err.write("\r\x1b[2K")
    except TimewaitError as e:
        _fail(ctx, e)
    if as_json:
        json.dump(result.to_json(), out, indent=2)
        out.write("\n")
    else:
        from timewait.lab import compare as cmp

        out.write(f"lab {result.experiment} on Linux {result.kernel_release}: kernel vs model\n\n")
        cmp.render(result.rows, out)
        defects = result.defects
        out.write(f"\nparams: {' '.join(f'{k}={v}' for k, v in result.params.items())}\n")
        for note in result.notes:
            out.write(f"note: {note}\n")
        out.write(f"verdict: {result.verdict}\n")
        if defects:
            names = ", ".join(f"{r.variant}/{r.metric}" for r in defects)
            out.write(f"MODEL DEFECT: {len(defects)} number(s) differ by more than 5%: {names}\n")
        else:
            out.write("model agrees with the kernel within 5% on every headline number\n")
        out.write(f"({result.elapsed_s:.1f} s)\n")
    if plot_path is not None:
        if not result.series:
            (err if as_json else out).write(f"(no plot: {name} has no time series)\n")
            return
        from timewait.render.plot import plot_result

        try:
            written = plot_result(result.as_scenario_result(), plot_path)
        except TimewaitError as e:
            _fail(ctx, e)
        (err if as_json else out).write(f"plot written to {written}\n")


@lab_group.command("probe")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON: every verdict and its diffs.")
@click.option("--list", "list_only", is_flag=True, help="List the corpus: name and rule.")
@click.option("--record", is_flag=True,
              help="Print each script with the kernel's answers (three runs each).")  # fmt: skip
@click.option("--jobs", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Namespaces running at once.")  # fmt: skip
@click.option("--verbose", "-v", is_flag=True, help="Show every segment of both sides.")
@click.option("--fuzz", "fuzz_n", type=click.IntRange(1, 100_000), default=None,
              help="Instead of the corpus: N random sequences (needs hypothesis); a "
                   "disagreement is shrunk and printed as a script.")  # fmt: skip
@click.option("--seed", "fuzz_seed", type=int, default=0, show_default=True,
              help="First Hypothesis seed of --fuzz (one per job).")  # fmt: skip
@click.pass_context
def lab_probe(
    ctx: click.Context,
    names: tuple[str, ...],
    as_json: bool,
    list_only: bool,
    record: bool,
    jobs: int,
    verbose: bool,
    fuzz_n: int | None,
    fuzz_seed: int,
) -> None:
    """Run conformance scripts on this kernel and on the model, segment by segment.

    Each script (NAME from `--list`, or a path to a .probe file; none: the whole corpus) runs
    in a namespace of its own with a TUN device at 192.0.2.1, and again on a model host at the
    times the kernel saw each step. Segments (flags, relative seq/ack, timestamps, length,
    timing within 4 ms + 12.5%), call results, states, timers and named counters are compared.
    Exit status 1 if the kernel and the model disagree anywhere, 3 on an error.

    \b
    Examples:
      sudo timewait lab probe                      # the whole corpus, about 10 s
      sudo timewait lab probe tw-paws-reject -v    # one script, every segment of both sides
      sudo timewait lab probe my-case.probe --record   # fill in the kernel's answers
      sudo timewait lab probe --fuzz 1000 --seed 7     # random sequences, shrunk on failure
    """
    from timewait.lab.probe import report, runner

    out, err = _streams(ctx.obj)
    if fuzz_n is not None:
        _probe_fuzz(ctx, fuzz_n, jobs, fuzz_seed, as_json)
        return
    try:
        scripts = runner.choose(names)
        if list_only:
            report.render_list(scripts, out, as_json=as_json)
            return
        show = _progress(err)
        result = report.run(scripts, jobs=jobs, progress=show, repeat=3 if record else 1)
        if show:
            err.write("\r\x1b[2K")
    except TimewaitError as e:
        _fail(ctx, e)
    if record:
        for text in result.recorded():
            out.write(text)
            out.write("\n")
    elif as_json:
        json.dump(result.to_json(), out, indent=2)
        out.write("\n")
    else:
        report.render(result, out, verbose=verbose)
    if not result.all_agree:
        _verdict(ctx, ExitStatus.WARNING)


def _probe_fuzz(ctx: click.Context, n: int, jobs: int, first_seed: int, as_json: bool) -> None:
    out, err = _streams(ctx.obj)
    try:
        from timewait.lab.probe import fuzz
    except ImportError as e:  # hypothesis is a development dependency
        from timewait.lab.namespaces import LabUnavailable

        _fail(ctx, LabUnavailable(f"--fuzz needs hypothesis (pip install hypothesis): {e}"))
    show = _progress(err)
    try:
        res = fuzz.fuzz(n, jobs=jobs, base_seed=first_seed, progress=show)
    except TimewaitError as e:
        _fail(ctx, e)
    if show:
        err.write("\r\x1b[2K")
    if as_json:
        json.dump(fuzz.to_json(res), out, indent=2)
        out.write("\n")
    else:
        out.write(fuzz.render(res) + "\n")
    if res.failures or res.errors:
        _verdict(ctx, ExitStatus.WARNING)


@lab_group.command("cleanup")
@click.pass_context
def lab_cleanup(ctx: click.Context) -> None:
    """Remove what interrupted runs left (namespaces with their interfaces, nftables tables and
    processes, temp directories): only what runs that are gone recorded, never anything of a
    run still going. `timewait lab run` does the same before it starts."""
    from timewait.lab.namespaces import require_root
    from timewait.lab.owner import sweep

    out, err = _streams(ctx.obj)
    try:
        require_root()
        swept = sweep()
    except TimewaitError as e:
        _fail(ctx, e)
    for line in swept.removed:
        out.write(f"removed {line}\n")
    if not swept.removed:
        out.write("nothing to clean up\n")
    if swept.live_runs:
        pids = ", ".join(str(o.pid) for o in swept.live_runs)
        out.write(f"left alone: what {len(swept.live_runs)} running lab run(s) hold (pid {pids})\n")
    if swept.unrecorded:
        out.write(
            f"left alone: {len(swept.unrecorded)} tw-* namespace(s) with no owner record (made "
            "by an older timewait or under another TIMEWAIT_LAB_STATE); `ip netns del NAME` "
            "removes one that nothing uses\n"
        )
    if swept.failed:
        for line in swept.failed:
            err.write(f"timewait: could not remove {line}\n")
        _fail(ctx, LabCleanupFailed(f"{len(swept.failed)} thing(s) could not be removed"))


class LabCleanupFailed(TimewaitError):
    """Some leftover could not be removed (the lines before say which, and why)."""


def _sweep_before_run(err: TextIO) -> None:
    """What runs that are gone left: removed before a new run starts (one line on stderr)."""
    from timewait.lab.owner import sweep

    swept = sweep()
    if swept.removed:
        err.write(
            f"timewait lab: removed {len(swept.removed)} leftover(s) of interrupted runs "
            f"({'; '.join(swept.removed[:3])}{'; ...' if len(swept.removed) > 3 else ''})\n"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run lab_group on its own; returns the exit status (one-line errors, 130 on Ctrl-C)."""
    try:
        lab_group.main(args=list(argv if argv is not None else sys.argv[1:]),
                       prog_name="timewait lab", standalone_mode=False)  # fmt: skip
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.ClickException as e:
        sys.stderr.write(f"timewait: error: {e.format_message()}\n")
        return e.exit_code
    except (click.Abort, KeyboardInterrupt):
        sys.stderr.write("timewait: interrupted\n")
        return ExitStatus.INTERRUPTED
    return ExitStatus.OK


if __name__ == "__main__":
    sys.exit(main())
