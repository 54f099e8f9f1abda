"""exporter --trace: the traced counts as counters, with the top-K + "other" bound, sticky so a
counter never moves between series (exporter/trace.py). Pure: synthetic trace tables."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from timewait.doctor import trace as T
from timewait.exporter.collector import TimewaitCollector
from timewait.exporter.trace import COUNTERS, UP, StickyTopK, trace_samples

from ..doctor.helpers import S1, S2, C, snap


def fail(dst: str, n: int, comm: str = "client", errno: str = "EADDRNOTAVAIL") -> dict[str, object]:
    return dict(kind=T.Kind.CONNECT_ERROR, errno=errno, raddr=dst, rport=80, count=n, comm=comm)


def values(rows: list[dict[str, object]], top: StickyTopK) -> dict[tuple[str, ...], float]:
    return {
        (s.family, *s.labels): s.value
        for s in trace_samples(T.rows_from_dicts(rows), 10**9, top, "web")
        if s.family == "timewait_connect_errors"
    }


def test_top_k_plus_other_keeps_errno() -> None:
    top = StickyTopK(1)
    got = values([fail(S1, 50), fail(S2, 7), fail(S2, 2, errno="ECONNREFUSED")], top)
    name = "timewait_connect_errors"
    assert got == {
        (name, "EADDRNOTAVAIL", "client", "", f"{S1}:80"): 50,
        (name, "EADDRNOTAVAIL", "other", "other", "other"): 7,
        (name, "ECONNREFUSED", "other", "other", "other"): 2,
    }


def test_the_chosen_series_stay_so_counters_never_go_down() -> None:
    """S2 overtakes S1 later: S1 keeps its series, S2 stays in "other", both only grow."""
    top = StickyTopK(1)
    name = "timewait_connect_errors"
    first = values([fail(S1, 5), fail(S2, 1)], top)
    later = values([fail(S1, 6), fail(S2, 900)], top)
    s1 = (name, "EADDRNOTAVAIL", "client", "", f"{S1}:80")
    other = (name, "EADDRNOTAVAIL", "other", "other", "other")
    assert (first[s1], first[other]) == (5, 1)
    assert (later[s1], later[other]) == (6, 900)


def test_active_closes_by_side_and_destination() -> None:
    rows = [
        dict(kind=T.Kind.ACTIVE_CLOSE, laddr=C, raddr=S1, rport=80, count=9, comm="client",
             side=T.SIDE_CLIENT),
        dict(kind=T.Kind.ACTIVE_CLOSE, laddr=C, lport=443, count=4, comm="nginx",
             side=T.SIDE_SERVER),
    ]  # fmt: skip
    got = {
        s.labels: s.value
        for s in trace_samples(T.rows_from_dicts(rows), 10**9, StickyTopK(10), "web")
        if s.family == "timewait_active_closes"
    }
    assert got == {
        ("client", "client", "", f"{C} -> {S1}:80"): 9,
        ("server", "nginx", "", f"{C}:443"): 4,
    }


class FakeFeed:
    """What TraceFeed gives the collector, without bpftrace."""

    def samples(self, ns: str):  # type: ignore[no-untyped-def]
        yield from trace_samples(T.rows_from_dicts([fail(S1, 3)]), 10**9, StickyTopK(5), ns)


def test_collector_exposes_the_trace_families_only_with_a_feed() -> None:
    plain = TimewaitCollector((), source=lambda _ns: snap([]), ttl_s=0)
    assert not {f.name for f in plain.describe()} & {*COUNTERS, UP}
    traced = TimewaitCollector((), source=lambda _ns: snap([]), ttl_s=0, trace=FakeFeed())  # type: ignore[arg-type]
    assert {*COUNTERS, UP} <= {f.name for f in traced.describe()}
    reg = CollectorRegistry()
    reg.register(traced)
    labels = {"netns": "host", "errno": "EADDRNOTAVAIL", "comm": "client", "container": "",
              "destination": f"{S1}:80"}  # fmt: skip
    assert reg.get_sample_value("timewait_connect_errors_total", labels) == 3
