"""When Linux acknowledges, one rule per test (K __tcp_ack_snd_check(), tcp_send_delayed_ack(),
tcp_event_data_recv(), tcp_event_ack_sent(), tcp_delack_timer_handler(), __tcp_cleanup_rbuf()).
Each rule is also a probe script run against the kernel (names in the docstrings)."""

from __future__ import annotations

from timewait.model.delack import (
    ACK_PUSHED,
    DELACK_MAX,
    TCP_ATO_MIN,
    TCP_MAX_QUICKACKS,
    TICK_LATENCY,
    DelayedAck,
)
from timewait.model.rtt import TCP_RTO_MIN
from timewait.units import MS

WND = 65535
MSS = 1460


def receiving(quick_used: bool = True) -> DelayedAck:
    """An engine that has received its first data (ato 40 ms) and, by default, used up its
    quick ACKs."""
    d = DelayedAck()
    d.init_rcv_mss(MSS, WND)
    d.data_received(0, 100, True, False, MSS, TCP_RTO_MIN, WND)
    if quick_used:
        d.quick = 0
    return d


def test_tcp_initialize_rcv_mss_guesses_at_most_536() -> None:
    """K tcp_initialize_rcv_mss(): min(advmss, rcv_wnd / 2, TCP_MSS_DEFAULT)."""
    d = DelayedAck()
    d.init_rcv_mss(1460, 65535)
    assert d.rcv_mss == 536
    d.init_rcv_mss(1460, 400)
    assert d.rcv_mss == 200


