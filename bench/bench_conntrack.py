"""Conntrack collection with 200,000 entries, side by side with `conntrack -L` and pyroute2.

Fills a throwaway namespace's conntrack table through ctnetlink (IPCTNL_MSG_CT_NEW, batched:
one datagram of many messages, what `conntrack -I` sends one at a time), 200,000 TCP entries
in TIME_WAIT, source-NATed to 198.18.0.1 toward four servers (50,000 translated ports each),
then measures in one run, while every entry is alive:
  - `timewait doctor --netns NS --json` wall time (goal <= 1.0 x the reference);
  - `ip netns exec NS sh -c 'conntrack -L | wc -l'` (the reference, Debian's conntrack);
  - in process: the raw ctnetlink dump + our vectorized decode, and pyroute2's
    Conntrack().dump() (one Python object per entry) inside the namespace.
Best of N wall times; counts are printed so every tool is seen to answer the same question.
Needs root; without it (or without conntrack / pyroute2) the benchmark says what it skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

N_ENTRIES = int(os.environ.get("TW_BENCH_CT_ENTRIES", "200000"))
REPEAT = 3
GOAL_RATIO = 1.0
TIMEWAIT = os.path.join(os.path.dirname(sys.executable), "timewait")

NLM_F_REQUEST, NLM_F_CREATE, NLM_F_EXCL = 0x1, 0x400, 0x200
CT_NEW = 0x100
NLA_F_NESTED = 0x8000


def _nla(t: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, t) + payload + b"\0" * ((4 - n % 4) % 4)


def _nest(t: int, *parts: bytes) -> bytes:
    return _nla(t | NLA_F_NESTED, b"".join(parts))


def _tuple(t: int, src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    ip = _nest(1, _nla(1, src), _nla(2, dst))
    proto = _nest(2, _nla(1, b"\x06"), _nla(2, struct.pack(">H", sport)),
                  _nla(3, struct.pack(">H", dport)))  # fmt: skip
    return _nest(t, ip, proto)


def create_message(i: int) -> bytes:
    """Entry i: client 198.18.{1 + i // 50000}.2:(10000 + i % 50000) -> 198.18.0.{2 + i % 4}:80,
    translated to 198.18.0.1:(10000 + i // 4 % 50000), TIME_WAIT, 600 s."""
    client = socket.inet_aton(f"198.18.{1 + i // 50000}.2")
    server = socket.inet_aton(f"198.18.0.{2 + i % 4}")
    sport, tport = 10000 + i % 50000, 10000 + (i // 4) % 50000
    translated = socket.inet_aton("198.18.0.1")
    port = struct.pack(">H", tport)
    # CTA_NAT_SRC {V4_MINIP, V4_MAXIP, PROTO {PORT_MIN, PORT_MAX}}: ctnetlink runs
    # nf_nat_setup_info() with this one address and port, so the entry is source-NATed
    # (CTA_STATUS cannot be set on creation: EBUSY).
    nat = _nest(6, _nla(1, translated), _nla(2, translated), _nest(3, _nla(1, port), _nla(2, port)))
    attrs = (
        _tuple(1, client, server, sport, 80)
        + _tuple(2, server, client, 80, sport)
        + _nla(7, struct.pack(">I", 600))  # CTA_TIMEOUT
        + _nest(4, _nest(1, _nla(1, b"\x07")))  # CTA_PROTOINFO_TCP_STATE = TIME_WAIT
        + nat
    )
    body = struct.pack("=BBH", socket.AF_INET, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), CT_NEW,
                       NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, i + 1, 0) + body  # fmt: skip


def fill(n: int) -> int:
    """Run inside the namespace: create n entries through ctnetlink; returns the count."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
    s.bind((0, 0))
    batch: list[bytes] = []
    for i in range(n):
        batch.append(create_message(i))
        if len(batch) == 200 or i == n - 1:
            s.send(b"".join(batch))
            batch = []
    s.close()
    with open("/proc/sys/net/netfilter/nf_conntrack_count") as f:
        return int(f.read())


def _best(fn: Callable[[], Any], n: int = REPEAT) -> tuple[float, float, Any]:
    times, out = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), out


def _ours() -> int:
    from timewait.live import conntrack, ctnetlink

    sock = ctnetlink.open_socket()
    assert sock is not None
    try:
        raw = ctnetlink.dump(sock)
    finally:
        sock.close()
    return len(conntrack.decode(raw or b""))


def _pyroute2() -> int:
    from pyroute2 import Conntrack  # type: ignore[import-not-found]

    with Conntrack() as ct:
        return sum(1 for _ in ct.dump())


def main() -> list[str]:
    if os.geteuid() != 0:
        return ["skipped: needs root (a throwaway network namespace)"]
    tool = shutil.which("conntrack") or "/usr/sbin/conntrack"
    if not os.path.exists(tool):
        return ["skipped: conntrack (Debian package) missing: bash scripts/system-packages.sh"]
    from timewait.lab.namespaces import run_in_netns, throwaway_netns

    lines: list[str] = []
    with throwaway_netns() as ns:
        t0 = time.perf_counter()
        count = run_in_netns(ns, fill, N_ENTRIES, timeout=300)
        lines.append(f"filled {count:,} conntrack entries in {time.perf_counter() - t0:.1f} s")
        ref = ["ip", "netns", "exec", ns, "sh", "-c", f"{tool} -L 2>/dev/null | wc -l"]
        doctor = ["ip", "netns", "exec", ns, TIMEWAIT, "doctor", "--json", "--interval", "0"]
        best_ref, med_ref, out = _best(lambda: subprocess.run(ref, capture_output=True,
                                                              text=True).stdout)  # fmt: skip
        lines.append(f"conntrack -L | wc -l: {int(out):,} lines, best {best_ref:.3f} s "
                     f"(median {med_ref:.3f} s)")  # fmt: skip

        def run_doctor() -> str:
            return subprocess.run(doctor, capture_output=True, text=True).stdout

        best_doc, med_doc, doc = _best(run_doctor)
        import json

        nat = json.loads(doc)["nat"]
        lines.append(f"timewait doctor --json: {nat['entries']:,} entries, "
                     f"{nat['pools_total']} NAT pools, best {best_doc:.3f} s "
                     f"(median {med_doc:.3f} s)")  # fmt: skip
        ratio = best_doc / best_ref
        verdict = "goal met" if ratio <= GOAL_RATIO else "GOAL MISSED"
        lines.append(f"ratio doctor / conntrack -L: {ratio:.2f} x (goal <= {GOAL_RATIO}): "
                     f"{verdict}")  # fmt: skip
        best_ours, _, n_ours = _best(lambda: run_in_netns(ns, _ours, timeout=120))
        lines.append(f"in process, ctnetlink dump + decode: {n_ours:,} entries, "
                     f"best {best_ours:.3f} s (incl. a fork into the namespace)")  # fmt: skip
        try:
            best_py, _, n_py = _best(lambda: run_in_netns(ns, _pyroute2, timeout=300), n=1)
            lines.append(f"in process, pyroute2 Conntrack().dump(): {n_py:,} entries, "
                         f"{best_py:.3f} s = {best_py / best_ours:.1f} x ours")  # fmt: skip
        except Exception as e:  # pyroute2 missing or failing: report, do not fail
            lines.append(f"pyroute2: skipped ({type(e).__name__}: {e})")
    return lines


if __name__ == "__main__":
    for line in main():
        print(line)
