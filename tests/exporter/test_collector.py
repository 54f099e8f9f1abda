"""The collector against synthetic and model Snapshots (no root, no network).

What these prove: values equal the doctor's analysis of the same snapshot; per-destination
families never exceed top_k + 1 series per namespace; a failing source gives the error metric
and a log line, never an exception; names carry units and `_total`; a second registration
fails; concurrent scrapes within the TTL share one collection and a stuck one cannot hang them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from timewait.config import KernelConfig
from timewait.doctor.analysis import analyze
from timewait.doctor.rules import RULE_IDS
from timewait.exporter.collector import (
    COUNTERS,
    GAUGES,
    OTHER,
    TimewaitCollector,
    family_names,
)
from timewait.live.netns import NamespaceNotFound
from timewait.snapshot import Snapshot, from_host

from ..doctor.helpers import S1, S2, C, bulk_tw, est, fw2, listener, snap, tw, tws
from ..model.host_helpers import CLIENT_IP, SERVER_IP, listen, make_net, one_request

PER_DEST = (
    "timewait_destination_ports_in_use",
    "timewait_destination_usable_ports",
    "timewait_destination_port_usage_ratio",
    "timewait_destination_headroom_ports",
    "timewait_destination_time_wait_sockets",
    "timewait_destination_exhaustion_eta_seconds",
)
COUNTERS_6_18 = {
    "TW": 1234,
    "TWRecycled": 5,
    "TWKilled": 2,
    "TCPTimeWaitOverflow": 7,
    "ActiveOpens": 3000,
    "sockstat.tw": 84,
}


def mixed() -> Snapshot:
    """100-port range (40000-40099): 60 TIME_WAIT + 5 ESTABLISHED to S1:80, 20 TIME_WAIT to
    S2:443, 3 server-side TIME_WAIT on listener 8080, one FIN_WAIT2 minisocket."""
    rows = [
        *tws(C, S1, 80, range(40000, 40060)),
        *[est(C, p, S1, 80) for p in range(40060, 40065)],
        *tws(C, S2, 443, range(40000, 40020)),
        listener(8080),
        *[tw("0.0.0.0", 8080, S2, 50000 + i) for i in range(3)],
        fw2(C, 40070, S2, 443),
    ]
    return snap(rows, counters=COUNTERS_6_18)


def registry_for(collector: TimewaitCollector) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(collector)
    return reg


def fixed(snapshot: Snapshot) -> Callable[[str | None], Snapshot]:
    return lambda netns: snapshot


def series(reg: CollectorRegistry, name: str) -> list[dict[str, str]]:
    return [s.labels for m in reg.collect() for s in m.samples if s.name == name]


def value(reg: CollectorRegistry, name: str, netns: str = "host", **labels: str) -> float | None:
    return reg.get_sample_value(name, {"netns": netns, **labels})


def dest(src: str, dst: str, port: int) -> str:
    return f"{src} -> {dst}:{port}"


# -- values -----------------------------------------------------------------------------------


def test_values_equal_the_doctors_analysis() -> None:
    """Per-destination usage, ports in use and usable ports are the analysis' numbers."""
    s = mixed()
    a = analyze(s)
    reg = registry_for(TimewaitCollector(source=fixed(s), ttl_s=0))
    for d in a.destinations():
        label = dest(d.src, d.dst, d.dport)
        kw = {"destination": label}
        assert value(reg, "timewait_destination_port_usage_ratio", **kw) == d.usage
        assert value(reg, "timewait_destination_ports_in_use", **kw) == d.in_use
        assert value(reg, "timewait_destination_usable_ports", **kw) == d.capacity == 100
        assert value(reg, "timewait_destination_time_wait_sockets", **kw) == d.time_wait
    top = {"destination": dest(C, S1, 80)}
    assert value(reg, "timewait_destination_ports_in_use", **top) == 65
    assert value(reg, "timewait_destination_port_usage_ratio", **top) == 0.65


