"""The --json document: documented keys and types (doctor/schema.py), JSON-serializable."""

from __future__ import annotations

import json

from timewait.doctor import diagnose, to_json

from .helpers import S1, V6C, V6S, C, listener, snap, tw, tws

TOP_KEYS = {
    "schema", "status", "exit_status", "snapshot", "interval_s", "config", "totals", "ports",
    "churn_per_s", "churn_method", "trend_method", "timer_histogram", "memory_bytes",
    "destinations", "destinations_total", "findings", "pools", "rate_window_s", "nat",
    "trace",
}  # fmt: skip
DEST_KEYS = {
    "src", "dst", "dport", "family", "time_wait", "established", "fin_wait2", "syn_sent",
    "other", "in_use", "capacity", "usage", "churn_per_s", "trend_per_s", "eta_s",
    "headroom", "reusable", "bound", "bind_like",
}  # fmt: skip


def document() -> dict:
    rows = [*tws(C, S1, 80, range(40000, 40095)), tw(V6C, 40000, V6S, 443), listener(22)]
    return json.loads(json.dumps(to_json(diagnose(snap(rows)), top=10)))


def test_json_top_level_keys_and_status() -> None:
    doc = document()
    assert set(doc) == TOP_KEYS
    assert doc["schema"] == "timewait-doctor/3"
    assert doc["trace"] is None  # not traced (doctor --trace S adds it: test_trace.py)
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
    assert (d0["headroom"], d0["reusable"], d0["bound"], d0["bind_like"]) == (5, 0, 0, False)
    assert d0["eta_s"] is None or isinstance(d0["eta_s"], float)
    assert d1["family"] == "ipv6"


def test_json_findings_shape() -> None:
    f = document()["findings"][0]
    assert set(f) == {"id", "severity", "title", "detail", "evidence", "remedies"}
    assert (f["id"], f["severity"]) == ("port-exhaustion", "critical")
    r = f["remedies"][0]
    assert set(r) == {"id", "title", "changes", "risk", "commands", "code", "code_c", "requires"}
    assert isinstance(r["commands"], list)


def test_json_top_limits_destinations() -> None:
    rows = [tw(C, 40000, f"198.18.1.{i}", 80) for i in range(30)]
    d = diagnose(snap(rows))
    assert len(to_json(d, top=5)["destinations"]) == 5
    assert len(to_json(d, top=None)["destinations"]) == 30


def test_json_pools_shape() -> None:
    """Schema 2: the pools a port comes from, each with its headroom (issue 10)."""
    doc = document()
    p = doc["pools"]
    assert set(p) == {"worst", "connect_new", "bind"}
    assert p["worst"] == {
        "kind": "connect", "label": f"connect() {C} -> {S1}:80", "headroom": 5, "usage": 0.95,
    }  # fmt: skip
    assert p["connect_new"] == {
        "label": "connect() to a new destination", "size": 100, "held": 0, "headroom": 100,
        "usage": 0.0,
    }  # fmt: skip
    by_label = {b["label"]: b for b in p["bind"]}
    mine = by_label[f"bind({C}, 0)"]
    assert (mine["address"], mine["family"], mine["held"], mine["headroom"]) == (
        C, "ipv4", 95, 5,
    )  # fmt: skip
    assert by_label["bind(another IPv4 address, 0)"]["headroom"] == 100
    ports = doc["ports"]
    assert (ports["budget"], ports["exclusive"], ports["capacity"]) == (100, 0, 100)
    assert ports["inference"] == {"parity": 0, "no_sharing": 0, "same_address": 0}


def test_no_control_character_in_the_settings() -> None:
    """The port range's tab (the kernel's sysctl text) is a space in the JSON (issue 17)."""
    import json
    import re

    from timewait.config import KernelConfig

    cfg = KernelConfig(ip_local_port_range=(40000, 40999))
    doc = to_json(diagnose(snap([tw(C, 40000, S1, 80)], cfg)))
    assert doc["config"]["ip_local_port_range"] == "40000 40999"
    assert not re.search(r"\\[tnr]|\\u00", json.dumps(doc["config"]))
