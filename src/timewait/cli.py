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

    def emit_line(self, data: Any) -> None:
        """One JSON object on one line, flushed (a stream of them: `trace --json`)."""
        self.env.stdout.write(json.dumps(data) + "\n")
        self.env.stdout.flush()


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
    if (older.namespace, older.hostname) != (newer.namespace, newer.hostname):
        where = [f"{s.namespace}" + (f" on {s.hostname}" if s.hostname else "") for s in snaps]
        raise click.BadParameter(
            f"the two --from files are captures of different namespaces ({where[0]}; "
            f"{where[1]}): rates need two captures of one namespace",
            param_hint="--from",
        )
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


all_netns_option = click.option(
    "--all-netns",
    is_flag=True,
    help="Every network namespace of the machine (containers, pods, `ip netns`), each named by "
    "its pod, container, netns name or process (needs root).",
)
pods_dir_option = click.option(
    "--pods-dir",
    metavar="DIR",
    type=click.Path(exists=True, file_okay=False),
    help="The kubelet's pod log directory, for pod names with --all-netns; its sibling "
    "`containers` names containers. [default: $TIMEWAIT_PODS_DIR or /var/log/pods]",
)


def _check_all_netns(all_netns: bool, from_files: Sequence[str], netns: Any, pid: Any) -> None:
    if all_netns and (from_files or netns or pid):
        raise click.UsageError(
            "--all-netns looks at every namespace: it cannot be combined with --netns/--pid/--from"
        )


def _discover_while_importing(pods_dir: str | None) -> Any:
    """Discovery (stdlib, /proc and a few directories) on a thread while this one imports
    numpy and the doctor."""
    from concurrent.futures import ThreadPoolExecutor

    from timewait.live.discover import Roots, discover

    with ThreadPoolExecutor(1, thread_name_prefix="timewait-discover") as pool:
        found = pool.submit(discover, Roots.from_env(pods_dir))
        import timewait.doctor
        import timewait.live.sockdiag  # noqa: F401

        return found.result()


class AllNetnsNeedRoot(TimewaitError):
    """--all-netns without the privileges to enter other namespaces."""


def _need_root_all(e: Exception) -> AllNetnsNeedRoot:
    return AllNetnsNeedRoot(
        f"--all-netns needs root: {e}".replace(
            "run with sudo, or run timewait inside that namespace (`ip netns exec NAME "
            "timewait ...`)",
            "run with sudo (CAP_SYS_ADMIN enters namespaces, CAP_SYS_PTRACE sees every process's)",
        )
    )


def rank_all_netns(
    *, pods_dir: str | None, source: str, keep: int, documents: bool, top: int | None,
    rate_window: bool,
) -> tuple[Any, Any]:  # fmt: skip
    """Discover every namespace, capture and diagnose each, rank them: (Ranking, Discovery)."""
    from timewait.live.netns import NeedRoot

    found = _discover_while_importing(pods_dir)
    from timewait.doctor import diagnose
    from timewait.doctor.fleet import Ranking
    from timewait.live.scan import Captured, capture_all

    ranking = Ranking(keep=keep, documents=documents, top=top)
    try:
        for item in capture_all(found.namespaces, source=source, rate_window=rate_window):
            if isinstance(item, Captured):
                try:
                    ranking.add(diagnose(item.snapshot))
                except Exception as e:  # one namespace's bad table is not the node's report
                    ranking.skip(item.found.labels, f"could not be analyzed: {e!r}")
            else:
                ranking.skip(item.found.labels, item.reason)
    except NeedRoot as e:
        raise _need_root_all(e) from None
    return ranking, found