def test_state_side_and_minisocket_counts() -> None:
    reg = registry_for(TimewaitCollector(source=fixed(mixed()), ttl_s=0))
    assert value(reg, "timewait_sockets", state="TIME-WAIT") == 83
    assert value(reg, "timewait_sockets", state="ESTABLISHED") == 5
    assert value(reg, "timewait_sockets", state="LISTEN") == 1
    assert value(reg, "timewait_time_wait_sockets", side="client") == 80
    assert value(reg, "timewait_time_wait_sockets", side="server") == 3
    assert value(reg, "timewait_fin_wait2_minisockets") == 1
    assert value(reg, "timewait_minisockets") == 84
    assert value(reg, "timewait_usable_ports") == 100
    assert value(reg, "timewait_destinations") == 2


def test_kernel_counters_are_counters_with_total() -> None:
    reg = registry_for(TimewaitCollector(source=fixed(mixed()), ttl_s=0))
    assert value(reg, "timewait_tcpext_tw_total") == 1234
    assert value(reg, "timewait_tcpext_tw_recycled_total") == 5
    assert value(reg, "timewait_tcpext_tw_killed_total") == 2
    assert value(reg, "timewait_tcpext_tcp_time_wait_overflow_total") == 7
    assert value(reg, "timewait_tcp_active_opens_total") == 3000
    types = {m.name: m.type for m in reg.collect()}
    assert types["timewait_tcpext_tw"] == "counter"
    # a counter this kernel lacks (PAWSTimewait before 6.16) is absent, not 0
    assert "timewait_tcpext_paws_timewait" not in types


def test_sysctls_exported_and_missing_ones_left_out() -> None:
    cfg = KernelConfig(
        ip_local_port_range=(40000, 40099),
        ip_local_reserved_ports=frozenset({40000, 40001, 50000}),
        tcp_tw_reuse=1,
        tcp_fin_timeout=20,
        tcp_max_tw_buckets=5000,
    )
    note = "net.ipv4.tcp_tw_reuse_delay is not on this kernel; assumed the default '1000'"
    s = Snapshot(sockets=snap([]).sockets, config=cfg, notes=(note,))
    reg = registry_for(TimewaitCollector(source=fixed(s), ttl_s=0))
    assert value(reg, "timewait_sysctl_tcp_tw_reuse") == 1
    assert value(reg, "timewait_sysctl_tcp_fin_timeout_seconds") == 20
    assert value(reg, "timewait_sysctl_tcp_max_tw_buckets") == 5000
    assert value(reg, "timewait_sysctl_ip_local_port_range_low") == 40000
    assert value(reg, "timewait_sysctl_ip_local_port_range_high") == 40099
    assert value(reg, "timewait_sysctl_ip_local_reserved_ports") == 2  # 50000 is outside
    assert value(reg, "timewait_sysctl_tcp_tw_reuse_delay_seconds") is None


def test_eta_from_young_time_waits_equals_analysis() -> None:
    """TIME_WAITs all younger than 10 s: the trend is up, so an ETA is exported."""
    s = snap(tws(C, S1, 80, range(40000, 40050), left_ms=55_000))
    a = analyze(s)
    d = a.destinations()[0]
    assert d.eta_s is not None
    reg = registry_for(TimewaitCollector(source=fixed(s), ttl_s=0))
    assert value(reg, "timewait_destination_exhaustion_eta_seconds",
                 destination=dest(C, S1, 80)) == pytest.approx(d.eta_s)  # fmt: skip
    assert value(reg, "timewait_exhaustion_eta_seconds") == pytest.approx(d.eta_s)


def test_no_eta_when_not_trending_up() -> None:
    reg = registry_for(TimewaitCollector(source=fixed(mixed()), ttl_s=0))
    assert series(reg, "timewait_destination_exhaustion_eta_seconds") == []
    assert value(reg, "timewait_exhaustion_eta_seconds") is None


