"""Workload drivers: each one does what it says, and counts failures by errno."""

from __future__ import annotations

import random

from timewait.config import KernelConfig
from timewait.model.host import Host
from timewait.model.states import TcpState
from timewait.sim.network import Network
from timewait.sim.workloads import (
    KeepAliveClient,
    PoolClient,
    RequestClient,
    Sampler,
    Server,
    restart_bind,
    time_wait_probe,
)
from timewait.units import MS, SEC

CLIENT = "198.18.0.1"
SERVER = "198.18.0.2"


def _net(
    client_config: KernelConfig | None = None,
    server_ips: tuple[str, ...] = (SERVER,),
    client_ips: tuple[str, ...] = (CLIENT,),
) -> tuple[Network, Host, Host]:
    net = Network(rng=random.Random(1))
    c = net.add_host(
        Host(name="c", addrs=list(client_ips), config=client_config, rng=random.Random(2))
    )
    s = net.add_host(Host(name="s", addrs=list(server_ips), rng=random.Random(3)))
    return net, c, s


def test_request_client_client_closes_first_leaves_time_wait_on_client() -> None:
    net, c, s = _net()
    server = Server(net, s, port=80)
    client = RequestClient(net, c, dests=[(SERVER, 80)], interval=10 * MS, count=20)
    net.run(1 * SEC)
    assert client.stats.successes == 20 and not client.stats.failures
    assert server.stats.successes == 20
    assert c.count_state(TcpState.TIME_WAIT) == 20 and s.count_state(TcpState.TIME_WAIT) == 0


def test_request_client_server_closes_first_moves_time_wait_to_server() -> None:
    net, c, s = _net()
    Server(net, s, port=80, close_first=True)
    client = RequestClient(
        net, c, dests=[(SERVER, 80)], interval=10 * MS, count=20, client_closes=False
    )
    net.run(1 * SEC)
    assert client.stats.successes == 20
    assert c.count_state(TcpState.TIME_WAIT) == 0 and s.count_state(TcpState.TIME_WAIT) == 20


def test_exhaustion_is_counted_as_eaddrnotavail() -> None:
    """10 ports, 15 connections inside one TIME_WAIT: 5 connect()s fail with EADDRNOTAVAIL."""
    net, c, s = _net(KernelConfig(ip_local_port_range=(40000, 40009)))
    Server(net, s, port=80)
    client = RequestClient(net, c, dests=[(SERVER, 80)], interval=10 * MS, count=15)
    net.run(1 * SEC)
    assert client.stats.successes == 10
    assert client.stats.failures == {"EADDRNOTAVAIL": 5}
    assert client.stats.first_failure["EADDRNOTAVAIL"] == 100 * MS


def test_connection_refused_is_counted() -> None:
    net, c, _ = _net()
    client = RequestClient(net, c, dests=[(SERVER, 81)], interval=10 * MS, count=3)
    net.run(1 * SEC)
    assert client.stats.failures == {"ECONNREFUSED": 3}


def test_load_balancing_over_ports_multiplies_capacity() -> None:
    """The limit is per destination (address, port): 3 ports x 10 local ports = 30."""
    net, c, s = _net(KernelConfig(ip_local_port_range=(40000, 40009)))
    for port in (80, 81, 82):
        Server(net, s, port=port)
    client = RequestClient(
        net, c, dests=[(SERVER, p) for p in (80, 81, 82)], interval=1 * MS, count=40
    )
    net.run(1 * SEC)
    assert client.stats.successes == 30 and client.stats.failures == {"EADDRNOTAVAIL": 10}


def test_several_source_addresses_each_get_a_full_range() -> None:
    net, c, s = _net(
        KernelConfig(ip_local_port_range=(40000, 40009)), client_ips=(CLIENT, "198.18.0.5")
    )
    Server(net, s, port=80)
    client = RequestClient(
        net, c, dests=[(SERVER, 80)], sources=[CLIENT, "198.18.0.5"], interval=1 * MS, count=25
    )
    net.run(1 * SEC)
    assert client.stats.successes == 20
    assert {ft.laddr for ft in client.tuples} == {CLIENT, "198.18.0.5"}


def test_bind_before_connect_locks_ports_across_destinations() -> None:
    """bind(ip, 0) takes a port for every destination; IP_BIND_ADDRESS_NO_PORT does not."""
    cfg = KernelConfig(ip_local_port_range=(40000, 40009))
    dests = ("198.18.1.1", "198.18.1.2")
    results = {}
    for mode in ("bind", "bind-no-port"):
        net, c, s = _net(cfg, server_ips=dests)
        Server(net, s, port=80)
        client = RequestClient(
            net, c, dests=[(d, 80) for d in dests], sources=[CLIENT], bind=mode,
            interval=1 * MS, count=30,
        )  # fmt: skip
        net.run(1 * SEC)
        results[mode] = (client.stats.successes, dict(client.stats.failures))
    assert results["bind"] == (10, {"EADDRINUSE": 20})
    assert results["bind-no-port"] == (20, {"EADDRNOTAVAIL": 10})


def test_pool_and_keepalive_leave_no_time_wait_while_running() -> None:
    for make in (
        lambda net, c: PoolClient(net, c, dest=(SERVER, 80), k=4, interval=1 * MS, count=500),
        lambda net, c: KeepAliveClient(net, c, dest=(SERVER, 80), interval=1 * MS, count=500),
    ):
        net, c, s = _net()
        Server(net, s, port=80)
        pool = make(net, c)
        net.run(2 * SEC)
        assert pool.stats.successes == 500 and not pool.stats.failures
        assert c.count_state(TcpState.TIME_WAIT) == 0
        assert pool.opened == pool.k
        pool.stop(net.now)
        net.run(3 * SEC)
        assert c.count_state(TcpState.TIME_WAIT) == pool.k


def test_restart_bind_matrix_matches_lab_e6() -> None:
    """Ref 8 / Lab E6: with TIME_WAIT children, only SO_REUSEADDR on old and new binds."""
    got = {}
    for old in (False, True):
        for new in (False, True):
            net, c, s = _net()
            server = Server(net, s, port=80, reuseaddr=old, close_first=True)
            RequestClient(net, c, dests=[(SERVER, 80)], interval=10 * MS, count=3)
            net.run(1 * SEC)
            server.stop(net.now)
            net.run(2 * SEC)
            assert s.count_state(TcpState.TIME_WAIT) == 3
            got[(old, new)] = restart_bind(s, port=80, reuseaddr=new, now=net.now)
    assert got == {
        (False, False): "EADDRINUSE",
        (False, True): "EADDRINUSE",
        (True, False): "EADDRINUSE",
        (True, True): "ok",
    }


def test_sampler_records_time_wait_and_failure_rate() -> None:
    net, c, s = _net(KernelConfig(ip_local_port_range=(40000, 40009)))
    Server(net, s, port=80)
    client = RequestClient(net, c, dests=[(SERVER, 80)], interval=100 * MS, count=30)
    smp = Sampler(
        net.engine, every=1 * SEC, until=3 * SEC, probes={"tw": time_wait_probe(c)},
        rates={"fail": lambda: float(client.stats.failed)},
    )  # fmt: skip
    net.run(3 * SEC)
    series = smp.series()
    assert series["tw"][0] == [0.0, 1.0, 2.0, 3.0]
    assert series["tw"][1] == [0.0, 10.0, 10.0, 10.0]
    # Connects at 0.0, 0.1, ... s; the 11th (t = 1.0 s) is the first to fail and the sample at
    # 1.0 s runs after it (priority LATE).
    assert series["fail"][1] == [0.0, 1.0, 10.0, 9.0]
