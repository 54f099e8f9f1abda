"""The full-socket state machine, one rule per test (RFC 9293, RFC 5961, RFC 7323, Linux 6.18).

Local end: CLIENT.laddr:lport with ISS LOCAL_ISS (L); the peer's ISS is REMOTE_ISS (R). Unless a
test says otherwise timestamps are off, so segments compare exactly.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import replace
from itertools import accumulate
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timewait.config import RFC9293
from timewait.errors import IllegalTransition
from timewait.model import counters as C
from timewait.model.clock import HostClocks
from timewait.model.connection import TCP_TIMEOUT_MIN, Connection
from timewait.model.delack import TICK_LATENCY
from timewait.model.events import (
    Closed,
    Connected,
    ConnectionRefused,
    ConnectionReset,
    ConnectionTimedOut,
    DataReceived,
    PeerClosed,
)
from timewait.model.rtt import HZ
from timewait.model.segment import Flags, Segment
from timewait.model.seq import seq_add
from timewait.model.states import TcpState
from timewait.model.timerwheel import mean_fire_delay
from timewait.model.transitions import TRANSITIONS, Input, transition_table_rows
from timewait.units import MS, SEC

from .conn_helpers import (
    CLIENT,
    LOCAL_ISS,
    NO_TS,
    REMOTE_ISS,
    TS,
    Pair,
    accepted,
    conn_in,
    events,
    expect_nothing,
    expect_sent,
    fire_timers,
    from_peer,
    make_pair,
    new_conn,
    peer_syn,
    send,
    to_peer,
)

S = TcpState
F = Flags
L = LOCAL_ISS
R = REMOTE_ISS


def fire(timeout: int) -> int:
    """When a timer armed for `timeout` fires, on average (K timer wheel, HZ=250)."""
    return mean_fire_delay(timeout, HZ)


def states(conn: Connection) -> list[tuple[TcpState, TcpState]]:
    return [(old, new) for _, old, new in conn.history]


# -- opening ---------------------------------------------------------------------------------


def test_connect_sends_syn_and_enters_syn_sent() -> None:
    """RFC 9293 §3.10.1: OPEN sends SYN with SEQ=ISS and enters SYN-SENT (K tcp_connect())."""
    c = new_conn()
    c.connect(0)
    assert c.state is S.SYN_SENT and c.counters[C.ACTIVE_OPENS] == 1
    expect_sent(c, [to_peer(c, seq=L, ack=0, flags=F.SYN)])
    # 1 s = 250 jiffies, on the timer wheel's next 8-jiffy bucket: 16 ms late on average
    assert c.next_deadline() == fire(1 * SEC) == 1016 * MS


def test_syn_ack_establishes_and_is_acked() -> None:
    """RFC 9293 §3.10.7.3: an acceptable SYN-ACK -> ESTABLISHED, ACK it."""
    c = conn_in(S.SYN_SENT)
    send(c, from_peer(c, seq=R, flags=F.SYN | F.ACK), t=5 * MS)
    assert c.state is S.ESTABLISHED
    expect_sent(c, [to_peer(c, seq=L + 1, ack=R + 1)])
    assert events(c) == [Connected]
    assert c.next_deadline() is None


def test_accepted_syn_answers_syn_ack_and_ack_establishes() -> None:
    """RFC 9293 §3.10.7.2/§3.10.7.4: LISTEN -> SYN-RECEIVED -> ESTABLISHED; PassiveOpens."""
    c = accepted()
    assert states(c) == [(S.LISTEN, S.SYN_RECEIVED)]
    expect_sent(c, [to_peer(c, seq=L, ack=R + 1, flags=F.SYN | F.ACK)])
    send(c, from_peer(c, seq=R + 1, ack=L + 1))
    assert c.state is S.ESTABLISHED and c.counters[C.PASSIVE_OPENS] == 1
    assert events(c) == [Connected]
    expect_nothing(c)


def test_syn_carries_timestamp_iff_tcp_timestamps() -> None:
    """K tcp_syn_options(): TS option iff tcp_timestamps != 0; TSval = ms clock + offset."""
    c = new_conn(config=TS, ts_offset=1000)
    c.connect(5 * SEC)
    (syn,) = c.segments_to_send(5 * SEC)
    assert (syn.tsval, syn.tsecr) == (5000 + 1000, 0)
    c2 = new_conn(config=NO_TS)
    c2.connect(5 * SEC)
    (syn2,) = c2.segments_to_send(5 * SEC)
    assert syn2.tsval is None and syn2.tsecr is None


def test_syn_ack_has_timestamps_only_if_syn_had_them() -> None:
    """RFC 7323 §3.2: TS are used only if both SYNs carry the option (tcp_openreq_init())."""
    both = accepted(config=TS, tsval=77, tsecr=0)
    (synack,) = both.segments_to_send(0)
    assert both.ts_enabled and synack.tsval is not None and synack.tsecr == 77
    for c in (accepted(config=TS), accepted(config=NO_TS, tsval=77, tsecr=0)):
        (synack,) = c.segments_to_send(0)
        assert not c.ts_enabled and synack.tsval is None


def test_retransmitted_syn_in_syn_received_resends_syn_ack() -> None:
    """K tcp_check_req(): a retransmitted SYN gets the SYN-ACK again (inet_rtx_syn_ack())."""
    c = conn_in(S.SYN_RECEIVED)
    send(c, from_peer(c, seq=R, ack=0, flags=F.SYN), t=1 * MS)
    expect_sent(c, [to_peer(c, seq=L, flags=F.SYN | F.ACK)])
    assert c.state is S.SYN_RECEIVED and c.counters[C.RETRANS_SEGS] == 1


def test_simultaneous_open_establishes_both_through_syn_received() -> None:
    """RFC 9293 §3.5 Fig. 8: crossing SYNs -> SYN-RECEIVED -> ESTABLISHED on both ends."""
    a = new_conn(iss=L)
    b = new_conn(iss=R, tuple=CLIENT.reversed())
    a.connect(0)
    b.connect(0)
    Pair(a, b).deliver(0)
    for c in (a, b):
        assert states(c) == [
            (S.CLOSED, S.SYN_SENT),
            (S.SYN_SENT, S.SYN_RECEIVED),
            (S.SYN_RECEIVED, S.ESTABLISHED),
        ]


# -- data ------------------------------------------------------------------------------------


def test_data_is_split_into_mss_segments_psh_on_the_last() -> None:
    """Application writes leave in segments of at most MSS bytes (K tcp_write_xmit()); the last
    segment of the write carries PSH (tcp_push() tcp_mark_push(); probe est-push-every-write)."""
    c = conn_in(S.ESTABLISHED)
    c.send(b"x" * 3000, 0)
    expect_sent(
        c,
        [
            to_peer(c, seq=L + 1, payload=b"x" * 1460),
            to_peer(c, seq=L + 1461, payload=b"x" * 1460),
            to_peer(c, seq=L + 2921, payload=b"x" * 80, flags=F.PSH | F.ACK),
        ],
    )
    send(c, from_peer(c, ack=L + 3001))
    assert c.snd_una == c.snd_nxt == L + 3001 and c.next_deadline() is None


def test_peer_window_limits_bytes_in_flight() -> None:
    """RFC 9293 §3.8.6: never send beyond SND.UNA + SND.WND; a segment leaves only if it fits
    (K tcp_snd_wnd_test()), except what fits when nothing is in flight (the model's stand-in
    for the persist timer)."""
    c = conn_in(S.ESTABLISHED)
    send(c, from_peer(c, window=2000))
    c.send(b"y" * 3500, 0)
    expect_sent(c, [to_peer(c, seq=L + 1, payload=b"y" * 1460)])  # 1460 more would not fit
    send(c, from_peer(c, ack=L + 1461, window=2000))
    expect_sent(c, [to_peer(c, seq=L + 1461, payload=b"y" * 1460)])
    send(c, from_peer(c, ack=L + 2921, window=100))
    expect_sent(c, [to_peer(c, seq=L + 2921, payload=b"y" * 100)])


def test_segments_are_cut_to_half_a_small_peer_window() -> None:
    """K tcp_bound_to_half_wnd(): with a largest window of 1000 bytes (> TCP_MSS_DEFAULT) the
    MSS becomes 500, and forced_push() marks PSH every half window (probe
    est-peer-window-limits)."""
    c = new_conn()
    c.accept_syn(peer_syn(), 0)
    c.receive(from_peer(c, window=1000), 0)
    c.segments_to_send(0)
    c.send(b"z" * 1500, 0)
    expect_sent(c, [
        to_peer(c, seq=L + 1, payload=b"z" * 500),
        to_peer(c, seq=L + 501, payload=b"z" * 500, flags=F.PSH | F.ACK),
    ])  # fmt: skip
    send(c, from_peer(c, ack=L + 1001, window=1000), t=10 * MS)
    expect_sent(c, [to_peer(c, seq=L + 1001, payload=b"z" * 500, flags=F.PSH | F.ACK)])


def test_in_order_data_is_delivered_and_acked() -> None:
    """RFC 9293 §3.10.7.4 seventh: in-order text is delivered and acknowledged."""
    c = conn_in(S.ESTABLISHED)
    send(c, from_peer(c, payload=b"hello"))
    expect_sent(c, [to_peer(c, ack=R + 6)])
    assert events(c) == [DataReceived]
    assert c.read() == b"hello" and c.read() == b""


def test_out_of_order_segment_is_queued_until_the_hole_fills() -> None:
    """K tcp_data_queue_ofo(): a segment beyond RCV.NXT is kept and RCV.NXT re-ACKed at once
    (no SACK); when the hole fills both are delivered and ACKed (tcp_ofo_queue(), RFC 5681
    4.2; probe est-out-of-order-queued)."""
    c = conn_in(S.ESTABLISHED)
    send(c, from_peer(c, seq=R + 11, payload=b"later"))
    expect_sent(c, [to_peer(c, ack=R + 1)])
    assert c.read() == b"" and c.rcv_nxt == R + 1
    send(c, from_peer(c, seq=R + 1, payload=b"0123456789"))
    expect_sent(c, [to_peer(c, ack=R + 16)])
    assert c.read() == b"0123456789later"


def test_retransmission_collapses_small_writes_into_one_segment() -> None:
    """K tcp_retrans_try_collapse(): a retransmitted segment with room to spare takes in the
    sk_buffs after it while they fit one MSS; PSH is merged (probe rto-collapse-two-writes)."""
    c = conn_in(S.ESTABLISHED)
    c.send(b"a" * 100, 0)
    c.send(b"b" * 100, 0)
    assert len(c.segments_to_send(0)) == 2
    d = c.next_deadline()
    assert d is not None
    c.on_timer(d)
    expect_sent(c, [to_peer(c, seq=L + 1, payload=b"a" * 100 + b"b" * 100, flags=F.PSH | F.ACK)])


def test_retransmission_carries_a_lost_fin_with_the_data() -> None:
    """K tcp_collapse_retrans(): "Merge over control information. This moves PSH/FIN etc.
    over" -- lost data and the FIN after it come back as one FIN segment (probe
    rto-collapse-data-and-fin)."""
    c = conn_in(S.ESTABLISHED)
    c.send(b"d" * 100, 0)
    c.close(0)
    assert len(c.segments_to_send(0)) == 2
    d = c.next_deadline()
    assert d is not None
    c.on_timer(d)
    (seg,) = c.segments_to_send(d)
    assert seg.flags == F.FIN | F.PSH | F.ACK and seg.seq == L + 1 and len(seg.payload) == 100


def test_retransmission_after_partial_ack_is_a_full_mss_of_the_write() -> None:
    """K __tcp_retransmit_skb(): a write is one sk_buff (GSO cuts it on the way out); after a
    partial ACK it is trimmed at snd_una and cut at the MSS again, so the retransmission
    carries a full MSS, not the rest of the first segment (probe
    rto-after-partial-ack-full-mss)."""
    c = conn_in(S.ESTABLISHED)
    c.send(b"x" * 2000, 0)
    assert [len(s.payload) for s in c.segments_to_send(0)] == [1460, 540]
    send(c, from_peer(c, ack=L + 2))
    d = c.next_deadline()
    assert d is not None
    c.on_timer(d)
    (seg,) = c.segments_to_send(d)
    assert seg.seq == L + 2 and len(seg.payload) == 1460


def test_header_prediction_keeps_data_with_a_too_old_ack() -> None:
    """K tcp_rcv_established() fast path: in-order data is queued before tcp_ack() sees an
    RFC 5961 too-old ACK, so with our data in flight (forward-allocated memory) it stays and
    the challenge ACK acknowledges it; once nothing is in flight or unread the slow path drops
    it (probes est-data-too-old-ack-fast-path-in-flight, -slow-path-after-read)."""
    c = conn_in(S.ESTABLISHED)
    c.send(b"x" * 100, 0)
    c.segments_to_send(0)
    send(c, from_peer(c, ack=seq_add(L, -99_000), payload=b"0123456789"))
    assert c.read() == b"0123456789" and c.counters[C.CHALLENGE_ACK] == 1
    expect_sent(c, [to_peer(c, ack=R + 11)])
    send(c, from_peer(c, ack=L + 101), t=10 * MS)
    send(c, from_peer(c, ack=seq_add(L, -99_000), payload=b"more"), t=600 * MS)
    assert c.read() == b"" and c.counters[C.CHALLENGE_ACK] == 2


def test_header_prediction_stores_ts_recent_before_the_challenge_ack() -> None:
    """K tcp_rcv_established() fast path: tcp_store_ts_recent() before tcp_ack(), so the
    challenge ACK for a too-old pure ACK echoes its TSval; a changed window defeats the
    prediction and the slow path leaves TS.Recent alone (probe
    est-ack-too-old-fast-path-stores-ts)."""
    c = conn_in(S.ESTABLISHED, config=TS)
    send(c, from_peer(c, ack=seq_add(L, -99_000), tsval=102, tsecr=0), t=10 * MS)
    (ack,) = c.segments_to_send(10 * MS)
    assert ack.tsecr == 102
    seg = from_peer(c, ack=seq_add(L, -99_000), tsval=103, tsecr=0, window=65000)
    send(c, seg, t=700 * MS)
    (ack,) = c.segments_to_send(700 * MS)
    assert ack.tsecr == 102 and c.counters[C.CHALLENGE_ACK] == 2


def test_data_after_shutdown_rd_resets_and_reports_econnreset() -> None:
    """K tcp_rcv_state_process(): with RCV_SHUTDOWN new data in FIN_WAIT_1 draws an RST and
    tcp_reset() reports ECONNRESET to the descriptor (probe fw2-data-after-shutdown-rd-resets)."""
    c = conn_in(S.ESTABLISHED)
    c.shutdown_read()
    c.shutdown_write(0)
    c.segments_to_send(0)
    send(c, from_peer(c, payload=b"late"))
    assert c.state is S.CLOSED and ConnectionReset in events(c)
    (rst,) = c.segments_to_send(0)
    assert rst.rst


def test_old_duplicate_data_is_reacked_not_redelivered() -> None:
    """K tcp_data_queue(): a retransmission of delivered data forces an immediate ACK."""
    c = conn_in(S.ESTABLISHED)
    send(c, from_peer(c, payload=b"abc"))
    c.segments_to_send(0)
    c.read()
    send(c, from_peer(c, seq=R + 1, payload=b"abc"))
    expect_sent(c, [to_peer(c, ack=R + 4)])
    assert c.read() == b""


def test_data_retransmitted_on_rto_with_exponential_backoff() -> None:
    """RFC 6298 §5.5: RTO doubles on each expiry (K tcp_retransmit_timer()). The handshake took
    no time, so the RTO is rttvar's floor, TCP_RTO_MIN (probe rto-data-rtt-based)."""
    c = conn_in(S.ESTABLISHED)
    c.send(b"data", 0)
    seg = to_peer(c, seq=L + 1, payload=b"data", flags=F.PSH | F.ACK)
    expect_sent(c, [seg])
    c.on_timer(199 * MS)  # early: harmless
    expect_nothing(c)
    deadlines = []
    for _ in range(4):
        d = c.next_deadline()
        assert d is not None
        deadlines.append(d)
        c.on_timer(d)
        expect_sent(c, [seg], t=d)
    # 200 ms << n, each fired on the timer wheel (timerwheel.mean_fire_delay())
    assert deadlines == list(accumulate(fire(200 * MS << i) for i in range(4)))
    assert deadlines[0] == 202 * MS
    assert c.counters[C.RETRANS_SEGS] == 4
    send(c, from_peer(c), t=4 * SEC)
    assert c.next_deadline() is None
    c.send(b"more", 5 * SEC)
    # Karn: the ACK covered retransmitted data, no RTT sample, so the backed-off RTO stays.
    assert c.next_deadline() == 5 * SEC + fire(3200 * MS)


