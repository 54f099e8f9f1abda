"""TIME_WAIT and FIN_WAIT2 minisockets: one test per rule of ref 1.3, 1.4, 2.2, 5 and the profiles.

L (198.18.0.1:40000) closed actively; its minisocket answers segments from P (198.18.0.2:80).
Times are ns; the minisocket was created at T0 and each test sends at T0 + 1 s unless it says.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.model.minisock_helpers import (
    FW2_TIMEOUT,
    LINUX_DEFAULTS,
    NEWER_TS,
    OLDER_TS,
    RCV_NXT,
    SND_NXT,
    T0,
    TS_OFFSET,
    TS_RECENT,
    TUPLE,
    Exchange,
    expect_nothing,
    expect_reply,
    expect_timewait_ack,
    from_peer,
    syn,
    tw_in_fin_wait2,
    tw_in_time_wait,
    tw_without_timestamps,
)
from timewait.config import LINUX, RFC9293, KernelConfig, Profile
from timewait.errors import ModelError, ProfileError
from timewait.model import counters as C
from timewait.model.clock import tsval as clock_tsval
from timewait.model.minisock import (
    FIN_WAIT2_RULES,
    TIME_WAIT_RULES,
    MiniSocket,
    SegmentKind,
    TwVerdict,
    arm_counter,
    classify_fin_wait2,
    classify_time_wait,
    describe_rules,
    fin_wait2_plan,
    rules_for,
    tcp_fin_time,
    tw_overflow,
)
from timewait.model.segment import Flags, Segment
from timewait.model.seq import MASK
from timewait.model.states import TcpState
from timewait.units import MS, SEC

T1 = T0 + 1 * SEC
TW_LEN = 60 * SEC
RFC_TW_LEN = 240 * SEC
ISN_FROM_TW = SND_NXT + 65537


def linux(tw: MiniSocket, **kw: object) -> Exchange:
    return Exchange(tw, **kw)


def rfc(tw: MiniSocket, **kw: object) -> Exchange:
    return Exchange(tw, profile=RFC9293, **kw)


# ---- TIME_WAIT, linux profile: ref 1.3 rows ----------------------------------------------------


def test_tw_bare_ack_in_window_restarts_timer() -> None:
    """K tcp_timewait_state_process(): in-window bare ACK -> TCP_TW_SUCCESS + full 60 s restart."""
    x = linux(tw_in_time_wait())
    res = x.send(from_peer(), t=T0 + 30 * SEC)
    assert res.verdict is TwVerdict.SUCCESS and res.kind is SegmentKind.BARE_ACK_IN_WINDOW
    expect_nothing(res)
    assert x.tw.expires == T0 + 30 * SEC + TW_LEN


def test_tw_bare_ack_in_window_refreshes_ts_recent() -> None:
    """K tcp_timewait_state_process(): `if (tmp_opt.saw_tstamp)` ts_recent/stamp refreshed."""
    x = linux(tw_in_time_wait())
    x.send(from_peer(tsval=NEWER_TS), t=T0 + 5 * SEC)
    assert (x.tw.ts_recent, x.tw.ts_recent_stamp) == (NEWER_TS, T0 + 5 * SEC)


def test_tw_bare_segment_without_ack_flag_counts_as_in_window() -> None:
    """K tcp_timewait_state_process(): the in-window test looks at seq/len/RST only, not ACK."""
    x = linux(tw_in_time_wait())
    res = x.send(from_peer(flags=Flags.NONE, ack=0))
    assert res.kind is SegmentKind.BARE_ACK_IN_WINDOW
    assert x.tw.expires == T1 + TW_LEN


def test_tw_rst_in_window_kills_when_rfc1337_0() -> None:
    """K tcp_timewait_state_process(): rfc1337 == 0 -> inet_twsk_deschedule_put (assassination)."""
    x = linux(tw_in_time_wait())
    res = x.send(from_peer(flags=Flags.RST | Flags.ACK))
    assert res.killed and res.verdict is TwVerdict.SUCCESS
    assert res.kind is SegmentKind.RST_IN_WINDOW_RFC1337_OFF
    expect_nothing(res)


def test_tw_rst_ignored_when_rfc1337_1_and_timer_not_restarted() -> None:
    """K tcp_timewait_state_process() 6.18: RST with rfc1337 set skips the reschedule."""
    x = linux(tw_in_time_wait(), config=KernelConfig(tcp_rfc1337=1))
    res = x.send(from_peer(flags=Flags.RST), t=T0 + 30 * SEC)
    assert not res.killed and res.kind is SegmentKind.RST_IN_WINDOW_RFC1337_ON
    expect_nothing(res)
    assert x.tw.expires == T0 + TW_LEN


def test_tw_rst_ignored_when_rfc1337_1_refreshes_ts_recent() -> None:
    """K tcp_timewait_state_process(): the ignored RST still refreshes tw_ts_recent (ref 6)."""
    x = linux(tw_in_time_wait(), config=KernelConfig(tcp_rfc1337=1))
    x.send(from_peer(flags=Flags.RST, tsval=NEWER_TS), t=T0 + 7 * SEC)
    assert (x.tw.ts_recent, x.tw.ts_recent_stamp) == (NEWER_TS, T0 + 7 * SEC)


def test_tw_rst_out_of_window_dropped_silently() -> None:
    """Ref 1.3 row 4: RST with any other seq -> TCP_TW_SUCCESS, timer unchanged."""
    x = linux(tw_in_time_wait())
    res = x.send(from_peer(flags=Flags.RST, seq=RCV_NXT + 1))
    assert res.kind is SegmentKind.RST_OTHER and not res.killed
    expect_nothing(res)
    assert x.tw.expires == T0 + TW_LEN


def test_tw_rst_paws_rejected_is_dropped_and_counted() -> None:
    """tcp_paws_reject() for an RST younger than TCP_PAWS_MSL; LINUX_MIB_PAWS_TW_REJECTED."""
    x = linux(tw_in_time_wait())
    res = x.send(from_peer(flags=Flags.RST, tsval=OLDER_TS), t=T0 + 59 * SEC)
    assert res.kind is SegmentKind.RST_PAWS_REJECT and not res.killed
    expect_nothing(res)
    assert x.counters[C.PAWS_TIMEWAIT] == 1
    assert x.tw.expires == T0 + TW_LEN


def test_tw_paws_rst_waiver_after_60s() -> None:
    """include/net/tcp.h tcp_paws_reject(): RST passes once ts_recent_stamp is 60 s old."""
    x = linux(tw_in_time_wait(timeout=120 * SEC))
    res = x.send(from_peer(flags=Flags.RST, tsval=OLDER_TS), t=T0 + 60 * SEC)
    assert res.kind is SegmentKind.RST_IN_WINDOW_RFC1337_OFF and res.killed


def test_tw_retransmitted_fin_is_reacked() -> None:
    """Ref 1.3 row 5: FIN at rcv_nxt - 1 -> TCP_TW_ACK_OOW, <SEQ=snd_nxt><ACK=rcv_nxt>, restart."""
    x = linux(tw_in_time_wait())
    t = T0 + 20 * SEC
    res = x.send(from_peer(seq=RCV_NXT - 1, flags=Flags.FIN | Flags.ACK), t=t)
    assert res.kind is SegmentKind.FIN_RETRANSMIT and res.verdict is TwVerdict.ACK
    expect_reply(res, flags=Flags.ACK, seq=SND_NXT, ack=RCV_NXT, tsecr=TS_RECENT)
    expect_timewait_ack(res, x.tw, t=t)
    assert x.tw.expires == t + TW_LEN


def test_tw_retransmitted_fin_bypasses_rate_limit() -> None:
    """K tcp_oow_rate_limited(): FIN-bearing non-SYN segments are never rate-limited."""
    x = linux(tw_in_time_wait())
    fin = from_peer(seq=RCV_NXT - 1, flags=Flags.FIN | Flags.ACK)
    first, second = x.send(fin, t=T1), x.send(fin, t=T1 + 1 * MS)
    expect_timewait_ack(first, x.tw, t=T1)
    expect_timewait_ack(second, x.tw, t=T1 + 1 * MS)
    assert x.counters[C.ACK_SKIPPED_TIMEWAIT] == 0


def test_tw_data_is_acked_not_reset_and_restarts_timer() -> None:
    """Ref 1.3 row 6: data (old or new) with ACK -> ACK, never RST, restart."""
    x = linux(tw_in_time_wait())
    t = T0 + 10 * SEC
    res = x.send(from_peer(seq=RCV_NXT, payload=b"late data"), t=t)
    assert res.kind is SegmentKind.DATA_OR_FIN
    expect_timewait_ack(res, x.tw, t=t)
    assert x.tw.expires == t + TW_LEN


def test_tw_old_data_is_acked() -> None:
    """Ref 1.3 row 6: an old duplicate data segment below rcv_nxt is ACKed too."""
    x = linux(tw_in_time_wait())
    res = x.send(from_peer(seq=RCV_NXT - 500, payload=b"x" * 100))
    assert res.kind is SegmentKind.DATA_OR_FIN
    expect_timewait_ack(res, x.tw, t=T1)


def test_tw_data_bypasses_rate_limit() -> None:
    """K tcp_oow_rate_limited(): `seq != end_seq && !syn` -> not limited, clock not moved."""
    x = linux(tw_in_time_wait())
    data = from_peer(payload=b"x")
    for i in range(3):
        expect_timewait_ack(x.send(data, t=T1 + i * MS), x.tw, t=T1 + i * MS)
    assert x.tw.last_oow_ack_time is None
    assert x.counters[C.ACK_SKIPPED_TIMEWAIT] == 0


def test_tw_oow_ack_is_acked_and_restarts_timer() -> None:
    """Ref 1.3 row 7: ACK-bearing non-RST segment out of window -> ACK + restart."""
    x = linux(tw_in_time_wait())
    t = T0 + 40 * SEC
    res = x.send(from_peer(seq=RCV_NXT + 1000), t=t)
    assert res.kind is SegmentKind.OOW_ACK
    expect_timewait_ack(res, x.tw, t=t)
    assert x.tw.expires == t + TW_LEN


def test_tw_oow_ack_rate_limited_500ms() -> None:
    """K __tcp_oow_rate_limited(): one pure ACK per 500 ms; skipped -> TCPACKSkippedTimeWait."""
    x = linux(tw_in_time_wait())
    oow = from_peer(seq=RCV_NXT + 1000)
    expect_timewait_ack(x.send(oow, t=T1), x.tw, t=T1)
    muted = x.send(oow, t=T1 + 499 * MS)
    assert muted.verdict is TwVerdict.SUCCESS
    expect_nothing(muted)
    assert x.counters[C.ACK_SKIPPED_TIMEWAIT] == 1
    expect_timewait_ack(x.send(oow, t=T1 + 500 * MS), x.tw, t=T1 + 500 * MS)


def test_tw_rate_limit_follows_tcp_invalid_ratelimit() -> None:
    """sysctl tcp_invalid_ratelimit (ms) sets the interval of __tcp_oow_rate_limited()."""
    x = linux(tw_in_time_wait(), config=KernelConfig(tcp_invalid_ratelimit=100))
    oow = from_peer(seq=RCV_NXT + 1000)
    x.send(oow, t=T1)
    expect_nothing(x.send(oow, t=T1 + 99 * MS))
    expect_timewait_ack(x.send(oow, t=T1 + 100 * MS), x.tw, t=T1 + 100 * MS)


def test_tw_rate_limited_ack_still_restarts_timer() -> None:
    """K tcp_timewait_state_process(): inet_twsk_reschedule() runs before the rate limit."""
    x = linux(tw_in_time_wait())
    oow = from_peer(seq=RCV_NXT + 1000)
    x.send(oow, t=T1)
    x.send(oow, t=T1 + 100 * MS)
    assert x.tw.expires == T1 + 100 * MS + TW_LEN


def test_tw_segment_without_ack_is_acked_without_restart() -> None:
    """K tcp_timewait_state_process(): `if (paws_reject || th->ack)` restart; otherwise ACK only."""
    x = linux(tw_in_time_wait())
    res = x.send(from_peer(seq=RCV_NXT + 10, flags=Flags.NONE, ack=0), t=T0 + 9 * SEC)
    assert res.kind is SegmentKind.NO_ACK_OTHER
    expect_timewait_ack(res, x.tw, t=T0 + 9 * SEC)
    assert x.tw.expires == T0 + TW_LEN


def test_tw_paws_rejected_segment_acked_restarted_and_counted() -> None:
    """Ref 1.3 row 8: PAWS-rejected non-RST -> ACK (rate-limited), restart, PAWSTimewait."""
    x = linux(tw_in_time_wait())
    t = T0 + 3 * SEC
    res = x.send(from_peer(tsval=OLDER_TS), t=t)  # seq == rcv_nxt, but PAWS wins
    assert res.kind is SegmentKind.PAWS_REJECT
    expect_timewait_ack(res, x.tw, t=t)
    assert x.tw.expires == t + TW_LEN
    assert x.counters[C.PAWS_TIMEWAIT] == 1
    assert x.tw.ts_recent == TS_RECENT  # an old TSval never becomes ts_recent


def test_paws_ignores_ts_recent_older_than_paws_wrap() -> None:
    """include/net/tcp.h tcp_paws_check(): ts_recent older than TCP_PAWS_WRAP (2147 s) is stale."""
    x = linux(tw_in_time_wait(timeout=3000 * SEC))
    res = x.send(from_peer(tsval=OLDER_TS), t=T0 + 2147 * SEC)
    assert res.kind is SegmentKind.BARE_ACK_IN_WINDOW


def test_paws_ignores_zero_ts_recent() -> None:
    """include/net/tcp.h tcp_paws_check(): `if (!rx_opt->ts_recent) return true`."""
    x = linux(tw_in_time_wait(ts_recent=0))
    res = x.send(from_peer(tsval=OLDER_TS))
    assert res.kind is SegmentKind.BARE_ACK_IN_WINDOW


def test_paws_uses_tsval_wraparound() -> None:
    """RFC 7323 §5.2: TSvals compare modulo 2**32; a wrapped TSval is newer, not older."""
    x = linux(tw_in_time_wait(ts_recent=MASK - 10))
    res = x.send(from_peer(tsval=5))
    assert res.kind is SegmentKind.BARE_ACK_IN_WINDOW


# ---- TIME_WAIT: the SYN matrix (ref 1.3) -------------------------------------------------------


def test_tw_syn_newer_tsval_accepted_with_isn_snd_nxt_plus_65537() -> None:
    """TS on both: newer TSval accepted whatever the seq; ISN = tw_snd_nxt + 65535 + 2."""
    x = linux(tw_in_time_wait())
    res = x.send(syn(seq=RCV_NXT - 100_000, tsval=NEWER_TS))
    assert res.verdict is TwVerdict.SYN and res.kind is SegmentKind.SYN_ACCEPTABLE
    assert res.isn == ISN_FROM_TW
    expect_nothing(res)


def test_tw_syn_newer_tsval_higher_seq_accepted() -> None:
    """TS on both, newer TSval and higher seq -> TCP_TW_SYN."""
    res = linux(tw_in_time_wait()).send(syn(seq=RCV_NXT + 100_000, tsval=NEWER_TS))
    assert res.verdict is TwVerdict.SYN and res.isn == ISN_FROM_TW


def test_tw_syn_older_tsval_paws_rejected() -> None:
    """TS on both, older TSval, lower seq -> PAWS reject: ACK + restart + PAWSTimewait."""
    x = linux(tw_in_time_wait())
    t = T0 + 2 * SEC
    res = x.send(syn(seq=RCV_NXT - 100_000, tsval=OLDER_TS), t=t)
    assert res.kind is SegmentKind.PAWS_REJECT and res.isn is None
    expect_timewait_ack(res, x.tw, t=t)
    assert x.tw.expires == t + TW_LEN and x.counters[C.PAWS_TIMEWAIT] == 1


def test_tw_syn_older_tsval_higher_seq_still_paws_rejected() -> None:
    """TS on both, older TSval -> PAWS reject even with a higher seq (`!paws_reject` first)."""
    x = linux(tw_in_time_wait())
    res = x.send(syn(seq=RCV_NXT + 100_000, tsval=OLDER_TS))
    assert res.kind is SegmentKind.PAWS_REJECT and res.verdict is TwVerdict.ACK


def test_tw_syn_equal_tsval_falls_back_to_seq_test() -> None:
    """RFC 6191 accepts equal TSval + higher seq; Linux: equal is not newer, only seq decides."""
    x = linux(tw_in_time_wait())
    low = x.send(syn(seq=RCV_NXT - 1, tsval=TS_RECENT))
    high = x.send(syn(seq=RCV_NXT + 1, tsval=TS_RECENT))
    assert low.kind is SegmentKind.SYN_UNACCEPTABLE
    assert high.kind is SegmentKind.SYN_ACCEPTABLE


def test_tw_syn_without_ts_option_higher_seq_accepted() -> None:
    """TW has TS, SYN carries none -> seq test only: higher seq accepted."""
    res = linux(tw_in_time_wait()).send(syn(seq=RCV_NXT + 1, tsval=None))
    assert res.verdict is TwVerdict.SYN and res.isn == ISN_FROM_TW


def test_tw_syn_without_ts_option_lower_seq_acked_without_restart() -> None:
    """TW has TS, SYN carries none, lower seq -> ACK (rate-limited), timer not restarted."""
    x = linux(tw_in_time_wait())
    res = x.send(syn(seq=RCV_NXT - 1, tsval=None), t=T0 + 10 * SEC)
    assert res.kind is SegmentKind.SYN_UNACCEPTABLE
    expect_timewait_ack(res, x.tw, t=T0 + 10 * SEC)
    assert x.tw.expires == T0 + TW_LEN


def test_tw_without_ts_syn_higher_seq_accepted() -> None:
    """TW without timestamps: seq test only, higher -> accepted [Lab E13c]."""
    res = linux(tw_without_timestamps()).send(syn(seq=RCV_NXT + 1, tsval=None))
    assert res.verdict is TwVerdict.SYN and res.isn == ISN_FROM_TW


def test_tw_without_ts_syn_lower_seq_acked_without_restart() -> None:
    """TW without timestamps: lower seq -> ACK without TS option, no restart (ref 1.6 case 3)."""
    x = linux(tw_without_timestamps())
    res = x.send(syn(seq=RCV_NXT - 1, tsval=None), t=T0 + 10 * SEC)
    assert res.kind is SegmentKind.SYN_UNACCEPTABLE
    expect_reply(res, flags=Flags.ACK, seq=SND_NXT, ack=RCV_NXT, tsval=None, tsecr=None)
    assert x.tw.expires == T0 + TW_LEN


def test_tw_without_ts_syn_equal_seq_acked() -> None:
    """TW without timestamps: seq == rcv_nxt is not 'after' -> ACK."""
    res = linux(tw_without_timestamps()).send(syn(seq=RCV_NXT, tsval=None))
    assert res.kind is SegmentKind.SYN_UNACCEPTABLE and res.verdict is TwVerdict.ACK


def test_tw_without_ts_ignores_newer_tsval_of_syn() -> None:
    """TW without timestamps: options are not parsed, a newer TSval cannot rescue a lower seq."""
    res = linux(tw_without_timestamps()).send(syn(seq=RCV_NXT - 1, tsval=NEWER_TS))
    assert res.kind is SegmentKind.SYN_UNACCEPTABLE


def test_tw_without_ts_ignores_older_tsval_of_syn() -> None:
    """TW without timestamps: no PAWS either, a higher seq with any TSval is accepted."""
    res = linux(tw_without_timestamps()).send(syn(seq=RCV_NXT + 1, tsval=OLDER_TS))
    assert res.verdict is TwVerdict.SYN


def test_tw_syn_seq_exactly_half_the_space_ahead_is_after() -> None:
    """K after(seq, rcv_nxt) = (s32)(rcv_nxt - seq) < 0: true at a distance of exactly 2**31."""
    res = linux(tw_without_timestamps()).send(syn(seq=RCV_NXT + (1 << 31), tsval=None))
    assert res.kind is SegmentKind.SYN_ACCEPTABLE


def test_tw_accepted_syn_leaves_timer_alone() -> None:
    """TCP_TW_SYN returns before any reschedule; the caller kills the tw if a listener exists."""
    x = linux(tw_in_time_wait())
    x.send(syn(seq=RCV_NXT + 1), t=T0 + 30 * SEC)
    assert x.tw.expires == T0 + TW_LEN and x.tw.substate is TcpState.TIME_WAIT


def test_tw_syn_isn_zero_becomes_one() -> None:
    """K tcp_timewait_state_process(): `if (isn == 0) isn++`."""
    res = linux(tw_in_time_wait(snd_nxt=(1 << 32) - 65537)).send(syn(seq=RCV_NXT + 1))
    assert res.isn == 1


def test_tw_syn_isn_wraps_modulo_2_32() -> None:
    """The ISN is u32 arithmetic: tw_snd_nxt + 65537 wraps around."""
    res = linux(tw_in_time_wait(snd_nxt=MASK)).send(syn(seq=RCV_NXT + 1))
    assert res.isn == 65536


def test_tw_syn_with_ack_is_not_a_new_connection() -> None:
    """`th->syn && !th->ack`: a SYN|ACK is an out-of-window ACK -> ACK + restart."""
    x = linux(tw_in_time_wait())
    res = x.send(from_peer(seq=RCV_NXT + 1, flags=Flags.SYN | Flags.ACK))
    assert res.kind is SegmentKind.OOW_ACK and res.isn is None
    assert x.tw.expires == T1 + TW_LEN


def test_tw_unacceptable_syn_is_rate_limited() -> None:
    """K tcp_oow_rate_limited(): a SYN never bypasses the limit (`!tcp_hdr(skb)->syn`)."""
    x = linux(tw_in_time_wait())
    expect_timewait_ack(x.send(syn(seq=RCV_NXT - 1, tsval=None), t=T1), x.tw, t=T1)
    expect_nothing(x.send(syn(seq=RCV_NXT - 1, tsval=None), t=T1 + 200 * MS))
    assert x.counters[C.ACK_SKIPPED_TIMEWAIT] == 1


def test_tw_ack_for_syn_without_listener() -> None:
    """tcp_v4_rcv() TCP_TW_SYN without a listener falls through to tcp_v4_timewait_ack()."""
    tw = tw_in_time_wait()
    t = T0 + 4 * SEC
    ack = tw.ack_for(t)
    assert (ack.flags, ack.seq, ack.ack, ack.window) == (Flags.ACK, SND_NXT, RCV_NXT, 65_535)
    assert (ack.tsval, ack.tsecr) == (clock_tsval(t, TS_OFFSET), TS_RECENT)
    assert ack.sender_tuple == TUPLE


def test_tw_reply_has_no_ts_option_when_ts_recent_is_zero() -> None:
    """K tcp_v4_send_ack(): the timestamp option is added only `if (tsecr)`."""
    ack = tw_without_timestamps().ack_for(T1)
    assert ack.tsval is None and ack.tsecr is None


def test_tw_never_answers_with_rst() -> None:
    """Ref 1.3: TCP_TW_RST is never produced in substate TIME_WAIT, not even for data."""
    x = linux(tw_in_time_wait())
    res = x.send(from_peer(seq=RCV_NXT + 10, payload=b"new data after FIN"))
    assert res.verdict is not TwVerdict.RST
    assert res.reply is not None and not res.reply.rst


# ---- FIN_WAIT2 minisocket: ref 1.4 -------------------------------------------------------------


def test_fw2_fin_at_rcv_nxt_becomes_time_wait_with_full_timer() -> None:
    """Ref 1.4 / [Lab E2]: FIN at rcv_nxt -> substate TIME_WAIT, rcv_nxt + 1, ACK, 60 s timer."""
    x = linux(tw_in_fin_wait2())
    t = T0 + 25 * SEC
    res = x.send(from_peer(flags=Flags.FIN | Flags.ACK), t=t)
    assert res.kind is SegmentKind.FW2_FIN_AT_RCV_NXT and res.verdict is TwVerdict.ACK
    assert x.tw.substate is TcpState.TIME_WAIT and x.tw.rcv_nxt == RCV_NXT + 1
    expect_reply(res, flags=Flags.ACK, seq=SND_NXT, ack=RCV_NXT + 1)
    assert x.tw.expires == t + TW_LEN


def test_fw2_fin_with_timestamp_refreshes_entry_stamp_and_ts_recent() -> None:
    """K FIN_WAIT2 branch: saw_tstamp -> tw_entry_stamp, tw_ts_recent_stamp, tw_ts_recent."""
    x = linux(tw_in_fin_wait2())
    t = T0 + 5 * SEC
    res = x.send(from_peer(flags=Flags.FIN | Flags.ACK, tsval=NEWER_TS), t=t)
    assert (x.tw.entry_stamp, x.tw.ts_recent_stamp, x.tw.ts_recent) == (t, t, NEWER_TS)
    expect_timewait_ack(res, x.tw, t=t)  # the ACK echoes the FIN's TSval


def test_fw2_fin_without_timestamp_keeps_entry_stamp() -> None:
    """K FIN_WAIT2 branch: no timestamp -> stamps stay (tcp_tw_reuse_delay counts from T0)."""
    x = linux(tw_in_fin_wait2())
    x.send(from_peer(flags=Flags.FIN | Flags.ACK, tsval=None), t=T0 + 5 * SEC)
    assert (x.tw.entry_stamp, x.tw.ts_recent_stamp, x.tw.ts_recent) == (T0, T0, TS_RECENT)


def test_fw2_fin_is_acked_even_when_rate_limited() -> None:
    """The FIN returns TCP_TW_ACK directly, not through tcp_timewait_check_oow_rate_limit()."""
    x = linux(tw_in_fin_wait2())
    x.send(from_peer(seq=RCV_NXT - 100), t=T1)  # arms the OOW rate limit
    res = x.send(from_peer(flags=Flags.FIN | Flags.ACK), t=T1 + 1 * MS)
    expect_reply(res, flags=Flags.ACK, seq=SND_NXT, ack=RCV_NXT + 1)


def test_fw2_new_data_gets_rst() -> None:
    """Ref 1.4: data after the app closed -> TCP_TW_RST; RST seq = the segment's ACK; killed."""
    x = linux(tw_in_fin_wait2())
    res = x.send(from_peer(payload=b"GET / HTTP/1.1\r\n"))
    assert res.verdict is TwVerdict.RST and res.killed
    expect_reply(res, flags=Flags.RST, seq=SND_NXT, ack=0, tsval=None)