def test_doctor_findings_exported_with_stable_ids() -> None:
    s = snap(tws(C, S1, 80, range(40000, 40095)))  # 95 % of 100 ports: critical
    reg = registry_for(TimewaitCollector(source=fixed(s), ttl_s=0))
    found = series(reg, "timewait_doctor_finding")
    assert {"netns": "host", "rule": "port-exhaustion", "severity": "critical"} in found
    assert all(f["rule"] in RULE_IDS for f in found)


def test_model_host_snapshot() -> None:
    """A simulated host (timewait.model) speaks the same Snapshot: 25 client TIME_WAITs."""
    net = make_net()
    lfd = listen(net.server)
    for _ in range(25):
        one_request(net, lfd)
    s = from_host(net.client, net.now)
    reg = registry_for(TimewaitCollector(source=fixed(s), ttl_s=0))
    label = dest(CLIENT_IP, SERVER_IP, 80)
    assert value(reg, "timewait_destination_ports_in_use", destination=label) == 25
    usable = KernelConfig().usable_ephemeral_ports
    assert value(reg, "timewait_destination_port_usage_ratio", destination=label) == 25 / usable


# -- bounded labels ---------------------------------------------------------------------------


def big() -> Snapshot:
    """50 destinations with 1..50 ports each (so the order by usage is known), default range."""
    arr = bulk_tw(50, 50)
    per = np.repeat(np.arange(50), 50)
    keep = (np.tile(np.arange(50), 50)) <= per  # destination d keeps d + 1 ports
    return Snapshot(sockets=arr[keep], config=KernelConfig(), source="test")


@pytest.mark.parametrize("top_k", [0, 1, 5, 49, 50, 200])
def test_per_destination_series_never_exceed_top_k_plus_one(top_k: int) -> None:
    s = big()
    reg = registry_for(TimewaitCollector(("a", "b"), source=fixed(s), top_k=top_k, ttl_s=0))
    for name in PER_DEST[:-1]:
        got = series(reg, name)
        for ns in ("a", "b"):
            labels = [x["destination"] for x in got if x["netns"] == ns]
            assert len(labels) == min(top_k, 50) + (1 if top_k < 50 else 0), (name, ns)
            assert len(set(labels)) == len(labels)
            assert (OTHER in labels) == (top_k < 50)


def test_top_k_are_the_busiest_and_other_aggregates_the_rest() -> None:
    s = big()
    a = analyze(s)
    reg = registry_for(TimewaitCollector(source=fixed(s), top_k=5, ttl_s=0))
    in_use = {
        x.labels["destination"]: x.value
        for m in reg.collect()
        for x in m.samples
        if x.name == "timewait_destination_ports_in_use"
    }
    assert sorted(v for k, v in in_use.items() if k != OTHER) == [46, 47, 48, 49, 50]
    assert in_use[OTHER] == sum(range(1, 46)) == a.dest_in_use[5:].sum()
    assert sum(in_use.values()) == a.dest_in_use.sum()
    cap = a.ports.capacity
    assert value(reg, "timewait_destination_usable_ports", destination=OTHER) == 45 * cap
    other = value(reg, "timewait_destination_port_usage_ratio", destination=OTHER)
    assert other == pytest.approx(sum(range(1, 46)) / (45 * cap))
    smallest_top = value(reg, "timewait_destination_port_usage_ratio",
                         destination=dest(C, "198.18.0.45", 80))  # fmt: skip
    assert smallest_top == 46 / cap and other is not None and other <= smallest_top


def test_every_series_has_a_netns_label() -> None:
    reg = registry_for(TimewaitCollector(("x",), source=fixed(mixed()), ttl_s=0))
    samples = [s for m in reg.collect() for s in m.samples]
    assert samples and all(s.labels.get("netns") == "x" for s in samples)


# -- names ------------------------------------------------------------------------------------


