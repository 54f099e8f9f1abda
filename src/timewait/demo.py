"""The model demo behind `make run` and `timewait demo`: one traced connection, start to finish.

A client and a server (model hosts on an in-memory wire, 198.18.0.0/15 addresses) open a
connection, exchange a request and a response, and the client closes first. With
`lose_final_ack`, the client's last ACK is dropped once, so the server retransmits its FIN and the
client's TIME_WAIT answers it: reason (1) for TIME_WAIT, RFC 9293 §3.6.1. The run continues until
the TIME_WAIT expires, so the ladder shows the whole life of the four-tuple.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from timewait.config import LINUX, KernelConfig, Profile
from timewait.model.host import Host
from timewait.model.segment import FourTuple, Segment
from timewait.model.states import TcpState
from timewait.model.wire import Wire
from timewait.render.ladder import Rung
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
    dropped: list[Segment] = []

    def drop(seg: Segment, now: int) -> bool:
        # The client's ACK of the server's FIN is the "final ACK" (RFC 9293 Fig. 5, ref 1.1).
        if lose_final_ack and not dropped and seg.src == CLIENT_IP and _acks_fin(seg, server):
            dropped.append(seg)
            return True
        return False

    wire = Wire(client, server, delay=25 * MS, drop=drop)
    lfd = server.socket()
    server.bind(lfd, "0.0.0.0", SERVER_PORT, 0)
    server.listen(lfd, 0)
    cfd = client.socket()
    client.connect(cfd, SERVER_IP, SERVER_PORT, 0)
    wire.run(200 * MS)
    sfd = server.accept(lfd)
    assert sfd is not None
    client.send(cfd, b"GET / HTTP/1.1\r\n\r\n", wire.now)
    wire.run(wire.now + 100 * MS)
    server.recv(sfd)
    server.send(sfd, b"HTTP/1.1 200 OK\r\n\r\n", wire.now)
    wire.run(wire.now + 100 * MS)
    client.recv(cfd)
    closed_at = wire.now
    client.close(cfd, wire.now)  # the client closes first: it becomes the active closer
    wire.run(wire.now + 100 * MS)
    server.close(sfd, wire.now)
    wire.run(wire.now + 100 * MS)
    wire.run(wire.now + profile.time_wait_len + 5 * SEC)
    ft = next(iter(_tuples(client)), None)

    rungs: list[Rung] = []
    for cap in wire.capture:
        rungs.append(
            Rung(time=cap.time, left=cap.segment.src == CLIENT_IP, segment=cap.segment,
                 lost=cap.dropped)
        )  # fmt: skip
    for host, left in ((client, True), (server, False)):
        assert host.state_log is not None
        for when, _, old, new in host.state_log:
            rungs.append(Rung(time=when, left=left, state=f"{old} -> {new}"))
    lport = ft.lport if ft else 0
    assert client.state_log is not None
    entered = [w for w, _, _, new in client.state_log if new is TcpState.TIME_WAIT]
    left_tw = [w for w, _, old, _ in client.state_log if old is TcpState.TIME_WAIT]
    return DemoResult(
        rungs=rungs,
        left=f"client {CLIENT_IP}:{lport}",
        right=f"server {SERVER_IP}:{SERVER_PORT}",
        summary={
            "profile": profile.name,
            "final_ack_lost": bool(dropped),
            "client_closed_at_ms": closed_at / MS,
            "client_time_wait_entered_ms": entered[0] / MS if entered else None,
            "client_time_wait_lasted_s": (left_tw[-1] - entered[0]) / SEC
            if entered and left_tw
            else None,
            "server_time_waits": server.counters["TW"],
            "client_counters": dict(sorted(client.counters.items())),
            "server_counters": dict(sorted(server.counters.items())),
            "segments": len(wire.capture),
            "resets": sum(1 for c in wire.capture if c.segment.rst),
        },
    )


def _acks_fin(seg: Segment, server: Host) -> bool:
    """Does this client segment acknowledge the server's FIN (server in LAST_ACK)?"""
    if seg.fin or seg.syn or seg.rst or not seg.has_ack or seg.payload:
        return False
    conn = server.ehash.get(seg.receiver_tuple)
    return conn is not None and getattr(conn, "state", None) is TcpState.LAST_ACK


def _tuples(host: Host) -> list[FourTuple]:
    assert host.state_log is not None
    return [ft for _, ft, _, _ in host.state_log]
