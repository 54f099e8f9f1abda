"""`lab list|run|cleanup` through click's CliRunner on lab_group."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from timewait.lab.command import lab_group

from .helpers import need_root


def test_list_names_every_experiment() -> None:
    res = CliRunner().invoke(lab_group, ["list"])
    assert res.exit_code == 0
    for name in ("exhaustion", "tw-reuse", "nginx-keepalive", "http-pooling"):
        assert name in res.output
    data = json.loads(CliRunner().invoke(lab_group, ["list", "--json"]).output)
    assert len(data) == 13  # with pool-headroom, snat-exhaustion and plan


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "nope"], "unknown experiment 'nope'"),
        (["run", "exhaustion", "--set", "foo=1"], "has no parameter 'foo'"),
        (["run", "exhaustion", "--set", "rate=abc"], "rate='abc'"),
        (["run", "exhaustion", "--set", "port_range=9-x"], "port range"),
        # The ends swapped: said so (it used to be "must lie within 1024-65535"), and before
        # anything is made (http-pooling used to fail with EINVAL from inside its namespace).
        (
            ["run", "exhaustion", "--set", "port_range=41000-40000"],
            "the low end 41000 is above the high end 40000",
        ),
        (
            ["run", "http-pooling", "--set", "port_range=41000-40000"],
            "the low end 41000 is above the high end 40000",
        ),
        (["run", "tw-reuse", "--set", "port_range=500-600"], "ip_unprivileged_port_start (1024)"),
        (["run", "exhaustion", "--set", "port_range=40000-70000"], "each end must be in 1..65535"),
    ],
)
def test_bad_input_is_a_one_line_error(args: list[str], needle: str) -> None:
    res = CliRunner().invoke(lab_group, args)
    assert res.exit_code != 0
    assert needle in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert "Traceback" not in res.output


def test_without_root_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    res = CliRunner().invoke(lab_group, ["run", "exhaustion", "--quick"])
    assert res.exit_code != 0
    assert "needs root" in res.output and len(res.output.strip().splitlines()) == 1
    res = CliRunner().invoke(lab_group, ["cleanup"])
    assert res.exit_code != 0 and "needs root" in res.output


def test_missing_nginx_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    need_root()
    from timewait.lab.experiments import base

    monkeypatch.setattr(base, "NGINX", "/nonexistent/nginx")
    res = CliRunner().invoke(lab_group, ["run", "nginx-keepalive", "--quick"])
    assert res.exit_code != 0 and "needs nginx" in res.output
    assert "system-packages.sh" in res.output


@pytest.mark.root
def test_run_json_has_kernel_model_and_comparison(tmp_path: object) -> None:
    need_root()
    plot = os.path.join(str(tmp_path), "x.png")
    res = CliRunner().invoke(lab_group, ["run", "exhaustion", "--quick", "--json", "--plot", plot])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["experiment"] == "exhaustion"
    assert data["comparison"] and data["model_defects"] == []
    assert {r["status"] for r in data["comparison"]} == {"ok"}
    assert os.path.getsize(plot) > 0


@pytest.mark.root
def test_run_table_says_model_defect_when_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put back the model defect the lab found (close() at once after the write, so the peer's
    ACK draws a second RST on the model, not on loopback): the table must say MODEL DEFECT."""
    need_root()
    from timewait.lab.experiments import closing
    from timewait.sim import scenario as sim_scenario

    real_get = sim_scenario.get

    class CloseAtOnce:
        def __init__(self, name: str) -> None:
            self.inner = real_get(name)

        def run(self, overrides: dict[str, object], seed: int = 1) -> object:
            if "close_delay_ms" in overrides:
                overrides = {**overrides, "close_delay_ms": 0.0}
            return self.inner.run(overrides, seed)

    monkeypatch.setattr(closing, "get_scenario", CloseAtOnce)
    res = CliRunner().invoke(lab_group, ["run", "lost-final-ack", "--quick"])
    assert res.exit_code == 0, res.output
    assert "MODEL DEFECT" in res.output and "rsts_sent" in res.output
