"""The `timewait` command: a thin layer that parses arguments, calls the library, renders results
and turns errors into exit statuses (timewait.status.ExitStatus). No logic lives here.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from timewait import __version__
from timewait.config import PROFILES, KernelConfig, get_profile
from timewait.env import Environment
from timewait.errors import TimewaitError
from timewait.status import ExitStatus


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

    def __init__(self, env: Environment) -> None:
        self.env = env

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@set_option
@profile_option
@json_option
@click.pass_obj
def config_show(obj: Ctx, sets: tuple[str, ...], profile: str, as_json: bool) -> None:
    """Show the effective settings (Linux defaults plus --set) and what they imply.

    Validates every value against the bounds the kernel enforces, so it doubles as a checker:
    `timewait config show --set ip_local_port_range="1000 2000"` explains why Linux would refuse it.
    """
    from timewait.render.config import config_report

    cfg = parse_sets(sets)
    prof = get_profile(profile)
    report = config_report(cfg, prof)
    if as_json:
        obj.emit_json(report)
    else:
        for key, value in report["settings"].items():
            obj.echo(f"net.ipv4.{key:<28} {value}")
        obj.echo()
        for key, value in report["derived"].items():
            obj.echo(f"{key:<36} {value}")


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


def main(argv: Sequence[str] | None = None, env: Environment | None = None) -> int:
    """Run the CLI; returns the exit status instead of raising SystemExit."""
    env = env or Environment()
    args = list(sys.argv[1:] if argv is None else argv)
    traceback = "--traceback" in args
    try:
        # click writes --help and --version to sys.stdout; point it at env's streams.
        with contextlib.redirect_stdout(env.stdout), contextlib.redirect_stderr(env.stderr):
            cli.main(args=args, prog_name="timewait", standalone_mode=False, obj=Ctx(env))
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
    return ExitStatus.OK
