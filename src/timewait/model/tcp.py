"""Rules a full socket and a minisocket share: PAWS, the window test, the out-of-window ACK rate
limit.

Theory of operation
-------------------
Linux writes these once, in include/net/tcp.h and tcp_input.c, and calls them from both
`tcp_validate_incoming()` (full sockets, timewait.model.connection) and
`tcp_timewait_state_process()` (minisockets, timewait.model.minisock); so does the model.
Each socket keeps its own state (ts_recent and its stamp, the time of its last out-of-window
ACK) and passes it in. Times are integer ns; the kernel keeps ts_recent_stamp in whole seconds
(ktime_get_seconds()), so the PAWS age tests compare whole seconds too.
"""

from __future__ import annotations

from typing import Final, Protocol

from timewait.config import TCP_PAWS_MSL, KernelConfig
from timewait.model.counters import Counters
from timewait.model.segment import Segment
from timewait.model.seq import seq_diff, seq_gt, seq_lt
from timewait.units import SEC

# include/net/tcp.h TCP_PAWS_WINDOW 1: a full socket lets a TSval one tick older than ts_recent
# pass (tcp_paws_discard()); minisockets use a window of 0 (tcp_paws_reject()).
TCP_PAWS_WINDOW: Final = 1
# include/net/tcp.h TCP_PAWS_WRAP (INT_MAX / USEC_PER_SEC) s: a ts_recent that old is stale and
# no longer enforced (RFC 7323 §5.5).
TCP_PAWS_WRAP: Final = (2**31 - 1) // 1_000_000 * SEC


def paws_check(ts_recent: int, ts_recent_stamp: int | None, tsval: int, now: int, win: int) -> bool:
    """include/net/tcp.h tcp_paws_check(): True when a segment with `tsval` passes PAWS (RFC 7323
    §5.3) against the socket's ts_recent, allowing `win` ticks of age.

    Passes when (s32)(ts_recent - tsval) <= win, when ts_recent is TCP_PAWS_WRAP old, or when
    ts_recent is 0 ("Some OSes send SYN and SYNACK messages with tsval=0 tsecr=0").
    """
    if seq_diff(ts_recent, tsval) <= win:
        return True
    if ts_recent_stamp is not None and now // SEC >= (ts_recent_stamp + TCP_PAWS_WRAP) // SEC:
        return True
    return not ts_recent


def paws_reject(
    ts_recent: int, ts_recent_stamp: int | None, tsval: int, now: int, *, rst: bool
) -> bool:
    """include/net/tcp.h tcp_paws_reject() (the minisocket's test, window 0): an RST is let
    through once ts_recent_stamp is TCP_PAWS_MSL (60 s) old."""
    if paws_check(ts_recent, ts_recent_stamp, tsval, now, 0):
        return False
    stamp = ts_recent_stamp if ts_recent_stamp is not None else 0
    return not (rst and now // SEC >= (stamp + TCP_PAWS_MSL) // SEC)


class OowClock(Protocol):
    """A socket that remembers when it last sent an out-of-window ACK (None: never)."""

    last_oow_ack_time: int | None


def oow_rate_limited(
    sk: OowClock,
    seg: Segment | None,
    now: int,
    config: KernelConfig,
    counters: Counters,
    skipped: str,
) -> bool:
    """K tcp_input.c tcp_oow_rate_limited() / __tcp_oow_rate_limited(): True if the ACK that
    would answer `seg` must be skipped (counted under `skipped`).

    Segments with payload or FIN and no SYN are never limited ("Data packets without SYNs are
    not likely part of an ACK loop") and leave the clock alone. Otherwise one ACK per
    tcp_invalid_ratelimit (500 ms) per socket: limited if 0 <= now - last < limit, else the
    clock moves to now. `seg=None` is the unconditional form (tcp_send_challenge_ack()).
    """
    if seg is not None and seg.seg_len != 0 and not seg.syn:
        return False
    last = sk.last_oow_ack_time
    if last is not None and 0 <= now - last < config.invalid_ratelimit_ns:
        counters[skipped] += 1
        return True
    sk.last_oow_ack_time = now
    return False


def in_window(seq: int, end_seq: int, s_win: int, e_win: int) -> bool:
    """K tcp_minisocks.c tcp_in_window(), which tcp_check_req() (a request socket) and
    tcp_timewait_state_process() (a minisocket) both call: a segment is acceptable when it starts
    at the window's left edge, overlaps the window, or is empty at its right edge."""
    if seq == s_win:
        return True
    if seq_gt(end_seq, s_win) and seq_lt(seq, e_win):
        return True
    return seq == e_win and seq == end_seq
