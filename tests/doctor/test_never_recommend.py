"""Scan every remedy of every rule, on every kernel, for advice ref 10/12 forbids.

A scenario grid makes every rule fire (asserted below, so a new rule is scanned too) under
kernels from before IP_BIND_ADDRESS_NO_PORT (4.1) to after tcp_tw_reuse_delay (6.14+), a model
host and an unknown kernel, with tw_reuse/timestamps in every combination and three namespaces.
"""

from __future__ import annotations

import itertools
import re

import pytest

from timewait.config import KernelConfig
from timewait.doctor import RULE_IDS, diagnose
from timewait.doctor import trace as T
from timewait.doctor.remedies import Remedy
from timewait.snapshot import Snapshot

from .helpers import S1, C, bound, fw2, listener, snap, tw, tws

KERNELS = ["4.1.0", "4.9.0", "4.19.0", "5.10.0", "6.1.0", "6.2.0", "6.3.0", "6.13.0", "6.14.0",
           "6.18.44", "model", ""]  # fmt: skip
NAMESPACES = ["host", "netns:tw-a", "pid:4242"]


def scenario(kernel: str, reuse: int, ts: int, namespace: str) -> Snapshot:
    cfg = KernelConfig(
        ip_local_port_range=(40001, 40099),  # same parity -> port-range-parity
        tcp_tw_reuse=reuse,
        tcp_timestamps=ts,
        tcp_max_tw_buckets=50,  # below the count -> tw-buckets-below-count
    )
    return Snapshot(sockets=_SOCKETS, config=cfg, kernel=kernel, namespace=namespace,
                    counters={"TCPTimeWaitOverflow": 3, "sockstat.tw": 1260},
                    notes=("test note",), tables=_TRACE)  # fmt: skip


def _rows() -> list[dict[str, object]]:
    return (
        tws(C, S1, 80, range(40001, 40091))  # 90 of 97 usable -> port-exhaustion
        + tws(C, "198.18.0.9", 80, range(40001, 40071))  # 70 -> port-pressure
        + [
            listener(40098),
            listener(443),
            listener(8080),
            bound(40097),
        ]  # swallowed listener, bind-held port
        + [tw(S1, 443, f"198.18.{i // 250}.{i % 250}", 50000) for i in range(1000)]  # server
        + [fw2(C, 40001 + i % 90, f"198.18.2.{i // 90}", 80) for i in range(100)]  # orphans
    )


_SOCKETS = snap(_rows()).sockets
# A trace (doctor --trace) that saw connect() and bind(addr, 0) fail -> connect-failures,
# bind-failures.
_TRACE = T.tables(
    T.rows_from_dicts(
        [
            dict(kind=T.Kind.CONNECT_ERROR, errno="EADDRNOTAVAIL", raddr=S1, rport=80, count=5),
            dict(kind=T.Kind.BIND_ERROR, errno="EADDRINUSE", laddr=C, lport=0, count=3),
        ]
    ),
    start_ns=1,
    window_ns=5_000_000_000,
)


GRID = list(itertools.product(KERNELS, (0, 1, 2), (0, 1, 2), NAMESPACES))


def all_remedies() -> list[tuple[str, str, Snapshot, Remedy]]:
    out = []
    for kernel, reuse, ts, ns in GRID:
        s = scenario(kernel, reuse, ts, ns)
        for f in diagnose(s).findings:
            out.extend((kernel, f.id, s, r) for r in f.remedies)
    return out


REMEDIES = all_remedies()


def test_grid_fires_every_rule_but_the_healthy_one() -> None:
    fired = {f.id for f in diagnose(scenario("6.18.44", 1, 0, "host")).findings}
    fired |= {f.id for f in diagnose(snap([])).findings}
    assert fired == set(RULE_IDS)


@pytest.mark.parametrize("word", ["tcp_fin_timeout", "tcp_tw_recycle", "fin_timeout", "recycle"])
def test_never_recommend_folklore(word: str) -> None:
    """ref 10, 12.4: tcp_fin_timeout does not shorten TIME_WAIT; tcp_tw_recycle is gone."""
    for kernel, rule, _, r in REMEDIES:
        for text in r.texts():
            assert word not in text.lower(), f"{rule}/{r.id} on {kernel!r} mentions {word}"


def test_never_lower_tcp_max_tw_buckets() -> None:
    """ref 5: the doc warns never to lower it; every value we set is above the current one."""
    for _, rule, s, r in REMEDIES:
        for line in r.commands:
            for m in re.finditer(r"tcp_max_tw_buckets\s*=\s*\"?(-?\d+)", line):
                assert int(m.group(1)) > s.config.tcp_max_tw_buckets, (rule, line)


def test_tw_reuse_only_with_timestamps_and_for_connect() -> None:
    """ref 3, 12.3: tcp_tw_reuse=1 only when tcp_timestamps is 1 or 2; it says connect() only."""
    for _, rule, s, r in REMEDIES:
        if any("tcp_tw_reuse=1" in c for c in r.commands):
            assert s.config.tcp_timestamps in (1, 2), rule
            assert "outgoing" in r.changes and "server-side" in r.changes


def test_tw_reuse_delay_only_on_6_14_and_later() -> None:
    """ref 3, 12.3: tcp_tw_reuse_delay exists from Linux 6.14."""
    for kernel, rule, s, r in REMEDIES:
        if any("tcp_tw_reuse_delay" in t for t in r.texts()):
            assert kernel == "model" or s.kernel_version >= (6, 14), (kernel, rule, r.id)
    mentioned = {k for k, _, _, r in REMEDIES if any("tcp_tw_reuse_delay" in t for t in r.texts())}
    assert {"6.14.0", "6.18.44", "model"} <= mentioned


def test_socket_options_respect_kernel_version() -> None:
    """IP_BIND_ADDRESS_NO_PORT from 4.2, IP_LOCAL_PORT_RANGE from 6.3 (ref 7.4, 13); on an
    unknown kernel they come with their requirement."""
    for kernel, rule, s, r in REMEDIES:
        text = " ".join(r.texts())
        v = (6, 18) if kernel == "model" else s.kernel_version
        if "IP_BIND_ADDRESS_NO_PORT" in text:
            assert v >= (4, 2) or (v == (0, 0) and "4.2" in r.requires), (kernel, rule)
        if "IP_LOCAL_PORT_RANGE" in text:
            assert v >= (6, 3) or (v == (0, 0) and "6.3" in text), (kernel, rule)


def test_widening_the_range_reserves_listening_ports_first() -> None:
    """ref 12 / landscape 7 #18-19: widen only with service ports reserved."""
    seen = 0
    for _, _, _s, r in REMEDIES:
        if r.id != "widen-port-range":
            continue
        seen += 1
        cmds = [c for c in r.commands if "sysctl -w" in c]
        assert "ip_local_reserved_ports" in cmds[0] and "ip_local_port_range" in cmds[1]
        assert "40098" in cmds[0] and "8080" in cmds[0]  # listeners in 1024-65535, not 443
    assert seen


def test_pooling_comes_first_for_port_exhaustion() -> None:
    """landscape 7: the durable fix is reuse/keep-alive; sysctls are the second line."""
    d = diagnose(scenario("6.18.44", 2, 1, "host"))
    f = next(f for f in d.findings if f.id == "port-exhaustion")
    assert f.remedies[0].id == "pool-connections"
    assert "requests.Session()" in f.remedies[0].code