def test_rto_backoff_is_capped_at_tcp_rto_max() -> None:
    """include/net/tcp.h TCP_RTO_MAX: the backoff never exceeds 120 s."""
    c = conn_in(S.ESTABLISHED)
    c.send(b"d", 0)
    gaps = []
    last = 0
    for _ in range(12):
        d = c.next_deadline()
        assert d is not None
        gaps.append(d - last)
        last = d
        c.on_timer(d)
    want = [200 * MS << i for i in range(10)] + [120 * SEC, 120 * SEC]
    assert gaps == [fire(g) for g in want]


def test_syn_retransmissions_are_linear_then_exponential() -> None:
    """tcp_syn_linear_timeouts=4 (K tcp_retransmit_timer(): no backoff while total_rto <= 4)
    and tcp_syn_retries=6 + 4 retransmissions (tcp_write_timeout()): SYNs at 0, 1, 2, 3, 4, 5,
    7, 11, 19, 35, 67 s, ETIMEDOUT at 131 s (probe rto-syn-linear)."""
    c = conn_in(S.SYN_SENT)
    fired = []
    while c.state is S.SYN_SENT:
        d = c.next_deadline()
        assert d is not None
        c.on_timer(d)
        fired.append(d)
        if c.state is S.SYN_SENT:
            expect_sent(c, [to_peer(c, seq=L, ack=0, flags=F.SYN)], t=d)
    secs = (1, 2, 3, 4, 5, 7, 11, 19, 35, 67, 131)
    rtos = [b - a for a, b in zip((0, *secs), secs, strict=False)]
    assert fired == list(accumulate(fire(r * SEC) for r in rtos))
    assert c.state is S.CLOSED and events(c) == [ConnectionTimedOut, Closed]
    assert c.counters[C.RETRANS_SEGS] == 10 and c.counters[C.ATTEMPT_FAILS] == 1


