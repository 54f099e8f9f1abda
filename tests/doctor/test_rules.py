"""One test per rule, named after it (STYLE.md rule 14); severities and exit statuses."""

from __future__ import annotations

from timewait.doctor import RULE_IDS, RULES, Severity, diagnose
from timewait.doctor.rules import Finding
from timewait.snapshot import Snapshot
from timewait.status import ExitStatus

from .helpers import S1, S2, SMALL, C, bound, fw2, listener, snap, tw, tws


def ids(s: Snapshot, previous: Snapshot | None = None) -> dict[str, Finding]:
    return {f.id: f for f in diagnose(s, previous).findings}


def test_rule_port_exhaustion_fires_at_90pct() -> None:
    """>= 90 % of a destination's usable ports in use -> critical, exit status 2."""
    at = snap(tws(C, S1, 80, range(40000, 40090)))  # 90 of 100
    f = ids(at)["port-exhaustion"]
    assert f.severity is Severity.CRITICAL
    assert f.evidence["destinations"][0]["in_use"] == 90
    assert diagnose(at).exit_status == ExitStatus.CRITICAL
    below = snap(tws(C, S1, 80, range(40000, 40089)))
    assert "port-exhaustion" not in ids(below)


def test_rule_port_exhaustion_counts_per_destination_not_per_host() -> None:
    """ref 7.3: 60 ports used toward each of two destinations is 60 %, not 120 %."""
    rows = tws(C, S1, 80, range(40000, 40060)) + tws(C, S2, 80, range(40000, 40060))
    found = ids(snap(rows))
    assert "port-exhaustion" not in found and "port-pressure" not in found


def test_rule_port_pressure_fires_at_70pct() -> None:
    f = ids(snap(tws(C, S1, 80, range(40000, 40070))))["port-pressure"]
    assert f.severity is Severity.WARNING
    assert diagnose(snap(tws(C, S1, 80, range(40000, 40070)))).exit_status == ExitStatus.WARNING
    assert "port-pressure" not in ids(snap(tws(C, S1, 80, range(40000, 40069))))


def test_rule_port_pressure_fires_when_full_within_10_minutes() -> None:
    """30 % used but +3 ports/s (30 young TIME_WAITs, none expiring): full in ~23 s."""
    found = ids(snap(tws(C, S1, 80, range(40000, 40030), 58_000)))
    assert found["port-pressure"].evidence["destinations"][0]["eta_s"] is not None
    assert "port-pressure" not in ids(snap(tws(C, S1, 80, range(40000, 40030), 30_000)))


def test_rule_tw_reuse_without_timestamps() -> None:
    """ref 3 condition 3, Lab E7c: reuse needs timestamps; 1 or 2 with TS off does nothing."""
    cfg = SMALL.replace(tcp_timestamps=0, tcp_tw_reuse=1)
    f = ids(snap([], cfg))["tw-reuse-without-timestamps"]
    assert f.severity is Severity.WARNING
    assert [r.id for r in f.remedies] == ["timestamps-on", "tw-reuse-off"]
    assert "tw-reuse-without-timestamps" not in ids(snap([], SMALL.replace(tcp_tw_reuse=1)))
    assert "tw-reuse-without-timestamps" not in ids(
        snap([], SMALL.replace(tcp_timestamps=0, tcp_tw_reuse=0))
    )


def test_rule_range_swallows_listeners() -> None:
    """A listener inside the range and not reserved (landscape 7 #18, #19)."""
    f = ids(snap([listener(40050), listener(8080)]))["range-swallows-listeners"]
    assert f.evidence["ports"] == [40050]
    (r,) = f.remedies
    assert r.commands[0] == "sysctl -w net.ipv4.ip_local_reserved_ports=40050"
    reserved = SMALL.replace(ip_local_reserved_ports=frozenset({40050}))
    assert "range-swallows-listeners" not in ids(snap([listener(40050)], reserved))


