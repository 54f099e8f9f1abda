"""Synthetic snapshots that read like a socket table: tw(...), est(...), listener(...)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from timewait.config import KernelConfig
from timewait.snapshot import (
    AF_INET,
    SOCKET_DTYPE,
    TCP_BOUND_INACTIVE,
    TCP_ESTABLISHED,
    TCP_FIN_WAIT2,
    TCP_LISTEN,
    TCP_SYN_SENT,
    TCP_TIME_WAIT,
    Snapshot,
    addr_bytes,
    sockets_from_rows,
)

C = "198.18.0.1"  # client (RFC 2544 benchmarking range)
C2 = "198.18.0.5"
S1 = "198.18.0.2"
S2 = "198.18.0.3"
V6C = "2001:db8::1"  # documentation prefix (RFC 3849)
V6S = "2001:db8::2"
SMALL = KernelConfig(ip_local_port_range=(40000, 40099))  # 100 ports


def tw(src: str, sport: int, dst: str, dport: int, left_ms: int = 30_000) -> dict[str, Any]:
    return dict(src=src, sport=sport, dst=dst, dport=dport, state=TCP_TIME_WAIT, timer=3,
                minisock=True, expires_ms=left_ms)  # fmt: skip


def fw2(src: str, sport: int, dst: str, dport: int, *, mini: bool = True) -> dict[str, Any]:
    return dict(src=src, sport=sport, dst=dst, dport=dport, state=TCP_FIN_WAIT2,
                timer=3 if mini else 0, minisock=mini, expires_ms=5_000 if mini else 0,
                inode=0 if mini else 9)  # fmt: skip


def est(src: str, sport: int, dst: str, dport: int) -> dict[str, Any]:
    return dict(src=src, sport=sport, dst=dst, dport=dport, state=TCP_ESTABLISHED, inode=7)


def syn_sent(src: str, sport: int, dst: str, dport: int) -> dict[str, Any]:
    return dict(src=src, sport=sport, dst=dst, dport=dport, state=TCP_SYN_SENT, timer=1, inode=7)


def listener(port: int, addr: str = "0.0.0.0") -> dict[str, Any]:
    any_ = "::" if ":" in addr else "0.0.0.0"
    return dict(src=addr, sport=port, dst=any_, dport=0, state=TCP_LISTEN, inode=5)


def bound(port: int, addr: str = "198.18.0.1") -> dict[str, Any]:
    return dict(src=addr, sport=port, dst="0.0.0.0", dport=0, state=TCP_BOUND_INACTIVE, inode=6)


def tws(
    src: str, dst: str, dport: int, ports: Iterable[int], left_ms: int = 30_000
) -> list[dict[str, Any]]:
    return [tw(src, p, dst, dport, left_ms) for p in ports]


def snap(
    rows: Iterable[Mapping[str, Any]],
    config: KernelConfig = SMALL,
    *,
    kernel: str = "6.18.44",
    counters: Mapping[str, int] | None = None,
    notes: tuple[str, ...] = (),
    namespace: str = "host",
    monotonic_ns: int = 1_000_000_000_000,
) -> Snapshot:
    return Snapshot(
        sockets=sockets_from_rows(rows),
        config=config,
        counters=dict(counters or {}),
        kernel=kernel,
        namespace=namespace,
        source="test",
        monotonic_ns=monotonic_ns,
        time_ns=monotonic_ns,
        notes=notes,
    )


def bulk_tw(n_dest: int, per_dest: int, *, dport: int = 80, lo: int = 32768) -> np.ndarray:
    """n_dest * per_dest TIME_WAIT rows from C to 198.18.x.y:dport, built column-wise (fast)."""
    n = n_dest * per_dest
    arr = np.zeros(n, dtype=SOCKET_DTYPE)
    arr["family"] = AF_INET
    arr["state"] = TCP_TIME_WAIT
    arr["timer"] = 3
    arr["minisock"] = True
    arr["sport"] = lo + np.tile(np.arange(per_dest), n_dest)
    arr["dport"] = dport
    arr["src"] = np.frombuffer(addr_bytes(C), dtype="V16")[0]
    d = np.repeat(np.arange(n_dest), per_dest)
    dst = np.zeros((n, 16), dtype=np.uint8)
    dst[:, 10:12] = 255
    dst[:, 12] = 198
    dst[:, 13] = 18 + (d >> 16)
    dst[:, 14] = (d >> 8) & 255
    dst[:, 15] = d & 255
    arr["dst"] = dst.view("V16").ravel()
    arr["expires_ms"] = np.arange(n) % 60_000
    return arr