def test_syn_retries_bound_the_time_spent() -> None:
    """K retransmits_timed_out(): tcp_syn_retries=1 gives a budget of tcp_model_timeout(1, 1 s)
    = 3 s, so connect() fails at 3 s after two retransmissions (probe rto-syn-retries-timeout)."""
    c = conn_in(S.SYN_SENT, config=NO_TS.replace(tcp_syn_retries=1))
    fire_timers(c, 1000 * SEC)
    assert c.counters[C.RETRANS_SEGS] == 2 and c.state is S.CLOSED
    assert events(c) == [ConnectionTimedOut, Closed]


def test_data_retransmissions_give_up_after_tcp_retries2_time_budget() -> None:
    """tcp_retries2=15 is a time budget: tcp_model_timeout(15, TCP_RTO_MIN) = 924.6 s from the
    first send (K retransmits_timed_out()); with a 200 ms RTO that is 15 retransmissions, then
    ETIMEDOUT without an RST (tcp_write_err())."""
    c = conn_in(S.ESTABLISHED)
    c.send(b"lost", 0)
    c.segments_to_send(0)
    last = 0
    while c.state is S.ESTABLISHED:
        d = c.next_deadline()
        assert d is not None
        last = d
        c.on_timer(d)
    # 924.6 s of nominal timeouts, each fired on the timer wheel: 16 firings in all
    assert last == sum(fire(min(200 * MS << i, 120 * SEC)) for i in range(16))
    assert c.counters[C.RETRANS_SEGS] == 15 and c.counters[C.ABORT_ON_TIMEOUT] == 1
    assert c.state is S.CLOSED and events(c) == [ConnectionTimedOut, Closed]
    assert all(not s.rst for s in c.segments_to_send(0))


def test_orphan_retransmissions_get_a_shorter_budget() -> None:
    """K tcp_orphan_retries(): an orphan gets 8 retries' time, tcp_model_timeout(8, 200 ms) =
    102.2 s, then gives up silently."""
    c = conn_in(S.FIN_WAIT_1)
    last = 0
    while c.state is S.FIN_WAIT_1:
        d = c.next_deadline()
        assert d is not None
        last = d
        c.on_timer(d)
    assert last == sum(fire(200 * MS << i) for i in range(9))
    assert c.counters[C.RETRANS_SEGS] == 8


# -- closing ---------------------------------------------------------------------------------


