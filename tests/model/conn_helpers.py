"""Helpers that make Connection tests read like packet exchanges (after smoltcp's tcp.rs tests).

- A Connection returns an Outcome from every call; `Endpoint` plays the host for one connection
  in isolation: it keeps the segments to send (`segments_to_send(now)`), the state changes
  (`history`) and the hand-off to a minisocket (`pending_minisock`) that the outcomes reported,
  and passes everything else through to the Connection. The helpers below return Endpoints.
- `conn_in(state)` builds a connection in `state` by driving a real exchange with known
  LOCAL_ISS / REMOTE_ISS, and drains its output, so a test starts from a clean slate.
- `from_peer(conn, ...)` is the template of a segment the peer would send now (seq = our
  rcv_nxt, ack = our snd_nxt); `to_peer(conn, ...)` the template of what we would send.
  Vary them with keyword arguments (dataclasses.replace underneath).
- `send(conn, seg, t=...)`, `expect_sent(conn, [...], t=...)`, `expect_nothing(conn)`.
- `Pair` joins two endpoints with a zero-latency link that can drop chosen segments. When an
  endpoint hands off to a minisocket, a tiny stand-in (`MiniStandIn`, NOT the real
  timewait.model.minisock) answers for it, enough to finish a close: it ACKs a retransmitted
  FIN in TIME_WAIT and turns FIN_WAIT_2 into TIME_WAIT on the peer's FIN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from timewait.config import LINUX, KernelConfig, Profile
from timewait.model.connection import Connection
from timewait.model.outcome import HandOff, Outcome
from timewait.model.segment import Flags, FourTuple, Segment
from timewait.model.seq import seq_add
from timewait.model.states import TcpState
from timewait.units import SEC

S = TcpState
F = Flags

LOCAL_ISS = 1_000
REMOTE_ISS = 5_000_000
CLIENT = FourTuple("198.18.0.1", 40000, "198.18.0.2", 80)
NO_TS = KernelConfig(tcp_timestamps=0)
TS = KernelConfig()  # Linux defaults: tcp_timestamps=1


class Endpoint:
    """One Connection and the host's side of its outcomes (see the module docstring)."""

    _OWN = frozenset({"conn", "_out", "history", "pending_minisock"})

    def __init__(self, conn: Connection) -> None:
        object.__setattr__(self, "conn", conn)
        object.__setattr__(self, "_out", [])
        object.__setattr__(self, "history", [])  # (now, old, new) for every state change
        object.__setattr__(self, "pending_minisock", None)  # (substate, timeout) once handed off

    def _take(self, out: Outcome) -> Outcome:
        self._out.extend(out.segments)
        for ch in out.changes or ():
            self.history.append((ch.time, ch.old, ch.new))
        if isinstance(out.op, HandOff):
            object.__setattr__(self, "pending_minisock", (out.op.substate, out.op.timeout))
        return out

    def connect(self, now: int) -> Outcome:
        return self._take(self.conn.connect(now))

    def accept_syn(self, syn: Segment, now: int) -> Outcome:
        return self._take(self.conn.accept_syn(syn, now))

    def send(self, data: bytes, now: int) -> Outcome:
        return self._take(self.conn.send(data, now))

    def close(self, now: int) -> Outcome:
        return self._take(self.conn.close(now))

    def shutdown_write(self, now: int) -> Outcome:
        return self._take(self.conn.shutdown_write(now))

    def abort(self, now: int) -> Outcome:
        return self._take(self.conn.abort(now))

    def receive(self, seg: Segment, now: int) -> Outcome:
        return self._take(self.conn.receive(seg, now))

    def on_timer(self, now: int) -> Outcome:
        return self._take(self.conn.on_timer(now))

    def segments_to_send(self, now: int) -> list[Segment]:
        """Everything the outcomes reported since the last call, in order."""
        out = list(self._out)
        self._out.clear()
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.conn, name, value)

    def __repr__(self) -> str:
        return f"<Endpoint {self.conn!r}>"