def doctor_all_netns(
    obj: Ctx, *, pods_dir: str | None, source: str, top: int | None, worst: int, rows: int,
    as_json: bool, rate_window: bool,
) -> None:  # fmt: skip
    """`doctor --all-netns`: discover, capture each namespace, diagnose, rank, render."""
    import os

    ranking, found = rank_all_netns(
        pods_dir=pods_dir, source=source, keep=0 if as_json else worst, documents=as_json,
        top=top, rate_window=rate_window,
    )  # fmt: skip
    uname = os.uname()
    if as_json:
        obj.emit_json(ranking.to_json(hostname=uname.nodename, kernel=uname.release,
                                      notes=found.notes))  # fmt: skip
    else:
        from timewait.render.fleet import render_ranking

        obj.print_rich(
            render_ranking(
                ranking,
                hostname=uname.nodename,
                notes=found.notes,
                rows=rows or None,
                top=top or 10_000,
            )
        )
    obj.exit_status = ranking.exit_status


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
@all_netns_option
@pods_dir_option
@click.option(
    "--worst",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    metavar="N",
    help="With --all-netns: full reports for the N namespaces nearest exhaustion that are "
    "not healthy (0 = the table only).",
)
@click.option(
    "--rows",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    metavar="N",
    help="With --all-netns: namespaces listed in the ranking table (0 = all).",
)
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
@click.option(
    "--trace",
    "trace_s",
    type=click.FloatRange(min=0.1, max=3600.0),
    metavar="S",
    help="Count in the kernel (eBPF, needs root and bpftrace) for S seconds first: every "
    "connect() and bind() that fails, by errno, process and destination, and the active "
    "closes, which then give the churn and the time to exhaustion exactly.",
)
@json_option
@click.pass_obj
def doctor(
    obj: Ctx,
    netns: str | None,
    pid: int | None,
    all_netns: bool,
    pods_dir: str | None,
    worst: int,
    rows: int,
    from_files: tuple[str, ...],
    interval: float | None,
    top: int,
    source: str,
    trace_s: float | None,
    as_json: bool,
) -> None:
    """Diagnose TIME_WAIT and ephemeral-port exhaustion: this host, a namespace or a capture.

    Counts every socket by state (TIME_WAIT apart from FIN_WAIT2 minisockets, server side apart
    from client side), computes per destination (source IP, destination IP, destination port)
    the ports in use against the ports connect() can use, churn and time to exhaustion, and
    checks the kernel settings. Findings come with remedies correct for the captured kernel.

    With --all-netns: every network namespace of the machine, ranked by nearness to exhaustion
    (each one's fullest pool), then the full report of the worst ones; --json holds one
    document per namespace with its labels (pod, namespace, container, netns).

    Exit status: 0 healthy, 1 warnings, 2 critical (3 when it cannot run); with --all-netns,
    the worst namespace's.
    """
    _check_all_netns(all_netns, from_files, netns, pid)
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
    if all_netns:
        if interval:
            raise click.UsageError(
                "--interval takes two snapshots of one namespace; with --all-netns give "
                "--interval 0 (one snapshot each) or leave it out (a rate window for each)"
            )
        if trace_s is not None:
            raise click.UsageError(
                "--trace counts one namespace here; for every namespace: timewait trace --all-netns"
            )
        doctor_all_netns(
            obj, pods_dir=pods_dir, source=source, top=None if top == 0 else top, worst=worst,
            rows=rows, as_json=as_json, rate_window=interval is None,
        )  # fmt: skip
        return
    if pods_dir:
        raise click.UsageError("--pods-dir names pods for --all-netns: add --all-netns")
    if trace_s is not None and (from_files or interval is not None):
        raise click.UsageError(
            "--trace measures this host's churn itself: it cannot be combined with --from or "
            "--interval"
        )
    if trace_s is not None:
        current, previous = traced_capture(obj, netns, pid, source, trace_s), None
    elif from_files:
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
@all_netns_option
@pods_dir_option
@click.option(
    "--worst",
    type=click.IntRange(min=0, max=20),
    default=3,
    show_default=True,
    metavar="N",
    help="With --all-netns: the N namespaces nearest exhaustion get their full report and plan "
    "(0 = the ranking only).",
)
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
@click.option(
    "--trace",
    "trace_s",
    type=click.FloatRange(min=0.1, max=3600.0),
    metavar="S",
    help="Count in the kernel (eBPF, needs root and bpftrace) for S seconds instead of the "
    "--interval captures: connect()/bind() failures by errno, process and destination, and the "
    "active closes, which then give each destination's churn exactly. The page shows them.",
)
@click.pass_obj
def report_cmd(
    obj: Ctx,
    output: str | None,
    netns: str | None,
    pid: int | None,
    all_netns: bool,
    pods_dir: str | None,
    worst: int,
    from_files: tuple[str, ...],
    interval: float,
    horizon: float,
    top: int,
    no_plan: bool,
    source: str,
    trace_s: float | None,
) -> None:
    """The doctor's report, to share: `report -o incident.html` writes one HTML file.

    The page holds everything `doctor` and `plan` say about the capture -- findings with their
    remedies and risks, the pools a port comes from, the top destinations, the TIME_WAIT timers,
    each remedy run forward with its curves, the settings against their defaults -- and how it
    was captured (host, namespace, kernel, time, tool version). It fetches nothing: it opens
    offline, in a chat preview or printed. With --all-netns: every namespace of the machine
    ranked by nearness to exhaustion (one capture each, churn from the counters around it), and
    the full report and plan of the --worst N. Exit status as `doctor`: 0 healthy, 1 warnings,
    2 critical, 3 when it cannot run.
    """
    _check_all_netns(all_netns, from_files, netns, pid)
    if pods_dir and not all_netns:
        raise click.UsageError("--pods-dir names pods for --all-netns: add --all-netns")
    if all_netns and output is None:
        raise click.UsageError(
            "--all-netns writes a page: give -o FILE.html (for the terminal: doctor --all-netns)"
        )
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
    if trace_s is not None and (from_files or all_netns):
        raise click.UsageError(
            "--trace counts one live namespace: it cannot be combined with --from or --all-netns"
        )
    if all_netns:
        assert output is not None
        _report_all_netns(
            obj, output, pods_dir=pods_dir, source=source, worst=worst, top=top,
            horizon=None if no_plan else horizon,
        )  # fmt: skip
        return
    if trace_s is not None:
        current, previous = traced_capture(obj, netns, pid, source, trace_s), None
    else:
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
    _write_report(obj, output, page, diagnosis.status)
    obj.exit_status = diagnosis.exit_status