def test_active_close_goes_fin_wait_1_fin_wait_2_time_wait() -> None:
    """ref 1.1 active close: FIN, ACK of FIN, peer FIN -> ACK + tcp_time_wait(TIME_WAIT, 60 s)."""
    c = conn_in(S.ESTABLISHED)
    c.shutdown_write(0)
    expect_sent(c, [to_peer(c, seq=L + 1, flags=F.FIN | F.ACK)])
    send(c, from_peer(c, ack=L + 2))
    assert c.state is S.FIN_WAIT_2 and c.pending_minisock is None
    send(c, from_peer(c, flags=F.FIN | F.ACK), t=2 * SEC)
    assert c.pending_minisock == (S.TIME_WAIT, 60 * SEC)
    expect_sent(c, [to_peer(c, seq=L + 2, ack=R + 2)])
    assert states(c)[2:] == [
        (S.ESTABLISHED, S.FIN_WAIT_1),
        (S.FIN_WAIT_1, S.FIN_WAIT_2),
        (S.FIN_WAIT_2, S.TIME_WAIT),
    ]
    assert c.next_deadline() is None  # handed off: the minisocket owns the timer now


def test_fin_ack_in_fin_wait_1_goes_straight_to_time_wait() -> None:
    """RFC 9293 Fig. 5 note 2 / ref 1.1: FIN+ACK of our FIN in FIN-WAIT-1 -> TIME-WAIT."""
    c = conn_in(S.FIN_WAIT_1)
    send(c, from_peer(c, ack=L + 2, flags=F.FIN | F.ACK))
    assert states(c)[-1] == (S.FIN_WAIT_1, S.TIME_WAIT)
    assert c.pending_minisock == (S.TIME_WAIT, 60 * SEC)
    expect_sent(c, [to_peer(c, seq=L + 2, ack=R + 2)])


def test_passive_close_never_enters_time_wait() -> None:
    """ref 1.1 passive close: CLOSE-WAIT -> LAST-ACK -> CLOSED (tcp_done()), no TIME-WAIT."""
    c = conn_in(S.ESTABLISHED)
    send(c, from_peer(c, flags=F.FIN | F.ACK))
    assert states(c)[-1] == (S.ESTABLISHED, S.CLOSE_WAIT) and events(c) == [PeerClosed]
    c.on_timer(40 * MS)  # the delayed ACK of the FIN (tcp_fin() pingpong mode)
    expect_sent(c, [to_peer(c, ack=R + 2)], t=40 * MS)
    c.close(1 * SEC)
    assert states(c)[-1] == (S.CLOSE_WAIT, S.LAST_ACK)
    expect_sent(c, [to_peer(c, seq=L + 1, flags=F.FIN | F.ACK)])
    send(c, from_peer(c, ack=L + 2), t=2 * SEC)
    assert c.state is S.CLOSED and c.pending_minisock is None and events(c) == [Closed]
    assert S.TIME_WAIT not in {new for _, new in states(c)}


def test_ack_of_bare_fin_before_any_data_leaves_at_the_next_tick() -> None:
    """K tcp_fin() schedules the ACK and enters pingpong mode, but before any data arrived the
    delayed-ACK timeout (icsk_ack.ato) is still 0: tcp_send_delayed_ack() arms the timer for
    the next tick (probe delack-fin-no-data-next-tick)."""
    c = conn_in(S.ESTABLISHED)
    send(c, from_peer(c, flags=F.FIN | F.ACK))
    expect_sent(c, [])
    assert c.next_deadline() == TICK_LATENCY
    c.on_timer(TICK_LATENCY)
    expect_sent(c, [to_peer(c, ack=R + 2)], t=TICK_LATENCY)


def test_ack_of_fin_after_data_is_delayed_40ms() -> None:
    """After data, ato is TCP_ATO_MIN (tcp_event_data_recv()), and CLOSE_WAIT's pingpong mode
    means no quick ACK: the FIN's ACK waits 40 ms (probe delack-fin-after-data-40ms)."""
    c = conn_in(S.ESTABLISHED)
    send(c, from_peer(c, payload=b"hi"))
    expect_sent(c, [to_peer(c, ack=R + 3)])  # the first data: quick ACK
    send(c, from_peer(c, flags=F.FIN | F.ACK), t=100 * MS)
    expect_sent(c, [])
    assert c.next_deadline() == 140 * MS + TICK_LATENCY
    c.on_timer(140 * MS + TICK_LATENCY)
    expect_sent(c, [to_peer(c, ack=R + 4)])
    assert c.counters[C.DELAYED_ACKS] == 1


def test_fin_answered_by_close_piggybacks_the_ack() -> None:
    """A pure ACK still queued is replaced by the FIN that carries the same ACK (delayed ACK)."""
    c = conn_in(S.ESTABLISHED)
    send(c, from_peer(c, flags=F.FIN | F.ACK))
    c.close(0)
    expect_sent(c, [to_peer(c, seq=L + 1, ack=R + 2, flags=F.FIN | F.ACK)])


def test_simultaneous_close_goes_through_closing_to_time_wait_on_both() -> None:
    """ref 1.1 simultaneous close: FIN-WAIT-1 -> CLOSING -> TIME-WAIT at both ends."""
    pair = make_pair()
    pair.run(until=1 * SEC, actions=[(0, 0, "close"), (0, 1, "close")])
    for c in pair.conns:
        assert states(c)[-2:] == [(S.FIN_WAIT_1, S.CLOSING), (S.CLOSING, S.TIME_WAIT)]
        assert c.pending_minisock == (S.TIME_WAIT, 60 * SEC)


def test_rfc9293_profile_time_wait_lasts_two_msl() -> None:
    """RFC 9293 §3.6.1 MUST-13: the rfc9293 profile hands off a 2*MSL = 240 s TIME-WAIT."""
    c = conn_in(S.FIN_WAIT_2, profile=RFC9293)
    send(c, from_peer(c, flags=F.FIN | F.ACK))
    assert c.pending_minisock == (S.TIME_WAIT, 240 * SEC)


def test_orphaned_fin_wait_2_hands_off_for_tcp_fin_timeout() -> None:
    """ref 2.2: an orphan reaching FIN_WAIT_2 becomes a FIN_WAIT2 minisocket for tcp_fin_time()."""
    c = conn_in(S.FIN_WAIT_1, config=NO_TS.replace(tcp_fin_timeout=5))
    send(c, from_peer(c, ack=L + 2), t=1 * SEC)
    assert c.state is S.FIN_WAIT_2 and c.pending_minisock == (S.FIN_WAIT_2, 5 * SEC)
    expect_nothing(c)


def test_fin_wait_2_timeout_is_at_least_3_5_rto() -> None:
    """K tcp_fin_time() and tcp_time_wait(): the FIN_WAIT2 wait is never below 3.5 x RTO, the
    RTO of a 300 ms handshake being 900 ms (probe fw2-floor-3-5-rto)."""
    c = new_conn()
    c.accept_syn(peer_syn(), 0)
    send(c, from_peer(c), t=300 * MS)
    c.close(300 * MS)
    c.linger2 = 1 * SEC
    send(c, from_peer(c, ack=L + 2), t=600 * MS)
    assert c.pending_minisock == (S.FIN_WAIT_2, 3150 * MS)


