"""A full TCP socket (Linux `struct tcp_sock`) as a sans-I/O state machine.

Theory of operation
-------------------
A `Connection` is one end of one connection. It is driven from three directions, each taking
`now` (integer ns): application calls (`connect`, `send`, `read`, `close`, `shutdown_write`,
`abort`), arriving segments (`receive`), and timers (`on_timer`, with `next_deadline()` saying
when to call it; calling early is harmless). It never does I/O: each call returns an `Outcome`
with the segments to transmit (see below), and what the application would learn comes out of
`next_event()` (timewait.model.events).

Every state change is a row of timewait.model.transitions.TRANSITIONS and goes through
`_set_state`, which records a `StateChange` in the call's outcome. The code here decides
*which* input an arriving segment is, in the order Linux checks it (K tcp_input.c
tcp_rcv_state_process(), tcp_validate_incoming(), tcp_ack(), tcp_data_queue(), tcp_fin()), step
by step as RFC 9293 §3.10.7.4 numbers them (`_rcv_synchronized()` lists the steps and the
method for each): first the sequence number (PAWS, RFC 7323 §5.3, then the window), second the
RST bit (RFC 5961 §3.2), fourth the SYN bit (RFC 5961 §4), fifth the ACK field (which may
complete a close), seventh and eighth the segment text and FIN (in order only: out-of-order
segments are dropped with a duplicate ACK).

Every entry point returns an `Outcome` (timewait.model.outcome): the segments to send, the
state changes, at most one table operation and the next deadline; the host applies it. Where
Linux calls `tcp_done()` the operation is UNHASH; where it calls `tcp_time_wait()` (ref 1.1,
1.2, 2.2) it is `HandOff(substate, timeout)`: the connection sends the ACK it owes, stops its
timers and ignores further input, and its own `state` shows TIME_WAIT or FIN_WAIT_2. The host
builds the minisocket from the read-only fields (tuple, snd_nxt, rcv_nxt, rcv_wnd, ts_recent,
ts_recent_stamp, ts_offset) and drops the Connection.

Simplifications, each a deliberate model choice: no congestion control, no SACK, no window
scaling, no delayed ACKs except the one Linux's tcp_fin() asks for (the ACK of a FIN in
CLOSE_WAIT waits TCP_DELACK_MIN, so a close() in time sends FIN+ACK and the peer goes from
FIN_WAIT_1 straight to TIME_WAIT); otherwise every segment that needs an ACK gets one at once,
and a pure ACK is dropped from a call's output when a later segment of the same call carries the
same acknowledgement. The RTO stays at `rto_initial` between losses (no RTT estimation), no
zero-window probing, a receive window that does not shrink with unread data.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

from timewait.config import KernelConfig, Profile
from timewait.errors import IllegalTransition, ModelError
from timewait.model import counters as C
from timewait.model.clock import tsval
from timewait.model.counters import Counters
from timewait.model.events import (
    Closed,
    Connected,
    ConnectionRefused,
    ConnectionReset,
    ConnectionTimedOut,
    DataReceived,
    Event,
    PeerClosed,
)
from timewait.model.minisock import fin_wait2_plan
from timewait.model.outcome import UNHASH, HandOff, Outcome, StateChange, TableOp
from timewait.model.segment import FIN_ACK, RST_ACK, SYN_ACK, Flags, FourTuple, Segment, reset_reply
from timewait.model.seq import MASK, seq_add, seq_diff, seq_gt, seq_in_window, seq_le, seq_lt
from timewait.model.states import TcpState
from timewait.model.tcp import TCP_PAWS_WINDOW, oow_rate_limited, paws_check
from timewait.model.transitions import Input, lookup
from timewait.units import MS, SEC

# Enum member access (TcpState.X) is a metaclass attribute lookup on every use, 5% of a
# packet-level run under mypyc (perf); Final module names compile to C statics.
CLOSED: Final = TcpState.CLOSED
LISTEN: Final = TcpState.LISTEN
SYN_SENT: Final = TcpState.SYN_SENT
SYN_RECEIVED: Final = TcpState.SYN_RECEIVED
ESTABLISHED: Final = TcpState.ESTABLISHED
FIN_WAIT_1: Final = TcpState.FIN_WAIT_1
FIN_WAIT_2: Final = TcpState.FIN_WAIT_2
CLOSE_WAIT: Final = TcpState.CLOSE_WAIT
CLOSING: Final = TcpState.CLOSING
LAST_ACK: Final = TcpState.LAST_ACK
TIME_WAIT: Final = TcpState.TIME_WAIT
# Field-less events are values: one shared instance each instead of a constructor call.
_EV_CLOSED: Final = Closed()
_EV_CONNECTED: Final = Connected()
_EV_CONNECTIONREFUSED: Final = ConnectionRefused()
_EV_CONNECTIONRESET: Final = ConnectionReset()
_EV_CONNECTIONTIMEDOUT: Final = ConnectionTimedOut()
_EV_PEERCLOSED: Final = PeerClosed()

# include/net/tcp.h: TCP_TIMEOUT_INIT (1*HZ), RFC 6298 §2.1 initial RTO.
TCP_TIMEOUT_INIT: Final = 1 * SEC
# include/net/tcp.h: TCP_RTO_MAX (120*HZ), cap of the exponential backoff.
TCP_RTO_MAX: Final = 120 * SEC
# include/net/tcp.h: TCP_TIMEOUT_MIN (2U) jiffies = 8 ms at CONFIG_HZ=250 (the lab machine, ref 0).
TCP_TIMEOUT_MIN: Final = 8 * MS
# include/net/tcp.h TCP_DELACK_MIN (HZ/25): the shortest delayed-ACK wait.
TCP_DELACK_MIN: Final = 40 * MS
# include/net/tcp.h: TCP_SYNACK_RETRIES 5 (sysctl tcp_synack_retries, not in KernelConfig).
TCP_SYNACK_RETRIES: Final = 5
# Documentation/networking/ip-sysctl.rst tcp_retries2 default 15. Linux turns it into a time
# budget (tcp_model_timeout(), ~924 s with a 200 ms RTO); the model counts retransmissions.
TCP_RETRIES2: Final = 15
# K tcp_timer.c tcp_orphan_retries(): sysctl default 0 means 8 while the RTO is below TCP_RTO_MAX.
TCP_ORPHAN_RETRIES: Final = 8
# K tcp.c tcp_need_reset(): states in which tcp_disconnect() sends a RST.
_NEED_RESET: Final = frozenset({ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, FIN_WAIT_2, SYN_RECEIVED})
# States in which queued application data (and the FIN behind it) may be transmitted.
_CAN_TRANSMIT: Final = frozenset({ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, LAST_ACK, CLOSING})
# K tcp_input.c tcp_reset_check(): after the peer's FIN, an RST at rcv_nxt - 1 is also exact.
_FIN_RECEIVED: Final = frozenset({CLOSE_WAIT, LAST_ACK, CLOSING})


@dataclass(slots=True, init=False)
class _Sent:
    """A segment's worth of sequence space awaiting acknowledgement (the retransmit queue)."""

    seq: int
    payload: bytes
    syn: bool
    fin: bool

    def __init__(
        self, seq: int, payload: bytes = b"", syn: bool = False, fin: bool = False
    ) -> None:
        self.seq = seq  # explicit: mypyc compiles this, not a dataclass-generated __init__
        self.payload = payload
        self.syn = syn
        self.fin = fin

    @property
    def end(self) -> int:
        return seq_add(self.seq, len(self.payload) + int(self.syn) + int(self.fin))


