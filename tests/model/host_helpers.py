"""Helpers that make host tests read like an application session on two machines."""

from __future__ import annotations

import random
from dataclasses import dataclass

from timewait.config import LINUX, KernelConfig, Profile
from timewait.model.host import Host, SockOpt
from timewait.model.wire import Wire
from timewait.units import MS, SEC

CLIENT_IP = "198.18.0.1"  # RFC 2544 benchmarking range: the only addresses tests use
SERVER_IP = "198.18.0.2"
SERVER_IP_2 = "198.18.0.3"
PORT = 80


@dataclass
class Net:
    """A client host and a server host joined by a wire with a 50 us one-way delay."""

    client: Host
    server: Host
    wire: Wire

    @property
    def now(self) -> int:
        return self.wire.now

    def run(self, dt: int) -> None:
        """Advance model time by dt (ns)."""
        self.wire.run(self.wire.now + dt)

    def settle(self) -> None:
        """Let in-flight segments arrive (10 ms is many round trips at 50 us)."""
        self.run(10 * MS)


def make_net(
    *,
    client_config: KernelConfig | None = None,
    server_config: KernelConfig | None = None,
    profile: Profile = LINUX,
    seed: int = 1,
) -> Net:
    rng = random.Random(seed)
    client = Host(
        name="client",
        addrs=[CLIENT_IP],
        config=client_config,
        profile=profile,
        rng=random.Random(rng.getrandbits(64)),
    )
    server = Host(
        name="server",
        addrs=[SERVER_IP, SERVER_IP_2],
        config=server_config,
        profile=profile,
        rng=random.Random(rng.getrandbits(64)),
    )
    return Net(client, server, Wire(client, server))


def listen(host: Host, port: int = PORT, *, now: int = 0, reuseaddr: bool = False) -> int:
    fd = host.socket()
    if reuseaddr:
        host.setsockopt(fd, SockOpt.SO_REUSEADDR, 1)
    host.bind(fd, "0.0.0.0", port, now)
    host.listen(fd, now)
    return fd


def open_pair(net: Net, lfd: int, *, dst: str = SERVER_IP, port: int = PORT) -> tuple[int, int]:
    """connect() from the client, accept() on the server; returns (client fd, server fd)."""
    cfd = net.client.socket()
    net.client.connect(cfd, dst, port, net.now)
    net.settle()
    sfd = net.server.accept(lfd)
    assert sfd is not None, "server did not accept"
    return cfd, sfd


def close_pair(net: Net, first: Host, first_fd: int, second: Host, second_fd: int) -> None:
    """`first` closes, the peer sees EOF and closes too, segments settle."""
    first.close(first_fd, net.now)
    net.settle()
    second.close(second_fd, net.now)
    net.settle()


def one_request(net: Net, lfd: int, *, client_closes: bool = True, dst: str = SERVER_IP) -> int:
    """A connection per request: connect, a byte each way, close; returns the client port."""
    cfd, sfd = open_pair(net, lfd, dst=dst)
    net.client.send(cfd, b"GET", net.now)
    net.settle()
    assert net.server.recv(sfd) == b"GET"
    net.server.send(sfd, b"OK", net.now)
    net.settle()
    assert net.client.recv(cfd) == b"OK"
    conn = net.client._sock(cfd).conn
    assert conn is not None
    lport = conn.tuple.lport
    if client_closes:
        close_pair(net, net.client, cfd, net.server, sfd)
    else:
        close_pair(net, net.server, sfd, net.client, cfd)
    return lport


__all__ = [
    "CLIENT_IP",
    "MS",
    "PORT",
    "SEC",
    "SERVER_IP",
    "SERVER_IP_2",
    "Net",
    "close_pair",
    "listen",
    "make_net",
    "one_request",
    "open_pair",
]
