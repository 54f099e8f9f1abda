"""The retransmission timeout Linux derives from measured round trips (RFC 6298, Jacobson 1988).

Theory of operation
-------------------
K tcp_input.c `tcp_rtt_estimator()` keeps, in microseconds and scaled as the kernel does, the
smoothed RTT (`srtt_us`, x8), the mean deviation (`mdev_us`, x4), its maximum over the last
round (`mdev_max_us`) and `rttvar_us`, which never falls below TCP_RTO_MIN (200 ms);
`tcp_set_rto()` makes the RTO srtt + rttvar, capped at TCP_RTO_MAX. So on a LAN the RTO is
about 200 ms plus the RTT, not the 1 s initial value: every retransmission, and the 3.5 x RTO
floor of an orphaned FIN_WAIT2 wait, is timed from it.

Samples come from the connection (K tcp_ack_update_rtt()): the time from sending a segment
that was never retransmitted to its acknowledgement (Karn's rule), else the age of the echoed
timestamp when the ACK acknowledged something; the SYN-ACK's round trip seeds a passive
connection (tcp_synack_rtt_meas()). A handshake without any sample (its SYN or SYN-ACK was
retransmitted) falls back to a 3 s RTO (K tcp_metrics.c tcp_init_metrics(), RFC 6298 5.7).

The kernel keeps the RTO in jiffies: usecs_to_jiffies() rounds srtt + rttvar up to whole ticks
(4 ms at HZ=250, the reference kernel), and backoff doubles that. The model does the same in
nanoseconds (`jiffies_ceil()`), so a chain of retransmissions does not drift from the kernel's
(probe fuzz finding: 209.5 ms -> 212 ms, then 424, 848 ms).
"""

from __future__ import annotations

from typing import Final

from timewait.model.seq import seq_gt
from timewait.units import MS, SEC, US

# include/net/tcp.h: TCP_RTO_MIN (HZ/5), TCP_RTO_MAX (120*HZ), TCP_TIMEOUT_INIT (1*HZ, RFC 6298
# 2.1), TCP_TIMEOUT_FALLBACK (3*HZ, RFC 1122's initial RTO, used after a handshake gave no sample).
TCP_RTO_MIN: Final = 200 * MS
TCP_RTO_MAX: Final = 120 * SEC
TCP_TIMEOUT_INIT: Final = 1 * SEC
TCP_TIMEOUT_FALLBACK: Final = 3 * SEC
_RTO_MIN_US: Final = TCP_RTO_MIN // US
HZ: Final = 250  # CONFIG_HZ of the reference kernel (ref 0)
JIFFY: Final = SEC // HZ  # one tick: 4 ms


def jiffies_ceil(ns: int) -> int:
    """`ns` rounded up to whole jiffies (K usecs_to_jiffies(), msecs_to_jiffies())."""
    return -(-ns // JIFFY) * JIFFY


class RttEstimator:
    """One connection's RTT state and RTO (K struct tcp_sock srtt_us .. rtt_seq, icsk_rto).

    `rto` starts at TCP_TIMEOUT_INIT; `sample()` feeds a measurement, `fallback()` applies the
    3 s rule, `backoff()` doubles the RTO after a retransmission timeout.
    """

    def __init__(self, rto: int = TCP_TIMEOUT_INIT) -> None:
        self.srtt_us = 0  # smoothed RTT << 3; 0 = no sample yet
        self.mdev_us = 0  # mean deviation << 2
        self.mdev_max_us = 0
        self.rttvar_us = 0
        self.rtt_seq = 0
        self.rto = rto  # ns
        self.backoffs = 0  # icsk_backoff

    def sample(self, rtt_ns: int, snd_una: int, snd_nxt: int) -> None:
        """K tcp_ack_update_rtt(): tcp_rtt_estimator() on a measurement, then tcp_set_rto();
        a valid measurement also ends the backoff (RFC 6298)."""
        m = rtt_ns // US
        srtt = self.srtt_us
        if srtt != 0:
            m -= srtt >> 3  # m is now the error in the estimate
            srtt += m  # rtt = 7/8 rtt + 1/8 new
            if m < 0:
                m = -m
                m -= self.mdev_us >> 2
                if m > 0:
                    m >>= 3  # finer gain when the RTT falls (Eifel-like)
            else:
                m -= self.mdev_us >> 2
            self.mdev_us += m  # mdev = 3/4 mdev + 1/4 new
            if self.mdev_us > self.mdev_max_us:
                self.mdev_max_us = self.mdev_us
                if self.mdev_max_us > self.rttvar_us:
                    self.rttvar_us = self.mdev_max_us
            if seq_gt(snd_una, self.rtt_seq):  # once per round trip
                if self.mdev_max_us < self.rttvar_us:
                    self.rttvar_us -= (self.rttvar_us - self.mdev_max_us) >> 2
                self.rtt_seq = snd_nxt
                self.mdev_max_us = _RTO_MIN_US
        else:
            srtt = m << 3  # the first measurement: rto = 3 * rtt at least
            self.mdev_us = m << 1
            self.rttvar_us = max(self.mdev_us, _RTO_MIN_US)
            self.mdev_max_us = self.rttvar_us
            self.rtt_seq = snd_nxt
        self.srtt_us = max(1, srtt)
        # tcp_set_rto(): usecs_to_jiffies(srtt + rttvar), bounded by TCP_RTO_MAX
        self.rto = min(jiffies_ceil(((self.srtt_us >> 3) + self.rttvar_us) * US), TCP_RTO_MAX)
        self.backoffs = 0

    def fallback(self) -> None:
        """K tcp_init_metrics(): no RTT sample from the handshake -> RTO 3 s (the estimator
        itself starts afresh at the first sample)."""
        if self.srtt_us == 0:
            self.rttvar_us = self.mdev_us = self.mdev_max_us = TCP_TIMEOUT_FALLBACK // US
            self.rto = TCP_TIMEOUT_FALLBACK

    def backoff(self) -> None:
        """K tcp_retransmit_timer(): icsk_backoff++, icsk_rto = min(icsk_rto << 1, TCP_RTO_MAX)."""
        self.backoffs += 1
        self.rto = min(self.rto << 1, TCP_RTO_MAX)

    @property
    def srtt(self) -> int:
        """The smoothed RTT in ns (0 before any sample)."""
        return (self.srtt_us >> 3) * US


def model_timeout(boundary: int, rto_base: int) -> int:
    """K tcp_timer.c tcp_model_timeout(): how long `boundary` retransmissions take with an RTO
    starting at `rto_base` and doubling up to TCP_RTO_MAX (the time budget of
    retransmits_timed_out())."""
    thresh = (TCP_RTO_MAX // rto_base).bit_length() - 1  # ilog2()
    if boundary <= thresh:
        return ((2 << boundary) - 1) * rto_base
    return ((2 << thresh) - 1) * rto_base + (boundary - thresh) * TCP_RTO_MAX
