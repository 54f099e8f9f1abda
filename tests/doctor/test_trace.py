"""The trace table (timewait.doctor.trace) and what the doctor does with it: pure, no kernel.

A snapshot that carries a trace (doctor --trace S) gets its churn from the counted active
closes, per destination exactly, its ETA from that churn, and the connect-failures /
bind-failures findings; a saved file keeps the trace.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from timewait.doctor import diagnose, to_json
from timewait.doctor import trace as T
from timewait.doctor.rules import Severity
from timewait.snapshot import MalformedSnapshot, Snapshot

from .helpers import S1, S2, C, est, listener, snap, tws

W5 = 5_000_000_000  # a 5 s window


def traced(s: Snapshot, rows: list[dict[str, object]], window_ns: int = W5) -> Snapshot:
    return dataclasses.replace(
        s, tables=T.tables(T.rows_from_dicts(rows), start_ns=7, window_ns=window_ns)
    )


def closes(dst: str, n: int, *, src: str = C, dport: int = 80, pid: int = 42) -> dict[str, object]:
    return dict(kind=T.Kind.ACTIVE_CLOSE, laddr=src, raddr=dst, rport=dport, count=n, pid=pid,
                comm="client", side=T.SIDE_CLIENT)  # fmt: skip


def failures(dst: str, n: int, errno: str = "EADDRNOTAVAIL", pid: int = 42) -> dict[str, object]:
    return dict(kind=T.Kind.CONNECT_ERROR, errno=errno, raddr=dst, rport=80, count=n, pid=pid,
                comm="client", netns=4026532000)  # fmt: skip


def test_aggregate_sums_equal_keys_largest_first() -> None:
    rows = T.rows_from_dicts([failures(S1, 3), failures(S2, 10), failures(S1, 4)])
    agg = T.aggregate(rows)
    assert [int(c) for c in agg["count"]] == [10, 7]
    by_errno = T.aggregate(rows, ("errno",))
    assert by_errno.shape == (1,) and int(by_errno[0]["count"]) == 17


def test_delta_of_cumulative_tables_counts_what_is_new() -> None:
    old = T.rows_from_dicts([failures(S1, 3), closes(S2, 5)])
    new = T.rows_from_dicts([failures(S1, 10), closes(S2, 5), failures(S2, 2)])
    d = T.Traced(rows=T.delta(new, old), window_ns=W5)
    assert d.total(*T.CONNECT_KINDS) == 9  # 7 more toward S1, 2 new toward S2
    assert d.total(T.Kind.ACTIVE_CLOSE) == 0
    assert T.delta(new, None).shape[0] == 3


def test_by_errno_and_groups_name_process_and_destination() -> None:
    tr = T.Traced(
        rows=T.rows_from_dicts(
            [failures(S1, 50), failures(S1, 2, "ECONNREFUSED"), failures(S2, 1, pid=7)]
        ),
        window_ns=W5,
    )
    assert tr.by_errno() == {"EADDRNOTAVAIL": 51, "ECONNREFUSED": 2}
    (top,) = tr.groups(*T.CONNECT_KINDS, keys=T.FAILURE_KEYS, top=1)
    assert (top.count, top.errno_name, top.process, top.destination) == (
        50, "EADDRNOTAVAIL", "client[42]", f"{S1}:80",
    )  # fmt: skip
    assert tr.per_s(*T.CONNECT_KINDS) == pytest.approx(53 / 5)


def test_errno_names_are_linux_numbers() -> None:
    assert (T.errno_name(99), T.errno_name(98), T.errno_name(111)) == (
        "EADDRNOTAVAIL", "EADDRINUSE", "ECONNREFUSED",
    )  # fmt: skip
    assert T.errno_name(4095) == "E4095"


def test_traced_churn_replaces_the_estimate_per_destination() -> None:
    """100 TIME_WAITs toward S1 would be 1.7/s by Little's law; the trace counted 400 active
    closes in 5 s: 80/s, and the host churn is every active close."""
    s = snap([*tws(C, S1, 80, range(40000, 40060)), *tws(C, S2, 80, range(40000, 40010))])
    a0 = diagnose(s).analysis
    assert a0.churn_method == "littles_law"
    a = diagnose(traced(s, [closes(S1, 400), closes(S2, 10), closes("198.18.0.99", 5)])).analysis
    assert (a.churn_method, a.trend_method) == ("traced", "traced")
    assert a.churn_per_s == pytest.approx(415 / 5)
    churn = {d.dst: d.churn_per_s for d in a.destinations()}
    assert churn == {S1: pytest.approx(80.0), S2: pytest.approx(2.0)}


def test_traced_churn_gives_the_eta() -> None:
    """60 of 100 ports held toward S1, 40 left, 10 new TIME_WAITs/s and none expiring soon:
    full in 4 s."""
    s = snap(tws(C, S1, 80, range(40000, 40060), left_ms=50_000))
    (d,) = diagnose(traced(s, [closes(S1, 50)])).analysis.destinations()
    assert d.churn_per_s == pytest.approx(10.0)
    assert d.eta_s == pytest.approx(4.0)


def test_server_side_closes_do_not_count_toward_a_destination() -> None:
    s = snap([listener(80, C), *tws(C, S1, 80, range(40000, 40010))])
    server = dict(kind=T.Kind.ACTIVE_CLOSE, laddr=C, lport=80, count=100, side=T.SIDE_SERVER)
    a = diagnose(traced(s, [server])).analysis
    assert a.churn_per_s == pytest.approx(20.0)  # the host made 100 TIME_WAITs
    assert a.destinations()[0].churn_per_s == 0.0


def test_connect_failures_rule_is_critical_for_eaddrnotavail() -> None:
    s = traced(snap([est(C, 40000, S1, 80)]), [failures(S1, 50), failures(S2, 3, "ECONNREFUSED")])
    d = diagnose(s)
    f = next(f for f in d.findings if f.id == "connect-failures")
    assert f.severity == Severity.CRITICAL and d.findings[0] is f
    assert f.title.startswith("53 connect() failure(s) in the last 5 s (EADDRNOTAVAIL 50, ")
    assert "client[42] -> 198.18.0.2:80 EADDRNOTAVAIL x50" in f.title
    assert f.evidence["by_errno"] == {"EADDRNOTAVAIL": 50, "ECONNREFUSED": 3}
    assert f.remedies  # the port remedies


def test_connect_failures_of_the_peer_are_info_only() -> None:
    s = traced(snap([]), [failures(S1, 3, "ECONNREFUSED")])
    (f,) = [f for f in diagnose(s).findings if f.id == "connect-failures"]
    assert f.severity == Severity.INFO and not f.remedies


def test_bind_failures_rule_port_zero_is_critical_fixed_port_a_warning() -> None:
    zero = dict(kind=T.Kind.BIND_ERROR, errno="EADDRINUSE", laddr=C, lport=0, count=4)
    fixed = dict(kind=T.Kind.BIND_ERROR, errno="EADDRINUSE", laddr=C, lport=8080, count=1)
    (f,) = [
        f for f in diagnose(traced(snap([]), [zero, fixed])).findings if f.id == "bind-failures"
    ]
    assert f.severity == Severity.CRITICAL
    assert (f.evidence["eaddrinuse_port0"], f.evidence["eaddrinuse_fixed"]) == (4, 1)
    (g,) = [f for f in diagnose(traced(snap([]), [fixed])).findings if f.id == "bind-failures"]
    assert g.severity == Severity.WARNING and g.remedies[0].id == "so-reuseaddr"


def test_no_trace_no_trace_findings() -> None:
    ids = {f.id for f in diagnose(snap([*tws(C, S1, 80, range(40000, 40095))])).findings}
    assert not ids & {"connect-failures", "bind-failures"}


def test_json_trace_block() -> None:
    s = traced(
        snap([est(C, 40000, S1, 80)]),
        [failures(S1, 50), closes(S1, 20), dict(kind=T.Kind.OPENED, laddr=C, raddr=S1,
                                                 rport=80, count=21, side=T.SIDE_CLIENT)],
    )  # fmt: skip
    doc = json.loads(json.dumps(to_json(diagnose(s))))
    t = doc["trace"]
    assert t["window_s"] == 5.0
    c = t["connect_failures"]
    assert (c["total"], c["per_s"], c["by_errno"], c["async"]) == (
        50,
        10.0,
        {"EADDRNOTAVAIL": 50},
        0,
    )
    (row,) = c["top"]
    assert (row["pid"], row["comm"], row["dst"], row["dport"], row["count"]) == (
        42, "client", S1, 80, 50,
    )  # fmt: skip
    assert t["active_closes"]["total"] == t["active_closes"]["client"] == 20
    assert t["opened"] == {"total": 21, "per_s": 4.2}
    assert doc["churn_method"] == "traced"


def test_trace_survives_a_file(tmp_path: object) -> None:
    s = traced(snap([est(C, 40000, S1, 80)]), [failures(S1, 50), closes(S1, 9)])
    back = Snapshot.from_bytes(s.to_bytes())
    tr = T.traced(back)
    assert tr is not None and tr.window_ns == W5 and tr.total(*T.CONNECT_KINDS) == 50
    assert diagnose(back).analysis.churn_method == "traced"


def test_a_damaged_trace_table_is_a_one_line_error() -> None:
    s = snap([])
    bad = dataclasses.replace(s, tables={T.TABLE: np.zeros(2, dtype=[("kind", "u1")])})
    with pytest.raises(MalformedSnapshot, match="trace"):
        diagnose(bad)
    no_window = dataclasses.replace(s, tables={T.TABLE: T.empty(1)})
    with pytest.raises(MalformedSnapshot, match="trace_window"):
        T.traced(no_window)
