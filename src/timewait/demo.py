"""The model demo behind `timewait demo`: one traced connection, start to finish.

A client and a server (model hosts on the simulator's network, 198.18.0.0/15 addresses, 25 ms
one way) open a connection, exchange a request and a response, and the client closes first.
With `lose_final_ack`, the client's last ACK is dropped once (the simulator's FinalAckLoss), so
the server retransmits its FIN and the client's TIME_WAIT answers it: reason (1) for TIME_WAIT,
RFC 9293 §3.6.1. The run continues until the TIME_WAIT expires, so the ladder shows the whole
life of the four-tuple.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from timewait.config import LINUX, KernelConfig, Profile
from timewait.model.host import Host
from timewait.model.states import TcpState
from timewait.sim.link import LinkParams
from timewait.sim.network import Network
from timewait.sim.trace import Rung
from timewait.sim.workloads import FinalAckLoss, socket_tuple
from timewait.units import MS, SEC

CLIENT_IP = "198.18.0.1"
SERVER_IP = "198.18.0.2"
SERVER_PORT = 80


@dataclass
class DemoResult:
    """What happened: ladder rungs, column titles and a JSON-ready summary."""

    rungs: list[Rung]
    left: str
    right: str
    summary: dict[str, Any] = field(default_factory=dict)


def traced_close(
    *,
    lose_final_ack: bool = False,
    config: KernelConfig | None = None,
    profile: Profile = LINUX,
    seed: int = 1,
) -> DemoResult:
    """Run one connection to the end of its TIME_WAIT and return its ladder."""
    rng = random.Random(seed)
    client = Host(
        name="client", addrs=[CLIENT_IP], config=config, profile=profile,
        rng=random.Random(rng.getrandbits(64)), trace=True,
    )  # fmt: skip
    server = Host(
        name="server", addrs=[SERVER_IP], config=config, profile=profile,
        rng=random.Random(rng.getrandbits(64)), trace=True,
    )  # fmt: skip
    net = Network(rng=random.Random(rng.getrandbits(64)), link=LinkParams(delay=25 * MS))
    net.add_host(client)
    net.add_host(server)
    # The client's ACK of the server's FIN is the "final ACK" (RFC 9293 Fig. 5, ref 1.1).
    loss = FinalAckLoss(server, 1.0 if lose_final_ack else 0.0, random.Random(seed))
    net.drop = loss

    lfd = server.socket()
    server.bind(lfd, "0.0.0.0", SERVER_PORT, 0)
    server.listen(lfd, 0)
    cfd = client.socket()
    client.connect(cfd, SERVER_IP, SERVER_PORT, 0)
    ft = socket_tuple(client, cfd)
    assert ft is not None
    net.run(200 * MS)
    sfd = server.accept(lfd)
    assert sfd is not None
    client.send(cfd, b"GET / HTTP/1.1\r\n\r\n", net.now)
    net.run(net.now + 100 * MS)
    server.recv(sfd)
    server.send(sfd, b"HTTP/1.1 200 OK\r\n\r\n", net.now)
    net.run(net.now + 100 * MS)
    client.recv(cfd)
    closed_at = net.now
    client.close(cfd, net.now)  # the client closes first: it becomes the active closer
    net.run(net.now + 100 * MS)
    server.close(sfd, net.now)
    net.run(net.now + 100 * MS)
    net.run(net.now + profile.time_wait_len + 5 * SEC)

    assert client.state_log is not None and net.capture is not None
    entered = [c.time for c in client.state_log if c.new is TcpState.TIME_WAIT]
    left_tw = [c.time for c in client.state_log if c.old is TcpState.TIME_WAIT]
    return DemoResult(
        rungs=net.rungs(ft, client, server),
        left=f"client {CLIENT_IP}:{ft.lport}",
        right=f"server {SERVER_IP}:{SERVER_PORT}",
        summary={
            "profile": profile.name,
            "final_ack_lost": bool(loss.lost),
            "client_closed_at_ms": closed_at / MS,
            "client_time_wait_entered_ms": entered[0] / MS if entered else None,
            "client_time_wait_lasted_s": (left_tw[-1] - entered[0]) / SEC
            if entered and left_tw
            else None,
            "server_time_waits": server.counters["TW"],
            "client_counters": dict(sorted(client.counters.items())),
            "server_counters": dict(sorted(server.counters.items())),
            "segments": len(net.capture),
            "resets": sum(1 for c in net.capture if c.segment.rst),
        },
    )
