"""The --json document: documented keys and types (doctor/schema.py), JSON-serializable."""

from __future__ import annotations

import json

from timewait.doctor import diagnose, to_json

from .helpers import S1, V6C, V6S, C, listener, snap, tw, tws

TOP_KEYS = {
    "schema", "status", "exit_status", "snapshot", "interval_s", "config", "totals", "ports",
    "churn_per_s", "churn_method", "trend_method", "timer_histogram", "memory_bytes",
    "destinations", "destinations_total", "findings",
}  # fmt: skip
DEST_KEYS = {
    "src", "dst", "dport", "family", "time_wait", "established", "fin_wait2", "syn_sent",
    "other", "in_use", "capacity", "usage", "churn_per_s", "trend_per_s", "eta_s",
}  # fmt: skip


def document() -> dict:
    rows = [*tws(C, S1, 80, range(40000, 40095)), tw(V6C, 40000, V6S, 443), listener(22)]
    return json.loads(json.dumps(to_json(diagnose(snap(rows)), top=10)))


def test_json_top_level_keys_and_status() -> None:
    doc = document()
    assert set(doc) == TOP_KEYS
    assert doc["schema"] == "timewait-doctor/1"
    assert (doc["status"], doc["exit_status"]) == ("critical", 2)


def test_json_totals_have_time_wait_and_fin_wait2() -> None:
    t = document()["totals"]
    assert isinstance(t["time_wait"], int) and t["time_wait"] == 96
    assert isinstance(t["fin_wait2"], int) and t["fin_wait2"] == 0


def test_json_destinations_shape() -> None:
    doc = document()
    assert doc["destinations_total"] == 2
    d0, d1 = doc["destinations"]
    assert set(d0) == DEST_KEYS
    assert (d0["src"], d0["dst"], d0["dport"], d0["family"]) == (C, S1, 80, "ipv4")
    assert (d0["in_use"], d0["capacity"], d0["time_wait"]) == (95, 100, 95)
    assert d0["usage"] == 0.95 and isinstance(d0["churn_per_s"], float)
    assert d0["eta_s"] is None or isinstance(d0["eta_s"], float)
    assert d1["family"] == "ipv6"


def test_json_findings_shape() -> None:
    f = document()["findings"][0]
    assert set(f) == {"id", "severity", "title", "detail", "evidence", "remedies"}
    assert (f["id"], f["severity"]) == ("port-exhaustion", "critical")
    r = f["remedies"][0]
    assert set(r) == {"id", "title", "changes", "risk", "commands", "code", "requires"}
    assert isinstance(r["commands"], list)


def test_json_top_limits_destinations() -> None:
    rows = [tw(C, 40000, f"198.18.1.{i}", 80) for i in range(30)]
    d = diagnose(snap(rows))
    assert len(to_json(d, top=5)["destinations"]) == 5
    assert len(to_json(d, top=None)["destinations"]) == 30