def test_names_carry_units_and_total() -> None:
    reg = registry_for(TimewaitCollector(source=fixed(mixed()), ttl_s=0))
    families = list(reg.collect())
    for m in families:
        assert m.name.startswith("timewait_")
        if m.type == "counter":
            assert all(s.name == m.name + "_total" for s in m.samples)
        if "eta" in m.name or "duration" in m.name or "timeout" in m.name:
            assert m.name.endswith("_seconds"), m.name
        if "usage" in m.name:
            assert m.name.endswith("_ratio") and m.unit == "ratio"
    text = generate_latest(reg).decode()
    assert "# TYPE timewait_tcpext_tw_total counter" in text
    assert "timewait_destination_port_usage_ratio{" in text


def test_describe_lists_every_family_without_collecting() -> None:
    calls: list[str | None] = []

    def source(netns: str | None) -> Snapshot:
        calls.append(netns)
        return mixed()

    c = TimewaitCollector(source=source)
    names = {m.name for m in c.describe()}
    assert names == set(family_names())
    assert set(GAUGES) <= names and {n for n, _ in COUNTERS.values()} <= names
    registry_for(c)
    assert calls == []  # registration used describe(), not a capture


def test_duplicate_registration_fails() -> None:
    reg = registry_for(TimewaitCollector(source=fixed(mixed())))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        reg.register(TimewaitCollector(("other-ns",), source=fixed(mixed())))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="top_k"):
        TimewaitCollector(top_k=-1)
    with pytest.raises(ValueError, match="ttl_s"):
        TimewaitCollector(ttl_s=-1)


# -- failures ---------------------------------------------------------------------------------


class Flaky:
    """A source that fails for the namespaces in `failing` (a mutable set)."""

    def __init__(self, failing: set[str], exc: Callable[[str], Exception]) -> None:
        self.failing = failing
        self.exc = exc

    def __call__(self, netns: str | None) -> Snapshot:
        if netns in self.failing:
            raise self.exc(str(netns))
        return mixed()


def test_failing_source_sets_error_metric_and_logs_not_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gone = Flaky({"gone"}, lambda n: NamespaceNotFound(f"netns:{n} is gone: list namespaces"))
    reg = registry_for(TimewaitCollector(("ok", "gone"), source=gone, ttl_s=0))
    with caplog.at_level(logging.WARNING, logger="timewait.exporter"):
        text = generate_latest(reg).decode()  # must not raise
    assert value(reg, "timewait_collection_error", "gone") == 1
    assert value(reg, "timewait_collection_error", "ok") == 0
    assert value(reg, "timewait_collection_errors_total", "gone") >= 1
    # the failing namespace's families are dropped; the healthy one's are all there
    assert 'timewait_sockets{netns="gone"' not in text
    assert value(reg, "timewait_sockets", "ok", state="TIME-WAIT") == 83
    (rec,) = [r for r in caplog.records if "gone" in r.getMessage()]
    assert rec.getMessage() == (
        "collection of netns gone failed: netns:gone is gone: list namespaces"
    )
    assert not rec.exc_info  # our own errors are one line, no traceback


def test_unexpected_exception_is_contained_and_logged_with_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bug = Flaky({"x"}, lambda n: ZeroDivisionError("boom"))
    reg = registry_for(TimewaitCollector(("x",), source=bug, ttl_s=0))
    with caplog.at_level(logging.WARNING, logger="timewait.exporter"):
        generate_latest(reg)
    assert value(reg, "timewait_collection_error", "x") == 1
    (rec,) = caplog.records
    assert "ZeroDivisionError: boom" in rec.getMessage() and rec.exc_info is not None


def test_failure_logged_once_per_spell_and_recovery_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing: set[str] = {"n"}
    c = TimewaitCollector(("n",), source=Flaky(failing, lambda n: NamespaceNotFound("gone")))
    with caplog.at_level(logging.WARNING, logger="timewait.exporter"):
        for _ in range(5):
            c.collect_now()
        failing.clear()
        c.collect_now()
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["collection of netns n failed: gone", "collection of netns n works again"]
    reg = registry_for(c)
    assert value(reg, "timewait_collection_errors_total", "n") == 5