def test_fw2_fin_not_at_rcv_nxt_gets_rst() -> None:
    """Ref 1.4: a FIN carrying new data (end_seq != rcv_nxt + 1) -> TCP_TW_RST."""
    x = linux(tw_in_fin_wait2())
    res = x.send(from_peer(payload=b"bye", flags=Flags.FIN | Flags.ACK))
    assert res.kind is SegmentKind.FW2_NEW_DATA and res.killed
    expect_reply(res, flags=Flags.RST, seq=SND_NXT, ack=0)


def test_fw2_syn_in_window_gets_rst() -> None:
    """Ref 1.4: SYN, seq >= rcv_nxt -> TCP_TW_RST; no ACK flag -> <SEQ=0><ACK=seq+1><RST,ACK>."""
    x = linux(tw_in_fin_wait2())
    res = x.send(syn(seq=RCV_NXT + 10))
    assert res.kind is SegmentKind.FW2_SYN_IN_WINDOW and res.killed
    expect_reply(res, flags=Flags.RST | Flags.ACK, seq=0, ack=RCV_NXT + 11)


def test_fw2_rst_in_window_kills_even_with_rfc1337() -> None:
    """Ref 6: tcp_rfc1337 does not protect FIN_WAIT2 minisockets (`goto kill`)."""
    x = linux(tw_in_fin_wait2(), config=KernelConfig(tcp_rfc1337=1))
    res = x.send(from_peer(seq=RCV_NXT + 100, flags=Flags.RST))
    assert res.kind is SegmentKind.FW2_RST_IN_WINDOW and res.killed
    expect_nothing(res)


