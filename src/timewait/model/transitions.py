"""The full-socket TCP state machine as data: (state, input) -> (next state, source).

Theory of operation
-------------------
`Connection` (timewait.model.connection) classifies what happened -- an application call, an
arriving segment that matters to the state machine, or a timer that gave up -- into one `Input`,
and looks the pair (current state, input) up in `TRANSITIONS`. The row gives the next state and
the source the rule was taken from. A missing key is an `IllegalTransition`: either the caller
used the socket in a way the kernel refuses (connect() on a connected socket, send() after
shutdown) or the model has a bug. Nothing else in the model changes `Connection.state`.

Only *state changes* and legal no-change application calls are rows. Segments that are answered
without a state change (duplicate ACKs, challenge ACKs, data in ESTABLISHED, retransmissions) are
handled in connection.py and never consult this table. A row may also be a self-loop when the
call is legal but leaves the state alone (close() after shutdown(SHUT_WR): K tcp.c
tcp_close_state() maps FIN_WAIT1 to FIN_WAIT1).

The table is the single source for the docs' state diagram (`transition_table_rows()`), and a
test replays every row, and shows each one is needed: with the row taken out of the table, the
same exchange raises IllegalTransition (tests/model/test_connection.py). Nothing is recorded
here at run time.

Two states never appear as a *source* of a received-segment row: TIME_WAIT and (for received
segments) LISTEN. Linux replaces the full socket by a minisocket in `tcp_time_wait()` (ref 1.2),
so segments for a TIME_WAIT four-tuple are handled by timewait.model.minisock, and a listener is
the host's business; `Connection.accept_syn()` starts in LISTEN only to record the passive open.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

from timewait.errors import IllegalTransition
from timewait.model.states import TcpState


class Input(Enum):
    """What can move a full socket from one state to another."""

    # Application calls (RFC 9293 §3.10.1-§3.10.5 user calls).
    APP_CONNECT = "connect()"
    APP_SEND = "send()"
    APP_CLOSE = "close()/shutdown(SHUT_WR)"  # RFC CLOSE = "I have no more data to send"
    APP_ABORT = "abort"  # tcp_disconnect(): SO_LINGER {1,0}, close() with unread data, ABORT
    # Arriving segments, after they passed the acceptability tests.
    RCV_SYN = "rcv SYN"
    RCV_SYN_ACK = "rcv SYN,ACK"
    RCV_ACK_OF_SYN = "rcv ACK of SYN"
    RCV_ACK_OF_FIN = "rcv ACK of FIN"
    RCV_FIN = "rcv FIN"
    RCV_FIN_ACK_OF_FIN = "rcv FIN,ACK of FIN"
    RCV_RST = "rcv RST"
    # Timers and kernel-initiated aborts.
    TIMEOUT = "retransmission timeout: give up"
    ORPHAN_ABORT = "kernel aborts an orphan"  # data after close, TCP_LINGER2 < 0, FIN_WAIT2 timer

    __hash__ = object.__hash__  # singletons: identity hash (Enum's is Python code, slow)


S = TcpState
In = Input  # short aliases keep the table one row per line

_SYN_SENT_PROC: Final = "K tcp_input.c tcp_rcv_synsent_state_process()"
_STATE_PROC: Final = "K tcp_input.c tcp_rcv_state_process()"
_VALIDATE: Final = "RFC 5961 §3.2; K tcp_input.c tcp_validate_incoming()/tcp_reset()"
_DISCONNECT: Final = "ref 8; K tcp.c tcp_disconnect()"
_WRITE_TIMEOUT: Final = "RFC 9293 §3.8.3 R2; K tcp_timer.c tcp_write_timeout()"

TRANSITIONS: Final[dict[tuple[TcpState, Input], tuple[TcpState, str]]] = {
    # -- opening ---------------------------------------------------------------------------
    (S.CLOSED, In.APP_CONNECT): (S.SYN_SENT, "RFC 9293 §3.10.1; K tcp_output.c tcp_connect()"),
    (S.LISTEN, In.RCV_SYN): (
        S.SYN_RECEIVED,
        "RFC 9293 §3.10.7.2; K tcp_input.c tcp_conn_request()",
    ),
    (S.SYN_SENT, In.RCV_SYN_ACK): (S.ESTABLISHED, f"RFC 9293 §3.10.7.3; {_SYN_SENT_PROC}"),
    (S.SYN_SENT, In.RCV_SYN): (
        S.SYN_RECEIVED,
        f"simultaneous open, RFC 9293 §3.5; {_SYN_SENT_PROC}",
    ),
    (S.SYN_SENT, In.RCV_RST): (S.CLOSED, f"RFC 9293 §3.10.7.3 (refused); {_SYN_SENT_PROC}"),
    (S.SYN_RECEIVED, In.RCV_ACK_OF_SYN): (S.ESTABLISHED, f"RFC 9293 §3.10.7.4; {_STATE_PROC}"),
    (S.SYN_RECEIVED, In.RCV_RST): (
        S.CLOSED,
        "RFC 9293 §3.10.7.4; K tcp_minisocks.c tcp_check_req()",
    ),
    # -- send() is legal while the connection can still carry our data -----------------------
    # (queued until ESTABLISHED: sk_stream_wait_connect() in K tcp.c tcp_sendmsg_locked())
    (S.SYN_SENT, In.APP_SEND): (S.SYN_SENT, "RFC 9293 §3.10.2 (queue until established)"),
    (S.SYN_RECEIVED, In.APP_SEND): (S.SYN_RECEIVED, "RFC 9293 §3.10.2 (queue until established)"),
    (S.ESTABLISHED, In.APP_SEND): (S.ESTABLISHED, "RFC 9293 §3.10.2"),
    (S.CLOSE_WAIT, In.APP_SEND): (S.CLOSE_WAIT, "RFC 9293 §3.10.2"),
    # -- closing: close() / shutdown(SHUT_WR), K tcp.c tcp_close_state() new_state[] ---------
    (S.SYN_SENT, In.APP_CLOSE): (S.CLOSED, "RFC 9293 §3.10.4; K tcp.c tcp_close_state()"),
    (S.SYN_RECEIVED, In.APP_CLOSE): (S.FIN_WAIT_1, "RFC 9293 §3.10.4; K tcp.c tcp_close_state()"),
    (S.ESTABLISHED, In.APP_CLOSE): (S.FIN_WAIT_1, "RFC 9293 §3.10.4; K tcp.c tcp_close_state()"),
    (S.CLOSE_WAIT, In.APP_CLOSE): (S.LAST_ACK, "RFC 9293 §3.10.4; K tcp.c tcp_close_state()"),
    (S.FIN_WAIT_1, In.APP_CLOSE): (S.FIN_WAIT_1, "K tcp.c tcp_close_state() (FIN already queued)"),
    (S.FIN_WAIT_2, In.APP_CLOSE): (S.FIN_WAIT_2, "K tcp.c tcp_close_state(), __tcp_close()"),
    (S.CLOSING, In.APP_CLOSE): (S.CLOSING, "K tcp.c tcp_close_state() (FIN already queued)"),
    (S.LAST_ACK, In.APP_CLOSE): (S.LAST_ACK, "K tcp.c tcp_close_state() (FIN already queued)"),
    (S.CLOSED, In.APP_CLOSE): (S.CLOSED, "K tcp.c __tcp_close() (already closed: just release)"),
    (S.ESTABLISHED, In.RCV_FIN): (
        S.CLOSE_WAIT,
        "RFC 9293 §3.10.7.4 eighth; K tcp_input.c tcp_fin()",
    ),
    (S.FIN_WAIT_1, In.RCV_ACK_OF_FIN): (S.FIN_WAIT_2, f"RFC 9293 §3.10.7.4 fifth; {_STATE_PROC}"),
    (S.FIN_WAIT_1, In.RCV_FIN): (S.CLOSING, "simultaneous close, ref 1.1; K tcp_input.c tcp_fin()"),
    (S.FIN_WAIT_1, In.RCV_FIN_ACK_OF_FIN): (
        S.TIME_WAIT,
        "RFC 9293 Fig. 5 note 2, ref 1.1; K tcp_rcv_state_process() then tcp_fin()",
    ),
    (S.FIN_WAIT_2, In.RCV_FIN): (
        S.TIME_WAIT,
        "ref 1.1; K tcp_input.c tcp_fin() -> tcp_time_wait()",
    ),
    (S.CLOSING, In.RCV_ACK_OF_FIN): (S.TIME_WAIT, f"ref 1.1; {_STATE_PROC} -> tcp_time_wait()"),
    (S.LAST_ACK, In.RCV_ACK_OF_FIN): (S.CLOSED, f"ref 1.1; {_STATE_PROC} -> tcp_done()"),
    # -- resets received: RFC 5961 exact-sequence RST (validated in connection.py) -----------
    (S.ESTABLISHED, In.RCV_RST): (S.CLOSED, _VALIDATE),
    (S.FIN_WAIT_1, In.RCV_RST): (S.CLOSED, _VALIDATE),
    (S.FIN_WAIT_2, In.RCV_RST): (S.CLOSED, _VALIDATE),
    (S.CLOSE_WAIT, In.RCV_RST): (S.CLOSED, _VALIDATE),
    (S.CLOSING, In.RCV_RST): (S.CLOSED, _VALIDATE),
    (S.LAST_ACK, In.RCV_RST): (S.CLOSED, _VALIDATE),
    # -- aborts by the application: no FIN, no TIME_WAIT (ref 1.1 last row) -----------------
    (S.SYN_SENT, In.APP_ABORT): (S.CLOSED, _DISCONNECT),
    (S.SYN_RECEIVED, In.APP_ABORT): (S.CLOSED, _DISCONNECT),
    (S.ESTABLISHED, In.APP_ABORT): (S.CLOSED, _DISCONNECT),
    (S.FIN_WAIT_1, In.APP_ABORT): (S.CLOSED, _DISCONNECT),
    (S.FIN_WAIT_2, In.APP_ABORT): (S.CLOSED, _DISCONNECT),
    (S.CLOSE_WAIT, In.APP_ABORT): (S.CLOSED, _DISCONNECT),
    (S.CLOSING, In.APP_ABORT): (S.CLOSED, _DISCONNECT),
    (S.LAST_ACK, In.APP_ABORT): (S.CLOSED, _DISCONNECT),
    # -- the kernel gives up on its own ------------------------------------------------------
    (S.SYN_SENT, In.TIMEOUT): (S.CLOSED, f"tcp_syn_retries; {_WRITE_TIMEOUT}"),
    (S.SYN_RECEIVED, In.TIMEOUT): (S.CLOSED, "tcp_synack_retries; K inet_connection_sock.c"),
    (S.ESTABLISHED, In.TIMEOUT): (S.CLOSED, f"tcp_retries2; {_WRITE_TIMEOUT}"),
    (S.FIN_WAIT_1, In.TIMEOUT): (S.CLOSED, f"tcp_orphan_retries; {_WRITE_TIMEOUT}"),
    (S.CLOSE_WAIT, In.TIMEOUT): (S.CLOSED, f"tcp_retries2; {_WRITE_TIMEOUT}"),
    (S.CLOSING, In.TIMEOUT): (S.CLOSED, f"tcp_orphan_retries; {_WRITE_TIMEOUT}"),
    (S.LAST_ACK, In.TIMEOUT): (S.CLOSED, f"tcp_orphan_retries; {_WRITE_TIMEOUT}"),
    (S.FIN_WAIT_1, In.ORPHAN_ABORT): (
        S.CLOSED,
        "data after close(): RFC 9293 §3.6.1 SHLD-3; K tcp_rcv_state_process() step 7",
    ),
    (S.FIN_WAIT_2, In.ORPHAN_ABORT): (
        S.CLOSED,
        "ref 2.2: TCP_LINGER2 < 0 / data after close / tcp_keepalive_timer() ran out",
    ),
}


def lookup(state: TcpState, inp: Input) -> TcpState:
    """Next state for (state, inp); raises IllegalTransition when there is no row."""
    try:
        new, _source = TRANSITIONS[(state, inp)]
    except KeyError:
        raise IllegalTransition(state, inp) from None
    return new


def transition_table_rows() -> list[tuple[str, str, str, str]]:
    """(from, input, to, source) in RFC spellings, table order: what the docs diagram draws."""
    return [(str(s), i.value, str(n), src) for (s, i), (n, src) in TRANSITIONS.items()]