def _write_report(obj: Ctx, output: str, page: str, status: str) -> None:
    from timewait.outpath import write_atomic

    data = page.encode()
    try:
        write_atomic(output, data)
    except OSError as e:
        raise ReportWriteError(f"cannot write {output}: {e.strerror}: check the path") from None
    obj.echo(
        f"report written to {output} ({len(data) / 1024:,.0f} KiB, {status}): "
        "open it in a browser; it needs no network"
    )


def _report_all_netns(
    obj: Ctx, output: str, *, pods_dir: str | None, source: str, worst: int, top: int,
    horizon: float | None,
) -> None:  # fmt: skip
    """`report --all-netns -o FILE`: the node's ranking, the nearest namespaces in full."""
    import os
    import shlex
    import time

    from timewait.render.html import Capture, render_fleet_html

    ranking, found = rank_all_netns(
        pods_dir=pods_dir, source=source, keep=worst, documents=False, top=top,
        rate_window=True,
    )  # fmt: skip
    plans = {}
    if horizon is not None:
        from timewait.doctor.plan import plan

        for m, d in ranking.worst_diagnoses():
            plans[m.inode] = plan(d.snapshot, d.analysis, horizon_s=horizon, top=min(top, 3))
    uname = os.uname()
    page = render_fleet_html(
        ranking, plans, hostname=uname.nodename, kernel=uname.release, notes=found.notes,
        top=top, capture=Capture(command=shlex.join(["timewait", *obj.argv]),
                                 generated_ns=time.time_ns()),
    )  # fmt: skip
    _write_report(obj, output, page, ranking.status)
    obj.exit_status = ranking.exit_status


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
@all_netns_option
@pods_dir_option
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
@click.option(
    "--trace",
    is_flag=True,
    help="Also count connect() failures in the kernel (eBPF, needs root and bpftrace) and show "
    "them per second, with the processes and destinations failing most.",
)
@click.pass_obj
def top_cmd(
    obj: Ctx,
    netns: str | None,
    pid: int | None,
    all_netns: bool,
    pods_dir: str | None,
    from_files: tuple[str, ...],
    interval: float,
    top: int,
    source: str,
    trace: bool,
) -> None:
    """A live view: TIME_WAIT and churn sparklines, top destinations by port usage, time to
    exhaustion. Refreshes every second; q or Ctrl-C quits and restores the terminal.

    With --all-netns: every network namespace of the machine, nearest exhaustion first (N =
    namespaces shown), each named by its pod, container, netns name or process.

    When stdout is not a terminal (a pipe, a file), prints one frame and exits.
    """
    _check_all_netns(all_netns, from_files, netns, pid)
    if all_netns:
        if trace:
            raise click.UsageError(
                "--trace with --all-netns is not supported: timewait trace --all-netns counts "
                "every namespace"
            )
        top_all_netns(obj, pods_dir=pods_dir, source=source, interval=interval, top=top)
        return
    if pods_dir:
        raise click.UsageError("--pods-dir names pods for --all-netns: add --all-netns")
    _check_targets(from_files, netns, pid)
    if trace and from_files:
        raise click.UsageError("--trace counts on this host: it cannot be combined with --from")
    with contextlib.ExitStack() as stack:
        tracer = _top_tracer(obj, netns, pid) if trace else None
        if tracer is not None:
            stack.callback(tracer.stop)
        _top(obj, netns, pid, from_files, interval, top, source, tracer)