def test_fw2_out_of_window_is_acked_and_rate_limited() -> None:
    """Ref 1.4: outside [rcv_nxt, rcv_nxt + rcv_wnd) -> ACK, rate-limited (ACKSkippedFinWait2)."""
    x = linux(tw_in_fin_wait2())
    old = from_peer(seq=RCV_NXT - 100)
    res = x.send(old, t=T1)
    assert res.kind is SegmentKind.FW2_OUT_OF_WINDOW
    expect_timewait_ack(res, x.tw, t=T1)
    expect_nothing(x.send(old, t=T1 + 10 * MS))
    assert x.counters[C.ACK_SKIPPED_FINWAIT2] == 1 and x.counters[C.ACK_SKIPPED_TIMEWAIT] == 0


def test_fw2_out_of_window_rst_is_acked() -> None:
    """K FIN_WAIT2 branch tests the window before RST: an out-of-window RST gets an ACK."""
    x = linux(tw_in_fin_wait2())
    res = x.send(from_peer(seq=RCV_NXT - 100, flags=Flags.RST))
    assert res.kind is SegmentKind.FW2_RST_OUT_OF_WINDOW and not res.killed
    expect_timewait_ack(res, x.tw, t=T1)


def test_fw2_paws_rejected_segment_is_acked() -> None:
    """Ref 1.4: PAWS reject -> ACK (rate-limited), no PAWSTimewait (counted only in TIME_WAIT)."""
    x = linux(tw_in_fin_wait2())
    res = x.send(from_peer(flags=Flags.FIN | Flags.ACK, tsval=OLDER_TS))
    assert res.kind is SegmentKind.FW2_PAWS_REJECT
    expect_timewait_ack(res, x.tw, t=T1)
    assert x.tw.substate is TcpState.FIN_WAIT_2 and x.counters[C.PAWS_TIMEWAIT] == 0