def test_first_data_starts_quickack_and_ato_40ms() -> None:
    """K tcp_event_data_recv(): the first data sets ato = TCP_ATO_MIN and tcp_incr_quickack()
    allows min(rcv_wnd / (2 rcv_mss), 16) quick ACKs (probe delack-first-data-quickack)."""
    d = DelayedAck()
    d.init_rcv_mss(MSS, WND)
    d.data_received(0, 100, True, False, MSS, TCP_RTO_MIN, WND)
    assert d.ato == TCP_ATO_MIN
    assert d.quick == min(WND // (2 * 536), TCP_MAX_QUICKACKS)
    assert d.in_quickack() and d.ack_now(100, False, unread=100)


def test_ack_sent_uses_up_one_quickack() -> None:
    """K tcp_event_ack_sent() -> tcp_dec_quickack_mode(): one quick ACK per ACK sent while one
    was scheduled; the pending bits are cleared."""
    d = DelayedAck()
    d.init_rcv_mss(MSS, WND)
    d.data_received(0, 100, True, False, MSS, TCP_RTO_MIN, WND)
    before = d.quick
    d.ack_sent()
    assert d.quick == before - 1 and d.pending == 0


def test_more_than_one_full_segment_unacknowledged_acks_at_once() -> None:
    """K __tcp_ack_snd_check(): rcv_nxt - rcv_wup > rcv_mss (and the window would not shrink)
    sends now: every second full segment is ACKed at once (probe
    delack-two-segments-read-ack-now)."""
    d = receiving()
    assert not d.ack_now(536, False, unread=0)
    assert d.ack_now(537, False, unread=0)


def test_two_unread_segments_wait_for_the_timer() -> None:
    """The window-would-shrink half of __tcp_ack_snd_check(), approximated: with more than one
    segment's worth unread the ACK waits (probe delack-two-segments-unread-delayed)."""
    d = receiving()
    assert not d.ack_now(2 * 536, False, unread=2 * 536)


def test_out_of_order_data_acks_at_once() -> None:
    """K __tcp_ack_snd_check(): out-of-order data without SACK -> "goto send_now"."""
    assert receiving().ack_now(0, True, unread=0)


def test_delayed_ack_waits_ato_and_fires_on_the_next_tick() -> None:
    """K tcp_send_delayed_ack(): the timer is armed ato (40 ms) ahead; a jiffies timer fires on
    the tick after, half a tick late on average (probe delack-fin-after-data-40ms)."""
    d = receiving()
    assert d.delay(100 * MS, 0) is False
    assert d.deadline == 140 * MS + TICK_LATENCY


def test_bare_fin_before_data_is_acked_at_the_next_tick() -> None:
    """ato is 0 before any data arrived, so the scheduled ACK of a bare FIN leaves at the next
    timer tick (probe delack-fin-no-data-next-tick)."""
    d = DelayedAck()
    d.schedule()
    d.delay(0, 0)
    assert d.deadline == TICK_LATENCY


def test_armed_timer_about_to_expire_sends_now() -> None:
    """K tcp_send_delayed_ack(): "If delack timer is about to expire, send ACK now" -- within
    ato/4 of the deadline."""
    d = receiving()
    d.delay(0, 0)
    assert d.delay(40 * MS, 0) is True


def test_delack_max_is_one_tick_below_rto_min() -> None:
    """K tcp_delack_max(): min(TCP_DELACK_MAX, rto_min - 1 jiffy) bounds every delay."""
    d = receiving()
    d.ato = 10_000 * MS
    d.pingpong = 1
    d.delay(0, 0)
    assert DELACK_MAX == 196 * MS
    assert d.deadline == DELACK_MAX + TICK_LATENCY


def test_delack_timer_inflates_ato_when_not_interactive() -> None:
    """K tcp_delack_timer_handler(): "Delayed ACK missed: inflate ATO" (ato << 1, at most the
    RTO); in pingpong mode it leaves pingpong and deflates ato to 40 ms."""
    d = receiving()
    d.delay(0, 0)
    assert d.timer_fired(TCP_RTO_MIN) is True
    assert d.ato == 2 * TCP_ATO_MIN
    d.pingpong = 1
    d.schedule()
    d.delay(0, 0)
    assert d.timer_fired(TCP_RTO_MIN) is True
    assert d.pingpong == 0 and d.ato == TCP_ATO_MIN


def test_delack_timer_sends_nothing_when_the_ack_already_left() -> None:
    """K tcp_delack_timer_handler(): ICSK_ACK_TIMER set but nothing scheduled -> no ACK."""
    d = receiving()
    d.delay(0, 0)
    d.pending &= ~1  # ACK_SCHED gone, the timer bit left
    assert d.timer_fired(TCP_RTO_MIN) is False


def test_reply_within_ato_enters_pingpong() -> None:
    """K tcp_event_data_sent(): data sent within ato of the last received segment makes the
    connection interactive (probe delack-reply-makes-pingpong)."""
    d = receiving()
    d.data_sent(39 * MS)
    assert d.in_pingpong()
    e = receiving()
    e.data_sent(41 * MS)
    assert not e.in_pingpong()


def test_ato_follows_short_gaps_between_segments() -> None:
    """K tcp_event_data_recv(): a gap <= ato_min/2 sets ato = ato/2 + ato_min/2; a gap below
    ato sets ato = ato/2 + gap."""
    d = receiving()
    d.ato = 80 * MS
    d.data_received(10 * MS, 100, True, False, MSS, TCP_RTO_MIN, WND)
    assert d.ato == 40 * MS + 20 * MS
    d.data_received(40 * MS, 100, True, False, MSS, TCP_RTO_MIN, WND)
    assert d.ato == 30 * MS + 30 * MS


def test_read_of_pushed_data_acks_when_the_buffer_empties() -> None:
    """K __tcp_cleanup_rbuf(): a read that empties the receive queue of PSH data sends the
    scheduled ACK when not interactive (probe delack-read-acks-pushed)."""
    d = receiving()
    d.pending |= ACK_PUSHED
    assert d.read_acks(100, 100, buffer_empty=True)
    assert not d.read_acks(0, 100, buffer_empty=True)
    assert not d.read_acks(100, 100, buffer_empty=False)
