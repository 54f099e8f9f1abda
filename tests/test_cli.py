"""The CLI layer: exit statuses, one-line errors, JSON output (HTTPie-style main(args, env))."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

from timewait.cli import main
from timewait.env import Environment
from timewait.status import ExitStatus


@dataclass
class Result:
    stdout: str
    stderr: str
    exit_status: int


def run(*args: str) -> Result:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(args), env=Environment(stdout=out, stderr=err, stdout_isatty=False))
    return Result(out.getvalue(), err.getvalue(), status)


def test_help_lists_commands_and_exit_codes() -> None:
    r = run("--help")
    assert r.exit_status == ExitStatus.OK
    assert "config" in r.stdout and "Exit status" in r.stdout


def test_config_show_json_has_derived_capacity() -> None:
    r = run("config", "show", "--json", "--set", "ip_local_port_range=40000 40009")
    assert r.exit_status == ExitStatus.OK, r.stderr
    data = json.loads(r.stdout)
    assert data["settings"]["ip_local_port_range"] == "40000\t40009"
    assert data["derived"]["usable_ports_per_destination"] == 10


def test_out_of_range_setting_is_one_line_error_with_status_3() -> None:
    r = run("config", "show", "--set", "tcp_tw_reuse=4")
    assert r.exit_status == ExitStatus.ERROR
    assert r.stderr.count("\n") == 1 and "0..2" in r.stderr and "Traceback" not in r.stderr


def test_unknown_setting_is_usage_error() -> None:
    r = run("config", "show", "--set", "tcp_tw_recycle=1")
    assert r.exit_status == ExitStatus.USAGE
    assert "unknown setting 'tcp_tw_recycle'" in r.stderr


def test_unknown_flag_is_usage_error_pointing_at_help() -> None:
    r = run("config", "show", "--bogus")
    assert r.exit_status == ExitStatus.USAGE
    assert "--help" in r.stderr