def test_fw2_duplicate_ack_dropped_silently() -> None:
    """Ref 1.4: zero-length / old ACK in window -> dropped ('Dup ACK?')."""
    x = linux(tw_in_fin_wait2())
    res = x.send(from_peer())
    assert res.kind is SegmentKind.FW2_DUP_OR_NO_ACK
    expect_nothing(res)


def test_fw2_segment_without_ack_dropped() -> None:
    """Ref 1.4: no ACK flag -> dropped, even with new data."""
    x = linux(tw_in_fin_wait2())
    res = x.send(from_peer(flags=Flags.NONE, ack=0, payload=b"x"))
    assert res.kind is SegmentKind.FW2_DUP_OR_NO_ACK and not res.killed
    expect_nothing(res)


def test_fw2_timer_not_extended() -> None:
    """Ref 1.4: the FIN_WAIT2 timer is never extended by incoming segments."""
    x = linux(tw_in_fin_wait2())
    for seg in (from_peer(), from_peer(seq=RCV_NXT - 100), from_peer(seq=RCV_NXT + 99_999)):
        x.send(seg, t=T0 + 20 * SEC)
    assert x.tw.expires == T0 + FW2_TIMEOUT


def test_fw2_expiry_is_silent() -> None:
    """Ref 2.2: a FIN_WAIT2 minisocket expires silently; the caller just unhashes it."""
    tw = tw_in_fin_wait2()
    assert not tw.expired(T0 + FW2_TIMEOUT - 1) and tw.expired(T0 + FW2_TIMEOUT)
    assert tw.next_deadline() == T0 + FW2_TIMEOUT