def new_conn(
    *,
    config: KernelConfig = NO_TS,
    profile: Profile = LINUX,
    iss: int = LOCAL_ISS,
    ts_offset: int = 0,
    tuple: FourTuple = CLIENT,
    **kw: Any,
) -> Endpoint:
    return Endpoint(
        Connection(tuple=tuple, config=config, profile=profile, iss=iss, ts_offset=ts_offset, **kw)
    )


def from_peer(conn: Endpoint, **changes: Any) -> Segment:
    """What the peer sends now: seq = our rcv_nxt, ack = our snd_nxt, flags ACK."""
    t = conn.tuple
    base = Segment(
        src=t.raddr,
        sport=t.rport,
        dst=t.laddr,
        dport=t.lport,
        seq=conn.rcv_nxt,
        ack=conn.snd_nxt,
        flags=F.ACK,
    )
    return replace(base, **changes)


def to_peer(conn: Endpoint, **changes: Any) -> Segment:
    """What we would send now: seq = snd_nxt, ack = rcv_nxt, flags ACK, our window."""
    t = conn.tuple
    base = Segment(
        src=t.laddr,
        sport=t.lport,
        dst=t.raddr,
        dport=t.rport,
        seq=conn.snd_nxt,
        ack=conn.rcv_nxt,
        flags=F.ACK,
        window=conn.rcv_wnd,
    )
    return replace(base, **changes)


def send(conn: Endpoint, seg: Segment, t: int = 0) -> None:
    """Deliver `seg` to `conn` at time t."""
    conn.receive(seg, t)


def expect_sent(conn: Endpoint, expected: list[Segment], t: int = 0) -> list[Segment]:
    got = conn.segments_to_send(t)
    assert got == expected, (
        "sent:\n  "
        + "\n  ".join(map(str, got))
        + "\nexpected:\n  "
        + ("\n  ".join(map(str, expected)))
    )
    return got


def expect_nothing(conn: Endpoint, t: int = 0) -> None:
    got = conn.segments_to_send(t)
    assert got == [], "expected nothing, sent:\n  " + "\n  ".join(map(str, got))


def events(conn: Endpoint) -> list[type]:
    out: list[type] = []
    while (ev := conn.next_event()) is not None:
        out.append(type(ev))
    return out


def peer_syn(**changes: Any) -> Segment:
    """The SYN a client at CLIENT.raddr:rport sends to us (we are CLIENT.laddr:lport)."""
    syn = Segment(
        src=CLIENT.raddr,
        sport=CLIENT.rport,
        dst=CLIENT.laddr,
        dport=CLIENT.lport,
        seq=REMOTE_ISS,
        flags=F.SYN,
    )
    return replace(syn, **changes)


def accepted(
    *, config: KernelConfig = NO_TS, t: int = 0, iss: int = LOCAL_ISS, **syn: Any
) -> Endpoint:
    """A passive open: a new connection on CLIENT that took the peer's SYN at time t."""
    c = new_conn(config=config, iss=iss)
    c.accept_syn(peer_syn(**syn), t)
    return c


