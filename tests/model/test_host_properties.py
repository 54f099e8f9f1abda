"""Invariants of a host under random workloads (hypothesis): the issue's property list.

* four-tuples are unique across full sockets and minisockets, and each entry holds its port;
* no automatically chosen port is outside the range or in the reserved set;
* only the active closer of a connection reaches TIME_WAIT.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timewait.config import KernelConfig
from timewait.errors import AddressNotAvailable
from timewait.model.connection import Connection
from timewait.model.host import Host
from timewait.model.minisock import MiniSocket
from timewait.model.segment import FourTuple
from timewait.model.states import TcpState

from .host_helpers import SERVER_IP, SERVER_IP_2, Net, make_net

RANGE = (40000, 40011)
RESERVED = frozenset({40003, 40004})
DESTS = [(SERVER_IP, 80), (SERVER_IP, 81), (SERVER_IP_2, 80)]

op = st.one_of(
    st.tuples(st.just("open"), st.integers(0, len(DESTS) - 1)),
    st.tuples(st.just("close"), st.integers(0, 50), st.booleans()),
    st.tuples(st.just("simultaneous"), st.integers(0, 50)),
    st.tuples(st.just("advance"), st.integers(0, 70)),
)


def check_tables(host: Host) -> None:
    seen: set[int] = set()
    for ft, sk in host.ehash.items():
        assert sk.tuple == ft, f"{host.name}: entry filed under {ft} is {sk.tuple}"
        assert id(sk) not in seen
        seen.add(id(sk))
        holders = host.ports.holders(ft.lport)
        if isinstance(sk, MiniSocket):
            assert any(h is sk for h in holders), f"{host.name}: {ft} TIME_WAIT lost its port"
        else:
            owner = host._owner[ft]
            assert any(h is owner for h in holders), f"{host.name}: {ft} lost its port"


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    ops=st.lists(op, min_size=1, max_size=40),
    reuse=st.sampled_from([0, 1]),
    seed=st.integers(0, 2**16),
)
def test_random_workload_keeps_invariants(ops: list[tuple], reuse: int, seed: int) -> None:
    cfg = KernelConfig(
        ip_local_port_range=RANGE, ip_local_reserved_ports=RESERVED, tcp_tw_reuse=reuse
    )
    net: Net = make_net(client_config=cfg, seed=seed)
    for port in (80, 81):
        lfd = net.server.socket()
        net.server.bind(lfd, "0.0.0.0", port, 0)
        net.server.listen(lfd, 0)
    listeners = {s.lport: s.fd for s in net.server.listeners()}
    open_pairs: list[tuple[int, int, FourTuple]] = []
    first_closer: dict[FourTuple, str] = {}  # client-side tuple -> "client"/"server"/"both"
    for o in ops:
        kind = o[0]
        if kind == "open":
            dst, port = DESTS[o[1]]
            fd = net.client.socket()
            try:
                net.client.connect(fd, dst, port, net.now)
            except AddressNotAvailable:
                net.client.close(fd, net.now)
                continue
            conn = net.client._sock(fd).conn
            assert isinstance(conn, Connection)
            lport = conn.tuple.lport
            assert RANGE[0] <= lport <= RANGE[1] and lport not in RESERVED
            net.settle()
            sfd = net.server.accept(listeners[port])
            if sfd is None:  # e.g. reset by a TIME_WAIT race: the client gave up
                net.client.close(fd, net.now)
                continue
            open_pairs.append((fd, sfd, conn.tuple))
        elif kind in ("close", "simultaneous") and open_pairs:
            fd, sfd, ft = open_pairs.pop(o[1] % len(open_pairs))
            if kind == "simultaneous":
                net.client.close(fd, net.now)
                net.server.close(sfd, net.now)
                first_closer[ft] = "both"
            elif o[2]:
                net.client.close(fd, net.now)
                first_closer[ft] = "client"
                net.settle()
                net.server.close(sfd, net.now)
            else:
                net.server.close(sfd, net.now)
                first_closer[ft] = "server"
                net.settle()
                net.client.close(fd, net.now)
            net.settle()
        elif kind == "advance":
            net.run(o[1] * 1_000_000_000)
        check_tables(net.client)
        check_tables(net.server)
        for tw in net.client.minisockets():
            if tw.substate is TcpState.TIME_WAIT:
                assert first_closer.get(tw.tuple) in ("client", "both"), tw.tuple
        for tw in net.server.minisockets():
            if tw.substate is TcpState.TIME_WAIT:
                assert first_closer.get(tw.tuple.reversed()) in ("server", "both"), tw.tuple
