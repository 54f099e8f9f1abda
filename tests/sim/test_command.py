"""`timewait sim list|run`, TOML custom scenarios and --plot, through the real CLI entry point.

`main()` is what users run: it turns TimewaitError into one line on stderr and a non-zero exit.
The sim group is registered by cli.py; the fixture registers it if cli.py does not yet.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from timewait.cli import cli, main
from timewait.env import Environment
from timewait.render.ladder import Rung
from timewait.render.plot import PlotError, plot_result
from timewait.sim.command import format_value, sim_group
from timewait.sim.scenario import ScenarioResult
from timewait.sim.toml_scenarios import TomlScenarioError, loads
from timewait.sim.toml_scenarios import run as run_toml
from timewait.status import ExitStatus

FAST = ["--set", "port_range=40000-40999", "--set", "rate=50", "--set", "duration_s=90"]


@pytest.fixture(autouse=True)
def _sim_registered() -> None:
    if "sim" not in cli.commands:
        cli.add_command(sim_group, "sim")


def tw(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(args), env=Environment(stdout=out, stderr=err))
    return status, out.getvalue(), err.getvalue()


def test_sim_list_names_every_flow_scenario_with_its_question() -> None:
    status, out, _ = tw("sim", "list")
    assert status == ExitStatus.OK
    for name in ("port-exhaustion", "tw-reuse", "port-range", "pooling", "load-balancing"):
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert line.rstrip().endswith("?")


def test_sim_list_json_has_names_questions_and_params() -> None:
    status, out, _ = tw("sim", "list", "--json")
    data = {s["name"]: s for s in json.loads(out)}
    assert status == 0
    pe = data["port-exhaustion"]
    assert pe["question"] and {"name": "rate", "default": 1000.0}.items() <= pe["params"][0].items()


def test_sim_run_prints_a_table_and_a_one_line_verdict() -> None:
    status, out, err = tw("sim", "run", "port-exhaustion", *FAST)
    assert status == 0, err
    assert "first_failure_s" in out and "50/s" in out
    verdicts = [line for line in out.splitlines() if line.startswith("verdict: ")]
    assert len(verdicts) == 1 and "EADDRNOTAVAIL" in verdicts[0]


def test_sim_run_json_is_exactly_the_documented_shape() -> None:
    status, out, _ = tw("sim", "run", "port-exhaustion", "--json", "--seed", "4", *FAST)
    data = json.loads(out)
    assert status == 0
    assert list(data) == ["scenario", "params", "variants", "verdict"]
    assert data["params"]["rate"] == 50.0
    for v in data["variants"].values():
        assert {"first_failure_s", "steady_time_wait", "failures", "connections"} <= set(v)


def test_same_seed_same_json() -> None:
    a = tw("sim", "run", "load-balancing", "--json", "--set", "duration_s=30", "--seed", "9")
    b = tw("sim", "run", "load-balancing", "--json", "--set", "duration_s=30", "--seed", "9")
    assert a == b


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["sim", "run", "no-such"], "unknown scenario 'no-such'"),
        (["sim", "run", "port-exhaustion", "--set", "speed=3"], "has no parameter 'speed'"),
        (["sim", "run", "port-exhaustion", "--set", "rate=fast"], "expected float"),
        (["sim", "run", "port-exhaustion", "--set", "tw_reuse=3"], "must be <= 2"),
        (["sim", "run", "port-exhaustion", "--plot", "x.pdf"], "use a .png or .svg"),
        (["sim", "run", "port-exhaustion", "--plot", "/no/such/dir/x.png"], "does not exist"),
        (["sim", "run", "/no/such/file.toml"], "no such file"),
    ],
)
def test_errors_are_one_line_with_a_non_zero_exit(args: list[str], fragment: str) -> None:
    status, out, err = tw(*args)
    assert status == ExitStatus.ERROR
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err
    assert out == ""


def test_set_without_equals_is_a_usage_error() -> None:
    status, _, err = tw("sim", "run", "port-exhaustion", "--set", "rate")
    assert status == ExitStatus.USAGE and "KEY=VALUE" in err


def test_trace_with_json_is_a_usage_error() -> None:
    status, _, _ = tw("sim", "run", "port-exhaustion", "--json", "--trace")
    assert status == ExitStatus.USAGE


def test_trace_of_a_flow_scenario_is_a_one_line_note() -> None:
    status, out, _ = tw("sim", "run", "pooling", "--trace", *FAST[2:])
    assert status == 0
    assert "no single-connection trace" in out


def test_trace_prints_a_ladder_when_the_result_has_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from timewait.model.segment import Flags, Segment
    from timewait.sim import scenario as sc

    syn = Segment(src="198.18.0.1", sport=40000, dst="198.18.0.2", dport=80, seq=7, flags=Flags.SYN)
    res = ScenarioResult(
        scenario="fake", params={}, variants={"a": {"x": 1}}, verdict="v",
        trace=[Rung(time=0, left=True, segment=syn)], trace_title=("client", "server"),
    )  # fmt: skip
    fake = sc.Scenario(name="fake-trace", question="?", params=(), run_fn=lambda p, s: res)
    monkeypatch.setitem(sc.CATALOG, "fake-trace", fake)
    status, out, _ = tw("sim", "run", "fake-trace", "--trace")
    assert status == 0 and "SYN seq=0" in out and "client" in out


@pytest.mark.parametrize("ext", ["png", "svg"])
def test_plot_writes_the_file_named_by_its_extension(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"pe.{ext}"
    status, out, err = tw("sim", "run", "port-exhaustion", "--plot", str(path), *FAST)
    assert status == 0, err
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") if ext == "png" else b"<svg" in data[:2000]
    assert f"plot written to {path}" in out


def test_plot_with_json_keeps_stdout_pure_json(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    status, out, err = tw("sim", "run", "pooling", "--json", "--plot", str(path), *FAST[2:])
    assert status == 0 and json.loads(out)["scenario"] == "pooling"
    assert "plot written" in err and path.exists()


def test_plot_draws_any_series_a_result_has(tmp_path: Path) -> None:
    """Packet scenarios carry other metrics: every metric gets a panel, variants overlaid."""
    res = ScenarioResult(
        scenario="packetish", params={}, variants={"a": {}, "b": {}}, verdict="v",
        series={"a": {"resets": ([0, 1], [0, 2])}, "b": {"resets": ([0, 1], [1, 1]),
                                                          "clean_closes": ([0], [3])}},
    )  # fmt: skip
    assert plot_result(res, tmp_path / "p.svg").stat().st_size > 1000


def test_plot_of_a_result_without_series_is_an_error(tmp_path: Path) -> None:
    res = ScenarioResult(scenario="empty", params={}, variants={}, verdict="v")
    with pytest.raises(PlotError, match="no time series"):
        plot_result(res, tmp_path / "p.png")


def test_plot_into_an_unwritable_file_is_an_error(tmp_path: Path) -> None:
    res = ScenarioResult(
        scenario="s", params={}, variants={"a": {}}, verdict="v",
        series={"a": {"time_wait": ([0], [1])}},
    )  # fmt: skip
    target = tmp_path / "taken.png"
    target.mkdir()
    with pytest.raises(PlotError, match="is a directory"):
        plot_result(res, target)
    (tmp_path / "file").write_text("")
    with pytest.raises(PlotError, match="does not exist"):
        plot_result(res, tmp_path / "file" / "p.png")  # parent is a file
    with pytest.raises(PlotError, match=r"png or \.svg"):
        plot_result(res, tmp_path / "p.txt")


def test_format_value_is_human() -> None:
    assert [format_value(v) for v in (None, True, 28232, 470.455, 2.0)] == [
        "-", "yes", "28,232", "470.455", "2",
    ]  # fmt: skip


def test_group_alone_runs_under_click_runner() -> None:
    result = CliRunner().invoke(sim_group, ["run", "tw-reuse", "--json", "--set", "duration_s=20"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["variants"]) == 6


def test_help_params_lists_each_parameter() -> None:
    status, out, _ = tw("sim", "run", "tw-reuse", "--help-params")
    assert status == 0 and "delay_ms=1000" in out and "tcp_tw_reuse_delay" in out


# -- TOML custom scenarios -----------------------------------------------------------------------

GOOD = """\
scenario = "port-exhaustion"
name = "gateway"
seed = 5