def _top_tracer(obj: Ctx, netns: str | None, pid: int | None) -> Any:
    """`top --trace`: a tracer for the namespace, or None (one line says why)."""
    from timewait.live import tracer as TR

    inodes, _ = TR.inodes_of([netns] if netns else [], pid)
    try:
        plan = TR.preflight()
        tracer = TR.Tracer(inodes, plan=plan).start()
    except TR.TraceUnavailable as e:
        _say(obj, f"trace unavailable: {e}; showing the rest")
        return None
    for note in plan.notes:
        _say(obj, f"trace: {note}")
    _say(obj, f"tracing {netns or 'this namespace'} (bpftrace pid {tracer.pid} attached)")
    return tracer


def _top(
    obj: Ctx,
    netns: str | None,
    pid: int | None,
    from_files: tuple[str, ...],
    interval: float,
    top: int,
    source: str,
    tracer: Any,
) -> None:
    from timewait.render.top import TopState, render_frame, run_top

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
            snap = capture_live(netns, pid, source, rate_window=next(taken) == 0)
            if tracer is None:
                return snap
            import dataclasses

            # the tracer's cumulative counts: TopState takes the difference per frame
            return dataclasses.replace(snap, tables={**snap.tables, **tracer.reading().tables()})

    console = obj.console()
    if not obj.env.stdout_isatty:
        if tracer is not None:  # one frame: let the tracer count for --interval first
            first = tracer.reading().start_ns + int(interval * 1e9)
            while tracer.wait_reading(first - 1, timeout=interval + 5.0) is None:
                if not tracer.alive:
                    break
        state = TopState()
        state.update(source_fn())
        obj.print_rich(render_frame(state, width=console.width, top=top))
        return
    run_top(source_fn, console, interval=interval, top=top)


def top_all_netns(
    obj: Ctx, *, pods_dir: str | None, source: str, interval: float, top: int
) -> None:
    """`top --all-netns`: rescan the machine every interval (namespaces come and go)."""
    from timewait.live.discover import Roots, discover
    from timewait.live.netns import NeedRoot
    from timewait.live.scan import Captured, capture_all
    from timewait.render.fleet import FleetTopState, render_fleet_frame, run_fleet_top

    roots = Roots.from_env(pods_dir)

    def scan(first: bool) -> tuple[list[Snapshot], int]:
        snaps: list[Snapshot] = []
        gone = 0
        try:
            for item in capture_all(discover(roots).namespaces, source=source,
                                    rate_window=first):  # fmt: skip
                if isinstance(item, Captured):
                    snaps.append(item.snapshot)
                else:
                    gone += 1
        except NeedRoot as e:
            raise _need_root_all(e) from None
        return snaps, gone

    console = obj.console()
    if not obj.env.stdout_isatty:
        state = FleetTopState()
        state.update(*scan(True))
        obj.print_rich(render_fleet_frame(state, width=console.width, top=top))
        return
    run_fleet_top(scan, console, interval=interval, top=top)


# -- trace: connect()/bind() failures and churn counted in the kernel (issue 13) -------------


def _say(obj: Ctx, text: str) -> None:
    obj.env.stderr.write(f"timewait: {text}\n")