def _is_pure_ack(seg: Segment) -> bool:
    return seg.flags == Flags.ACK and not seg.payload


class Connection:
    """One end of a TCP connection: Linux's full socket, from connect()/accept to CLOSED.

    Build with the constructor, then call `connect(now)` (active open) or `accept_syn(syn, now)`
    (passive open). Every call returns an `Outcome` for the host to apply; drain `next_event()`
    for the application, and call `on_timer` at `next_deadline()`.
    """

    def __init__(
        self,
        *,
        tuple: FourTuple,  # the integrator's name for the four-tuple (shadows the builtin here)
        config: KernelConfig,
        profile: Profile,
        iss: int,
        ts_offset: int,
        mss: int = 1460,
        rcv_wnd: int = 65535,
        rto_initial: int = TCP_TIMEOUT_INIT,
        ts_recent: int | None = None,
        ts_recent_stamp: int | None = None,
        name: str = "",
        counters: Counters | None = None,
    ) -> None:
        if not 0 <= iss <= MASK:
            raise ModelError(f"iss {iss} is not a 32-bit sequence number: pass iss & 0xFFFFFFFF")
        if mss <= 0 or not 0 <= rcv_wnd <= 65535 or rto_initial <= 0:
            raise ModelError(
                f"bad mss/rcv_wnd/rto_initial {mss}/{rcv_wnd}/{rto_initial}: mss and "
                "rto_initial must be > 0, rcv_wnd in 0..65535 (no window scaling)"
            )
        self.tuple: FourTuple = tuple
        self.config = config
        self.profile = profile
        self.name = name
        self.mss = mss
        self.rcv_wnd = rcv_wnd
        self.rto_initial = rto_initial
        self.iss = iss
        self.ts_offset = ts_offset
        self.state: TcpState = CLOSED
        # The host passes its namespace's counters; a fresh Counter costs ~1 us (interpreted).
        self.counters: Counters = Counters() if counters is None else counters
        # Set by the application before close() (SO_LINGER {1,0}; TCP_LINGER2 in ns).
        self.linger_zero = False
        self.linger2: int | None = None
        self.orphaned = False
        # Send sequence space (RFC 9293 §3.3.1).
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_wnd = 0
        # Receive sequence space.
        self.irs: int | None = None
        self.rcv_nxt = 0
        # Timestamps (RFC 7323). A connection taking over a TIME_WAIT is seeded (ref 1.5, 3).
        self.ts_enabled = False
        self.ts_recent: int | None = ts_recent
        self.ts_recent_stamp: int | None = ts_recent_stamp
        self.last_oow_ack_time: int | None = None  # tcp_oow_rate_limited()'s clock
        self._ts_offered = False  # our SYN (or the SYN we answer) carried the option
        self._passive = False
        self._handed_off = False  # tcp_time_wait() ran: a minisocket owns the four-tuple now
        self._unsent = bytearray()
        self._fin_queued = False
        self._fin_sent = False
        self._rtx: list[_Sent] = []
        self._rcv_buf = bytearray()
        self._rto = rto_initial
        self._retransmits = 0
        self._rto_at: int | None = None
        self._fw2_at: int | None = None  # keepalive timer of an orphaned FIN_WAIT_2 (ref 2.2)
        self._delack_at: int | None = None  # delayed ACK owed for the peer's FIN
        self._recovery: int | None = None  # snd_nxt when the last RTO fired
        self._events: deque[Event] = deque()
        # What the current call did; `_outcome()` hands it over and starts afresh.
        self._out: list[Segment] = []
        self._changes: list[StateChange] | None = None
        self._op: TableOp | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.name or self.tuple} {self.state}>"

    # -- opening ----------------------------------------------------------------------------

    def connect(self, now: int) -> Outcome:
        """Active open: CLOSED -> SYN_SENT and send a SYN (RFC 9293 §3.10.1; tcp_connect())."""
        self._transition(Input.APP_CONNECT, now)
        self.counters[C.ACTIVE_OPENS] += 1
        # K tcp_output.c tcp_syn_options(): TS offered iff net.ipv4.tcp_timestamps != 0.
        self._ts_offered = self.config.timestamps_enabled
        self._transmit(_Sent(seq=self.iss, syn=True), now)
        return self._outcome()

    def accept_syn(self, syn: Segment, now: int) -> Outcome:
        """Passive open from a listener: SYN_RECEIVED, answer with a SYN-ACK.

        TS are used iff the SYN carried them and tcp_timestamps != 0 (K tcp_input.c
        tcp_conn_request(), tcp_openreq_init()). Linux keeps this as a request socket; the model
        uses a full Connection (PassiveOpens counts when it becomes ESTABLISHED, like
        tcp_create_openreq_child()). Raises ModelError unless this is a fresh connection and
        `syn` a bare SYN to its four-tuple.
        """
        if not syn.syn or syn.has_ack or syn.rst or syn.receiver_tuple != self.tuple:
            raise ModelError(f"accept_syn() needs a bare SYN to {self.tuple}, got {syn}")
        if self.state is not CLOSED or self.snd_nxt != self.iss:
            raise ModelError(f"accept_syn() on a connection already in use ({self.state})")
        self.state = LISTEN  # born from the listener; the next line records the passive open
        self._passive = True
        self.irs = syn.seq
        self.rcv_nxt = seq_add(syn.seq, 1)
        self.snd_wnd = syn.window
        if syn.tsval is not None and self.config.timestamps_enabled:
            self._ts_offered = True
            self.ts_enabled = True
            self._store_ts_recent(syn.tsval, now)
        self._transition(Input.RCV_SYN, now)
        self._transmit(_Sent(seq=self.iss, syn=True), now)
        return self._outcome()

    # -- application calls ------------------------------------------------------------------

    def send(self, data: bytes, now: int) -> Outcome:
        """Queue application bytes; they leave in segments of at most `mss` as the window allows.

        Raises IllegalTransition after close()/shutdown_write() or before connect() (EPIPE /
        ENOTCONN in the kernel); nothing changes then.
        """
        if self.orphaned or self._fin_queued:
            raise IllegalTransition(self.state, Input.APP_SEND)
        self._transition(Input.APP_SEND, now)
        self._unsent += data
        self._push(now)
        return self._outcome()

    def read(self) -> bytes:
        """Drain the bytes delivered in order so far (recv())."""
        data = bytes(self._rcv_buf)
        self._rcv_buf.clear()
        return data

    def close(self, now: int) -> Outcome:
        """Application close() (K tcp.c __tcp_close()).

        Order of the kernel's tests: unread received data -> RST (TCPAbortOnClose, ref 8 Lab
        E8b); else SO_LINGER {1,0} -> tcp_disconnect() (RST, TCPAbortOnData); else the normal
        FIN (tcp_close_state()). The socket becomes an orphan; an orphan that is (or later gets)
        to FIN_WAIT_2 waits tcp_fin_time() at most (ref 2.2).
        """
        was_orphan, self.orphaned = self.orphaned, True
        if self._handed_off:
            return self._outcome()  # the minisocket already replaced us; release only
        unread = len(self._rcv_buf)
        self._rcv_buf.clear()
        if self.state is CLOSED or was_orphan:
            if self.state is CLOSED:
                self._transition(Input.APP_CLOSE, now)
            return self._outcome()
        if unread:
            # "Unread data was tossed, zap the connection": RST from any state, no TIME_WAIT.
            self.counters[C.ABORT_ON_CLOSE] += 1
            self._send_active_rst(now)
            self._transition(Input.APP_ABORT, now)
            self._finish()
            return self._outcome()
        if self.linger_zero:
            # "Check zero linger _after_ checking for unread data."
            self.counters[C.ABORT_ON_DATA] += 1
            self._disconnect(now)
            return self._outcome()
        self._half_close(now)
        if self.state is FIN_WAIT_2:
            # Closed after shutdown(SHUT_WR) already reached FIN_WAIT_2 (__tcp_close()).
            if self.linger2 is not None and self.linger2 < 0:
                self.counters[C.ABORT_ON_LINGER] += 1
                self._send_active_rst(now)
                self._transition(Input.ORPHAN_ABORT, now)
                self._finish()
            else:
                self._orphan_fin_wait_2(now)
        return self._outcome()

    def shutdown_write(self, now: int) -> Outcome:
        """shutdown(SHUT_WR): send FIN but keep the socket; FIN_WAIT_2 then has no timeout."""
        self._half_close(now)
        return self._outcome()

    def abort(self, now: int) -> Outcome:
        """tcp_disconnect(): RST in the tcp_need_reset() states, straight to CLOSED (ref 8)."""
        if self.state is not CLOSED and not self._handed_off:
            self._disconnect(now)
        return self._outcome()

    # -- driving ----------------------------------------------------------------------------

    def receive(self, seg: Segment, now: int) -> Outcome:
        """Process one arriving segment addressed to this connection.

        Raises IllegalTransition for a connection that is CLOSED or handed off (it is no longer
        in the host's table, so nothing should reach it).
        """
        if self.state is CLOSED or self.state is LISTEN or self._handed_off:
            raise IllegalTransition(self.state, f"segment {seg} for a closed/handed-off socket")
        # InSegs/OutSegs are the host's to count (tcp_v4_rcv(), tcp_transmit_skb()): every
        # segment crosses the host, which also counts the ones no connection sees.
        if self.state is SYN_SENT:
            self._rcv_syn_sent(seg, now)
        elif self.state is not SYN_RECEIVED or not self._rcv_syn_received(seg, now):
            self._rcv_synchronized(seg, now)
        return self._outcome()

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def next_deadline(self) -> int | None:
        """Absolute time on_timer() has something to do, or None."""
        if self.state is CLOSED or self._handed_off:
            return None
        best = self._rto_at
        t = self._fw2_at
        if t is not None and (best is None or t < best):
            best = t
        t = self._delack_at
        if t is not None and (best is None or t < best):
            best = t
        return best

    def on_timer(self, now: int) -> Outcome:
        """Run whatever timer is due at `now`; calling early does nothing."""
        if self.state is not CLOSED and not self._handed_off:
            if self._rto_at is not None and now >= self._rto_at:
                self._on_rto(now)
            if self._fw2_at is not None and now >= self._fw2_at:
                self._on_fin_wait2_timer(now)
            if self._delack_at is not None and now >= self._delack_at:
                self._delack_at = None
                self._send_ack(now)
        return self._outcome()

    # -- state ------------------------------------------------------------------------------

    def _outcome(self) -> Outcome:
        """Hand over what this call did (segments, state changes, table operation, deadline)."""
        out = Outcome(self._out, self._changes, self._op, self.next_deadline())
        self._out = []
        self._changes = None
        self._op = None
        return out

    def _transition(self, inp: Input, now: int) -> None:
        self._set_state(lookup(self.state, inp), now)

    def _set_state(self, new: TcpState, now: int) -> None:
        """The one place `state` changes; the change goes into the call's outcome."""
        old = self.state
        if new is old:
            return
        change = StateChange(now, self.tuple, old, new)
        if self._changes is None:
            self._changes = [change]
        else:
            self._changes.append(change)
        self.state = new
        if new is CLOSED:
            # K tcp.c tcp_set_state(): EstabResets counts every ESTABLISHED/CLOSE_WAIT -> CLOSE;
            # K tcp_input.c tcp_done(): AttemptFails for SYN_SENT/SYN_RECV -> CLOSE.
            if old is ESTABLISHED or old is CLOSE_WAIT:
                self.counters[C.ESTAB_RESETS] += 1
            elif old is SYN_SENT or old is SYN_RECEIVED:
                self.counters[C.ATTEMPT_FAILS] += 1

    def _finish(self) -> None:
        """CLOSED (tcp_done()): drop everything, stop timers, tell the application and the host."""
        self._rto_at = self._fw2_at = self._delack_at = None
        self._rtx.clear()
        self._unsent.clear()
        self._events.append(_EV_CLOSED)
        self._op = UNHASH

    def _hand_off(self, substate: TcpState, timeout: int) -> None:
        """Linux tcp_time_wait(): a minisocket replaces this socket (ref 1.2).

        TIME_WAIT waits TCP_TIMEWAIT_LEN ("if (state == TCP_TIME_WAIT) timeo =
        TCP_TIMEWAIT_LEN"; the rfc9293 profile waits 2*MSL, `profile.time_wait_len`); an orphan's
        FIN_WAIT_2 waits `timeout`, already floored at 3.5 x RTO by fin_wait2_plan().
        """
        if substate is TIME_WAIT:
            timeout = self.profile.time_wait_len
        self._op = HandOff(substate, timeout)
        self._handed_off = True
        self._rto_at = self._fw2_at = self._delack_at = None
        self._rtx.clear()

    def _half_close(self, now: int) -> None:
        """RFC CLOSE call: K tcp.c tcp_close_state() + tcp_send_fin()."""
        if self._handed_off:
            return
        old = self.state
        self._transition(Input.APP_CLOSE, now)
        if self.state is CLOSED:  # SYN_SENT: just forget the connection, nothing is sent
            self._finish()
            return
        if old is ESTABLISHED or old is SYN_RECEIVED or old is CLOSE_WAIT:
            self._fin_queued = True
            self._push(now)

    def _disconnect(self, now: int) -> None:
        """K tcp.c tcp_disconnect(): RST only where tcp_need_reset(); discard everything."""
        if self.state in _NEED_RESET:
            self._send_active_rst(now)
        self._rcv_buf.clear()
        self._transition(Input.APP_ABORT, now)
        self._finish()

    def _abort_orphan(self, seg: Segment, now: int) -> None:
        """Data after close() (RFC 9293 §3.6.1 SHLD-3) or TCP_LINGER2 < 0: reply RST, CLOSED."""
        self.counters[C.ABORT_ON_DATA] += 1
        self._reply_rst(seg)
        self._transition(Input.ORPHAN_ABORT, now)
        self._finish()

    # -- timers -----------------------------------------------------------------------------

    def _retry_limit(self) -> int:
        if self.state is SYN_SENT:
            return self.config.tcp_syn_retries
        if self.state is SYN_RECEIVED:
            return TCP_SYNACK_RETRIES
        return TCP_ORPHAN_RETRIES if self.orphaned else TCP_RETRIES2

    def _on_rto(self, now: int) -> None:
        """K tcp_timer.c tcp_retransmit_timer(): give up, or resend the head and back off."""
        self._rto_at = None
        if not self._rtx:
            return
        if self._retransmits >= self._retry_limit():
            # tcp_write_timeout() -> tcp_write_err(): ETIMEDOUT, no RST is sent.
            self.counters[C.ABORT_ON_TIMEOUT] += 1
            self._events.append(_EV_CONNECTIONTIMEDOUT)
            self._transition(Input.TIMEOUT, now)
            self._finish()
            return
        self._retransmit(self._rtx[0], now)
        self._retransmits += 1
        self._rto = min(self._rto * 2, TCP_RTO_MAX)  # icsk_rto <<= 1, capped
        self._rto_at = now + self._rto
        self._recovery = self.snd_nxt

    def _orphan_fin_wait_2(self, now: int) -> None:
        """An orphan in FIN_WAIT_2 waits as fin_wait2_plan() says (ref 2.2): a minisocket at once
        for tmo <= 60 s, else first the full socket's keepalive timer for tmo - 60 s."""
        plan = fin_wait2_plan(self.config, linger2=self.linger2 or 0, rto=self._rto)
        if plan.full_socket_wait:
            self._fw2_at = now + plan.full_socket_wait
        else:
            self._hand_off(FIN_WAIT_2, plan.minisocket_timeout)

    def _on_fin_wait2_timer(self, now: int) -> None:
        """K tcp_timer.c tcp_keepalive_timer(), FIN_WAIT2 branch (ref 2.2, Lab E15): with
        tcp_fin_time() - 60 s still positive (recomputed now) a minisocket takes the rest, else
        RST and destroy."""
        self._fw2_at = None
        if self.state is not FIN_WAIT_2 or not self.orphaned:
            return
        plan = fin_wait2_plan(self.config, linger2=self.linger2 or 0, rto=self._rto)
        if plan.full_socket_wait:
            self._hand_off(FIN_WAIT_2, plan.minisocket_timeout)
            return
        self._send_active_rst(now)
        self._transition(Input.ORPHAN_ABORT, now)
        self._finish()

    # -- output -----------------------------------------------------------------------------

    def _segment(self, now: int, *, seq: int, flags: Flags, payload: bytes = b"") -> Segment:
        t = self.tuple
        bits = int(flags)  # int's `&` compiles; IntFlag's is interpreted enum code
        with_ts = self.ts_enabled or (bits & 0x02 != 0 and self._ts_offered)
        return Segment(
            src=t.laddr,
            sport=t.lport,
            dst=t.raddr,
            dport=t.rport,
            seq=seq,
            ack=self.rcv_nxt if bits & 0x10 else 0,
            flags=flags,
            window=self.rcv_wnd,
            payload=payload,
            # RFC 7323 §3.2; K tcp_output.c tcp_syn_options()/tcp_established_options():
            # TSecr echoes ts_recent (0 before anything was received, also on a plain SYN).
            tsval=tsval(now, self.ts_offset) if with_ts else None,
            tsecr=(self.ts_recent or 0) if with_ts else None,
        )

    def _emit(self, seg: Segment) -> None:
        if seg.has_ack:
            self._delack_at = None  # whatever carries the ACK settles a delayed one
            if self._out and not seg.rst:
                # A later segment carries the same or newer acknowledgement: a pure ACK sent
                # earlier in the same call is redundant (what a delayed ACK achieves in Linux).
                self._out = [s for s in self._out if not _is_pure_ack(s)]
        self._out.append(seg)

    def _send_ack(self, now: int) -> None:
        self._emit(self._segment(now, seq=self.snd_nxt, flags=Flags.ACK))

    def _oow_ack(self, seg: Segment, now: int, skipped: str) -> bool:
        """Duplicate ACK for an unacceptable segment, under tcp_oow_rate_limited() (counted
        under `skipped` when limited). Returns True if sent."""
        if oow_rate_limited(self, seg, now, self.config, self.counters, skipped):
            return False
        self._send_ack(now)
        return True

    def _challenge_ack(self, seg: Segment, now: int, *, syn: bool = False) -> None:
        """RFC 5961 §3.2/§4 challenge ACK (K tcp_input.c tcp_send_challenge_ack()): always under
        the rate limit, data or not."""
        if syn:
            self.counters[C.SYN_CHALLENGE] += 1
        if not oow_rate_limited(
            self, None, now, self.config, self.counters, C.ACK_SKIPPED_CHALLENGE
        ):
            self._send_ack(now)
            self.counters[C.CHALLENGE_ACK] += 1

    def _send_active_rst(self, now: int) -> None:
        """K tcp_output.c tcp_send_active_reset(): RST|ACK at snd_nxt, with our TS options."""
        self._emit(self._segment(now, seq=self.snd_nxt, flags=RST_ACK))
        self.counters[C.OUT_RSTS] += 1

    def _reply_rst(self, seg: Segment) -> None:
        """K tcp_ipv4.c tcp_v4_send_reset() answering `seg` (never answers an RST, no TS)."""
        if seg.rst:
            return
        self._emit(reset_reply(seg))
        self.counters[C.OUT_RSTS] += 1

    def _transmit(self, item: _Sent, now: int) -> None:
        """Send new sequence space and keep it for retransmission."""
        self._rtx.append(item)
        self.snd_nxt = item.end
        self._emit(self._build(item, now))
        if self._rto_at is None:
            self._rto_at = now + self._rto

    def _retransmit(self, item: _Sent, now: int) -> None:
        self.counters[C.RETRANS_SEGS] += 1
        self._emit(self._build(item, now))

    def _build(self, item: _Sent, now: int) -> Segment:
        if item.syn:
            # SYN from SYN_SENT; SYN-ACK once the peer's SYN is known (accept / simultaneous open).
            flags = SYN_ACK if self.irs is not None else Flags.SYN
        else:
            flags = FIN_ACK if item.fin else Flags.ACK
        return self._segment(now, seq=item.seq, flags=flags, payload=item.payload)

    def _push(self, now: int) -> None:
        """Send queued data within the peer's window, then the FIN (K tcp_write_xmit())."""
        if self.state not in _CAN_TRANSMIT or self._handed_off:
            return
        while self._unsent:
            room = self.snd_wnd - seq_diff(self.snd_nxt, self.snd_una)
            n = min(self.mss, len(self._unsent), room)
            if n <= 0:
                break  # no persist timer in the model: the peer's window never shrinks here
            chunk = bytes(self._unsent[:n])
            del self._unsent[:n]
            fin = self._fin_queued and not self._unsent  # FIN rides on the last data segment
            self._transmit(_Sent(seq=self.snd_nxt, payload=chunk, fin=fin), now)
            self._fin_sent = self._fin_sent or fin
        if self._fin_queued and not self._fin_sent and not self._unsent:
            # K tcp_output.c tcp_send_fin(): a bare FIN is forced out even into a closed window.
            self._transmit(_Sent(seq=self.snd_nxt, fin=True), now)
            self._fin_sent = True

    # -- input ------------------------------------------------------------------------------

    def _store_ts_recent(self, value: int, now: int) -> None:
        self.ts_recent = value
        self.ts_recent_stamp = now

    def _update_ts_recent(self, seg: Segment, now: int) -> None:
        """RFC 7323 §4.3 (SEG.SEQ <= Last.ACK.sent); K tcp_input.c tcp_replace_ts_recent().

        The model ACKs at once, so Last.ACK.sent (Linux rcv_wup) is rcv_nxt.
        """
        if not self.ts_enabled or seg.tsval is None or seq_gt(seg.seq, self.rcv_nxt):
            return
        if not self.ts_recent or seq_diff(self.ts_recent, seg.tsval) <= 0:
            self._store_ts_recent(seg.tsval, now)

    def _on_new_ack(self, ack: int, now: int) -> None:
        """K tcp_input.c tcp_ack(): clean the retransmit queue, reset backoff, re-arm the RTO."""
        self.snd_una = ack
        while self._rtx and seq_le(self._rtx[0].end, ack):
            self._rtx.pop(0)
        if self._rtx and seq_gt(ack, self._rtx[0].seq):  # partly acknowledged segment
            head = self._rtx[0]
            cut = seq_diff(ack, head.seq) - int(head.syn)
            self._rtx[0] = _Sent(seq=ack, payload=head.payload[cut:], fin=head.fin)
        self._retransmits = 0
        self._rto = self.rto_initial
        self._rto_at = now + self._rto if self._rtx else None
        if self._recovery is not None:
            if self._rtx and seq_lt(ack, self._recovery):
                # Still recovering from an RTO: resend the next hole at once (like NewReno).
                self._retransmit(self._rtx[0], now)
            else:
                self._recovery = None

    def _rcv_syn_sent(self, seg: Segment, now: int) -> None:
        """RFC 9293 §3.10.7.3; K tcp_input.c tcp_rcv_synsent_state_process()."""
        if seg.has_ack:
            if not (seq_gt(seg.ack, self.snd_una) and seq_le(seg.ack, self.snd_nxt)):
                # Unacceptable ACK (e.g. a TIME_WAIT's challenge ACK, ref 1.6): RST with
                # SEQ = SEG.ACK, and if the SYN was not retransmitted yet, resend it after
                # TCP_TIMEOUT_MIN ("Previous FIN/ACK or RST/ACK might be ignored").
                if self._retransmits == 0:
                    self._rto_at = now + TCP_TIMEOUT_MIN
                self._reply_rst(seg)
                return
            if seg.rst:
                self._transition(Input.RCV_RST, now)
                self._events.append(_EV_CONNECTIONREFUSED)
                self._finish()
                return
            if not seg.syn:
                return
            self._learn_peer_syn(seg, now)
            self._on_new_ack(seg.ack, now)
            self._transition(Input.RCV_SYN_ACK, now)
            self._events.append(_EV_CONNECTED)
            self._send_ack(now)
            self._push(now)
            return
        if seg.rst:  # an RST without ACK cannot be for our SYN: drop
            return
        if seg.syn:
            # Simultaneous open (RFC 9293 §3.5 Fig. 8): SYN_RECEIVED, answer SYN-ACK.
            self._learn_peer_syn(seg, now)
            self._transition(Input.RCV_SYN, now)
            self._emit(self._segment(now, seq=self.iss, flags=SYN_ACK))

    def _learn_peer_syn(self, seg: Segment, now: int) -> None:
        """The peer's SYN (or SYN-ACK) in SYN_SENT: its ISN, window and timestamps."""
        self.irs = seg.seq
        self.rcv_nxt = seq_add(seg.seq, 1)
        self.snd_wnd = seg.window
        if self._ts_offered and seg.tsval is not None:
            self.ts_enabled = True
            self._store_ts_recent(seg.tsval, now)  # tcp_store_ts_recent()

    def _rcv_syn_received(self, seg: Segment, now: int) -> bool:
        """Request-socket checks (K tcp_minisocks.c tcp_check_req()).

        Returns True when the segment was fully handled; False after the handshake completed
        and the rest of the segment (data, FIN) must be processed as in ESTABLISHED.
        """
        assert self.irs is not None
        if seg.syn and not seg.rst and seg.seq == self.irs:
            if not seg.has_ack:
                # Retransmitted SYN: resend the SYN-ACK, rate-limited (tcp_check_req():
                # `!tcp_oow_rate_limited(..., LINUX_MIB_TCPACKSKIPPEDSYNRECV, ...) &&
                # !inet_rtx_syn_ack()`).
                if self._rtx and not oow_rate_limited(
                    self, seg, now, self.config, self.counters, C.ACK_SKIPPED_SYNRECV
                ):
                    self._retransmit(self._rtx[0], now)
                return True
            if seg.ack == self.snd_nxt:
                # Simultaneous open: the peer's SYN-ACK acknowledges our SYN
                # (K tcp_validate_incoming() "goto pass" for this exact case).
                self._complete_handshake(seg, now)
                return True
        in_window = seg.seq == self.rcv_nxt or seq_in_window(seg.seq, self.rcv_nxt, self.rcv_wnd)
        if not in_window:
            if not seg.rst:
                self._oow_ack(seg, now, C.ACK_SKIPPED_SEQ)
            return True
        if seg.rst or seg.syn:
            # tcp_check_req(): RST or SYN in window -> "embryonic_reset" (RST for a SYN).
            self._reply_rst(seg)
            self._transition(Input.RCV_RST, now)
            self._finish()
            return True
        if not seg.has_ack:
            return True
        if seg.ack != self.snd_nxt:
            # Bad ACK: tcp_check_req() hands it to the listener, which answers RST.
            self._reply_rst(seg)
            return True
        self._complete_handshake(seg, now)
        return False

    def _complete_handshake(self, seg: Segment, now: int) -> None:
        self._update_ts_recent(seg, now)
        self._on_new_ack(seg.ack, now)
        self.snd_wnd = seg.window
        self._transition(Input.RCV_ACK_OF_SYN, now)
        if self._passive:
            self.counters[C.PASSIVE_OPENS] += 1
        self._events.append(_EV_CONNECTED)
        self._push(now)

    # -- RFC 9293 §3.10.7.4 "Otherwise", one method per step ---------------------------------

    def _rcv_synchronized(self, seg: Segment, now: int) -> None:
        """RFC 9293 §3.10.7.4 for ESTABLISHED .. LAST_ACK (K tcp_rcv_state_process()), step by
        step in the RFC's numbering, in the order Linux runs them:

        first   check the sequence number: PAWS, then the window   `_first_check_sequence`
        second  check the RST bit (RFC 5961 §3.2)                  `_second_check_rst`
        fourth  check the SYN bit (RFC 5961 §4)                    `_fourth_check_syn`
        fifth   check the ACK field (may complete a close)         `_fifth_check_ack`
        seventh process the segment text, eighth check the FIN      `_seventh_text_and_fin`

        An RST goes to the second step directly: "Reset is accepted even if it did not pass
        PAWS", and RFC 5961 has its own window test for it. The third (security) and sixth (URG)
        steps have no counterpart here.
        """
        if seg.rst:
            self._second_check_rst(seg, now)
        elif not self._first_check_sequence(seg, now):
            return
        elif seg.syn:
            self._fourth_check_syn(seg, now)
        elif self._fifth_check_ack(seg, now):
            self._seventh_text_and_fin(seg, now)

    def _first_check_sequence(self, seg: Segment, now: int) -> bool:
        """First step: PAWS (RFC 7323 §5.3, K tcp_paws_discard()), then the receive window
        (K tcp_sequence()). An unacceptable segment is answered with a duplicate ACK (a
        challenge ACK for a SYN) and goes no further: returns False."""
        if (
            self.ts_enabled
            and seg.tsval is not None
            and not paws_check(
                self.ts_recent or 0, self.ts_recent_stamp, seg.tsval, now, TCP_PAWS_WINDOW
            )
        ):
            if seg.syn:
                self._challenge_ack(seg, now, syn=True)
            else:
                self.counters[C.PAWS_ESTAB] += 1
                self._oow_ack(seg, now, C.ACK_SKIPPED_PAWS)
            return False
        end = seq_add(seg.seq, seg.seg_len)
        if seq_lt(end, self.rcv_nxt) or seq_gt(seg.seq, seq_add(self.rcv_nxt, self.rcv_wnd)):
            if seg.syn:
                self._challenge_ack(seg, now, syn=True)
            else:
                self._oow_ack(seg, now, C.ACK_SKIPPED_SEQ)
            return False
        return True

    def _second_check_rst(self, seg: Segment, now: int) -> None:
        """Second step, RFC 5961 §3.2: an RST exactly at rcv_nxt resets (also at rcv_nxt - 1
        after the peer's FIN, K tcp_reset_check()), one elsewhere in the window gets a
        challenge ACK, the rest is dropped."""
        exact = seg.seq == self.rcv_nxt or (
            self.state in _FIN_RECEIVED and seg.seq == seq_add(self.rcv_nxt, -1)
        )
        if exact:
            self._transition(Input.RCV_RST, now)
            self._events.append(_EV_CONNECTIONRESET)
            self._finish()
        elif seq_in_window(seg.seq, self.rcv_nxt, self.rcv_wnd):
            self._challenge_ack(seg, now)

    def _fourth_check_syn(self, seg: Segment, now: int) -> None:
        """Fourth step: a SYN in a synchronized state gets a challenge ACK (RFC 5961 §4,
        K tcp_validate_incoming() "step 4")."""
        self._challenge_ack(seg, now, syn=True)

    def _fifth_check_ack(self, seg: Segment, now: int) -> bool:
        """Fifth step: the ACK field (K tcp_ack()). Returns False when the segment is done with:
        no ACK bit (dropped), an ACK of data never sent (challenge ACK), or an ACK of our FIN
        that ends the connection here (TIME_WAIT hand-off, CLOSED, or an orphan's abort)."""
        if not seg.has_ack:
            return False  # "if the ACK bit is off drop the segment and return"
        if seq_gt(seg.ack, self.snd_nxt):
            self._challenge_ack(seg, now)  # K tcp_ack(): ACK of data we never sent
            return False
        self._update_ts_recent(seg, now)
        if seq_gt(seg.ack, self.snd_una):
            self._on_new_ack(seg.ack, now)
        if not seq_lt(seg.ack, self.snd_una):
            self.snd_wnd = seg.window
        if not (self._fin_sent and self.snd_una == self.snd_nxt):
            return True  # our FIN is not (yet) acknowledged
        st = self.state
        if st is FIN_WAIT_1:
            beyond = self._beyond(seg)
            if self._fin_is_new(seg) and not (self.orphaned and beyond) and not self._linger2_neg():
                # FIN+ACK of our FIN: straight to TIME_WAIT (RFC 9293 Fig. 5 note 2, ref 1.1).
                self._accept_text(self._new_text(seg), now)
                self.rcv_nxt = seq_add(self.rcv_nxt, 1)
                self._events.append(_EV_PEERCLOSED)
                self._transition(Input.RCV_FIN_ACK_OF_FIN, now)
                self._send_ack(now)
                self._hand_off(TIME_WAIT, 0)
                return False
            self._transition(Input.RCV_ACK_OF_FIN, now)
            if self.orphaned:
                # K tcp_rcv_state_process() case TCP_FIN_WAIT1, dead socket.
                if self._linger2_neg() or beyond:
                    self._abort_orphan(seg, now)
                    return False
                self._orphan_fin_wait_2(now)
                return not self._handed_off
        elif st is CLOSING:
            self._transition(Input.RCV_ACK_OF_FIN, now)
            self._hand_off(TIME_WAIT, 0)
            return False
        elif st is LAST_ACK:
            self._transition(Input.RCV_ACK_OF_FIN, now)
            self._finish()
            return False
        return True

    def _seventh_text_and_fin(self, seg: Segment, now: int) -> None:
        """Seventh step, the segment text (K tcp_data_queue()), and eighth, the FIN (K
        tcp_fin()). In order only: an out-of-order segment is dropped with a duplicate ACK."""
        st = self.state
        if seg.seg_len == 0:
            self._push(now)
            return
        if st in _FIN_RECEIVED:
            # After the peer's FIN nothing new can come; a retransmission is re-ACKed.
            if seq_lt(seg.seq, self.rcv_nxt):
                self._send_ack(now)
            return
        if self.orphaned and self._beyond(seg):
            # RFC 9293 §3.6.1 SHLD-3 / RFC 1122: data after close() -> RST (TCPAbortOnData).
            self._abort_orphan(seg, now)
            return
        if not seq_le(seg.seq, self.rcv_nxt):
            self._send_ack(now)  # out of order: dropped (no reassembly), duplicate ACK
            return
        data = self._new_text(seg)
        fin_new = self._fin_is_new(seg)
        if not data and not fin_new:
            self._send_ack(now)  # old duplicate: "force an immediate ACK" (tcp_data_queue())
            return
        self._accept_text(data, now)
        if fin_new:
            # Eighth step (K tcp_input.c tcp_fin()).
            self.rcv_nxt = seq_add(self.rcv_nxt, 1)
            self._events.append(_EV_PEERCLOSED)
            if st is ESTABLISHED:
                self._transition(Input.RCV_FIN, now)
                # K tcp_input.c tcp_fin(): CLOSE_WAIT enters pingpong mode, so the ACK of the FIN
                # is delayed (__tcp_ack_snd_check() -> tcp_send_delayed_ack()); an application
                # that closes in time sends FIN|ACK instead, and the active closer goes from
                # FIN_WAIT_1 straight to TIME_WAIT (ref 1.1 row 2).
                self._delack_at = now + TCP_DELACK_MIN
                self._push(now)
                return
            if st is FIN_WAIT_1:
                self._transition(Input.RCV_FIN, now)  # simultaneous close -> CLOSING
            elif st is FIN_WAIT_2:
                self._transition(Input.RCV_FIN, now)
                self._send_ack(now)
                self._hand_off(TIME_WAIT, 0)
                return
        self._send_ack(now)
        self._push(now)

    def _new_text(self, seg: Segment) -> bytes:
        """The payload bytes of an in-order segment that rcv_nxt has not passed yet."""
        if not seq_le(seg.seq, self.rcv_nxt):
            return b""
        return seg.payload[seq_diff(self.rcv_nxt, seg.seq) :]

    def _fin_is_new(self, seg: Segment) -> bool:
        """The segment is in order and its FIN is beyond rcv_nxt (not a retransmitted FIN)."""
        return (
            seg.fin
            and seq_le(seg.seq, self.rcv_nxt)
            and seq_gt(seq_add(seg.seq, seg.seg_len), self.rcv_nxt)
        )

    def _beyond(self, seg: Segment) -> bool:
        """Payload or FIN beyond rcv_nxt (K: `after(end_seq - th->fin, rcv_nxt)`)."""
        end = seq_add(seg.seq, seg.seg_len - int(seg.fin))
        return seg.seg_len != 0 and seq_gt(end, self.rcv_nxt)

    def _accept_text(self, data: bytes, now: int) -> None:
        if data:
            self.rcv_nxt = seq_add(self.rcv_nxt, len(data))
            self._rcv_buf += data
            self._events.append(DataReceived(data=data))

    def _linger2_neg(self) -> bool:
        return self.orphaned and self.linger2 is not None and self.linger2 < 0
