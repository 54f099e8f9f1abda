"""deploy/: alert rules pass `promtool check rules` and their unit tests (`promtool test rules`),
the scrape config passes `promtool check config`, every PromQL expression of the Grafana
dashboard parses (promtool, as recording rules) and names only metrics the exporter exposes,
and the systemd unit passes `systemd-analyze verify`.

promtool comes from Debian's `prometheus` package, which `make test` installs: without it
these tests skip, except under CI=true, where the skip is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from timewait.exporter.collector import COUNTERS, ERRORS_TOTAL, family_names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"\btimewait_[a-z0-9_]+")


def exposed_names() -> set[str]:
    counters = {name for name, _ in COUNTERS.values()} | {ERRORS_TOTAL}
    return {n + "_total" if n in counters else n for n in family_names()}


def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        reason = "promtool missing (Debian package prometheus; `make test` installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; under CI=true this test must run")
        pytest.skip(reason)
    return exe


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=DEPLOY)


def test_promtool_check_rules() -> None:
    r = run(promtool(), "check", "rules", "prometheus-rules.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 9 rules found" in r.stdout


def test_promtool_test_rules() -> None:
    """Each alert fires when it should, stays quiet otherwise (see the test file's cases)."""
    r = run(promtool(), "test", "rules", "prometheus-rules.test.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_promtool_check_scrape_config() -> None:
    r = run(promtool(), "check", "config", "prometheus-scrape.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_alert_rules_cover_the_issue() -> None:
    """Issue 6: a destination heading for exhaustion, TCPTimeWaitOverflow rising, harmful
    settings; every metric they use is one the exporter exposes."""
    text = (DEPLOY / "prometheus-rules.yml").read_text()
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    alerts = set(re.findall(r"- alert: (\w+)", code))
    assert {
        "TimewaitDestinationHeadingForExhaustion",
        "TimewaitTimeWaitOverflowRising",
        "TimewaitHarmfulSetting",
    } <= alerts
    used = set(METRIC.findall(code))
    assert used <= exposed_names(), used - exposed_names()


def dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_names_only_exposed_metrics() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used <= exposed_names(), used - exposed_names()
    assert "timewait_destination_port_usage_ratio" in used
    assert "timewait_exhaustion_eta_seconds" in used


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """Grafana variables substituted, each expression is checked as a recording rule."""
    tool = promtool()
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        e = expr.replace("$__rate_interval", "5m").replace("$instance", ".*")
        rules.append({"record": f"dashboard:expr{i}", "expr": e.replace("$netns", ".*")})
    f = tmp_path / "dashboard-rules.yml"
    # JSON is YAML (1.2), so promtool reads it without a YAML writer here
    f.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run([tool, "check", "rules", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the unit (ExecStart pointed at this venv's timewait)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (package systemd)")
    exe = Path(sys.executable).with_name("timewait")
    unit = tmp_path / "timewait-exporter.service"
    text = (DEPLOY / "timewait-exporter.service").read_text()
    unit.write_text(text.replace("/usr/local/bin/timewait", str(exe)))
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--listen 127.0.0.1:19977" in text and "DynamicUser=yes" in text
    assert re.search(r"^CapabilityBoundingSet=$", text, re.M)