def test_rule_tw_overflow_fires_on_counter_and_reports_rise() -> None:
    """ref 5: TCPTimeWaitOverflow > 0 means TIME_WAIT was skipped."""
    assert "tw-overflow" not in ids(snap([], counters={"TCPTimeWaitOverflow": 0}))
    f = ids(snap([], counters={"TCPTimeWaitOverflow": 7}))["tw-overflow"]
    assert f.severity is Severity.WARNING and f.evidence["rising"] == 0
    before = snap([], counters={"TCPTimeWaitOverflow": 7}, monotonic_ns=10**12)
    after = snap([], counters={"TCPTimeWaitOverflow": 19}, monotonic_ns=10**12 + 2 * 10**9)
    f2 = ids(after, before)["tw-overflow"]
    assert f2.evidence["rising"] == 12 and "+12" in f2.title


def test_rule_tw_buckets_below_count() -> None:
    cfg = SMALL.replace(tcp_max_tw_buckets=5)
    f = ids(snap(tws(C, S1, 80, range(40000, 40005)), cfg))["tw-buckets-below-count"]
    assert f.remedies[0].id == "raise-tw-buckets"
    assert "tw-buckets-below-count" not in ids(snap(tws(C, S1, 80, range(40000, 40005))))


def test_rule_bind_held_ports() -> None:
    """BOUND_INACTIVE ports in the range: info below 10 % of the range, warning above."""
    f = ids(snap([bound(40000 + i) for i in range(3)]))["bind-held-ports"]
    assert f.severity is Severity.INFO and f.evidence["bound_ports"] == 3
    many = ids(snap([bound(40000 + i) for i in range(10)]))["bind-held-ports"]
    assert many.severity is Severity.WARNING
    assert many.remedies[0].id == "bind-address-no-port"


def test_rule_fin_wait2_orphans() -> None:
    rows = [fw2(C, 40000 + i % 100, f"198.18.1.{i // 100}", 80) for i in range(100)]
    f = ids(snap(rows))["fin-wait2-orphans"]
    assert f.severity is Severity.INFO and f.evidence["fin_wait2_minisockets"] == 100
    assert "fin-wait2-orphans" not in ids(snap(rows[:99]))


def test_rule_server_side_time_wait() -> None:
    """ref 12.1: server-side TIME_WAIT is explained as usually harmless (info, exit 0)."""
    rows = [listener(443)] + [
        tw(S1, 443, f"198.18.{i // 250}.{i % 250}", 50000) for i in range(1000)
    ]
    d = diagnose(snap(rows))
    f = {x.id: x for x in d.findings}["server-side-time-wait"]
    assert f.severity is Severity.INFO and f.evidence["by_port"] == {"443": 1000}
    assert d.exit_status == ExitStatus.OK


def test_rule_port_range_parity() -> None:
    odd = SMALL.replace(ip_local_port_range=(40001, 40099))
    assert ids(snap([], odd))["port-range-parity"].severity is Severity.INFO
    assert "port-range-parity" not in ids(snap([]))  # 40000 40099: different parity


def test_rule_collector_notes() -> None:
    s = Snapshot(sockets=snap([]).sockets, config=SMALL, notes=("not running as root",))
    assert "not running as root" in ids(s)["collector-notes"].title


def test_rule_ports_healthy() -> None:
    d = diagnose(snap(tws(C, S1, 80, range(40000, 40010))))
    assert [f.id for f in d.findings] == ["ports-healthy"]
    assert d.exit_status == ExitStatus.OK and d.status == "healthy"


def test_findings_are_sorted_most_severe_first() -> None:
    cfg = SMALL.replace(tcp_timestamps=0, tcp_tw_reuse=1)
    d = diagnose(snap([*tws(C, S1, 80, range(40000, 40095)), listener(40099)], cfg))
    sev = [f.severity for f in d.findings]
    assert sev == sorted(sev, reverse=True) and sev[0] is Severity.CRITICAL


def test_every_rule_has_a_listed_id() -> None:
    assert len(RULES) == len(RULE_IDS) == len(set(RULE_IDS))
    assert {r.__name__.replace("_", "-") for r in RULES} == set(RULE_IDS)
