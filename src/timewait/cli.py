"""The `timewait` command: a thin layer that parses arguments, calls the library, renders results
and turns errors into exit statuses (timewait.status.ExitStatus). No logic lives here.

Start-up is kept cheap (issue 10 item 5): numpy, rich and each command's modules are imported
by the command that needs them, and the `sim` and `lab` groups load on first use (LazyGroup), so
`timewait --help` pays for click alone.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import click

from timewait import __version__
from timewait.config import PROFILES, KernelConfig, get_profile
from timewait.env import Environment
from timewait.errors import TimewaitError
from timewait.status import ExitStatus

if TYPE_CHECKING:
    from rich.console import Console

    from timewait.snapshot import Snapshot


def parse_sets(values: Sequence[str], base: KernelConfig | None = None) -> KernelConfig:
    """`--set tcp_tw_reuse=1 --set ip_local_port_range='40000 40009'` -> KernelConfig."""
    text: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE, e.g. tcp_tw_reuse=1")
        text[key.strip()] = value.strip()
    unknown = [k for k in text if k.replace("/", ".").rsplit(".", 1)[-1] not in _SYSCTL_SET]
    if unknown:
        raise click.BadParameter(
            f"unknown setting {unknown[0]!r}: choose from {', '.join(sorted(_SYSCTL_SET))}"
        )
    return KernelConfig.from_sysctl(text, base=base)


_SYSCTL_SET = frozenset(KernelConfig().to_sysctl())


class Ctx:
    """What every subcommand gets: the environment and the output mode."""

    def __init__(self, env: Environment, argv: Sequence[str] = ()) -> None:
        self.env = env
        self.argv = tuple(argv)  # the arguments as given (the report shows its command)
        self.exit_status = ExitStatus.OK  # a command's verdict (doctor: 0/1/2)

    def print_rich(self, renderable: Any) -> None:
        """Print a rich renderable; off a terminal, without colour or trailing padding, text
        wrapped at 100 columns and each table as wide as its content (never cut)."""
        console = self.console()
        if self.env.stdout_isatty:
            console.print(renderable)
            return
        from rich.console import Group
        from rich.table import Table

        parts = list(renderable.renderables) if isinstance(renderable, Group) else [renderable]
        out: list[str] = []
        for part in parts:
            con = console
            if isinstance(part, Table):
                need = self.console(width=1000).measure(part).maximum  # its natural width
                if need > console.width:
                    con = self.console(width=need)
            with con.capture() as cap:
                con.print(part)
            out += [ln.rstrip() for ln in cap.get().splitlines()]
        self.env.stdout.write("\n".join(out) + "\n")

    def console(self, width: int | None = None) -> Console:
        """A rich console on env.stdout: colour only on a terminal, 100 columns otherwise."""
        from rich.console import Console

        tty = bool(self.env.stdout_isatty)
        return Console(
            file=self.env.stdout,
            force_terminal=tty,
            no_color=not tty,
            width=width or (None if tty else 100),
            highlight=False,
        )

    def echo(self, text: str = "") -> None:
        self.env.stdout.write(text + "\n")

    def emit_json(self, data: Any) -> None:
        json.dump(data, self.env.stdout, indent=2, sort_keys=False)
        self.env.stdout.write("\n")


set_option = click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="NAME=VALUE",
    help="Override a kernel setting (sysctl leaf name), e.g. --set tcp_tw_reuse=1. Repeatable.",
)
profile_option = click.option(
    "--profile",
    type=click.Choice(sorted(PROFILES)),
    default="linux",
    show_default=True,
    help="Behaviour profile: 'linux' (6.18 semantics) or 'rfc9293' (textbook RFC rules).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")


class LazyGroup(click.Group):
    """A group whose subgroups live in their own modules, imported when first used (the click
    documentation's lazy-loading pattern): `timewait --help` does not import the simulator."""

    lazy: ClassVar[dict[str, tuple[str, str]]] = {
        "sim": ("timewait.sim.command", "sim_group"),
        "lab": ("timewait.lab.command", "lab_group"),
    }
    lazy_help: ClassVar[dict[str, str]] = {
        "sim": "The scenario catalog on the model: list, run, plot, trace.",
        "lab": "Experiments on the running kernel in throwaway namespaces, beside the model.",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            import importlib

            module, attr = self.lazy[name]
            cmd = getattr(importlib.import_module(module), attr)
            self.add_command(cmd, name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List lazy groups with a short help line, without importing them."""
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                cmd = self.commands[name]
                if not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(formatter.width)))
            else:
                rows.append((name, self.lazy_help[name]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="timewait")
@click.option(
    "--traceback", is_flag=True, help="Show Python tracebacks instead of one-line errors."
)
@click.pass_context
def cli(ctx: click.Context, traceback: bool) -> None:
    """See, explain, predict and fix TCP TIME_WAIT and ephemeral-port exhaustion on Linux.

    Exit status: 0 ok/healthy, 1 warnings, 2 critical, 3 error, 64 usage, 130 interrupted.
    """
    ctx.meta["traceback"] = traceback


@cli.group("config")
def config_group() -> None:
    """Kernel settings that shape TIME_WAIT and ephemeral ports."""


@config_group.command("show")
@click.option(
    "--netns",
    metavar="NAME|PATH",
    help="Show the live settings of another network namespace: a name from `ip netns list` "
    "or a file such as /proc/PID/ns/net (needs root).",
)
@click.option(
    "--pid",
    type=click.IntRange(min=1),
    help="Show the live settings of the network namespace of process PID (needs root).",
)
@click.option(
    "--defaults",
    is_flag=True,
    help="Show Linux's defaults (what a new network namespace starts with) instead.",
)
@set_option
@profile_option
@json_option
@click.pass_obj
def config_show(
    obj: Ctx,
    netns: str | None,
    pid: int | None,
    defaults: bool,
    sets: tuple[str, ...],
    profile: str,
    as_json: bool,
) -> None:
    """Show the settings that shape TIME_WAIT and ephemeral ports, and what they imply.

    By default the live settings of this network namespace (or of --netns/--pid), read from
    /proc/sys/net/ipv4; --defaults shows Linux's defaults instead. The first line says which.
    --set NAME=VALUE changes a value on top of either (nothing is written) and is checked
    against the bounds the kernel enforces, so this doubles as a checker:
    `timewait config show --set ip_local_port_range="1000 2000"` explains why Linux would refuse it.
    """
    from timewait.render.config import DEFAULTS, LIVE, config_lines, config_report

    if defaults and (netns or pid):
        raise click.UsageError(
            "--defaults shows Linux's defaults, not a namespace's settings: drop --netns/--pid "
            "or --defaults"
        )
    if netns and pid:
        raise click.UsageError("give either --netns or --pid, not both")
    notes: tuple[str, ...] = ()
    namespace: str | None = None
    if defaults:
        base = KernelConfig()
    else:
        from timewait.live.sysctl import read_config_of

        base, notes, namespace = read_config_of(netns=netns, pid=pid)
    cfg = parse_sets(sets, base=base)
    report = config_report(
        cfg, get_profile(profile), shows=DEFAULTS if defaults else LIVE, namespace=namespace,
        base=base, overridden=[_set_name(item) for item in sets], notes=notes,
    )  # fmt: skip
    if as_json:
        obj.emit_json(report)
    else:
        for line in config_lines(report):
            obj.echo(line)


def _set_name(item: str) -> str:
    """'net.ipv4.tcp_tw_reuse=1' -> 'tcp_tw_reuse' (parse_sets has checked it)."""
    return item.partition("=")[0].strip().replace("/", ".").rsplit(".", 1)[-1]


@cli.command("demo")
@click.option(
    "--lose-final-ack",
    is_flag=True,
    help="Drop the client's final ACK once: watch TIME_WAIT re-ACK the retransmitted FIN.",
)
@set_option
@profile_option
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the model's RNG.")
@json_option
@click.pass_obj
def demo(
    obj: Ctx, lose_final_ack: bool, sets: tuple[str, ...], profile: str, seed: int, as_json: bool
) -> None:
    """Trace one connection on the model: handshake, request, the client closes, TIME_WAIT.

    Two model hosts (198.18.0.1 client, 198.18.0.2 server) on an in-memory wire with 25 ms
    one-way delay. The ladder shows every segment and every state change until the client's
    TIME_WAIT expires 60 s later (240 s with --profile rfc9293).
    """
    from timewait.demo import traced_close
    from timewait.render.ladder import render_ladder

    result = traced_close(
        lose_final_ack=lose_final_ack, config=parse_sets(sets), profile=get_profile(profile),
        seed=seed,
    )  # fmt: skip
    if as_json:
        obj.emit_json(
            {
                "summary": result.summary,
                "ladder": [
                    {
                        "time_ms": r.time / 1e6,
                        "side": "client" if r.left else "server",
                        **({"state": r.state} if r.state else {}),
                        **({"segment": str(r.segment), "lost": r.lost} if r.segment else {}),
                    }
                    for r in sorted(result.rungs, key=lambda r: r.time)
                ],
            }
        )
        return
    obj.echo(render_ladder(result.rungs, result.left, result.right))
    obj.echo()
    s = result.summary
    if s["client_time_wait_lasted_s"] is not None:
        obj.echo(
            f"The client closed first, so the client held TIME_WAIT for "
            f"{s['client_time_wait_lasted_s']:.3f} s; the server ({s['server_time_waits']} "
            f"TIME_WAITs) went LAST-ACK -> CLOSED."
        )
    if s["final_ack_lost"]:
        obj.echo(
            "The final ACK was lost: the server retransmitted its FIN, the client's TIME_WAIT "
            "re-ACKed it and restarted its 60 s timer (tcp_timewait_state_process(), ref 1.3)."
        )
    obj.echo(f"resets on the wire: {s['resets']}")


# -- doctor, snapshot, top: live namespaces, saved files -------------------------------------


class LiveUnavailable(TimewaitError):
    """The live collector (timewait.live) cannot be used here."""


def capture_live(
    netns: str | None, pid: int | None, source: str = "auto", *, rate_window: bool = False
) -> Snapshot:
    """One live Snapshot (imported lazily: the collector does I/O and needs Linux)."""
    try:
        from timewait.live.capture import capture
    except ImportError as e:  # pragma: no cover - depends on the build
        raise LiveUnavailable(
            f"live capture is not available ({e}): analyze a saved file with --from FILE"
        ) from None
    return capture(netns=netns, pid=pid, source=source, rate_window=rate_window)


def load_snapshots(files: Sequence[str]) -> tuple[Snapshot, Snapshot | None]:
    """--from FILE [--from FILE2]: (current, previous); the later capture is the current one."""
    from timewait.snapshot import Snapshot

    snaps = [Snapshot.load(f) for f in files]
    if len(snaps) == 1:
        return snaps[0], None
    older, newer = sorted(snaps, key=lambda s: (s.monotonic_ns, s.time_ns))
    if newer.monotonic_ns <= older.monotonic_ns:
        raise click.BadParameter(
            "the two --from files were taken at the same instant (or by different sources): "
            "give two captures of one namespace taken some seconds apart",
            param_hint="--from",
        )
    return newer, older


def _read_while_importing(
    netns: str | None, pid: int | None, source: str, rate_window: bool
) -> Snapshot:
    """The live read runs on a thread (its dump is kernel time, outside the GIL) while this
    thread imports numpy and the doctor: start-up cost, issue 10 item 5."""
    from concurrent.futures import ThreadPoolExecutor

    from timewait.live.capture import build, read

    with ThreadPoolExecutor(1, thread_name_prefix="timewait-read") as pool:
        raw = pool.submit(read, netns=netns, pid=pid, source=source, rate_window=rate_window)
        # The heavy imports, meanwhile.
        import timewait.doctor
        import timewait.live.sockdiag  # noqa: F401

        return build(raw.result())


netns_option = click.option(
    "--netns",
    metavar="NAME|PATH",
    help="Look inside another network namespace: a name from `ip netns list` or a file "
    "such as /proc/PID/ns/net (needs root).",
)
pid_option = click.option(
    "--pid",
    type=click.IntRange(min=1),
    help="Look inside the network namespace of process PID, e.g. a container (needs root).",
)
source_option = click.option(
    "--source",
    type=click.Choice(["auto", "sock_diag", "proc"]),
    default="auto",
    show_default=True,
    help="Socket table source: sock_diag netlink, /proc/net/tcp{,6}, or sock_diag falling back.",
)


def _check_targets(from_files: Sequence[str], netns: str | None, pid: int | None) -> None:
    if from_files and (netns or pid):
        raise click.UsageError(
            "--from reads a saved capture: it cannot be combined with --netns/--pid"
        )
    if netns and pid:
        raise click.UsageError("give either --netns or --pid, not both")


@cli.command("doctor")
@netns_option
@pid_option
@click.option(
    "--from",
    "from_files",
    multiple=True,
    metavar="FILE",
    type=click.Path(dir_okay=True),
    help="Analyze a saved capture (`timewait snapshot -o FILE`) instead of this host; give it "
    "twice (two captures of one namespace) for rates over the interval between them.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.0, max=60.0),
    metavar="S",
    help="Take two live snapshots S seconds apart (0.1-60): churn from the TcpExt TW counter, "
    "the trend and time to exhaustion from the change in ports in use. Without it the doctor "
    "reads the counters around its one snapshot (a few ms, up to 1 s while TIME_WAITs are "
    "being made) for the churn now; 0 skips that: one snapshot, churn = TIME_WAIT / 60 s.",
)
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    metavar="N",
    help="Destinations to list (0 = all).",
)
@source_option
@json_option
@click.pass_obj
def doctor(
    obj: Ctx,
    netns: str | None,
    pid: int | None,
    from_files: tuple[str, ...],
    interval: float | None,
    top: int,
    source: str,
    as_json: bool,
) -> None:
    """Diagnose TIME_WAIT and ephemeral-port exhaustion: this host, a namespace or a capture.

    Counts every socket by state (TIME_WAIT apart from FIN_WAIT2 minisockets, server side apart
    from client side), computes per destination (source IP, destination IP, destination port)
    the ports in use against the ports connect() can use, churn and time to exhaustion, and
    checks the kernel settings. Findings come with remedies correct for the captured kernel.

    Exit status: 0 healthy, 1 warnings, 2 critical (3 when it cannot run).
    """
    _check_targets(from_files, netns, pid)
    if len(from_files) > 2:
        raise click.UsageError("--from takes at most two files (an earlier and a later capture)")
    if from_files and interval is not None:
        raise click.UsageError(
            "--interval takes two live snapshots; with saved captures give --from twice"
        )
    if interval is not None and 0 < interval < 0.1:
        raise click.BadParameter(
            f"{interval} is too short to measure a rate: give 0.1-60 s, or 0 for one snapshot",
            param_hint="--interval",
        )
    if from_files:
        current, previous = load_snapshots(from_files)
    elif interval:
        import time

        previous = capture_live(netns, pid, source)
        time.sleep(interval)
        current = capture_live(netns, pid, source)
    else:
        current, previous = _read_while_importing(netns, pid, source, interval is None), None
    from timewait.doctor import diagnose, to_json

    diagnosis = diagnose(current, previous)
    n_top = None if top == 0 else top
    if as_json:
        obj.emit_json(to_json(diagnosis, top=n_top))
    else:
        from timewait.render.report import render_report

        shown = n_top or diagnosis.analysis.n_destinations
        obj.print_rich(render_report(diagnosis, top=shown))
    obj.exit_status = diagnosis.exit_status


def _churn_captures(
    obj: Ctx,
    from_files: Sequence[str],
    netns: str | None,
    pid: int | None,
    interval: float,
    source: str,
) -> tuple[Snapshot, Snapshot | None]:
    """plan and report: two captures `interval` s apart (each destination's churn between
    them), one with the counters read around it (interval 0), or the saved files."""
    if from_files:
        return load_snapshots(from_files)
    if not interval:
        return capture_live(netns, pid, source, rate_window=True), None
    import time

    isatty = getattr(obj.env.stderr, "isatty", None)
    if isatty is not None and isatty():
        obj.env.stderr.write(f"measuring churn over {interval:g} s...\n")
    previous = capture_live(netns, pid, source)
    time.sleep(interval)
    return capture_live(netns, pid, source), previous


@cli.command("plan")
@netns_option
@pid_option
@click.option(
    "--from",
    "from_files",
    multiple=True,
    metavar="FILE",
    type=click.Path(dir_okay=True),
    help="Plan from saved captures instead of this host: two captures of one namespace give "
    "the churn over the time between them.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.0, max=600.0),
    default=5.0,
    show_default=True,
    metavar="S",
    help="Take two live captures S seconds apart and measure each destination's churn over "
    "them; 0 takes one (churn from the TcpExt counter around it).",
)
@click.option(
    "--try",
    "tries",
    multiple=True,
    metavar="NAME[=VALUE]",
    help="Only this remedy (repeatable): pool[=K], tw-reuse, bind-address-no-port, "
    "peer-closes-first, more-destinations[=N], widen-range[=LO-HI]; for NAT pools "
    "snat-addresses[=N], nat-range[=LO-HI], ct-time-wait[=S] (>= 60). Default: every one that "
    "applies.",
)
@click.option(
    "--horizon",
    type=click.FloatRange(min=1.0, max=86_400.0),
    default=300.0,
    show_default=True,
    metavar="S",
    help="How far ahead to run each option (seconds).",
)
@click.option(
    "--top",
    type=click.IntRange(min=1, max=50),
    default=3,
    show_default=True,
    metavar="N",
    help="Destinations (and NAT pools) to plan for, busiest first.",
)
@click.option(
    "--plot",
    "plot_path",
    metavar="FILE",
    help="Draw ports in use and failures per option for the busiest destination (.png/.svg).",
)
@source_option
@json_option
@click.pass_obj
def plan_cmd(
    obj: Ctx,
    netns: str | None,
    pid: int | None,
    from_files: tuple[str, ...],
    interval: float,
    tries: tuple[str, ...],
    horizon: float,
    top: int,
    plot_path: str | None,
    source: str,
    as_json: bool,
) -> None:
    """What if: run the busiest destinations forward from a capture, as they are and with each
    remedy that applies, and rank the remedies.

    Each option is run on the flow engine (cross-checked against the kernel) from the captured
    state -- the ports each destination holds, its TIME_WAITs with the time they have left, and
    its measured churn -- for --horizon seconds. For each: when connect() first fails with
    EADDRNOTAVAIL, failures per second at steady state, the ports left, and the risk of the
    change. On a host that masquerades, its busiest NAT pools are run the same way on the NAT
    model from its conntrack table (first SYN dropped, drops per second). Exit status: 0 when
    some option avoids failures, 1 when none does, 3 on error.
    """
    from timewait.render.plot import check_plot_path

    _check_targets(from_files, netns, pid)
    if len(from_files) > 2:
        raise click.UsageError("--from takes at most two files (an earlier and a later capture)")
    if plot_path is not None:
        check_plot_path(plot_path)
    current, previous = _churn_captures(obj, from_files, netns, pid, interval, source)
    from timewait.doctor import analyze
    from timewait.doctor.plan import plan
    from timewait.render.plan import plan_json, plan_series, render_plan

    result = plan(current, analyze(current, previous), horizon_s=horizon, top=top, tries=tries)
    if as_json:
        obj.emit_json(plan_json(result))
    else:
        obj.print_rich(render_plan(result))
    if plot_path is not None and result.all:
        from timewait.render.plot import plot_result
        from timewait.sim.scenario import ScenarioResult

        d = result.all[0]
        best = d.options[0] if d.options else d.as_is
        written = plot_result(
            ScenarioResult(
                scenario=f"plan: {d.label}", params={}, variants={},
                verdict=f"churn {d.churn_per_s:.1f}/s; best: {best.option} "
                f"({best.failures_per_s:.1f} {'drops' if d.kind == 'nat' else 'failures'}/s)",
                series=plan_series(d),  # type: ignore[arg-type]
            ),
            plot_path,
        )  # fmt: skip
        (obj.env.stderr if as_json else obj.env.stdout).write(f"plot written to {written}\n")
    fine = any(o.failures_per_s == 0 for d in result.all for o in (d.as_is, *d.options))
    obj.exit_status = ExitStatus.OK if fine or not result.all else ExitStatus.WARNING


@cli.command("report")
@click.option(
    "-o",
    "--output",
    metavar="FILE.html",
    help="Write one self-contained HTML page (works offline, prints, fits a phone) with the "
    "findings and remedies, pools, destinations, timers, the plan and the settings. Without "
    "it the terminal report is printed.",
)
@netns_option
@pid_option
@click.option(
    "--from",
    "from_files",
    multiple=True,
    metavar="FILE",
    type=click.Path(dir_okay=True),
    help="Report on saved captures instead of this host; give two captures of one namespace "
    "for churn over the time between them.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.0, max=600.0),
    default=5.0,
    show_default=True,
    metavar="S",
    help="Take two live captures S seconds apart for each destination's churn; 0 takes one.",
)
@click.option(
    "--horizon",
    type=click.FloatRange(min=1.0, max=86_400.0),
    default=300.0,
    show_default=True,
    metavar="S",
    help="How far ahead the plan runs each remedy (seconds).",
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    metavar="N",
    help="Destinations to list; the plan covers the busiest three of them.",
)
@click.option("--no-plan", is_flag=True, help="Leave out the plan (its runs take a second).")
@source_option
@click.pass_obj
def report_cmd(
    obj: Ctx,
    output: str | None,
    netns: str | None,
    pid: int | None,
    from_files: tuple[str, ...],
    interval: float,
    horizon: float,
    top: int,
    no_plan: bool,
    source: str,
) -> None:
    """The doctor's report, to share: `report -o incident.html` writes one HTML file.

    The page holds everything `doctor` and `plan` say about the capture -- findings with their
    remedies and risks, the pools a port comes from, the top destinations, the TIME_WAIT timers,
    each remedy run forward with its curves, the settings against their defaults -- and how it
    was captured (host, namespace, kernel, time, tool version). It fetches nothing: it opens
    offline, in a chat preview or printed. Exit status as `doctor`: 0 healthy, 1 warnings,
    2 critical, 3 when it cannot run.
    """
    _check_targets(from_files, netns, pid)
    if len(from_files) > 2:
        raise click.UsageError("--from takes at most two files (an earlier and a later capture)")
    if output is not None:
        from timewait.outpath import OutputPathError, check_output_file

        if not output.lower().endswith((".html", ".htm")):
            raise click.BadParameter(
                f"{output}: give a file name ending in .html, e.g. incident.html",
                param_hint=["-o", "--output"],
            )
        try:
            check_output_file(output, example="incident.html")
        except OutputPathError as e:
            raise click.BadParameter(str(e), param_hint=["-o", "--output"]) from None
    current, previous = _churn_captures(obj, from_files, netns, pid, interval, source)
    from timewait.doctor import diagnose

    diagnosis = diagnose(current, previous)
    if output is None:
        from timewait.render.report import render_report

        obj.print_rich(render_report(diagnosis, top=top))
        obj.exit_status = diagnosis.exit_status
        return
    import shlex
    import time

    from timewait.outpath import write_atomic
    from timewait.render.html import Capture, render_html

    the_plan = None
    if not no_plan:
        from timewait.doctor.plan import plan

        the_plan = plan(current, diagnosis.analysis, horizon_s=horizon, top=min(top, 3))
    command = shlex.join(["timewait", *(obj.argv or ["report"])])
    page = render_html(
        diagnosis, the_plan, top=top,
        capture=Capture(command=command, generated_ns=time.time_ns()),
    )  # fmt: skip
    data = page.encode()
    try:
        write_atomic(output, data)
    except OSError as e:
        raise ReportWriteError(f"cannot write {output}: {e.strerror}: check the path") from None
    obj.echo(
        f"report written to {output} ({len(data) / 1024:,.0f} KiB, {diagnosis.status}): "
        "open it in a browser; it needs no network"
    )
    obj.exit_status = diagnosis.exit_status


class ReportWriteError(TimewaitError):
    """The report file could not be written."""


@cli.command("snapshot")
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="FILE",
    type=click.Path(dir_okay=False, writable=True),
    help="Where to write the capture (.npz); analyze it anywhere with `timewait doctor --from`.",
)
@netns_option
@pid_option
@source_option
@json_option
@click.pass_obj
def snapshot_cmd(
    obj: Ctx, output: str, netns: str | None, pid: int | None, source: str, as_json: bool
) -> None:
    """Save what `doctor` would analyze (sockets, settings, counters) to a file."""
    from timewait.outpath import OutputPathError, check_output_file

    _check_targets((), netns, pid)
    try:
        check_output_file(output)  # before the capture; /proc/version was "No such file"
    except OutputPathError as e:
        raise click.BadParameter(str(e), param_hint=["-o", "--output"]) from None
    snap = capture_live(netns, pid, source, rate_window=True)
    try:
        snap.save(output)
    except OSError as e:
        raise SnapshotWriteError(f"cannot write {output}: {e.strerror}: check the path") from None
    info = {
        "file": output,
        "rows": len(snap),
        "namespace": snap.namespace,
        "source": snap.source,
        "kernel": snap.kernel,
    }
    if as_json:
        obj.emit_json(info)
    else:
        obj.echo(
            f"saved {len(snap):,} sockets of {snap.namespace} ({snap.source}, kernel "
            f"{snap.kernel}) to {output}"
        )


class SnapshotWriteError(TimewaitError):
    """The snapshot file could not be written."""


@cli.command("top")
@netns_option
@pid_option
@click.option(
    "--from",
    "from_files",
    multiple=True,
    metavar="FILE",
    type=click.Path(dir_okay=True),
    help="Replay saved captures (cycled, one per refresh) instead of this host.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1, max=60.0),
    default=1.0,
    show_default=True,
    metavar="S",
    help="Seconds between refreshes.",
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    metavar="N",
    help="Destinations to show.",
)
@source_option
@click.pass_obj
def top_cmd(
    obj: Ctx,
    netns: str | None,
    pid: int | None,
    from_files: tuple[str, ...],
    interval: float,
    top: int,
    source: str,
) -> None:
    """A live view: TIME_WAIT and churn sparklines, top destinations by port usage, time to
    exhaustion. Refreshes every second; q or Ctrl-C quits and restores the terminal.

    When stdout is not a terminal (a pipe, a file), prints one frame and exits.
    """
    from timewait.render.top import TopState, render_frame, run_top

    _check_targets(from_files, netns, pid)
    if from_files:
        from timewait.snapshot import Snapshot

        snaps = [Snapshot.load(f) for f in from_files]
        counter = iter(range(1 << 62))

        def source_fn() -> Snapshot:
            return snaps[next(counter) % len(snaps)]
    else:
        taken = iter(range(1 << 62))

        def source_fn() -> Snapshot:
            # The first frame has no previous snapshot: it reads the churn around its own
            # (capture's rate window); later frames take it from the frame before.
            return capture_live(netns, pid, source, rate_window=next(taken) == 0)

    console = obj.console()
    if not obj.env.stdout_isatty:
        state = TopState()
        state.update(source_fn())
        obj.print_rich(render_frame(state, width=console.width, top=top))
        return
    run_top(source_fn, console, interval=interval, top=top)


# -- exporter: Prometheus metrics (issue 6) ------------------------------------------------


@cli.command("exporter")
@click.option(
    "--listen",
    default=None,
    metavar="[HOST]:PORT",
    help="Address to serve /metrics on; HOST defaults to 127.0.0.1 (loopback). "
    "[default: 127.0.0.1:19977, outside the fully allocated 9100-9999 exporter block and "
    "below the ephemeral port range]",
)
@click.option(
    "--netns",
    "netns_list",
    multiple=True,
    metavar="NAME|PATH",
    help="Network namespace to export (repeatable; needs root). Default: this namespace, "
    'labelled with its name (`ip netns exec NAME timewait exporter`) or netns="host".',
)
@click.option(
    "--top-k",
    type=click.IntRange(min=0, max=1000),
    default=10,
    show_default=True,
    metavar="N",
    help='Destinations exported one by one per namespace; the rest are one "other" series.',
)
@click.pass_obj
def exporter_cmd(obj: Ctx, listen: str | None, netns_list: tuple[str, ...], top_k: int) -> None:
    """Serve Prometheus metrics: sockets by state, TIME_WAIT by side, per-destination port
    usage for the top N destinations (plus one "other"), kernel TIME_WAIT counters, time to
    exhaustion, sysctls, and the doctor's findings. Every series has a `netns` label.

    Each scrape takes a fresh snapshot (shared by scrapes within 1 s). A namespace that fails
    later (deleted, say) is reported as timewait_collection_error, not by failing the scrape.
    Stops cleanly on Ctrl-C and SIGTERM.
    """
    try:
        from timewait.exporter import DEFAULT_LISTEN
        from timewait.exporter.server import check_cli_listen, serve
    except ImportError as e:  # pragma: no cover - depends on the install
        raise LiveUnavailable(
            f"the exporter needs prometheus_client ({e}): pip install prometheus_client"
        ) from None
    if listen is None:  # left out; an empty --listen '' is an error, not the default
        listen = DEFAULT_LISTEN
    try:
        check_cli_listen(listen)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--listen") from None
    serve(listen=listen, netns=netns_list, top_k=top_k, log_stream=obj.env.stderr)


def main(argv: Sequence[str] | None = None, env: Environment | None = None) -> int:
    """Run the CLI; returns the exit status instead of raising SystemExit."""
    env = env or Environment()
    args = list(sys.argv[1:] if argv is None else argv)
    traceback = "--traceback" in args
    try:
        # click writes --help and --version to sys.stdout; point it at env's streams.
        with contextlib.redirect_stdout(env.stdout), contextlib.redirect_stderr(env.stderr):
            obj = Ctx(env, args)
            cli.main(args=args, prog_name="timewait", standalone_mode=False, obj=obj)
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.UsageError as e:
        if traceback:
            raise
        hint = f" (try 'timewait {e.ctx.command_path.partition(' ')[2]} --help')" if e.ctx else ""
        env.stderr.write(f"timewait: usage error: {e.format_message()}{hint}\n".replace("  ", " "))
        return ExitStatus.USAGE
    except click.Abort:
        env.stderr.write("timewait: interrupted\n")
        return ExitStatus.INTERRUPTED
    except KeyboardInterrupt:
        env.stderr.write("timewait: interrupted\n")
        return ExitStatus.INTERRUPTED
    except TimewaitError as e:
        if traceback:
            raise
        env.stderr.write(f"timewait: error: {e}\n")
        return e.exit_status
    except click.ClickException as e:
        if traceback:
            raise
        env.stderr.write(f"timewait: error: {e.format_message()}\n")
        return ExitStatus.ERROR
    except BrokenPipeError:
        return ExitStatus.OK
    return obj.exit_status