def test_fin_timeout_above_60s_splits_full_socket_and_minisocket() -> None:
    """ref 2.2 / Lab E15: fin_timeout=70 -> 10 s as a full socket, then a 10 s minisocket."""
    c = conn_in(S.FIN_WAIT_1, config=NO_TS.replace(tcp_fin_timeout=70))
    send(c, from_peer(c, ack=L + 2), t=1 * SEC)
    assert c.state is S.FIN_WAIT_2 and c.pending_minisock is None
    assert c.next_deadline() == 11 * SEC
    c.on_timer(11 * SEC)
    assert c.pending_minisock == (S.FIN_WAIT_2, 10 * SEC)
    expect_nothing(c)


def test_fin_wait_2_keepalive_with_nothing_left_resets() -> None:
    """K tcp_keepalive_timer(): if tcp_fin_time() - 60 s is not positive, RST and destroy."""
    c = conn_in(S.FIN_WAIT_1, config=NO_TS.replace(tcp_fin_timeout=70))
    send(c, from_peer(c, ack=L + 2))
    c.linger2 = 30 * SEC
    c.on_timer(10 * SEC)
    assert c.state is S.CLOSED and c.pending_minisock is None
    expect_sent(c, [to_peer(c, flags=F.RST | F.ACK)])


def test_peer_fin_while_full_socket_fin_wait_2_still_gives_time_wait() -> None:
    """K tcp_fin(): a FIN during the >60 s full-socket phase -> ACK + 60 s TIME_WAIT."""
    c = conn_in(S.FIN_WAIT_1, config=NO_TS.replace(tcp_fin_timeout=90))
    send(c, from_peer(c, ack=L + 2))
    send(c, from_peer(c, flags=F.FIN | F.ACK), t=5 * SEC)
    assert c.pending_minisock == (S.TIME_WAIT, 60 * SEC)


def test_shutdown_write_fin_wait_2_has_no_timeout() -> None:
    """ref 2.2: a FIN_WAIT_2 socket still held by the application never times out."""
    c = conn_in(S.FIN_WAIT_2)
    assert c.next_deadline() is None
    c.on_timer(3600 * SEC)
    assert c.state is S.FIN_WAIT_2 and c.pending_minisock is None


def test_half_closed_socket_still_receives_data() -> None:
    """RFC 9293 §3.6: after shutdown(SHUT_WR) the other direction keeps flowing."""
    c = conn_in(S.FIN_WAIT_2)
    send(c, from_peer(c, payload=b"reply"))
    assert c.read() == b"reply" and c.state is S.FIN_WAIT_2


def test_linger2_negative_resets_orphan_when_fin_is_acked() -> None:
    """K tcp_rcv_state_process() FIN_WAIT1: TCP_LINGER2 < 0 -> tcp_done(), RST, TCPAbortOnData."""
    c = conn_in(S.FIN_WAIT_1)
    c.linger2 = -1
    ack = from_peer(c, ack=L + 2)
    send(c, ack)
    assert states(c)[-2:] == [(S.FIN_WAIT_1, S.FIN_WAIT_2), (S.FIN_WAIT_2, S.CLOSED)]
    expect_sent(c, [to_peer(c, seq=L + 2, ack=0, flags=F.RST, window=0)])
    assert c.counters[C.ABORT_ON_DATA] == 1 and c.pending_minisock is None


def test_linger2_negative_close_in_fin_wait_2_resets() -> None:
    """K tcp.c __tcp_close(): close() in FIN_WAIT_2, TCP_LINGER2 < 0 -> RST, TCPAbortOnLinger."""
    c = conn_in(S.FIN_WAIT_2)
    c.linger2 = -1
    c.close(0)
    assert c.state is S.CLOSED
    expect_sent(c, [to_peer(c, flags=F.RST | F.ACK)])
    assert c.counters[C.ABORT_ON_LINGER] == 1


def test_close_after_shutdown_in_fin_wait_2_hands_off() -> None:
    """K tcp.c __tcp_close(): closing a FIN_WAIT_2 socket makes it an orphan: minisocket."""
    c = conn_in(S.FIN_WAIT_2)
    c.close(0)
    assert c.orphaned and c.pending_minisock == (S.FIN_WAIT_2, 60 * SEC)


def test_data_after_close_is_answered_with_rst() -> None:
    """RFC 9293 §3.6.1 SHLD-3; K tcp_rcv_state_process() step 7: data to an orphan -> RST."""
    c = conn_in(S.FIN_WAIT_1)
    send(c, from_peer(c, ack=L + 1, payload=b"late"))
    assert c.state is S.CLOSED and c.counters[C.ABORT_ON_DATA] == 1
    expect_sent(c, [to_peer(c, seq=L + 1, ack=0, flags=F.RST, window=0)])


# -- aborts ----------------------------------------------------------------------------------


def test_linger_zero_close_sends_rst_and_no_fin() -> None:
    """ref 8 / Lab E8: SO_LINGER {1,0} close() -> tcp_disconnect(): RST, CLOSED, no TIME_WAIT."""
    c = conn_in(S.ESTABLISHED)
    c.linger_zero = True
    c.close(0)
    assert c.state is S.CLOSED and c.pending_minisock is None
    expect_sent(c, [to_peer(c, flags=F.RST | F.ACK)])
    assert c.counters[C.OUT_RSTS] == 1 and c.counters[C.ABORT_ON_DATA] == 1
    assert events(c) == [Closed]


def test_close_with_unread_data_sends_rst() -> None:
    """ref 8 / Lab E8b, K __tcp_close(): unread received data at close() -> RST, TCPAbortOnClose."""
    c = conn_in(S.ESTABLISHED)
    send(c, from_peer(c, payload=b"unread"))
    c.segments_to_send(0)
    c.close(0)
    assert c.state is S.CLOSED
    expect_sent(c, [to_peer(c, flags=F.RST | F.ACK)])
    assert c.counters[C.ABORT_ON_CLOSE] == 1


def test_abort_sends_rst_only_in_need_reset_states() -> None:
    """K tcp.c tcp_disconnect()/tcp_need_reset(): RST from ESTABLISHED, nothing from SYN_SENT."""
    est = conn_in(S.ESTABLISHED)
    est.abort(0)
    expect_sent(est, [to_peer(est, flags=F.RST | F.ACK)])
    syn = conn_in(S.SYN_SENT)
    syn.abort(0)
    assert syn.state is S.CLOSED
    expect_nothing(syn)


# -- resets and RFC 5961 ---------------------------------------------------------------------


def test_rst_with_exact_sequence_resets() -> None:
    """RFC 5961 §3.2: RST with SEQ == RCV.NXT resets the connection (ECONNRESET)."""
    c = conn_in(S.ESTABLISHED)
    send(c, from_peer(c, flags=F.RST))
    assert c.state is S.CLOSED and events(c) == [ConnectionReset, Closed]
    assert c.counters[C.ESTAB_RESETS] == 1
    expect_nothing(c)


