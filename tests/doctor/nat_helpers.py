"""Synthetic router captures with a conntrack table, as ctnetlink would show them (no root).

`router_capture(t, rate, ...)`: a masquerading router `t` seconds after clients started
churning `rate` connections a second through it to SERVER: every connection closed at once,
so its entry sits in conntrack TIME_WAIT, with the timer ctnetlink reports (whole seconds
rounded down, ctnetlink_dump_timeout()). Closes at (i + 0.5) / rate, so no entry sits on a
second's edge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from timewait import conntrack as C
from timewait.config import KernelConfig
from timewait.snapshot import Snapshot, empty_sockets

ROUTER = "198.18.0.1"  # the translated address (masquerade)
SERVER = "198.18.0.2"
PORT = 80
RANGE = (40000, 40099)  # 100 translated ports: one search round covers them


def client(i: int) -> str:
    return f"198.18.{i + 1}.2"


def router_capture(
    t: float,
    rate: float,
    *,
    clients: int = 1,
    ports: tuple[int, int] = RANGE,
    held_open: int = 0,
    kernel: str = "6.1.0",
    ct_time_wait_s: int = 120,
    counters: dict[str, int] | None = None,
    extra_rows: Sequence[dict[str, Any]] = (),
    random_fully: bool = False,
) -> Snapshot:
    """The router's snapshot (see the module docstring); `held_open` ESTABLISHED entries on the
    first ports of the range, the churn's TIME_WAIT entries on the ports after them. Client i
    of `clients` makes connections i, i + clients, ... (round robin)."""
    lo, _ = ports
    rows: list[dict[str, Any]] = []
    for j in range(held_open):
        rows.append(dict(src=client(0), sport=30000 + j, dst=SERVER, dport=PORT,
                         nat_src=ROUTER, nat_sport=lo + j,
                         state=C.TCP_CONNTRACK_ESTABLISHED, timeout_s=432000))  # fmt: skip
    n = math.floor(rate * t)
    for i in range(n):
        age = t - (i + 0.5) / rate
        if age >= ct_time_wait_s:
            continue
        rows.append(dict(src=client(i % clients), sport=50000 + i, dst=SERVER, dport=PORT,
                         nat_src=ROUTER, nat_sport=lo + held_open + i,
                         state=C.TCP_CONNTRACK_TIME_WAIT,
                         timeout_s=math.floor(ct_time_wait_s - age)))  # fmt: skip
    rows += list(extra_rows)
    ctr = {C.PRESENT: 1, C.key("nf_conntrack_tcp_timeout_time_wait"): ct_time_wait_s,
           C.key("nf_conntrack_count"): len(rows), C.key("nf_conntrack_max"): 262144}  # fmt: skip
    ctr.update(counters or {})
    rules = C.nat_rules_from_rows([dict(masquerade=True, port_lo=ports[0], port_hi=ports[1],
                                        random_fully=random_fully)])  # fmt: skip
    return Snapshot(
        sockets=empty_sockets(),
        config=KernelConfig(),
        kernel=kernel,
        namespace="netns:router",
        source="test",
        counters=ctr,
        tables={C.TABLE: C.table_from_rows(rows), C.NAT_TABLE: rules},
        monotonic_ns=round(t * 1e9) + 10**12,
        time_ns=round(t * 1e9) + 10**12,
    )