# ---- creation: ref 1.2, 5, 9.2 ----------------------------------------------------------------


def test_create_sets_entry_stamp_and_deadline() -> None:
    """K tcp_time_wait(): tw_entry_stamp = now; timer armed for the timeout given."""
    tw = tw_in_time_wait(now=T0, timeout=60 * SEC)
    assert (tw.entry_stamp, tw.expires, tw.first_timeout) == (T0, T0 + 60 * SEC, 60 * SEC)
    assert tw.last_oow_ack_time is None


def test_create_rejects_a_full_socket_state() -> None:
    """A minisocket's substate is TIME_WAIT or FIN_WAIT2 (inet_twsk_alloc(state))."""
    with pytest.raises(ModelError):
        tw_in_time_wait(substate=TcpState.ESTABLISHED)
    with pytest.raises(ModelError):
        tw_in_time_wait(timeout=-1)


def test_minisocket_is_a_bind_owner_in_both_substates() -> None:
    """Ref 1.2: sk_state is TCP_TIME_WAIT for both substates; tw_reuse copied from sk_reuse."""
    for tw in (tw_in_time_wait(reuse=True), tw_in_fin_wait2(reuse=True)):
        assert tw.is_timewait and not tw.is_listener
        assert (tw.bind_addr, tw.bind_port, tw.reuseaddr) == ("198.18.0.1", 40000, True)


def test_arm_counter_twkilled_for_4s_or_less() -> None:
    """K __inet_twsk_schedule(): `kill = timeo <= 4*HZ` -> LINUX_MIB_TIMEWAITKILLED [Lab E12]."""
    assert arm_counter(4 * SEC) == C.TW_KILLED
    assert arm_counter(700 * MS) == C.TW_KILLED


def test_arm_counter_tw_above_4s() -> None:
    """K __inet_twsk_schedule(): longer waits (TIME_WAIT, long FIN_WAIT2) count TW."""
    assert arm_counter(4 * SEC + 1) == C.TW
    assert arm_counter(60 * SEC) == C.TW


def test_overflow_when_count_reaches_max_tw_buckets() -> None:
    """K inet_twsk_alloc(): tw_refcount - 1 >= tcp_max_tw_buckets -> NULL (ref 5)."""
    cfg = KernelConfig(tcp_max_tw_buckets=3)
    assert tw_overflow(3, cfg) and tw_overflow(4, cfg)