def test_rst_in_window_gets_challenge_ack() -> None:
    """RFC 5961 §3.2: an in-window RST not at RCV.NXT gets a challenge ACK and changes nothing."""
    c = conn_in(S.ESTABLISHED)
    send(c, from_peer(c, seq=R + 101, flags=F.RST))
    assert c.state is S.ESTABLISHED and c.counters[C.CHALLENGE_ACK] == 1
    expect_sent(c, [to_peer(c)])


def test_rst_outside_window_is_dropped_silently() -> None:
    """RFC 9293 §3.10.7.4 first: an RST outside the window is dropped without reply."""
    c = conn_in(S.ESTABLISHED)
    for seq in (R, R + 1 + 70_000):
        send(c, from_peer(c, seq=seq, flags=F.RST))
    assert c.state is S.ESTABLISHED
    expect_nothing(c)


def test_rst_at_rcv_nxt_minus_one_resets_after_peer_fin() -> None:
    """K tcp_reset_check(): after the peer's FIN, an RST at RCV.NXT-1 is exact too."""
    c = conn_in(S.CLOSE_WAIT)
    send(c, from_peer(c, seq=R + 1, flags=F.RST))
    assert c.state is S.CLOSED


def test_rst_acking_our_syn_is_connection_refused() -> None:
    """RFC 9293 §3.10.7.3: in SYN-SENT an RST whose ACK acknowledges the SYN -> ECONNREFUSED."""
    c = conn_in(S.SYN_SENT)
    send(c, from_peer(c, seq=0, ack=L + 1, flags=F.RST | F.ACK))
    assert c.state is S.CLOSED and events(c) == [ConnectionRefused, Closed]
    expect_nothing(c)


def test_syn_sent_unacceptable_ack_gets_rst_and_fast_syn_retransmit() -> None:
    """ref 1.6, K tcp_rcv_synsent_state_process(): RST SEQ=SEG.ACK; SYN again after 8 ms."""
    c = conn_in(S.SYN_SENT)
    send(c, from_peer(c, seq=R, ack=12345), t=100 * MS)
    assert c.state is S.SYN_SENT
    expect_sent(c, [to_peer(c, seq=12345, ack=0, flags=F.RST, window=0)])
    assert c.next_deadline() == 100 * MS + TCP_TIMEOUT_MIN == 108 * MS
    c.on_timer(108 * MS)
    expect_sent(c, [to_peer(c, seq=L, ack=0, flags=F.SYN)])
    assert c.next_deadline() == 108 * MS + fire(1 * SEC)  # linear: the RTO stays 1 s
    # Once retransmitted, another unacceptable ACK does not pull the timer in again.
    send(c, from_peer(c, seq=R, ack=12345), t=200 * MS)
    assert c.next_deadline() == 108 * MS + fire(1 * SEC)


def test_syn_in_established_gets_challenge_ack() -> None:
    """RFC 5961 §4 / RFC 9293 §3.10.7.4 fourth: a SYN in a synchronized state -> challenge ACK."""
    c = conn_in(S.ESTABLISHED)
    send(c, from_peer(c, seq=R + 500, ack=0, flags=F.SYN))
    assert c.state is S.ESTABLISHED and c.counters["TCPSYNChallenge"] == 1
    expect_sent(c, [to_peer(c)])


def test_ack_of_unsent_data_gets_challenge_ack() -> None:
    """RFC 5961 §5.2, K tcp_ack(): an ACK beyond SND.NXT is dropped with a challenge ACK."""
    c = conn_in(S.ESTABLISHED)
    send(c, from_peer(c, ack=L + 5000, payload=b"x"))
    assert c.read() == b""
    expect_sent(c, [to_peer(c)])


def test_ack_below_what_we_could_have_sent_gets_challenge_ack() -> None:
    """RFC 5961 §5.2, K tcp_ack() SKB_DROP_REASON_TCP_TOO_OLD_ACK: an ACK further below SND.UNA
    than the bytes acknowledged so far (max_window bounded by bytes_acked) gets a challenge ACK
    and TCPChallengeACK (probe est-ack-too-old-challenge)."""
    c = conn_in(S.ESTABLISHED)
    c.send(b"x" * 100, 0)
    c.segments_to_send(0)
    send(c, from_peer(c))
    assert c.snd_una == seq_add(L, 101)
    send(c, from_peer(c, ack=seq_add(L, -66_000)), t=10 * MS)
    assert c.counters[C.CHALLENGE_ACK] == 1
    expect_sent(c, [to_peer(c)])
    send(c, from_peer(c, ack=seq_add(L, 1)), t=20 * MS)  # old but within bytes acked: fine
    assert c.counters[C.CHALLENGE_ACK] == 1


def test_in_order_data_with_a_too_old_ack_is_dropped() -> None:
    """K tcp_ack() returns -SKB_DROP_REASON_TCP_TOO_OLD_ACK and tcp_rcv_established() drops the
    segment: its data is not queued (probe est-data-too-old-ack-dropped)."""
    c = conn_in(S.ESTABLISHED)
    c.send(b"x" * 100, 0)
    c.segments_to_send(0)
    send(c, from_peer(c))
    send(c, from_peer(c, ack=seq_add(L, -66_000), payload=b"data"), t=10 * MS)
    assert c.read() == b"" and c.rcv_nxt == R + 1
    expect_sent(c, [to_peer(c)])


def test_paws_rejected_old_pure_ack_is_dropped_silently() -> None:
    """K tcp_validate_incoming() -> tcp_disordered_ack_check(): a PAWS-failing pure ACK whose
    seq is below RCV.NXT is dropped without a duplicate ACK, counted in PAWSOldAck (probe
    est-paws-old-pure-ack-silent)."""
    c = conn_in(S.ESTABLISHED, config=TS)
    send(c, from_peer(c, payload=b"0123456789", tsval=200, tsecr=0), t=10 * MS)
    c.segments_to_send(60 * MS)
    send(c, from_peer(c, seq=R, tsval=150, tsecr=0), t=70 * MS)
    assert c.counters[C.PAWS_OLD_ACK] == 1 and c.counters[C.PAWS_ESTAB] == 0
    expect_nothing(c, 70 * MS)


def test_synack_with_a_tsecr_we_never_sent_gets_rst() -> None:
    """K tcp_rcv_synsent_state_process(): TSecr not between our first SYN's stamp and now ->
    RST (SEQ = SEG.ACK), PAWSActive, still SYN_SENT (probe synsent-synack-bad-tsecr)."""
    c = conn_in(S.SYN_SENT, config=TS)
    synack = from_peer(c, seq=R, ack=seq_add(L, 1), flags=F.SYN | F.ACK, tsval=700)
    send(c, replace(synack, tsecr=(c.ts_offset + 100_000) & 0xFFFFFFFF), t=10 * MS)
    assert c.state is S.SYN_SENT and c.counters[C.PAWS_ACTIVE] == 1
    (rst,) = c.segments_to_send(10 * MS)
    assert rst.flags == F.RST and rst.seq == seq_add(L, 1)


