"""When Linux acknowledges what it received: the delayed-ACK engine (struct inet_connection_sock
icsk_ack, K tcp_input.c and tcp_output.c).

Theory of operation
-------------------
A segment that needs acknowledging *schedules* an ACK (inet_csk_schedule_ack()); after the
segment is processed `__tcp_ack_snd_check()` decides to send it now or to arm the delayed-ACK
timer. It is sent now when

* more than one full segment (`rcv_mss`) arrived since the last ACK,
* the connection is in quick-ACK mode: `quick` > 0 and not interactive ("pingpong"), or
* something demands it (ICSK_ACK_NOW, out-of-order data).

`quick` is filled when the first data arrives (tcp_event_data_recv(): min(rcv_wnd / 2 rcv_mss,
16)) and by anything that looks like loss (old data, a duplicate); every ACK sent while one was
scheduled uses one up. `ato`, the delay, starts at 0 -- so before any data was received a
scheduled ACK leaves at the next timer tick, which is why the ACK of a bare FIN is nearly
immediate -- becomes TCP_ATO_MIN (40 ms) with the first data and follows the gaps between
segments. A FIN received in ESTABLISHED makes the connection interactive (tcp_fin():
inet_csk_enter_pingpong_mode()), so its ACK waits `ato` and rides on our FIN if close() comes
in time; so does data we send within `ato` of the last segment received (tcp_event_data_sent()).
Whatever we send with the ACK bit settles the scheduled ACK (tcp_event_ack_sent()). When the
timer fires, the ACK goes, and `ato` doubles (or pingpong ends).

Times are ns; the kernel counts jiffies, and a jiffies timer fires on the first tick after it
expires, on average half a tick late (`TICK_LATENCY`, HZ=250 on the reference kernel).
"""

from __future__ import annotations

from typing import Final

from timewait.model.rtt import JIFFY, TCP_RTO_MIN
from timewait.units import MS

# include/net/tcp.h, HZ=250 (the reference kernel, CONFIG_HZ in ref 0):
TCP_ATO_MIN: Final = 40 * MS  # HZ/25
TCP_DELACK_MIN: Final = 40 * MS  # HZ/25
TCP_DELACK_MAX: Final = 200 * MS  # HZ/5
TCP_MAX_QUICKACKS: Final = 16
TCP_MSS_DEFAULT: Final = 536  # RFC 1122 default MSS; tcp_initialize_rcv_mss() caps at it
TCP_MIN_MSS: Final = 88
TCP_PINGPONG_THRESH: Final = 1  # sysctl tcp_pingpong_thresh default
TICK_LATENCY: Final = JIFFY // 2
# K tcp_output.c tcp_delack_max(): min(TCP_DELACK_MAX, tcp_rto_min - 1 jiffy).
DELACK_MAX: Final = min(TCP_DELACK_MAX, TCP_RTO_MIN - JIFFY)

# icsk_ack.pending bits (include/net/inet_connection_sock.h)
ACK_SCHED: Final = 1
ACK_TIMER: Final = 2
ACK_PUSHED: Final = 4
ACK_PUSHED2: Final = 8
ACK_NOW: Final = 16
_TCP_HEADER: Final = 20