def test_no_overflow_below_max_tw_buckets() -> None:
    """K inet_twsk_alloc(): below the limit the minisocket is allocated."""
    assert not tw_overflow(2, KernelConfig(tcp_max_tw_buckets=3))
    assert not tw_overflow(131_071, LINUX_DEFAULTS)


def test_zero_or_negative_max_tw_buckets_skips_every_wait() -> None:
    """Ref 5 / config: tcp_max_tw_buckets <= 0 makes every TIME_WAIT overflow."""
    assert tw_overflow(0, KernelConfig(tcp_max_tw_buckets=0))
    assert tw_overflow(0, KernelConfig(tcp_max_tw_buckets=-1))


# ---- FIN_WAIT2 timeout: ref 2.2 -----------------------------------------------------------------


def test_fin_time_uses_tcp_fin_timeout() -> None:
    """include/net/tcp.h tcp_fin_time(): linger2 unset -> sysctl tcp_fin_timeout."""
    assert tcp_fin_time(KernelConfig(tcp_fin_timeout=30)) == 30 * SEC


def test_fin_time_linger2_overrides_sysctl() -> None:
    """tcp_fin_time(): `tp->linger2 ? : sysctl_tcp_fin_timeout`."""
    assert tcp_fin_time(KernelConfig(tcp_fin_timeout=30), linger2=10 * SEC) == 10 * SEC


def test_fin_time_floor_is_3_5_rto() -> None:
    """tcp_fin_time(): never below (rto << 2) - (rto >> 1) = 3.5 * RTO."""
    assert tcp_fin_time(KernelConfig(tcp_fin_timeout=0), rto=1 * SEC) == 3_500 * MS
    assert tcp_fin_time(KernelConfig(tcp_fin_timeout=-5)) == 700 * MS


def test_fw2_timeout_up_to_60s_is_one_minisocket() -> None:
    """K __tcp_close(): tmo <= TCP_TIMEWAIT_LEN -> tcp_time_wait(sk, TCP_FIN_WAIT2, tmo)."""
    plan = fin_wait2_plan(KernelConfig(tcp_fin_timeout=60))
    assert (plan.abort, plan.full_socket_wait, plan.minisocket_timeout) == (False, 0, 60 * SEC)


def test_fw2_timeout_above_60s_splits_into_two_halves() -> None:
    """K tcp_keepalive_timer(): fin_timeout=70 -> 10 s full socket + 10 s minisocket [Lab E15]."""
    plan = fin_wait2_plan(KernelConfig(tcp_fin_timeout=70))
    assert (plan.full_socket_wait, plan.minisocket_timeout) == (10 * SEC, 10 * SEC)
    assert plan.total == 20 * SEC


def test_fw2_timeout_120s_total_equals_tmo() -> None:
    """Ref 2.2: total wait is 2 * (tmo - 60 s), equal to tmo only at 120 s."""
    assert fin_wait2_plan(KernelConfig(tcp_fin_timeout=120)).total == 120 * SEC
    assert fin_wait2_plan(KernelConfig(tcp_fin_timeout=90)).total == 60 * SEC


def test_fw2_negative_linger2_aborts() -> None:
    """K __tcp_close(): TCP_LINGER2 < 0 -> RST at once, TCPAbortOnLinger."""
    assert fin_wait2_plan(LINUX_DEFAULTS, linger2=-1).abort


# ---- rfc9293 profile ----------------------------------------------------------------------------


def test_rfc9293_retransmitted_fin_restarts_240s() -> None:
    """RFC 9293 §3.10.7.4 fifth/eighth steps: ACK the FIN, restart 2 MSL = 240 s (§3.4.2)."""
    x = rfc(tw_in_time_wait(timeout=RFC_TW_LEN))
    t = T0 + 100 * SEC
    res = x.send(from_peer(seq=RCV_NXT - 1, flags=Flags.FIN | Flags.ACK), t=t)
    expect_reply(res, flags=Flags.ACK, seq=SND_NXT, ack=RCV_NXT)
    assert x.tw.expires == t + RFC_TW_LEN


def test_rfc9293_bare_ack_does_not_restart() -> None:
    """RFC 9293 §3.10.7.4 fifth step: only a retransmitted FIN restarts the TIME-WAIT timer."""
    x = rfc(tw_in_time_wait(timeout=RFC_TW_LEN))
    res = x.send(from_peer(), t=T0 + 100 * SEC)
    expect_nothing(res)
    assert x.tw.expires == T0 + RFC_TW_LEN


def test_rfc9293_unacceptable_segments_acked_without_restart() -> None:
    """RFC 9293 §3.10.7.4 first step: unacceptable -> <SEQ=SND.NXT><ACK=RCV.NXT><ACK>, drop."""
    x = rfc(tw_in_time_wait(timeout=RFC_TW_LEN))
    for seg in (from_peer(payload=b"data"), from_peer(seq=RCV_NXT + 9)):
        expect_reply(x.send(seg), flags=Flags.ACK, seq=SND_NXT, ack=RCV_NXT)
    assert x.tw.expires == T0 + RFC_TW_LEN


def test_rfc9293_acks_are_not_rate_limited() -> None:
    """The 500 ms OOW limit is Linux's (tcp_invalid_ratelimit); RFC 9293 has none."""
    x = rfc(tw_in_time_wait())
    oow = from_peer(seq=RCV_NXT + 9)
    for i in range(3):
        assert x.send(oow, t=T1 + i * MS).reply is not None
    assert x.counters[C.ACK_SKIPPED_TIMEWAIT] == 0


def test_rfc9293_rst_closes_time_wait_regardless_of_rfc1337() -> None:
    """RFC 9293 §3.10.7.4 second step: TIME-WAIT + RST -> CLOSED; tcp_rfc1337 is Linux-only."""
    x = rfc(tw_in_time_wait(), config=KernelConfig(tcp_rfc1337=1))
    assert x.send(from_peer(flags=Flags.RST)).killed


def test_rfc9293_rst_out_of_window_dropped() -> None:
    """RFC 9293 §3.10.7.4 first step: an unacceptable RST is dropped."""
    x = rfc(tw_in_time_wait())
    res = x.send(from_peer(seq=RCV_NXT + 5, flags=Flags.RST))
    assert not res.killed
    expect_nothing(res)


def test_rfc9293_syn_accepted_only_with_higher_seq() -> None:
    """RFC 1122 4.2.2.13 / MAY-2: SYN needs a larger seq; a newer TSval alone is not enough."""
    x = rfc(tw_in_time_wait())
    low = x.send(syn(seq=RCV_NXT - 1, tsval=NEWER_TS))
    assert low.kind is SegmentKind.SYN_UNACCEPTABLE
    expect_reply(low, flags=Flags.ACK, seq=SND_NXT, ack=RCV_NXT)  # challenge ACK (4th step)
    high = x.send(syn(seq=RCV_NXT + 1, tsval=OLDER_TS))  # no PAWS in this profile
    assert high.verdict is TwVerdict.SYN and high.isn == ISN_FROM_TW


