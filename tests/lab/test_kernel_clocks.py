"""The running kernel's keyed clocks, which timewait.model.clock reproduces.

The model gives every four-tuple its own timestamp offset, taken from the same keyed hash as the
ISN (secure_tcp_seq_and_ts_off(), ref "Normal ISN"). Kernel sources from 4.11 to early 6.x hashed
only the address pair (secure_tcp_ts_off()), so which one this kernel does is measured here: SYNs
from one address pair to one listener, sent within a few milliseconds, carry unrelated TSvals.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from timewait.lab.namespaces import run_in_netns, throwaway_netns, write_sysctl
from timewait.model.clock import HostClocks
from timewait.model.segment import FourTuple

from .helpers import need_root

pytestmark = pytest.mark.root

PORT = 8080


def _tcp_option_tsval(tcp: bytes) -> int | None:
    opts = tcp[20 : (tcp[12] >> 4) * 4]
    i = 0
    while i < len(opts):
        kind = opts[i]
        if kind == 0:
            return None
        if kind == 1:
            i += 1
            continue
        if kind == 8:
            return int(struct.unpack("!I", opts[i + 2 : i + 6])[0])
        i += max(opts[i + 1], 2)
    return None


def _syn_tsvals(n: int = 6) -> list[tuple[int, int]]:
    """Inside a private namespace: (source port, SYN TSval) of `n` connections 127.0.0.1 -> lo."""
    write_sysctl("tcp_timestamps", "1")
    cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    cap.bind(("lo", 0))
    cap.settimeout(0.2)
    srv = socket.socket()
    srv.bind(("127.0.0.1", PORT))
    srv.listen(64)
    for _ in range(n):
        c = socket.socket()
        c.connect(("127.0.0.1", PORT))
        c.close()
    out: list[tuple[int, int]] = []
    deadline = time.monotonic() + 2
    while len(out) < n and time.monotonic() < deadline:
        try:
            frame = cap.recv(4096)
        except TimeoutError:
            break
        ip = frame[14:]
        if ip[9] != socket.IPPROTO_TCP:
            continue
        tcp = ip[(ip[0] & 0x0F) * 4 :]
        sport, dport = struct.unpack("!HH", tcp[:4])
        if dport == PORT and tcp[13] & 0x12 == 0x02:  # SYN without ACK
            ts = _tcp_option_tsval(tcp)
            if ts is not None:
                out.append((sport, ts))
    return out


def test_syn_tsval_offsets_are_per_four_tuple_on_this_kernel() -> None:
    need_root()
    with throwaway_netns() as ns:
        syns = run_in_netns(ns, _syn_tsvals)
    assert len(syns) == 6 and len({p for p, _ in syns}) == 6
    tsvals = sorted(ts for _, ts in syns)
    # Same address pair, same few ms: a per-address-pair offset would keep them within ~1000
    # ticks of each other. Six random 32-bit offsets are far apart.
    assert tsvals[-1] - tsvals[0] > 1_000_000, syns


def test_the_model_gives_each_four_tuple_its_own_offset_from_the_isn_hash() -> None:
    clocks = HostClocks(secret=bytes(16))
    a = FourTuple("127.0.0.1", 40000, "127.0.0.1", PORT)
    b = a._replace(lport=40001)
    assert clocks.ts_offset(a, 1) != clocks.ts_offset(b, 1)
    isn, ts_off = clocks.isn_and_ts_offset(a, 0, 1)
    assert (isn, ts_off) == (clocks.isn(a, 0), clocks.ts_offset(a, 1))
