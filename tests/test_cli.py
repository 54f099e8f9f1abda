"""The CLI layer: exit statuses, one-line errors, JSON output (HTTPie-style main(args, env))."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

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
    r = run("config", "show", "--defaults", "--json", "--set", "ip_local_port_range=40000 40009")
    assert r.exit_status == ExitStatus.OK, r.stderr
    data = json.loads(r.stdout)
    assert data["shows"] == "defaults" and data["namespace"] is None
    assert data["settings"]["ip_local_port_range"] == "40000 40009"
    assert data["set"] == {"ip_local_port_range": {"value": "40000 40009", "was": "32768 60999"}}
    assert data["derived"]["usable_ports_per_destination"] == 10


def _live(name: str) -> str:
    return " ".join(Path("/proc/sys/net/ipv4", name).read_text().split())


def test_config_show_prints_the_live_settings_and_says_so() -> None:
    """It used to print Linux's defaults as if they were this host's settings (issue 17)."""
    r = run("config", "show")
    assert r.exit_status == ExitStatus.OK, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("live settings of ") and "/proc/sys/net/ipv4" in lines[0]
    rows = dict(line.split(None, 1) for line in lines[1:13])
    for name in ("ip_local_port_range", "tcp_tw_reuse", "tcp_fin_timeout", "tcp_timestamps"):
        assert rows[f"net.ipv4.{name}"] == _live(name)
    data = json.loads(run("config", "show", "--json").stdout)
    assert data["shows"] == "live" and data["settings"]["tcp_tw_reuse"] == _live("tcp_tw_reuse")


def test_config_show_defaults_on_request() -> None:
    r = run("config", "show", "--defaults", "--set", "tcp_tw_reuse=1")
    assert r.exit_status == ExitStatus.OK, r.stderr
    assert r.stdout.startswith("Linux defaults") and "not read from this host" in r.stdout
    assert "net.ipv4.ip_local_port_range         32768 60999" in r.stdout
    assert "--set (default: 2)" in r.stdout


def test_config_show_prints_no_control_characters() -> None:
    for args in ((), ("--defaults",), ("--set", "ip_local_port_range=40000\t40009")):
        out = run("config", "show", *args).stdout
        assert out and all(ch.isprintable() for line in out.splitlines() for ch in line), out


def test_config_show_defaults_and_a_namespace_is_a_usage_error() -> None:
    r = run("config", "show", "--defaults", "--netns", "x")
    assert r.exit_status == ExitStatus.USAGE and "--defaults" in r.stderr


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