def traced_capture(
    obj: Ctx, netns: str | None, pid: int | None, source: str, seconds: float
) -> Snapshot:
    """`doctor --trace S`: count for S seconds, then capture; the snapshot carries the counts.

    A tracer that cannot run costs one line on stderr and a note in the report; the diagnosis
    goes on without it (churn from the counters, as without --trace)."""
    import dataclasses
    import time

    from timewait.live import tracer as TR

    notes: list[str] = []
    reading = None
    inodes, _ = TR.inodes_of([netns] if netns else [], pid)
    try:
        plan = TR.preflight()
        tracer = TR.Tracer(inodes, plan=plan).start()
    except TR.TraceUnavailable as e:
        _say(obj, f"trace unavailable: {e}; diagnosing without it")
        notes.append(f"not traced: {e}")
    else:
        for note in plan.notes:
            _say(obj, f"trace: {note}")
            if not note.startswith("mounted"):
                notes.append(f"trace: {note}")
        where = netns or (f"pid {pid}" if pid else "this namespace")
        _say(obj, f"tracing {where} for {seconds:g} s (bpftrace pid {tracer.pid} attached)")
        try:
            time.sleep(seconds)
        finally:
            reading = tracer.stop()
        if not reading.final:
            notes.append("trace: bpftrace ended early; counts up to its last reading")
        if reading.saturated:
            notes.append("trace: the kernel map was full; some events were not counted")
    snap = capture_live(netns, pid, source, rate_window=reading is None)
    tables = {**snap.tables, **(reading.tables() if reading is not None else {})}
    return dataclasses.replace(snap, tables=tables, notes=(*snap.notes, *notes))


@cli.command("trace")
@click.option(
    "--netns",
    "netns_list",
    multiple=True,
    metavar="NAME|PATH",
    help="Network namespace to trace (repeatable): a name from `ip netns list` or a file such "
    "as /proc/PID/ns/net. Default: this namespace.",
)
@pid_option
@click.option("--all-netns", is_flag=True, help="Trace every network namespace of the host.")
@click.option(
    "--duration",
    type=click.FloatRange(min=0.1),
    metavar="S",
    help="Stop after S seconds (default: at Ctrl-C), then print the summary.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1, max=60.0),
    default=1.0,
    show_default=True,
    metavar="S",
    help="Seconds between two lines of counts.",
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    metavar="N",
    help="Rows per table of the summary.",
)
@json_option
@click.pass_obj
def trace_cmd(
    obj: Ctx,
    netns_list: tuple[str, ...],
    pid: int | None,
    all_netns: bool,
    duration: float | None,
    interval: float,
    top: int,
    as_json: bool,
) -> None:
    """Count every connect() and bind() that fails, and every connection churned, by network
    namespace, process (pid, command, cgroup) and destination, in the kernel (eBPF on
    tracepoints, with bpftrace; needs root).

    Prints the counts of every interval, and at the end (Ctrl-C or --duration) a summary:
    failures by errno (EADDRNOTAVAIL: the destination is out of ports), per (process,
    destination); bind() failures; active closes per destination (each leaves a TIME_WAIT on
    this side: the exact churn), passive closes, connections opened and accepted. --json
    prints one JSON object per line: {"type": "interval", ...} then {"type": "summary", ...}.
    """
    import time

    from timewait.doctor import trace as T
    from timewait.live import tracer as TR
    from timewait.render import trace as RT

    if all_netns and (netns_list or pid is not None):
        raise click.UsageError("--all-netns traces every namespace: drop --netns/--pid")
    inodes, labels = TR.inodes_of(netns_list, pid, all_netns)
    plan = TR.preflight()
    for note in plan.notes:
        _say(obj, f"trace: {note}")
    tracer = TR.Tracer(inodes, interval_s=interval, plan=plan)

    def label(ino: int) -> str:
        if ino not in labels:
            labels[ino] = TR.netns_label(ino)
        return labels[ino]

    def namespaces(tr: T.Traced) -> list[int]:
        return sorted(set(tr.namespaces()) | (set(labels) if inodes is not None else set()))

    tracer.start()
    where = "every namespace" if inodes is None else ", ".join(labels.values())
    _say(obj, f"tracing {where} (bpftrace pid {tracer.pid} attached); Ctrl-C stops")
    prev = tracer.reading()
    deadline = None if duration is None else time.monotonic() + duration
    warned_full = False
    try:
        while deadline is None or time.monotonic() < deadline:
            wait = interval + 5.0
            if deadline is not None:
                wait = min(wait, max(deadline - time.monotonic(), 0.0))
            r = tracer.wait_reading(prev.at_ns, timeout=wait)
            if r is None:
                if not tracer.alive:
                    raise TR.TraceUnavailable(f"bpftrace stopped: {tracer.why()}")
                continue
            if r.saturated and not warned_full:
                _say(obj, "trace: the kernel map is full: events with new keys are not counted")
                warned_full = True
            d = T.Traced(rows=T.delta(r.rows, prev.rows), window_ns=r.at_ns - prev.at_ns)
            secs = (r.at_ns - r.start_ns) / 1e9
            if as_json:
                obj.emit_line(
                    {
                        "schema": TRACE_SCHEMA, "type": "interval", "t_s": round(secs, 3),
                        "interval_s": round(d.window_s, 3),
                        "namespaces": [
                            {"netns": label(i), "inode": i, **T.summary_json(d, netns=i, top=top)}
                            for i in namespaces(d)
                        ],
                    }
                )  # fmt: skip
            else:
                for i in namespaces(d):
                    for line in RT.interval_line(label(i), d, clock=f"{secs:7.1f}s", top=3):
                        obj.echo(line)
            prev = r
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a trace without --duration ends: the summary follows
    finally:
        final = tracer.stop()
    tr = T.Traced(rows=final.rows, window_ns=final.window_ns, start_ns=final.start_ns)
    notes = [n for n in plan.notes if not n.startswith("mounted")]
    if as_json:
        obj.emit_line(
            {
                "schema": TRACE_SCHEMA, "type": "summary", "window_s": round(tr.window_s, 3),
                "notes": notes,
                "namespaces": [
                    {"netns": label(i), "inode": i, **T.summary_json(tr, netns=i, top=top)}
                    for i in namespaces(tr)
                ],
            }
        )  # fmt: skip
    else:
        obj.echo()
        obj.print_rich(RT.summary(tr, {i: label(i) for i in namespaces(tr)}, notes=notes, top=top))