class DelayedAck:
    """One connection's icsk_ack state and the rules that read it (module docstring)."""

    def __init__(self) -> None:
        self.pending = 0  # ACK_* bits
        self.timeout = 0  # delayed-ACK deadline (ns) while ACK_TIMER is set
        self.ato = 0
        self.quick = 0
        self.pingpong = 0
        self.lrcvtime = 0
        self.rcv_mss = TCP_MSS_DEFAULT
        self.last_seg_size = 0

    @property
    def scheduled(self) -> bool:
        """inet_csk_ack_scheduled()."""
        return self.pending & ACK_SCHED != 0

    @property
    def deadline(self) -> int | None:
        return self.timeout if self.pending & ACK_TIMER else None

    def in_pingpong(self) -> bool:
        return self.pingpong >= TCP_PINGPONG_THRESH

    def in_quickack(self) -> bool:
        """tcp_in_quickack_mode()."""
        return self.quick != 0 and not self.in_pingpong()

    def init_rcv_mss(self, mss: int, rcv_wnd: int) -> None:
        """tcp_initialize_rcv_mss(): a guess of the peer's segment size, at most 536."""
        self.rcv_mss = max(min(mss, rcv_wnd // 2, TCP_MSS_DEFAULT), TCP_MIN_MSS)

    def incr_quickack(self, rcv_wnd: int, max_quickacks: int = TCP_MAX_QUICKACKS) -> None:
        """tcp_incr_quickack()."""
        n = rcv_wnd // (2 * self.rcv_mss) or 2
        n = min(n, max_quickacks)
        if n > self.quick:
            self.quick = n

    def enter_quickack(self, rcv_wnd: int) -> None:
        """tcp_enter_quickack_mode(): something looks lost, ACK every segment for a while."""
        self.incr_quickack(rcv_wnd)
        self.pingpong = 0
        self.ato = TCP_ATO_MIN

    def schedule(self, now_flag: bool = False) -> None:
        """inet_csk_schedule_ack(), with ICSK_ACK_NOW when asked."""
        self.pending |= ACK_SCHED | (ACK_NOW if now_flag else 0)

    def _measure_rcv_mss(self, length: int, psh: bool, fin: bool, advmss: int) -> None:
        """tcp_measure_rcv_mss()."""
        lss = self.last_seg_size
        self.last_seg_size = 0
        if length >= self.rcv_mss:
            self.rcv_mss = min(length, advmss)
            if psh:
                self.pending |= ACK_PUSHED
            return
        wire = length + _TCP_HEADER
        if wire >= TCP_MSS_DEFAULT + _TCP_HEADER or (
            wire >= TCP_MIN_MSS + _TCP_HEADER and not (psh or fin)
        ):
            self.last_seg_size = length
            if length == lss:
                self.rcv_mss = length
                return
        if self.pending & ACK_PUSHED:
            self.pending |= ACK_PUSHED2
        self.pending |= ACK_PUSHED

    def data_received(
        self, now: int, length: int, psh: bool, fin: bool, advmss: int, rto: int, rcv_wnd: int
    ) -> None:
        """tcp_event_data_recv(): in-order data arrived (schedules the ACK)."""
        self.pending |= ACK_SCHED
        self._measure_rcv_mss(length, psh, fin, advmss)
        if not self.ato:
            self.incr_quickack(rcv_wnd)  # the first data: start the engine
            self.ato = TCP_ATO_MIN
        else:
            m = now - self.lrcvtime
            if m <= TCP_ATO_MIN // 2:
                self.ato = (self.ato >> 1) + TCP_ATO_MIN // 2
            elif m < self.ato:
                self.ato = min((self.ato >> 1) + m, rto)
            elif m > rto:
                self.incr_quickack(rcv_wnd)  # a long gap: ACK quickly again
        self.lrcvtime = now

    def ack_now(self, rcv_nxt_minus_wup: int, ofo: bool, *, unread: int) -> bool:
        """__tcp_ack_snd_check(): send the scheduled ACK now? More than one full segment is
        not yet acknowledged and the window would not shrink (__tcp_select_window() >=
        rcv_wnd, a question of buffer memory the model does not keep: it takes the window to
        hold while at most one segment's worth is unread -- a bulk receiver then ACKs every
        second segment, and two segments left unread wait, as probe
        delack-two-segments-unread-delayed shows); quick-ACK mode; ACK_NOW; or out-of-order
        data without SACK."""
        return (
            (rcv_nxt_minus_wup > self.rcv_mss and unread <= self.rcv_mss)
            or self.in_quickack()
            or self.pending & ACK_NOW != 0
            or ofo
        )

    def delay(self, now: int, srtt: int) -> bool:
        """tcp_send_delayed_ack(): arm the timer; True if the ACK must go now instead (an
        armed timer was about to fire anyway)."""
        ato = self.ato
        if ato > TCP_DELACK_MIN:
            max_ato = (
                TCP_DELACK_MAX if self.in_pingpong() or self.pending & ACK_PUSHED else 500 * MS
            )
            if srtt:
                max_ato = min(max_ato, max(srtt, TCP_DELACK_MIN))
            ato = min(ato, max_ato)
        ato = min(ato, DELACK_MAX)
        timeout = now + ato + TICK_LATENCY
        if self.pending & ACK_TIMER:
            if self.timeout <= now + (ato >> 2) + TICK_LATENCY:
                return True  # "If delack timer is about to expire, send ACK now."
            timeout = min(timeout, self.timeout)
        self.pending |= ACK_SCHED | ACK_TIMER
        self.timeout = timeout
        return False

    def ack_sent(self) -> None:
        """tcp_event_ack_sent(): a segment with the ACK bit left; tcp_dec_quickack_mode(), then
        the scheduled ACK and its timer are settled."""
        if self.quick:
            pkts = 1 if self.pending & ACK_SCHED else 0
            if pkts >= self.quick:
                self.quick = 0
                self.ato = TCP_ATO_MIN
            else:
                self.quick -= pkts
        self.pending = 0

    def data_sent(self, now: int) -> None:
        """tcp_event_data_sent(): a reply within `ato` of the last data makes us interactive."""
        if now - self.lrcvtime < self.ato:
            self.pingpong = min(self.pingpong + 1, 255)

    def timer_fired(self, rto: int) -> bool:
        """tcp_delack_timer_handler(): True if an ACK is to be sent now."""
        if not self.pending & ACK_TIMER:
            return False
        self.pending &= ~ACK_TIMER
        if not self.pending & ACK_SCHED:
            return False
        if not self.in_pingpong():
            self.ato = min(self.ato << 1, rto)  # "Delayed ACK missed: inflate ATO."
        else:
            self.pingpong = 0  # "leave pingpong mode and deflate ATO"
            self.ato = TCP_ATO_MIN
        return True

    def read_acks(self, copied: int, rcv_nxt_minus_wup: int, buffer_empty: bool) -> bool:
        """__tcp_cleanup_rbuf(): after the application read `copied` bytes, is the scheduled
        ACK to be sent now? (The kernel also ACKs when a read reopens a window that had shrunk
        below half; the model's window never shrinks.)"""
        if not self.scheduled:
            return False
        if rcv_nxt_minus_wup > self.rcv_mss:
            return True
        pushed = self.pending & ACK_PUSHED2 != 0 or (
            self.pending & ACK_PUSHED != 0 and not self.in_pingpong()
        )
        return copied > 0 and pushed and buffer_empty
