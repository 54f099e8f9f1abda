"""NAT on the real kernel, in private namespaces: the conntrack collector against `conntrack -L`,
the doctor's NAT headroom against what the router then lets through, and the clean "nothing to
see" without NAT or without a connection tracker (issue 15)."""

from __future__ import annotations

import collections
import errno
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from tests.lab.helpers import need_root
from timewait import conntrack as C
from timewait.doctor import diagnose, to_json
from timewait.lab.experiments.nat import PORT, SERVER_IP, nat_topology, nb_load
from timewait.lab.namespaces import NetnsProcess, run_in_netns
from timewait.live import conntrack as ctdecode
from timewait.live import ctnetlink
from timewait.live.capture import Sources, capture

pytestmark = pytest.mark.root


def _conntrack_tool() -> str:
    tool = shutil.which("conntrack") or "/usr/sbin/conntrack"
    if not Path(tool).exists():
        pytest.fail("conntrack (Debian package conntrack) is missing: scripts/system-packages.sh")
    return tool


def conntrack_lines(ns: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", ns, _conntrack_tool(), "-L"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [ln for ln in out.splitlines() if ln.startswith(("tcp", "udp", "icmp"))]


def hold(n: int, timeout: float = 0.3) -> tuple[tuple[int, int], list[socket.socket]]:
    """For NetnsProcess in a client: open n connections and keep them; report (ok, dropped)."""
    socks: list[socket.socket] = []
    dropped = 0
    for _ in range(n):
        s = socket.socket()
        s.settimeout(timeout)
        try:
            s.connect((SERVER_IP, PORT))
            socks.append(s)
        except OSError:
            s.close()
            dropped += 1
    return (len(socks), dropped), socks


def test_conntrack_counts_equal_conntrack_L() -> None:
    """Entries and their states, decoded from our ctnetlink dump, equal `conntrack -L` in the
    same namespace: closed (TIME_WAIT) and open (ESTABLISHED) connections through the NAT."""
    need_root()
    with nat_topology(2, (40000, 40099)) as topo:
        run_in_netns(topo.clients[0], nb_load, SERVER_IP, PORT, 200.0, 0.3,
                     __import__("time").monotonic_ns(), False, 0.0)  # fmt: skip
        with NetnsProcess(topo.clients[1], hold, 25):
            snap = capture(netns=topo.router)
            lines = conntrack_lines(topo.router)
    t = snap.tables[C.TABLE]
    assert len(t) == len(lines) == 60 + 25
    ours = collections.Counter(C.CT_STATE_NAMES[int(s)] for s in t["state"])
    theirs = collections.Counter(ln.split()[3] for ln in lines)
    assert ours == theirs
    assert ours["ESTABLISHED"] == 25 and ours["TIME_WAIT"] + ours["CLOSE"] == 60
    ports = sorted(int(p) for p in t["reply_dport"])
    assert ports == sorted(int(ln.split("dport=")[-1].split()[0]) for ln in lines)
    assert all(40000 <= p <= 40099 for p in ports) and len(set(ports)) == 85
    assert snap.counters[C.key("nf_conntrack_count")] == 85
    rules = snap.tables[C.NAT_TABLE]
    assert len(rules) == 1 and (rules["port_lo"][0], rules["port_hi"][0]) == (40000, 40099)


def test_predicted_nat_headroom_is_what_the_router_lets_through() -> None:
    """The doctor's headroom for the pool (100 ports, 37 held open) is exactly how many more
    held-open connections the router translates before it drops SYNs (insert_failed)."""
    need_root()
    with nat_topology(2, (40000, 40099)) as topo, NetnsProcess(topo.clients[0], hold, 37):
        d = diagnose(capture(netns=topo.router))
        pool = d.analysis.nat.pools[0]  # type: ignore[union-attr]
        assert (pool.size, pool.held, pool.headroom) == (100, 37, 63)
        assert pool.hard_usage == pytest.approx(0.37)
        with NetnsProcess(topo.clients[1], hold, 80) as second:
            ok, dropped = second.report
        after = capture(netns=topo.router)
    assert ok == pytest.approx(pool.headroom, rel=0.01)
    assert dropped == 80 - ok
    assert after.counters[C.key("insert_failed")] >= dropped


def test_router_without_nat_is_nothing_to_see() -> None:
    """A forwarding router with no NAT rule: no source-NATed entry, exit 0, no error."""
    need_root()
    with nat_topology(1, None) as topo, NetnsProcess(topo.clients[0], hold, 5) as p:
        assert p.report == (5, 0)
        d = diagnose(capture(netns=topo.router))
    assert d.exit_status == 0
    nat = to_json(d)["nat"]
    assert nat["pools"] == [] and nat["present"] is True
    assert any(f.id == "nat-healthy" for f in d.findings)


def test_host_without_conntrack_is_nothing_to_see(tmp_path: Path) -> None:
    """No /proc/sys/net/netfilter (no nf_conntrack): present = false, no NAT finding but the
    clean OK; and a kernel without the ctnetlink subsystem answers EOPNOTSUPP -> None."""
    need_root()
    empty = tmp_path / "netfilter"
    empty.mkdir()
    done = struct.pack("=IHHIIi", 20, 3, 2, 1, 0, 0)  # an empty sock_diag dump: NLMSG_DONE
    s = capture(sources=Sources(dump=done, conntrack_dump=done, netfilter_dir=str(empty),
                                proc_net="/proc/thread-self/net"))  # fmt: skip
    assert s.counters[C.PRESENT] == 0 and C.TABLE not in s.tables
    d = diagnose(s)
    assert to_json(d)["nat"] == {"present": False}
    assert [f.id for f in d.findings if f.id.startswith(("nat", "conntrack"))] == ["nat-healthy"]
    assert ctdecode.decode(b"").shape == (0,)


class _NoCtnetlink:
    """A netlink socket whose kernel has nfnetlink but no conntrack subsystem."""

    def send(self, data: bytes) -> int:
        return len(data)

    def recv_into(self, view: memoryview, n: int = 0, flags: int = 0) -> int:
        msg = struct.pack("=IHHIIi", 36, 2, 0, 1, 0, -errno.EOPNOTSUPP) + b"\0" * 16
        view[: len(msg)] = msg
        return len(msg)


def test_ctnetlink_without_conntrack_subsystem_is_none() -> None:
    assert ctnetlink.dump(_NoCtnetlink()) is None  # type: ignore[arg-type]