def test_out_of_window_acks_are_rate_limited() -> None:
    """K tcp_oow_rate_limited(): one dup ACK per tcp_invalid_ratelimit (500 ms) for pure ACKs."""
    c = conn_in(S.ESTABLISHED)
    old = from_peer(c, seq=R - 10)
    send(c, old, t=1 * SEC)
    send(c, old, t=1 * SEC + 100 * MS)
    assert len(c.segments_to_send(0)) == 1 and c.counters["TCPACKSkippedSeq"] == 1
    send(c, old, t=1 * SEC + 600 * MS)
    assert len(c.segments_to_send(0)) == 1


# -- timestamps ------------------------------------------------------------------------------


def test_every_segment_carries_tsval_and_echoes_ts_recent() -> None:
    """RFC 7323 §3.2/§4.3: TSval = clock + offset on every segment, TSecr = TS.Recent."""
    c = conn_in(S.ESTABLISHED, config=TS, ts_offset=50)
    c.send(b"x", 3 * SEC)
    (seg,) = c.segments_to_send(3 * SEC)
    assert (seg.tsval, seg.tsecr) == (3000 + 50, 7)


def test_paws_drops_segment_with_old_tsval() -> None:
    """RFC 7323 §5.3: TSval older than TS.Recent -> drop, dup ACK, PAWSEstab."""
    c = conn_in(S.ESTABLISHED, config=TS)
    send(c, from_peer(c, payload=b"new", tsval=1000, tsecr=0), t=1 * SEC)
    c.segments_to_send(0)
    assert c.ts_recent == 1000 and c.ts_recent_stamp == 1 * SEC
    send(c, from_peer(c, payload=b"old", tsval=500, tsecr=0), t=2 * SEC)
    assert c.read() == b"new" and c.counters[C.PAWS_ESTAB] == 1
    (dup,) = c.segments_to_send(0)
    assert dup.ack == R + 4 and dup.tsecr == 1000 and not dup.payload


def test_paws_rejects_nothing_without_timestamps() -> None:
    """RFC 7323 §5.3 applies only when timestamps were negotiated."""
    c = conn_in(S.ESTABLISHED)
    send(c, from_peer(c, payload=b"ok", tsval=1, tsecr=0))
    assert c.read() == b"ok" and c.counters[C.PAWS_ESTAB] == 0


def test_ts_offset_is_stable_across_incarnations_of_a_tuple() -> None:
    """ref 3.1, RFC 7323 §5.8: same four-tuple, same offset, so TSvals keep increasing."""
    clocks = HostClocks.from_rng(random.Random(7))
    first = new_conn(config=TS, ts_offset=clocks.ts_offset(CLIENT, 1))
    first.connect(10 * SEC)
    second = new_conn(config=TS, ts_offset=clocks.ts_offset(CLIENT, 1), iss=L + 70_000)
    second.connect(11 * SEC)
    (syn1,) = first.segments_to_send(0)
    (syn2,) = second.segments_to_send(0)
    assert syn1.tsval is not None and syn2.tsval is not None
    assert seq_add(syn2.tsval, -syn1.tsval) == 1000
    assert clocks.ts_offset(CLIENT.reversed(), 1) != clocks.ts_offset(CLIENT, 1)


def test_takeover_seeds_ts_recent_into_the_syn() -> None:
    """ref 1.5/3, K tcp_twsk_unique(), tcp_syn_options(): the SYN echoes the inherited ts_recent."""
    c = new_conn(config=TS, ts_recent=4242, ts_recent_stamp=5 * SEC)
    c.connect(6 * SEC)
    (syn,) = c.segments_to_send(0)
    assert syn.tsecr == 4242


# -- sequence space --------------------------------------------------------------------------


def test_sequence_numbers_wrap_around_2_32() -> None:
    """RFC 9293 §3.4: all arithmetic is modulo 2**32; a connection across the wrap still works."""
    pair = make_pair(a_iss=2**32 - 10, b_iss=2**32 - 3)
    a, b = pair.conns
    a.send(bytes(range(256)) * 12, 0)
    b.send(b"z" * 2000, 0)
    pair.run(until=5 * SEC, actions=[(1 * SEC, 0, "close"), (2 * SEC, 1, "close")])
    assert pair.received == [b"z" * 2000, bytes(range(256)) * 12]
    assert a.snd_nxt == (2**32 - 10 + 1 + 3072 + 1) % 2**32 < 5000
    # a closed first: orphan FIN_WAIT2 minisocket, which b's FIN turned into TIME_WAIT.
    assert a.pending_minisock == (S.FIN_WAIT_2, 60 * SEC) and b.state is S.CLOSED
    assert pair.entered_time_wait == [True, False]


# -- the table itself ------------------------------------------------------------------------


def test_missing_row_raises_illegal_transition_and_keeps_state() -> None:
    """A (state, input) pair without a row raises IllegalTransition (EISCONN / EPIPE)."""
    c = conn_in(S.ESTABLISHED)
    with pytest.raises(IllegalTransition):
        c.connect(0)
    c.shutdown_write(0)
    with pytest.raises(IllegalTransition):
        c.send(b"after shutdown", 0)
    assert c.state is S.FIN_WAIT_1


def test_transition_table_rows_feed_the_docs() -> None:
    """transition_table_rows() lists every row in RFC spellings with its source."""
    rows = transition_table_rows()
    assert len(rows) == len(TRANSITIONS)
    fin_wait_2 = [r for r in rows if r[:3] == ("FIN-WAIT-2", "rcv FIN", "TIME-WAIT")]
    assert len(fin_wait_2) == 1 and "tcp_fin()" in fin_wait_2[0][3]


def _until_closed(c: Connection) -> None:
    fire_timers(c, 100_000 * SEC)


def _orphan_data(c: Connection) -> None:
    send(c, from_peer(c, ack=L + 1, payload=b"late"))


def _linger2_close(c: Connection) -> None:
    c.linger2 = -1
    c.close(0)


def _with_data_in_flight(c: Connection) -> None:
    c.send(b"x", 0)
    _until_closed(c)


def _fin(c: Connection) -> None:
    send(c, from_peer(c, flags=F.FIN | F.ACK))


def _rst(c: Connection) -> None:
    send(c, from_peer(c, flags=F.RST))


def _ack(c: Connection) -> None:
    send(c, from_peer(c))


def _peer(**changes: Any) -> Callable[[Connection], None]:
    return lambda c: send(c, from_peer(c, **changes))