def test_rfc9293_has_no_paws() -> None:
    """rfc9293 profile without RFC 7323: an old TSval does not make a segment unacceptable."""
    x = rfc(tw_in_time_wait())
    res = x.send(from_peer(tsval=OLDER_TS))
    assert res.kind is SegmentKind.BARE_ACK_IN_WINDOW and x.counters[C.PAWS_TIMEWAIT] == 0
    assert x.tw.ts_recent == TS_RECENT


def test_rfc9293_fw2_fin_enters_240s_time_wait() -> None:
    """RFC 9293 §3.10.7.4 eighth step: FIN-WAIT-2 + FIN -> TIME-WAIT, 2 MSL timer."""
    x = rfc(tw_in_fin_wait2())
    t = T0 + 3 * SEC
    res = x.send(from_peer(flags=Flags.FIN | Flags.ACK), t=t)
    assert x.tw.substate is TcpState.TIME_WAIT and x.tw.expires == t + RFC_TW_LEN
    expect_reply(res, flags=Flags.ACK, seq=SND_NXT, ack=RCV_NXT + 1)


def test_rfc9293_fw2_syn_gets_challenge_ack() -> None:
    """RFC 9293 §3.10.7.4 fourth step (RFC 5961 §4): SYN in a synchronized state -> ACK."""
    x = rfc(tw_in_fin_wait2())
    res = x.send(syn(seq=RCV_NXT + 10))
    assert not res.killed
    expect_reply(res, flags=Flags.ACK, seq=SND_NXT, ack=RCV_NXT)


def test_rfc9293_fw2_out_of_window_rst_dropped() -> None:
    """RFC 9293 §3.10.7.4 first step: unacceptable RST dropped (Linux ACKs it instead)."""
    res = rfc(tw_in_fin_wait2()).send(from_peer(seq=RCV_NXT - 100, flags=Flags.RST))
    expect_nothing(res)


def test_rfc9293_fw2_new_data_gets_rst() -> None:
    """RFC 9293 §3.6.1 SHLD-3: data received after CLOSE -> RST."""
    res = rfc(tw_in_fin_wait2()).send(from_peer(payload=b"x"))
    assert res.killed
    expect_reply(res, flags=Flags.RST, seq=SND_NXT, ack=0)


# ---- the tables themselves --------------------------------------------------------------------

TIME_WAIT_KINDS = [k for k in SegmentKind if not k.name.startswith("FW2_")]
FIN_WAIT2_KINDS = [k for k in SegmentKind if k.name.startswith("FW2_")]

# One segment per row: proves every row is reachable by the classifier.
_TW_EXAMPLES: dict[SegmentKind, tuple[Segment, KernelConfig, int]] = {
    SegmentKind.BARE_ACK_IN_WINDOW: (from_peer(), LINUX_DEFAULTS, T1),
    SegmentKind.RST_IN_WINDOW_RFC1337_OFF: (from_peer(flags=Flags.RST), LINUX_DEFAULTS, T1),
    SegmentKind.RST_IN_WINDOW_RFC1337_ON: (
        from_peer(flags=Flags.RST),
        KernelConfig(tcp_rfc1337=1),
        T1,
    ),
    SegmentKind.RST_OTHER: (from_peer(seq=1, flags=Flags.RST), LINUX_DEFAULTS, T1),
    SegmentKind.RST_PAWS_REJECT: (
        from_peer(flags=Flags.RST, tsval=OLDER_TS),
        LINUX_DEFAULTS,
        T1,
    ),
    SegmentKind.SYN_ACCEPTABLE: (syn(seq=RCV_NXT + 1), LINUX_DEFAULTS, T1),
    SegmentKind.SYN_UNACCEPTABLE: (syn(seq=RCV_NXT - 1, tsval=None), LINUX_DEFAULTS, T1),
    SegmentKind.PAWS_REJECT: (from_peer(tsval=OLDER_TS), LINUX_DEFAULTS, T1),
    SegmentKind.FIN_RETRANSMIT: (
        from_peer(seq=RCV_NXT - 1, flags=Flags.FIN | Flags.ACK),
        LINUX_DEFAULTS,
        T1,
    ),
    SegmentKind.DATA_OR_FIN: (from_peer(payload=b"x"), LINUX_DEFAULTS, T1),
    SegmentKind.OOW_ACK: (from_peer(seq=RCV_NXT + 1), LINUX_DEFAULTS, T1),
    SegmentKind.NO_ACK_OTHER: (from_peer(seq=1, flags=Flags.NONE), LINUX_DEFAULTS, T1),
}
_FW2_EXAMPLES: dict[SegmentKind, Segment] = {
    SegmentKind.FW2_PAWS_REJECT: from_peer(tsval=OLDER_TS),
    SegmentKind.FW2_OUT_OF_WINDOW: from_peer(seq=RCV_NXT - 1),
    SegmentKind.FW2_RST_OUT_OF_WINDOW: from_peer(seq=RCV_NXT - 1, flags=Flags.RST),
    SegmentKind.FW2_RST_IN_WINDOW: from_peer(flags=Flags.RST),
    SegmentKind.FW2_SYN_IN_WINDOW: syn(seq=RCV_NXT),
    SegmentKind.FW2_DUP_OR_NO_ACK: from_peer(),
    SegmentKind.FW2_NEW_DATA: from_peer(payload=b"x"),
    SegmentKind.FW2_FIN_AT_RCV_NXT: from_peer(flags=Flags.FIN | Flags.ACK),
}


@pytest.mark.parametrize("kind", TIME_WAIT_KINDS, ids=lambda k: k.name)
def test_every_time_wait_row_is_reachable(kind: SegmentKind) -> None:
    """Each ref 1.3 row has a segment that reaches it (the table has no dead rows)."""
    seg, cfg, t = _TW_EXAMPLES[kind]
    assert classify_time_wait(tw_in_time_wait(), seg, cfg, t) is kind


@pytest.mark.parametrize("kind", FIN_WAIT2_KINDS, ids=lambda k: k.name)
def test_every_fin_wait2_row_is_reachable(kind: SegmentKind) -> None:
    """Each ref 1.4 row has a segment that reaches it."""
    assert classify_fin_wait2(tw_in_fin_wait2(), _FW2_EXAMPLES[kind], LINUX_DEFAULTS, T1) is kind


@pytest.mark.parametrize("profile", [LINUX, RFC9293], ids=lambda p: p.name)
def test_every_kind_has_a_row_in_every_profile(profile: Profile) -> None:
    """Profiles are data: each profile's tables cover every kind of their substate."""
    assert set(TIME_WAIT_RULES[profile.rules]) == set(TIME_WAIT_KINDS)
    assert set(FIN_WAIT2_RULES[profile.rules]) == set(FIN_WAIT2_KINDS)
    assert rules_for(TcpState.TIME_WAIT, profile) is TIME_WAIT_RULES[profile.rules]
    assert rules_for(TcpState.FIN_WAIT_2, profile) is FIN_WAIT2_RULES[profile.rules]