def conn_in(
    state: TcpState,
    *,
    config: KernelConfig = NO_TS,
    orphan: bool | None = None,
    iss: int = LOCAL_ISS,
    remote_iss: int = REMOTE_ISS,
    t: int = 0,
    **kw: Any,
) -> Endpoint:
    """A client connection driven into `state` with a scripted peer; output drained.

    `orphan`: reach FIN_WAIT_1/FIN_WAIT_2/CLOSING/LAST_ACK by close() (True) or by
    shutdown_write() (False). Default: close(), except FIN_WAIT_2 and TIME_WAIT, which use
    shutdown_write() so that the full socket stays (an orphan would hand off to a minisocket).
    """
    if orphan is None:
        orphan = state not in (S.FIN_WAIT_2, S.TIME_WAIT)

    def shut(c: Endpoint) -> None:
        if orphan:
            c.close(t)
        else:
            c.shutdown_write(t)

    if state is S.SYN_RECEIVED:
        c = accepted(config=config, t=t, iss=iss, seq=remote_iss)
        c.segments_to_send(t)
        events(c)
        return c
    c = new_conn(config=config, iss=iss, **kw)
    if state is S.CLOSED:
        return c
    c.connect(t)
    c.segments_to_send(t)
    if state is S.SYN_SENT:
        return c
    synack = from_peer(c, seq=remote_iss, flags=F.SYN | F.ACK)
    if config.timestamps_enabled:
        synack = replace(synack, tsval=7, tsecr=c.ts_recent or 0)
    c.receive(synack, t)
    if state is S.ESTABLISHED:
        pass
    elif state is S.CLOSE_WAIT:
        c.receive(from_peer(c, flags=F.FIN | F.ACK), t)
    elif state is S.LAST_ACK:
        c.receive(from_peer(c, flags=F.FIN | F.ACK), t)
        shut(c)
    elif state is S.FIN_WAIT_1:
        shut(c)
    elif state is S.CLOSING:
        shut(c)
        c.receive(from_peer(c, flags=F.FIN | F.ACK, ack=seq_add(c.snd_nxt, -1)), t)
    elif state in (S.FIN_WAIT_2, S.TIME_WAIT):
        shut(c)
        c.receive(from_peer(c), t)
        if state is S.TIME_WAIT:
            c.receive(from_peer(c, flags=F.FIN | F.ACK), t)
    else:
        raise ValueError(f"conn_in() cannot build {state}")
    c.segments_to_send(t)
    events(c)
    assert c.state is state, (c.state, state)
    return c


def fire_timers(conn: Endpoint, until: int) -> int:
    """Run conn's timers up to `until`; returns the time of the last one run."""
    now = 0
    while (d := conn.next_deadline()) is not None and d <= until:
        now = d
        conn.on_timer(now)
    return now


# -- two endpoints on a fake link --------------------------------------------------------------


@dataclass
class MiniStandIn:
    """Just enough of a TIME_WAIT/FIN_WAIT2 minisocket to finish a close (ref 1.3, 1.4)."""

    tuple: FourTuple
    substate: TcpState
    rcv_nxt: int
    snd_nxt: int
    expires: int
    out: list[Segment] = field(default_factory=list)
    dead: bool = False

    def _reply(self, flags: Flags, seq: int, ack: int) -> None:
        t = self.tuple
        seg = Segment(
            src=t.laddr, sport=t.lport, dst=t.raddr, dport=t.rport, seq=seq, ack=ack, flags=flags
        )
        self.out.append(seg)

    def receive(self, seg: Segment, now: int) -> None:
        if seg.rst:
            self.dead = seg.seq == self.rcv_nxt  # assassination, tcp_rfc1337=0
            return
        if self.substate is S.FIN_WAIT_2:
            if seg.fin and seq_add(seg.seq, len(seg.payload)) == self.rcv_nxt:
                self.rcv_nxt = seq_add(self.rcv_nxt, 1)
                self.substate = S.TIME_WAIT
                self.expires = now + 60 * SEC
                self._reply(F.ACK, self.snd_nxt, self.rcv_nxt)
            elif seg.payload:
                self._reply(F.RST, seg.ack, 0)  # TCP_TW_RST: data after close
                self.dead = True
            return
        if seg.has_ack:
            self.expires = now + 60 * SEC
            if seg.seg_len or seg.seq != self.rcv_nxt:  # a bare in-window ACK gets no reply
                self._reply(F.ACK, self.snd_nxt, self.rcv_nxt)


Drop = Callable[[int, Segment], bool]