# How each row is reached: (state to build, shutdown instead of close?, input).
Driver = Callable[[Connection], None]
_ROW_DRIVERS: dict[tuple[TcpState, Input], tuple[bool, Driver]] = {
    (S.CLOSED, Input.APP_CONNECT): (False, lambda c: c.connect(0)),
    (S.SYN_SENT, Input.RCV_SYN_ACK): (False, _peer(seq=R, flags=F.SYN | F.ACK)),
    (S.SYN_SENT, Input.RCV_SYN): (False, _peer(seq=R, ack=0, flags=F.SYN)),
    (S.SYN_SENT, Input.RCV_RST): (False, _peer(seq=0, flags=F.RST | F.ACK)),
    (S.SYN_RECEIVED, Input.RCV_ACK_OF_SYN): (False, _ack),
    (S.SYN_RECEIVED, Input.RCV_RST): (False, _rst),
    (S.ESTABLISHED, Input.RCV_FIN): (False, _fin),
    (S.FIN_WAIT_1, Input.RCV_ACK_OF_FIN): (True, _ack),
    (S.FIN_WAIT_1, Input.RCV_FIN): (False, _peer(ack=L + 1, flags=F.FIN | F.ACK)),
    (S.FIN_WAIT_1, Input.RCV_FIN_ACK_OF_FIN): (False, _fin),
    (S.FIN_WAIT_2, Input.RCV_FIN): (True, _fin),
    (S.CLOSING, Input.RCV_ACK_OF_FIN): (False, _ack),
    (S.LAST_ACK, Input.RCV_ACK_OF_FIN): (False, _ack),
    (S.FIN_WAIT_1, Input.ORPHAN_ABORT): (False, _orphan_data),
    (S.FIN_WAIT_2, Input.ORPHAN_ABORT): (True, _linger2_close),
    (S.ESTABLISHED, Input.TIMEOUT): (False, _with_data_in_flight),
    (S.CLOSE_WAIT, Input.TIMEOUT): (False, _with_data_in_flight),
}
for _s in (S.SYN_SENT, S.SYN_RECEIVED, S.ESTABLISHED, S.CLOSE_WAIT):
    _ROW_DRIVERS[(_s, Input.APP_SEND)] = (False, lambda c: c.send(b"x", 0))
for _s in (S.SYN_SENT, S.SYN_RECEIVED, S.ESTABLISHED, S.CLOSE_WAIT, S.CLOSED):
    _ROW_DRIVERS[(_s, Input.APP_CLOSE)] = (False, lambda c: c.close(0))
for _s in (S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSING, S.LAST_ACK):
    _ROW_DRIVERS[(_s, Input.APP_CLOSE)] = (True, lambda c: c.close(0))
for _s in (S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSE_WAIT, S.CLOSING, S.LAST_ACK):
    _ROW_DRIVERS[(_s, Input.RCV_RST)] = (_s is S.FIN_WAIT_2, _rst)
for _s in (S.SYN_SENT, S.SYN_RECEIVED, S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2):
    _ROW_DRIVERS[(_s, Input.APP_ABORT)] = (_s is S.FIN_WAIT_2, lambda c: c.abort(0))
for _s in (S.CLOSE_WAIT, S.CLOSING, S.LAST_ACK):
    _ROW_DRIVERS[(_s, Input.APP_ABORT)] = (False, lambda c: c.abort(0))
for _s in (S.SYN_SENT, S.SYN_RECEIVED, S.FIN_WAIT_1, S.CLOSING, S.LAST_ACK):
    _ROW_DRIVERS[(_s, Input.TIMEOUT)] = (False, _until_closed)


@contextlib.contextmanager
def _without_row(row: tuple[TcpState, Input]) -> Iterator[None]:
    """TRANSITIONS without `row`, restored afterwards in its order (the docs are drawn from it)."""
    saved = dict(TRANSITIONS)
    del TRANSITIONS[row]
    try:
        yield
    finally:
        TRANSITIONS.clear()
        TRANSITIONS.update(saved)


@pytest.mark.parametrize(
    "row",
    [k for k in TRANSITIONS if k[0] is not S.LISTEN],
    ids=lambda k: f"{k[0].name}-{k[1].name}",
)
def test_every_transition_row_is_reachable(row: tuple[TcpState, Input]) -> None:
    """STYLE.md 1: each row of TRANSITIONS is exercised by a real exchange and lands as listed:
    the exchange looks the row up (without it, the same exchange raises IllegalTransition)."""
    state, _inp = row
    shutdown, drive = _ROW_DRIVERS[row]

    def build() -> Any:
        return conn_in(state, orphan=not shutdown) if state is not S.CLOSED else new_conn()

    c = build()
    drive(c)
    expected = TRANSITIONS[row][0]
    assert c.state is expected or (state, expected) in states(c)
    c = build()
    with _without_row(row), pytest.raises(IllegalTransition):
        drive(c)


def test_listen_row_is_reached_by_accept_syn() -> None:
    """The (LISTEN, rcv SYN) row: Connection.accept_syn() records the passive open."""
    c = accepted()
    assert c.state is S.SYN_RECEIVED and states(c) == [(S.LISTEN, S.SYN_RECEIVED)]
    with _without_row((S.LISTEN, Input.RCV_SYN)), pytest.raises(IllegalTransition):
        accepted()


def test_every_row_has_a_driver() -> None:
    """Adding a row to TRANSITIONS without a way to reach it fails here."""
    missing = set(TRANSITIONS) - set(_ROW_DRIVERS) - {(S.LISTEN, Input.RCV_SYN)}
    assert not missing


# -- property: who ends up in TIME_WAIT ------------------------------------------------------

_CLOSE_AT = st.sampled_from([0, 1 * MS, 500 * MS, 1500 * MS])


@settings(max_examples=200, deadline=None)
@given(
    ta=_CLOSE_AT,
    tb=_CLOSE_AT,
    drops=st.frozensets(st.integers(0, 15), max_size=3),
    da=st.integers(0, 4000),
    db=st.integers(0, 4000),
)
def test_only_the_active_closer_reaches_time_wait(
    ta: int, tb: int, drops: frozenset[int], da: int, db: int
) -> None:
    """ref 1.1: TIME-WAIT is entered only by a side whose close() came before the peer's FIN."""
    pair = make_pair(drop=lambda i, _seg: i in drops)
    a, b = pair.conns
    a.send(b"a" * da, 0)
    b.send(b"b" * db, 0)
    pair.run(until=600 * SEC, actions=[(ta, 0, "close"), (tb, 1, "close")])
    active = [pair.closed_from[i] is S.ESTABLISHED for i in (0, 1)]
    for i in (0, 1):
        if pair.entered_time_wait[i]:
            assert active[i], (i, pair.closed_from, pair.conns[i].history)
    if not any(seg.rst for _, _, seg, _ in pair.log):
        # Without resets the close completes: exactly the active closers wait, nothing is left.
        assert pair.entered_time_wait == active
        assert not pair.alive(0) and not pair.alive(1)
        assert pair.received == [b"b" * db, b"a" * da]


def test_two_connections_with_the_same_config_are_independent() -> None:
    """Counters and state are per Connection unless the host shares them."""
    a, b = conn_in(S.ESTABLISHED), conn_in(S.ESTABLISHED)
    a.abort(0)
    assert b.state is S.ESTABLISHED and b.counters[C.OUT_RSTS] == 0


def test_segment_templates_match_what_the_connection_sends() -> None:
    """Helper sanity: to_peer() is byte-for-byte the ACK a connection sends."""
    c = conn_in(S.ESTABLISHED)
    send(c, from_peer(c, payload=b"q"))
    (ack,) = c.segments_to_send(0)
    assert ack == Segment(
        src=CLIENT.laddr,
        sport=CLIENT.lport,
        dst=CLIENT.raddr,
        dport=CLIENT.rport,
        seq=L + 1,
        ack=R + 2,
        flags=F.ACK,
    )