# -- cache and concurrency --------------------------------------------------------------------


class Counting:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls = 0
        self.delay_s = delay_s
        self._lock = threading.Lock()

    def __call__(self, netns: str | None) -> Snapshot:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay_s)
        return mixed()


def test_cache_serves_scrapes_within_ttl() -> None:
    now = [100.0]
    src = Counting()
    reg = registry_for(TimewaitCollector(source=src, ttl_s=1.0, clock=lambda: now[0]))
    generate_latest(reg)
    now[0] += 0.5
    generate_latest(reg)
    assert src.calls == 1
    now[0] += 0.6
    generate_latest(reg)
    assert src.calls == 2


def test_concurrent_scrapes_share_one_collection() -> None:
    src = Counting(delay_s=0.3)
    reg = registry_for(TimewaitCollector(source=src, ttl_s=5.0))
    with ThreadPoolExecutor(20) as pool:
        outs = list(pool.map(lambda _: generate_latest(reg), range(20)))
    assert src.calls == 1
    assert len(set(outs)) == 1 and b"timewait_sockets" in outs[0]


def test_stuck_collection_cannot_hang_other_scrapes() -> None:
    release = threading.Event()

    def stuck(netns: str | None) -> Snapshot:
        release.wait(10)
        return mixed()

    c = TimewaitCollector(source=stuck, ttl_s=0, lock_timeout_s=0.2)
    first = threading.Thread(target=lambda: list(c.collect()))
    first.start()
    try:
        time.sleep(0.05)
        t0 = time.monotonic()
        fams: Iterator[Metric] = c.collect()
        got = {(s.name, s.labels["netns"], s.value) for m in fams for s in m.samples}
        assert time.monotonic() - t0 < 2
        assert got == {("timewait_collection_error", "host", 1.0)}
    finally:
        release.set()
        first.join()


def test_pool_families_bounded_and_equal_to_the_doctor() -> None:
    """The pools (issue 10): connect_new and bind pools as the doctor computes them; bind pools
    of specific addresses are bounded by top_k like destinations (plus 4 wildcard rows)."""
    rows = [tw(f"198.18.2.{i}", 40000 + 2 * i, S1, 80) for i in range(1, 31)]
    rows += [tw(C, p, S2, 443) for p in range(40001, 40051, 2)]  # odd only: bound first
    s = snap(rows)
    a = analyze(s)
    reg = registry_for(TimewaitCollector(source=fixed(s), ttl_s=0, top_k=5))
    assert value(reg, "timewait_pool_headroom_ports", pool="connect_new", address="") == (
        a.new_destination.headroom
    ) == 75  # fmt: skip
    assert value(reg, "timewait_exclusive_ports", why="bound_before_connect") == 25
    binds = [x for x in series(reg, "timewait_pool_headroom_ports") if x["pool"] == "bind"]
    assert len(binds) == 5 + 4
    worst = a.bind_pools[0]
    assert value(reg, "timewait_pool_headroom_ports", pool="bind", address=worst.address) == (
        worst.headroom
    )  # fmt: skip
    d = a.destinations()[0]
    assert value(reg, "timewait_destination_headroom_ports", destination=d.label) == d.headroom


def test_own_namespace_is_labelled_by_its_name() -> None:
    """The exporter's own namespace: "host" for the machine's, else the name `ip netns`
    knows it by, the same label `--netns NAME` gives it from outside."""
    from timewait.exporter.collector import targets_of

    assert [t.label for t in targets_of([], own=lambda: "web")] == ["web"]
    assert [t.label for t in targets_of(["web", "db", "web"])] == ["web", "db"]
    assert [t.netns for t in targets_of([])] == [None]


def test_own_label_drops_the_netns_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    from timewait.exporter import collector
    from timewait.live import netns

    for got, want in (("netns:web", "web"), ("host", "host"), ("netns:[4026532]", "[4026532]")):
        monkeypatch.setattr(netns, "own_label", lambda got=got: got)
        assert collector.own_label() == want