[params]
rate = 50
duration_s = 90
port_range = "40000-40999"

[variants.today]

[variants.wider]
port_range = "40000-41999"
"""


def test_toml_runs_every_variant_side_by_side(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(GOOD)
    status, out, err = tw("sim", "run", str(path), "--json")
    data = json.loads(out)
    assert status == 0, err
    assert data["scenario"] == "gateway"
    assert next(iter(data["variants"])) == "today / 50/s"
    today, wider = data["variants"]["today / 50/s"], data["variants"]["wider / 50/s"]
    assert today["usable_ports"] == 1000 and wider["usable_ports"] == 2000
    assert wider["first_failure_s"] == pytest.approx(2 * today["first_failure_s"])
    assert data["verdict"].startswith("today: ") and " | wider: " in data["verdict"]


def test_toml_set_overrides_the_file_and_cli_seed_wins() -> None:
    custom = loads(GOOD, "gw.toml")
    assert custom.seed == 5 and custom.params["rate"] == 50.0
    res = run_toml(custom, {"rate": "5"}, seed=2)
    assert all(v["failures"] == 0 for v in res.variants.values())


def test_toml_without_variants_runs_the_base_once() -> None:
    res = run_toml(loads('scenario = "pooling"\n[params]\nduration_s = 30\n', "p.toml"))
    assert res.scenario == "pooling" and len(res.variants) == 3


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('scenario = "port-exhaustion"\n[params]\nrate = \n', "x.toml: invalid TOML"),
        ('scenario = "port-exhaustion"\n\n[params]\nspeed = 3\n', "x.toml:4: unknown key 'speed'"),
        ('scenario = "port-exhaustion"\n[params]\nrate = "fast"\n',
         "x.toml:3: rate = 'fast' has the wrong type"),
        ('scenario = "port-exhaustion"\n[params]\nport_range = 40000\n', "expected a string"),
        ('scenario = "port-exhaustion"\n[params]\ntimestamps = 1\n', "expected true or false"),
        ('scenario = "port-exhaustion"\n[params]\ntw_reuse = 7\n',
         "x.toml:3: parameter tw_reuse=7: must be <= 2"),
        ('scenario = "port-exhaustion"\n[variants.a]\nrate = -5\n',
         "x.toml:3: parameter rate=-5.0: must be >= 0"),
        ('scenario = "nope"\n', "x.toml:1: unknown scenario 'nope'"),
        ("[params]\nrate = 1\n", "missing scenario"),
        ('scenario = "pooling"\ncolour = "red"\n', "x.toml:2: unknown key 'colour'"),
        ('scenario = "pooling"\nseed = "x"\n', "expected an integer"),
        ('scenario = "pooling"\nvariants = 3\n', "variants must be tables"),
    ],
)  # fmt: skip
def test_toml_errors_name_file_line_and_problem(text: str, fragment: str) -> None:
    with pytest.raises(TomlScenarioError) as e:
        loads(text, "x.toml")
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_toml_bad_syntax_reports_tomllib_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('scenario = "pooling"\n[params\n')
    status, _, err = tw("sim", "run", str(path))
    assert status == ExitStatus.ERROR and "invalid TOML" in err and "line 2" in err


def test_tables_off_a_terminal_are_never_cut_and_have_no_trailing_blanks() -> None:
    """issue 17: `sim run reuseaddr | cat` cut its columns at 100 characters."""
    import io

    from timewait.sim.command import render_table
    from timewait.sim.scenario import get

    out = io.StringIO()
    render_table(get("reuseaddr").run({"client_ports": 5}, seed=1), out, width=100)
    text = out.getvalue()
    assert "old=off,new=off" in text and "client reuseaddr=off" in text and "…" not in text
    assert all(line == line.rstrip() for line in text.splitlines())


def test_rate_zero_and_a_one_port_range_say_something_that_makes_sense() -> None:
    """issue 17: rate=0 gave "at 0/s ... nothing fails"; a one-port range said "0/s"."""
    import pytest

    from timewait.sim.scenario import ScenarioError, get

    with pytest.raises(ScenarioError, match=r"rate=0\.0: must be >= 0\.001"):
        get("port-exhaustion").run({"rate": "0"}, seed=1)
    v = get("port-exhaustion").run({"port_range": "5000-5000", "duration_s": "5"}, seed=1).verdict
    assert "0.0167/s" in v and "after 1 ms" in v and " 0/s" not in v