class Pair:
    """Two endpoints joined by a zero-latency link; `drop(index, seg)` may lose segments."""

    def __init__(self, a: Endpoint, b: Endpoint, *, drop: Drop | None = None) -> None:
        self.conns = [a, b]
        self.minis: list[MiniStandIn | None] = [None, None]
        self.entered_time_wait = [False, False]
        self.nosock_out: list[list[Segment]] = [[], []]
        self.drop = drop
        self.index = 0
        self.log: list[tuple[int, int, Segment, bool]] = []  # (now, from side, seg, dropped)
        self.received = [b"", b""]  # what each application read
        self.closed_from: list[TcpState | None] = [None, None]  # state when close() was called

    def alive(self, i: int) -> bool:
        c = self.conns[i]
        return c.state is not S.CLOSED and c.pending_minisock is None

    def _drain(self, i: int, now: int) -> list[Segment]:
        out = self.conns[i].segments_to_send(now)
        c = self.conns[i]
        if c.pending_minisock is not None and self.minis[i] is None:
            sub, tmo = c.pending_minisock
            self.minis[i] = MiniStandIn(c.tuple, sub, c.rcv_nxt, c.snd_nxt, now + tmo)
        m = self.minis[i]
        if m is not None:
            out += m.out
            m.out = []
            if m.substate is S.TIME_WAIT:
                self.entered_time_wait[i] = True
        out += self.nosock_out[i]
        self.nosock_out[i] = []
        return out

    def _deliver_to(self, i: int, seg: Segment, now: int) -> None:
        m = self.minis[i]
        if m is not None and not m.dead:
            m.receive(seg, now)
        elif self.alive(i):
            self.conns[i].receive(seg, now)
            self.received[i] += self.conns[i].read()  # the application reads at once
        elif not seg.rst:
            # No socket: K tcp_v4_send_reset().
            t = self.conns[i].tuple
            if seg.has_ack:
                seq, ack, flags = seg.ack, 0, F.RST
            else:
                seq, ack, flags = 0, seq_add(seg.seq, seg.seg_len), F.RST | F.ACK
            self.nosock_out[i].append(
                Segment(
                    src=t.laddr,
                    sport=t.lport,
                    dst=t.raddr,
                    dport=t.rport,
                    seq=seq,
                    ack=ack,
                    flags=flags,
                )
            )

    def deliver(self, now: int) -> None:
        """Move segments both ways until nothing is queued."""
        for _ in range(10_000):
            moved = False
            for i in (0, 1):
                for seg in self._drain(i, now):
                    dropped = self.drop is not None and self.drop(self.index, seg)
                    self.index += 1
                    self.log.append((now, i, seg, dropped))
                    if not dropped:
                        self._deliver_to(1 - i, seg, now)
                    moved = True
            if not moved:
                return
        raise AssertionError("segments kept flowing: livelock")

    def next_deadline(self) -> int | None:
        times = [c.next_deadline() for i, c in enumerate(self.conns) if self.alive(i)]
        times += [m.expires for m in self.minis if m is not None and not m.dead]
        real = [t for t in times if t is not None]
        return min(real) if real else None

    def run(self, until: int, actions: list[tuple[int, int, str]] | None = None) -> int:
        """Deliver, fire timers and apply (time, side, "close"|"shutdown"|"abort") actions."""
        todo = sorted(actions or [])
        now = 0
        self.deliver(now)
        while True:
            d = self.next_deadline()
            nxt = min([x for x in (d, todo[0][0] if todo else None) if x is not None], default=None)
            if nxt is None or nxt > until:
                return now
            now = max(now, nxt)
            while todo and todo[0][0] <= now:
                _, side, what = todo.pop(0)
                if self.alive(side):
                    if what == "close":
                        self.closed_from[side] = self.conns[side].state
                    getattr(self.conns[side], what if what != "shutdown" else "shutdown_write")(now)
            for i, c in enumerate(self.conns):
                if self.alive(i):
                    c.on_timer(now)
                m = self.minis[i]
                if m is not None and not m.dead and m.expires <= now:
                    m.dead = True
            self.deliver(now)


def make_pair(
    *,
    config: KernelConfig = NO_TS,
    a_iss: int = LOCAL_ISS,
    b_iss: int = REMOTE_ISS,
    drop: Drop | None = None,
) -> Pair:
    """Client a (CLIENT) and server b, handshake done at t=0; drop applies afterwards."""
    a = new_conn(config=config, iss=a_iss)
    a.connect(0)
    (syn,) = a.segments_to_send(0)
    b = new_conn(config=config, iss=b_iss, tuple=syn.receiver_tuple)
    b.accept_syn(syn, 0)
    pair = Pair(a, b)
    pair.deliver(0)
    assert a.state is S.ESTABLISHED and b.state is S.ESTABLISHED
    events(a)
    events(b)
    pair.drop = drop
    pair.index = 0
    pair.log.clear()
    return pair