TRACE_SCHEMA = "timewait-trace/1"


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
@all_netns_option
@click.option(
    "--max-netns",
    type=click.IntRange(min=0, max=10_000),
    default=20,
    show_default=True,
    metavar="N",
    help="With --all-netns: namespaces exported one by one besides the node's own (the N "
    'nearest exhaustion); the rest are summed into netns="other".',
)
@pods_dir_option
@click.option(
    "--trace",
    is_flag=True,
    help="Also count connect()/bind() failures and closes in the kernel (eBPF, needs root and "
    "bpftrace): timewait_connect_errors_total{errno,...}, timewait_active_closes_total, ...",
)
@click.pass_obj
def exporter_cmd(
    obj: Ctx,
    listen: str | None,
    netns_list: tuple[str, ...],
    top_k: int,
    all_netns: bool,
    max_netns: int,
    pods_dir: str | None,
    trace: bool,
) -> None:
    """Serve Prometheus metrics: sockets by state, TIME_WAIT by side, per-destination port
    usage for the top N destinations (plus one "other"), kernel TIME_WAIT counters, time to
    exhaustion, sysctls, and the doctor's findings. Every series has a `netns` label.

    Each scrape takes a fresh snapshot (shared by scrapes within 1 s). A namespace that fails
    later (deleted, say) is reported as timewait_collection_error, not by failing the scrape.
    Stops cleanly on Ctrl-C and SIGTERM.

    With --all-netns (a node, deploy/kubernetes/): every network namespace, with the labels
    namespace, pod and container besides netns; the node's own and the --max-netns nearest
    exhaustion one by one, the rest summed into netns="other".
    """
    if all_netns and netns_list:
        raise click.UsageError("--all-netns exports every namespace: leave out --netns")
    if all_netns and trace:
        raise click.UsageError(
            "--trace with --all-netns is not supported yet: trace one namespace per exporter "
            "(--netns NAME --trace), or count every namespace with `timewait trace --all-netns`"
        )
    if pods_dir and not all_netns:
        raise click.UsageError("--pods-dir names pods for --all-netns: add --all-netns")
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
    serve(
        listen=listen, netns=netns_list, top_k=top_k, log_stream=obj.env.stderr,
        all_netns=all_netns, max_netns=max_netns, pods_dir=pods_dir, trace=trace,
    )  # fmt: skip


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
