"""Helpers that make minisocket tests read like packet exchanges.

The minisocket belongs to the active closer L = 198.18.0.1:40000; its peer is P = 198.18.0.2:80.
`tw_in_time_wait()` / `tw_in_fin_wait2()` build a minisocket directly (as smoltcp's
`socket_time_wait()` does), `PEER_ACK` and friends are segment templates from P filled in with
`dataclasses.replace` via `from_peer(...)`, and `send()` delivers one segment at a given time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from timewait.config import LINUX, KernelConfig, Profile
from timewait.model.clock import tsval
from timewait.model.counters import Counters
from timewait.model.minisock import MiniSocket, TwResult
from timewait.model.segment import Flags, FourTuple, Segment
from timewait.model.states import TcpState
from timewait.units import SEC

L_ADDR, L_PORT = "198.18.0.1", 40000
P_ADDR, P_PORT = "198.18.0.2", 80
TUPLE = FourTuple(L_ADDR, L_PORT, P_ADDR, P_PORT)

T0 = 1_000 * SEC  # when the minisocket was created (and ts_recent last refreshed)
RCV_NXT = 5_000  # TIME_WAIT: one past the peer's FIN; FIN_WAIT2: the peer's next byte
SND_NXT = 9_000  # one past our FIN
RCV_WND = 65_535
TS_RECENT = 700_000  # last TSval seen from the peer
TS_OFFSET = 12_345  # our per-connection TS offset
FW2_TIMEOUT = 30 * SEC

LINUX_DEFAULTS = KernelConfig()

# Segment templates from the peer P to L.
PEER_ACK = Segment(
    src=P_ADDR,
    sport=P_PORT,
    dst=L_ADDR,
    dport=L_PORT,
    seq=RCV_NXT,
    ack=SND_NXT,
    flags=Flags.ACK,
    tsval=TS_RECENT + 100,
    tsecr=50_000,
)
NEWER_TS = TS_RECENT + 100
OLDER_TS = TS_RECENT - 100


def from_peer(template: Segment = PEER_ACK, **changes: object) -> Segment:
    """A segment from P, the template with some fields changed."""
    return replace(template, **changes)


def syn(*, seq: int, tsval: int | None = NEWER_TS) -> Segment:
    """A fresh connection attempt from P: SYN, no ACK (seq taken modulo 2**32)."""
    return from_peer(seq=seq % (1 << 32), ack=0, flags=Flags.SYN, tsval=tsval, tsecr=None)


def tw_in_time_wait(**overrides: object) -> MiniSocket:
    """A TIME_WAIT minisocket created at T0 with a 60 s timer, timestamps seen from the peer."""
    fields: dict[str, object] = dict(
        tuple=TUPLE,
        substate=TcpState.TIME_WAIT,
        timeout=60 * SEC,
        now=T0,
        rcv_nxt=RCV_NXT,
        snd_nxt=SND_NXT,
        rcv_wnd=RCV_WND,
        ts_recent=TS_RECENT,
        ts_recent_stamp=T0,
        ts_offset=TS_OFFSET,
    )
    fields.update(overrides)
    return MiniSocket.create(**fields)


def tw_without_timestamps(**overrides: object) -> MiniSocket:
    """TIME_WAIT whose peer never sent timestamps (tw_ts_recent_stamp == 0)."""
    return tw_in_time_wait(**{"ts_recent": 0, "ts_recent_stamp": None, **overrides})


def tw_in_fin_wait2(**overrides: object) -> MiniSocket:
    """An orphaned FIN_WAIT2 minisocket created at T0 with a 30 s timer, waiting for P's FIN."""
    return tw_in_time_wait(**{"substate": TcpState.FIN_WAIT_2, "timeout": FW2_TIMEOUT, **overrides})


@dataclass
class Exchange:
    """One minisocket plus the environment segments are delivered in."""

    tw: MiniSocket
    config: KernelConfig = LINUX_DEFAULTS
    profile: Profile = LINUX
    counters: Counters = field(default_factory=Counters)

    def send(self, seg: Segment, *, t: int = T0 + 1 * SEC) -> TwResult:
        """P sends `seg`, L's minisocket sees it at time `t`."""
        return self.tw.process(seg, t, self.config, self.profile, self.counters)


ANY = object()  # "don't care" for expect_reply()


def expect_reply(
    result: TwResult,
    *,
    flags: Flags,
    seq: int,
    ack: int,
    tsval: object = ANY,
    tsecr: object = ANY,
) -> Segment:
    """Exactly one segment goes back from L to P, with these header fields."""
    reply = result.reply
    assert reply is not None, f"expected a reply, got nothing ({result.rule})"
    assert (reply.src, reply.sport, reply.dst, reply.dport) == (L_ADDR, L_PORT, P_ADDR, P_PORT)
    assert reply.flags == flags, f"flags {reply.flags} != {flags}"
    assert (reply.seq, reply.ack) == (seq, ack), f"seq/ack {reply.seq}/{reply.ack}"
    if tsval is not ANY:
        assert reply.tsval == tsval, f"tsval {reply.tsval} != {tsval}"
    if tsecr is not ANY:
        assert reply.tsecr == tsecr, f"tsecr {reply.tsecr} != {tsecr}"
    return reply


def expect_timewait_ack(result: TwResult, tw: MiniSocket, *, t: int) -> Segment:
    """tcp_v4_timewait_ack(): <SEQ=snd_nxt><ACK=rcv_nxt><ACK>, TS = clock + offset / ts_recent."""
    has_ts = tw.ts_recent != 0  # tcp_v4_send_ack(): `if (tsecr)`
    return expect_reply(
        result,
        flags=Flags.ACK,
        seq=tw.snd_nxt,
        ack=tw.rcv_nxt,
        tsval=tsval(t, TS_OFFSET) if has_ts else None,
        tsecr=tw.ts_recent if has_ts else None,
    )


def expect_nothing(result: TwResult) -> None:
    """Nothing goes back to P."""
    assert result.reply is None, f"unexpected reply {result.reply} ({result.rule})"