def test_every_row_names_its_source() -> None:
    """STYLE 1/15: each row cites the kernel function or RFC section it comes from."""
    for tables in (TIME_WAIT_RULES, FIN_WAIT2_RULES):
        for rules in tables.values():
            for kind in rules:
                assert "K " in rules[kind].source or "RFC" in rules[kind].source, kind


def test_describe_rules_lists_every_row() -> None:
    """describe_rules() is the generated documentation: every table and row appears."""
    text = describe_rules()
    for name in ("time-wait/linux", "time-wait/rfc9293", "fin-wait-2/linux"):
        assert f"[{name}]" in text
    for kind in SegmentKind:
        assert kind.name in text


def test_unknown_profile_rules_raise_profile_error() -> None:
    """A profile whose rules key has no table is refused with ProfileError."""
    odd = Profile(name="bsd", description="", time_wait_len=TW_LEN, rules="bsd")
    with pytest.raises(ProfileError):
        rules_for(TcpState.TIME_WAIT, odd)


def test_result_rule_names_table_and_row() -> None:
    """TwResult.rule is '<table>.<KIND>' for traces."""
    res = linux(tw_in_time_wait()).send(from_peer())
    assert res.rule == "time-wait/linux.BARE_ACK_IN_WINDOW"


# ---- properties (hypothesis) --------------------------------------------------------------------

_u32 = st.integers(min_value=0, max_value=MASK)
_near = st.integers(min_value=-70_000, max_value=70_000).map(lambda d: (RCV_NXT + d) & MASK)
_segments = st.builds(
    lambda seq, ack, flags, payload, ts: Segment(
        src="198.18.0.2",
        sport=80,
        dst="198.18.0.1",
        dport=40000,
        seq=seq,
        ack=ack,
        flags=Flags(flags),
        payload=payload,
        tsval=ts,
    ),
    seq=st.one_of(_near, _u32),
    ack=_u32,
    flags=st.integers(min_value=0, max_value=0x1F),
    payload=st.binary(max_size=3),
    ts=st.one_of(st.none(), st.integers(TS_RECENT - 1000, TS_RECENT + 1000)),
)
_times = st.integers(min_value=T0, max_value=T0 + 59 * SEC)
_profiles = st.sampled_from([LINUX, RFC9293])
_configs = st.sampled_from([LINUX_DEFAULTS, KernelConfig(tcp_rfc1337=1)])
_minisockets = st.sampled_from(["tw", "tw-nots", "fw2"])


def _fresh(which: str) -> MiniSocket:
    if which == "tw":
        return tw_in_time_wait()
    if which == "tw-nots":
        return tw_without_timestamps()
    return tw_in_fin_wait2()


@settings(max_examples=300, deadline=None)
@given(which=_minisockets, seg=_segments, t=_times, profile=_profiles, cfg=_configs)
def test_replies_follow_timewait_ack_or_reset_format(
    which: str, seg: Segment, t: int, profile: Profile, cfg: KernelConfig
) -> None:
    """tcp_v4_timewait_ack()/tcp_v4_send_reset(): every reply is one of the two kernel forms."""
    tw = _fresh(which)
    rcv_before = tw.rcv_nxt
    res = Exchange(tw, config=cfg, profile=profile).send(seg, t=t)
    if res.reply is None:
        return
    if res.reply.rst:
        assert res.verdict is TwVerdict.RST and res.killed
    else:
        assert res.reply.flags == Flags.ACK and res.reply.seq == SND_NXT
        assert res.reply.ack in (rcv_before, (rcv_before + 1) & MASK)


@settings(max_examples=300, deadline=None)
@given(which=_minisockets, seg=_segments, t=_times, profile=_profiles, cfg=_configs)
def test_timer_is_untouched_or_restarted_to_full_length(
    which: str, seg: Segment, t: int, profile: Profile, cfg: KernelConfig
) -> None:
    """inet_twsk_reschedule() always uses the full TIME_WAIT length; nothing else moves it."""
    tw = _fresh(which)
    before = tw.expires
    Exchange(tw, config=cfg, profile=profile).send(seg, t=t)
    assert tw.expires in (before, t + profile.time_wait_len)


@settings(max_examples=300, deadline=None)
@given(which=_minisockets, seg=_segments, t=_times, cfg=_configs)
def test_time_wait_substate_never_returns_rst(
    which: str, seg: Segment, t: int, cfg: KernelConfig
) -> None:
    """Ref 1.3: TCP_TW_RST is produced only in substate FIN_WAIT2."""
    tw = _fresh(which)
    substate = tw.substate
    res = Exchange(tw, config=cfg).send(seg, t=t)
    if substate is TcpState.TIME_WAIT:
        assert res.verdict is not TwVerdict.RST


@settings(max_examples=300, deadline=None)
@given(seg=_segments, t=_times)
def test_rfc9293_restarts_only_on_retransmitted_fin(seg: Segment, t: int) -> None:
    """RFC 9293 §3.10.7.4: in TIME-WAIT only a retransmitted FIN restarts the 2 MSL timer."""
    tw = tw_in_time_wait(timeout=RFC_TW_LEN)
    res = Exchange(tw, profile=RFC9293).send(seg, t=t)
    if tw.expires != T0 + RFC_TW_LEN:
        assert res.kind is SegmentKind.FIN_RETRANSMIT


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=0, max_value=800 * MS), min_size=1, max_size=20),
    limit_ms=st.integers(min_value=1, max_value=1000),
)
def test_at_most_one_pure_oow_ack_per_ratelimit_interval(gaps: list[int], limit_ms: int) -> None:
    """__tcp_oow_rate_limited(): sent pure ACKs are always >= tcp_invalid_ratelimit apart."""
    x = linux(tw_in_time_wait(), config=KernelConfig(tcp_invalid_ratelimit=limit_ms))
    oow = from_peer(seq=RCV_NXT + 1000)
    t, sent = T1, []
    for gap in gaps:
        t += gap
        if x.send(oow, t=t).reply is not None:
            sent.append(t)
    assert sent and sent[0] == T1 + gaps[0]
    assert all(b - a >= limit_ms * MS for a, b in itertools.pairwise(sent))
    assert len(sent) + x.counters[C.ACK_SKIPPED_TIMEWAIT] == len(gaps)


@settings(max_examples=200, deadline=None)
@given(which=_minisockets, seg=_segments, t=_times, cfg=_configs)
def test_classification_is_pure(which: str, seg: Segment, t: int, cfg: KernelConfig) -> None:
    """classify_*() is a pure function: same inputs, same kind, minisocket unchanged."""
    tw = _fresh(which)
    snapshot = repr(tw)
    classify = classify_fin_wait2 if tw.substate is TcpState.FIN_WAIT_2 else classify_time_wait
    assert classify(tw, seg, cfg, t) is classify(tw, seg, cfg, t)
    assert repr(tw) == snapshot
