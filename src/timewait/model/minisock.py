"""TIME_WAIT and orphaned FIN_WAIT2 minisockets: what Linux does with every segment that hits one.

Theory of operation
-------------------
When an active closer finishes (or an orphan reaches FIN_WAIT_2), Linux swaps the full socket
for a ~256 B `tcp_timewait_sock` that keeps only what it needs to answer packets (K
tcp_minisocks.c `tcp_time_wait()`, ref 1.2). `MiniSocket` is that record. Its `sk_state` is
always TCP_TIME_WAIT; `substate` says TIME_WAIT (6) or FIN_WAIT2 (5), and everything that counts
"tw" counts both (`is_timewait` is True for both).

Every incoming segment goes through one pure decision and one table lookup:

1. `classify_time_wait()` / `classify_fin_wait2()` turn (minisocket, segment, config, now) into a
   `SegmentKind`, following the order of K tcp_minisocks.c `tcp_timewait_state_process()`
   exactly (ref 1.3, 1.4). The only input from the profile is whether timestamps are processed
   at all (`RuleSet.timestamps`): RFC 9293 without RFC 7323 has no PAWS and no TSval SYN test.
2. `TIME_WAIT_RULES[profile.rules][kind]` (or `FIN_WAIT2_RULES`) gives an `Action`: verdict,
   timer restart, kill, timestamp refresh, rate limit, counter, and the source it comes from.
   A profile selects a table; there is no profile `if` anywhere else.
3. `MiniSocket.process()` applies the action in the kernel's order (restart before the rate
   limit, the rate limit before the reply) and returns a `TwResult`: the host's `Outcome`
   (timewait.model.outcome: the reply, the substate change, KILL or Reopen, the deadline) plus
   the verdict and the row that decided it.

The two profiles side by side (TIME_WAIT substate; `describe_rules()` prints every table):

    kind                       linux (6.18)                       rfc9293
    BARE_ACK_IN_WINDOW         drop, restart 60 s, TS refresh     drop
    RST_IN_WINDOW_RFC1337_OFF  kill                               kill (§3.10.7.4 2nd step)
    RST_IN_WINDOW_RFC1337_ON   drop, no restart, TS refresh       kill (sysctl is Linux-only)
    RST_OTHER / RST_PAWS_REJ.  drop (PAWS one counts PAWSTimewait) drop
    FIN_RETRANSMIT             ACK (never rate-limited), restart  ACK, restart 240 s (5th step)
    DATA_OR_FIN                ACK (never rate-limited), restart  ACK (1st step)
    OOW_ACK                    ACK (rate-limited), restart        ACK (1st step)
    NO_ACK_OTHER               ACK (rate-limited), no restart     ACK (1st step)
    PAWS_REJECT                ACK (rate-limited), restart, count (not produced: no timestamps)
    SYN_ACCEPTABLE             SYN: ISN = snd_nxt + 65537         SYN (seq > rcv_nxt only)
    SYN_UNACCEPTABLE           ACK (rate-limited), no restart     challenge ACK (4th step)

Time is integer ns. Replies are built here (`tcp_v4_timewait_ack()`, `tcp_v4_send_reset()`, which
counts OutRsts), but the caller sends them; timers are deadlines (`expires`) the caller schedules
(`on_timer()` says when the wait is over). Nothing here reads a clock.

Beside the segment rules live the other TIME_WAIT rules: when connect() may take a minisocket
over (`tw_unique()`, K tcp_twsk_unique(), shared with the flow engine through
`tw_reuse_enabled()` and `tw_reuse_delay_passed()`), which counter its creation bumps, when
tcp_max_tw_buckets refuses one, and how long an orphan waits in FIN_WAIT_2 (`fin_wait2_plan()`,
which the full socket follows too).

Kernel vs reference notes (the kernel wins):
- Reply TS option: `tcp_v4_send_ack()` adds it iff `tsecr` (= tw_ts_recent) != 0, not iff
  ts_recent_stamp is set. Same thing in practice; we follow the kernel.
- An out-of-window RST on a FIN_WAIT2 minisocket is answered with a (rate-limited) ACK: the
  FIN_WAIT2 branch tests the window before it looks at RST. Ref 1.4 does not list this row.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Final

from timewait.config import KernelConfig, Profile
from timewait.errors import ModelError, ProfileError
from timewait.model import counters as C
from timewait.model.clock import tsval as clock_tsval
from timewait.model.counters import Counters
from timewait.model.outcome import KILL, Outcome, Reopen, StateChange, TableOp
from timewait.model.segment import Flags, FourTuple, Segment, is_loopback, reset_reply
from timewait.model.seq import MASK, seq_add, seq_diff, seq_gt, seq_lt
from timewait.model.states import TCP_TIMEWAIT_LEN, TcpState
from timewait.model.tcp import in_window, oow_rate_limited, paws_reject
from timewait.units import MS, SEC

# -- named, sourced constants -------------------------------------------------------------------

# K tcp_minisocks.c tcp_timewait_state_process(): isn = tw_snd_nxt + 65535 + 2 (0 -> 1). The
# same gap is used by tcp_twsk_unique() for connect() takeovers (ref 1.5): `takeover_isn()`.
TW_ISN_GAP: Final = 65535 + 2
# K inet_timewait_sock.c __inet_twsk_schedule(): `kill = timeo <= 4*HZ` picks TWKilled over TW.
TW_KILL_THRESHOLD: Final = 4 * SEC
# include/net/tcp.h: TCP_RTO_MIN (HZ/5). Default RTO for the 3.5*RTO floor of tcp_fin_time().
TCP_RTO_MIN: Final = 200 * MS


# -- verdicts, kinds, actions -------------------------------------------------------------------


class TwVerdict(Enum):
    """What `tcp_timewait_state_process()` returns (include/net/tcp.h enum tcp_tw_status)."""

    SUCCESS = "success"  # TCP_TW_SUCCESS: nothing to send (dropped, consumed, or killed)
    ACK = "ack"  # TCP_TW_ACK / TCP_TW_ACK_OOW: send tcp_v4_timewait_ack()
    SYN = "syn"  # TCP_TW_SYN: new incarnation; caller looks for a listener
    RST = "rst"  # TCP_TW_RST: caller sends tcp_v4_send_reset() and kills the minisocket


class SegmentKind(Enum):
    """Every row of the decision tables. Names say which branch of the kernel function fires."""

    # substate TIME_WAIT (ref 1.3)
    BARE_ACK_IN_WINDOW = "zero-length, seq == rcv_nxt, not PAWS-rejected (ACK flag not checked)"
    RST_IN_WINDOW_RFC1337_OFF = "RST, seq == rcv_nxt, not PAWS-rejected, tcp_rfc1337 = 0"
    RST_IN_WINDOW_RFC1337_ON = "RST, seq == rcv_nxt, not PAWS-rejected, tcp_rfc1337 != 0"
    RST_OTHER = "RST with any other seq"
    RST_PAWS_REJECT = "RST PAWS-rejected (ts_recent_stamp younger than 60 s)"
    SYN_ACCEPTABLE = "SYN without ACK/RST: seq after rcv_nxt, or TSval newer than ts_recent"
    SYN_UNACCEPTABLE = "SYN without ACK/RST failing both tests"
    PAWS_REJECT = "non-RST segment with a TSval older than ts_recent"
    FIN_RETRANSMIT = "FIN with ACK ending exactly at rcv_nxt (the peer's FIN again)"
    DATA_OR_FIN = "ACK-bearing segment with payload or FIN (old or new data)"
    OOW_ACK = "ACK-bearing zero-length segment (or SYN|ACK) that is not the in-window bare ACK"
    NO_ACK_OTHER = "segment without ACK, SYN or RST that is not the in-window bare segment"
    # substate FIN_WAIT2 (ref 1.4)
    FW2_PAWS_REJECT = "PAWS-rejected segment (RST included)"
    FW2_OUT_OF_WINDOW = "non-RST segment outside [rcv_nxt, rcv_nxt + rcv_wnd)"
    FW2_RST_OUT_OF_WINDOW = "RST outside [rcv_nxt, rcv_nxt + rcv_wnd)"
    FW2_RST_IN_WINDOW = "RST inside the window"
    FW2_SYN_IN_WINDOW = "SYN inside the window with seq >= rcv_nxt"
    FW2_DUP_OR_NO_ACK = "no ACK flag, duplicate/old segment, or zero length"
    FW2_NEW_DATA = "new data, or a FIN not exactly at rcv_nxt"
    FW2_FIN_AT_RCV_NXT = "FIN exactly at rcv_nxt (the peer finally closes)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    """One table row: what the minisocket does for a SegmentKind, and where that rule comes from.

    `rate_limited` means "ask tcp_oow_rate_limited()": segments carrying payload or FIN without
    SYN are exempt inside that function, exactly as in the kernel.
    """

    verdict: TwVerdict
    source: str
    restart_timer: bool = False  # inet_twsk_reschedule(tw, TCP_TIMEWAIT_LEN)
    kill: bool = False  # inet_twsk_deschedule_put(), or the caller's kill after TCP_TW_RST
    refresh_ts: bool = False  # tw_ts_recent = TSval, tw_ts_recent_stamp = now (if TS seen)
    rate_limited: bool = False  # one ACK per tcp_invalid_ratelimit
    enter_time_wait: bool = False  # FIN_WAIT2 -> TIME_WAIT with a full timer
    counter: str | None = None  # kernel counter bumped whenever the row fires


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleSet:
    """A decision table for one substate and one profile. `rules[kind]` is the Action."""

    name: str
    timestamps: bool  # RFC 7323 processing: PAWS, TSval SYN test, ts_recent refresh
    actions: Mapping[SegmentKind, Action]

    def __getitem__(self, kind: SegmentKind) -> Action:
        try:
            return self.actions[kind]
        except KeyError:
            raise ModelError(f"rule table {self.name} has no row for {kind.name}") from None

    def __iter__(self) -> Iterator[SegmentKind]:
        return iter(self.actions)


def _table(rows: dict[SegmentKind, Action]) -> Mapping[SegmentKind, Action]:
    return MappingProxyType(rows)


_SRC_TW = "K tcp_minisocks.c tcp_timewait_state_process()"
_SRC_RL = "; K tcp_input.c tcp_oow_rate_limited()"

# Ref 1.3, row by row, in the kernel's decision order.
_TW_LINUX = RuleSet(
    name="time-wait/linux",
    timestamps=True,
    actions=_table(
        {
            SegmentKind.BARE_ACK_IN_WINDOW: Action(
                verdict=TwVerdict.SUCCESS,
                restart_timer=True,
                refresh_ts=True,
                source=f"{_SRC_TW}: in-window bare ACK; ref 1.3 row 1",
            ),
            SegmentKind.RST_IN_WINDOW_RFC1337_OFF: Action(
                verdict=TwVerdict.SUCCESS,
                kill=True,
                source=f"{_SRC_TW}: TIME_WAIT assassination (rfc1337 == 0); ref 1.3 row 2, ref 6",
            ),
            SegmentKind.RST_IN_WINDOW_RFC1337_ON: Action(
                verdict=TwVerdict.SUCCESS,
                refresh_ts=True,
                source=f"{_SRC_TW}: RST ignored, timer left alone (RFC 1337 fix F1); ref 1.3 row 3",
            ),
            SegmentKind.RST_OTHER: Action(
                verdict=TwVerdict.SUCCESS,
                source=f"{_SRC_TW}: out-of-window RST dropped; ref 1.3 row 4",
            ),
            SegmentKind.RST_PAWS_REJECT: Action(
                verdict=TwVerdict.SUCCESS,
                counter=C.PAWS_TIMEWAIT,
                source=f"{_SRC_TW}: PAWS-rejected RST dropped, LINUX_MIB_PAWS_TW_REJECTED",
            ),
            SegmentKind.FIN_RETRANSMIT: Action(
                verdict=TwVerdict.ACK,
                restart_timer=True,
                rate_limited=True,  # exempt: it carries a FIN
                source=f"{_SRC_TW}: re-ACK the peer's FIN{_SRC_RL}; ref 1.3 row 5",
            ),
            SegmentKind.DATA_OR_FIN: Action(
                verdict=TwVerdict.ACK,
                restart_timer=True,
                rate_limited=True,  # exempt: it carries payload or FIN
                source=f"{_SRC_TW}: data in TIME_WAIT gets an ACK, never a RST; ref 1.3 row 6",
            ),
            SegmentKind.OOW_ACK: Action(
                verdict=TwVerdict.ACK,
                restart_timer=True,
                rate_limited=True,
                source=f"{_SRC_TW}: out-of-window ACK{_SRC_RL}; ref 1.3 row 7",
            ),
            SegmentKind.NO_ACK_OTHER: Action(
                verdict=TwVerdict.ACK,
                rate_limited=True,
                source=f"{_SRC_TW}: `if (paws_reject || th->ack)` restart; no ACK, no restart",
            ),
            SegmentKind.PAWS_REJECT: Action(
                verdict=TwVerdict.ACK,
                restart_timer=True,
                rate_limited=True,
                counter=C.PAWS_TIMEWAIT,
                source=f"{_SRC_TW}: PAWS reject (RFC 7323 §5.3){_SRC_RL}; ref 1.3 row 8",
            ),
            SegmentKind.SYN_ACCEPTABLE: Action(
                verdict=TwVerdict.SYN,
                source=f"{_SRC_TW}: RFC 1122 4.2.2.13 / RFC 6191-like reopen; ref 1.3 row 9, 1.5",
            ),
            SegmentKind.SYN_UNACCEPTABLE: Action(
                verdict=TwVerdict.ACK,
                rate_limited=True,
                source=f"{_SRC_TW}: ACK-less SYN may be a new connection: no restart; ref 1.3",
            ),
        }
    ),
)

_RFC_TW = "RFC 9293 §3.10.7.4"
_TW_RFC9293 = RuleSet(
    name="time-wait/rfc9293",
    timestamps=False,  # no RFC 7323: no PAWS, no TSval SYN test
    actions=_table(
        {
            SegmentKind.BARE_ACK_IN_WINDOW: Action(
                verdict=TwVerdict.SUCCESS,
                source=f"{_RFC_TW} fifth step: only a retransmitted FIN restarts the timer",
            ),
            SegmentKind.RST_IN_WINDOW_RFC1337_OFF: Action(
                verdict=TwVerdict.SUCCESS,
                kill=True,
                source=f"{_RFC_TW} second step: TIME-WAIT + RST -> CLOSED",
            ),
            SegmentKind.RST_IN_WINDOW_RFC1337_ON: Action(
                verdict=TwVerdict.SUCCESS,
                kill=True,
                source=f"{_RFC_TW} second step (tcp_rfc1337 is a Linux sysctl, not RFC text)",
            ),
            SegmentKind.RST_OTHER: Action(
                verdict=TwVerdict.SUCCESS,
                source=f"{_RFC_TW} first step: unacceptable RST is dropped (RFC 5961 §3 check 1)",
            ),
            SegmentKind.RST_PAWS_REJECT: Action(
                verdict=TwVerdict.SUCCESS,
                source=f"{_RFC_TW} first step (not produced without timestamps)",
            ),
            SegmentKind.FIN_RETRANSMIT: Action(
                verdict=TwVerdict.ACK,
                restart_timer=True,
                source=f"{_RFC_TW} fifth and eighth steps: ACK it, restart the 2 MSL timeout",
            ),
            SegmentKind.DATA_OR_FIN: Action(
                verdict=TwVerdict.ACK,
                source=f"{_RFC_TW} first step: unacceptable segment -> <SEQ=SND.NXT><ACK=RCV.NXT>",
            ),
            SegmentKind.OOW_ACK: Action(
                verdict=TwVerdict.ACK,
                source=f"{_RFC_TW} first step: unacceptable segment -> ACK, drop",
            ),
            SegmentKind.NO_ACK_OTHER: Action(
                verdict=TwVerdict.ACK,
                source=f"{_RFC_TW} first step: unacceptable segment -> ACK, drop",
            ),
            SegmentKind.PAWS_REJECT: Action(
                verdict=TwVerdict.ACK,
                source=f"{_RFC_TW} first step (not produced without timestamps)",
            ),
            SegmentKind.SYN_ACCEPTABLE: Action(
                verdict=TwVerdict.SYN,
                source="RFC 1122 4.2.2.13 / RFC 9293 §3.6.1 MAY-2: reopen if the ISN is larger",
            ),
            SegmentKind.SYN_UNACCEPTABLE: Action(
                verdict=TwVerdict.ACK,
                source=f"{_RFC_TW} fourth step: challenge ACK (RFC 5961 §4)",
            ),
        }
    ),
)

_SRC_FW2 = "K tcp_minisocks.c tcp_timewait_state_process() FIN_WAIT2 branch"
_FW2_LINUX = RuleSet(
    name="fin-wait-2/linux",
    timestamps=True,
    actions=_table(
        {
            SegmentKind.FW2_PAWS_REJECT: Action(
                verdict=TwVerdict.ACK,
                rate_limited=True,
                source=f"{_SRC_FW2}: PAWS reject -> ACK{_SRC_RL}; ref 1.4 bullet 1",
            ),
            SegmentKind.FW2_OUT_OF_WINDOW: Action(
                verdict=TwVerdict.ACK,
                rate_limited=True,
                source=f"{_SRC_FW2}: out of window -> ACK, timer untouched; ref 1.4 bullet 1",
            ),
            SegmentKind.FW2_RST_OUT_OF_WINDOW: Action(
                verdict=TwVerdict.ACK,
                rate_limited=True,
                source=f"{_SRC_FW2}: window test precedes the RST test, so even an RST is ACKed",
            ),
            SegmentKind.FW2_RST_IN_WINDOW: Action(
                verdict=TwVerdict.SUCCESS,
                kill=True,
                source=f"{_SRC_FW2}: `goto kill` (tcp_rfc1337 not consulted); ref 1.4, ref 6",
            ),
            SegmentKind.FW2_SYN_IN_WINDOW: Action(
                verdict=TwVerdict.RST,
                kill=True,
                source=f"{_SRC_FW2}: SYN, seq >= rcv_nxt -> TCP_TW_RST; ref 1.4 bullet 2",
            ),
            SegmentKind.FW2_DUP_OR_NO_ACK: Action(
                verdict=TwVerdict.SUCCESS,
                source=f"{_SRC_FW2}: 'Dup ACK?' -> dropped silently; ref 1.4 bullet 3",
            ),
            SegmentKind.FW2_NEW_DATA: Action(
                verdict=TwVerdict.RST,
                kill=True,
                source=f"{_SRC_FW2}: data after half-duplex close -> RST (RFC 9293 §3.6.1 SHLD-3)",
            ),
            SegmentKind.FW2_FIN_AT_RCV_NXT: Action(
                verdict=TwVerdict.ACK,
                enter_time_wait=True,
                refresh_ts=True,
                source=f"{_SRC_FW2}: FIN -> true TIME_WAIT, full timer [Lab E2]; ref 1.4 bullet 5",
            ),
        }
    ),
)

_FW2_RFC9293 = RuleSet(
    name="fin-wait-2/rfc9293",
    timestamps=False,
    actions=_table(
        {
            SegmentKind.FW2_PAWS_REJECT: Action(
                verdict=TwVerdict.ACK,
                source=f"{_RFC_TW} first step (not produced without timestamps)",
            ),
            SegmentKind.FW2_OUT_OF_WINDOW: Action(
                verdict=TwVerdict.ACK,
                source=f"{_RFC_TW} first step: unacceptable segment -> ACK, drop",
            ),
            SegmentKind.FW2_RST_OUT_OF_WINDOW: Action(
                verdict=TwVerdict.SUCCESS,
                source=f"{_RFC_TW} first step: unacceptable RST is dropped",
            ),
            SegmentKind.FW2_RST_IN_WINDOW: Action(
                verdict=TwVerdict.SUCCESS,
                kill=True,
                source=f"{_RFC_TW} second step: FIN-WAIT-2 + RST -> CLOSED",
            ),
            SegmentKind.FW2_SYN_IN_WINDOW: Action(
                verdict=TwVerdict.ACK,
                source=f"{_RFC_TW} fourth step: challenge ACK (RFC 5961 §4)",
            ),
            SegmentKind.FW2_DUP_OR_NO_ACK: Action(
                verdict=TwVerdict.SUCCESS,
                source=f"{_RFC_TW} fifth step: ACK bit off or duplicate ACK -> drop",
            ),
            SegmentKind.FW2_NEW_DATA: Action(
                verdict=TwVerdict.RST,
                kill=True,
                source="RFC 9293 §3.6.1 SHLD-3 / RFC 1122 4.2.2.13: data after CLOSE -> RST",
            ),
            SegmentKind.FW2_FIN_AT_RCV_NXT: Action(
                verdict=TwVerdict.ACK,
                enter_time_wait=True,
                source=f"{_RFC_TW} eighth step: FIN-WAIT-2 -> TIME-WAIT, start the 2 MSL timer",
            ),
        }
    ),
)

TIME_WAIT_RULES: Final[Mapping[str, RuleSet]] = MappingProxyType(
    {"linux": _TW_LINUX, "rfc9293": _TW_RFC9293}
)
FIN_WAIT2_RULES: Final[Mapping[str, RuleSet]] = MappingProxyType(
    {"linux": _FW2_LINUX, "rfc9293": _FW2_RFC9293}
)


def rules_for(substate: TcpState, profile: Profile) -> RuleSet:
    """The table a minisocket in `substate` uses under `profile`."""
    tables = FIN_WAIT2_RULES if substate is TcpState.FIN_WAIT_2 else TIME_WAIT_RULES
    try:
        return tables[profile.rules]
    except KeyError:
        raise ProfileError(f"profile {profile.name!r} has no minisocket rules") from None


def describe_rules() -> str:
    """Every table as text, one line per row: the generated documentation of this module."""
    lines: list[str] = []
    for tables in (TIME_WAIT_RULES, FIN_WAIT2_RULES):
        for rules in tables.values():
            lines.append(f"[{rules.name}] timestamps={'on' if rules.timestamps else 'off'}")
            for kind, a in rules.actions.items():
                what = [a.verdict.name]
                what += [n for n, on in _flags(a) if on]
                if a.counter:
                    what.append(f"count {a.counter}")
                lines.append(f"  {kind.name:<27} {', '.join(what):<40} {a.source}")
    return "\n".join(lines)


def _flags(a: Action) -> list[tuple[str, bool]]:
    return [
        ("restart", a.restart_timer),
        ("kill", a.kill),
        ("ts-refresh", a.refresh_ts),
        ("rate-limited", a.rate_limited),
        ("-> TIME_WAIT", a.enter_time_wait),
    ]


# -- the minisocket -----------------------------------------------------------------------------


@dataclass(slots=True, init=False)
class TwResult(Outcome):
    """The outcome of one segment on a minisocket, with the verdict and the row behind it.

    `segments` holds the reply, if any (ACK, or RST for verdict RST); nothing is sent for a
    rate-limited ACK (verdict then SUCCESS, as the kernel returns). `op` is KILL when the
    minisocket goes now, or `Reopen(isn)` for verdict SYN: a listener takes the SYN with that
    ISN, and without one the host falls through to `timewait_ack()` (K tcp_v4_rcv()).
    `rule` is "<table>.<KIND>" for traces.
    """

    verdict: TwVerdict
    kind: SegmentKind
    rule: str

    def __init__(
        self,
        *,
        verdict: TwVerdict,
        kind: SegmentKind,
        rule: str,
        segments: list[Segment],
        changes: list[StateChange] | None,
        op: TableOp | None,
        deadline: int,
    ) -> None:
        Outcome.__init__(self, segments, changes, op, deadline)
        self.verdict = verdict
        self.kind = kind
        self.rule = rule

    @property
    def reply(self) -> Segment | None:
        """The one segment sent back, or None."""
        return self.segments[0] if self.segments else None

    @property
    def isn(self) -> int | None:
        """The ISN a new SYN is accepted with (verdict SYN), else None."""
        op = self.op
        return op.isn if isinstance(op, Reopen) else None

    @property
    def killed(self) -> bool:
        """The minisocket is removed now."""
        return self.op is KILL


@dataclass(slots=True, kw_only=True, init=False)
class MiniSocket:
    """A TIME_WAIT or orphaned FIN_WAIT2 minisocket (struct tcp_timewait_sock).

    Mutable, as the kernel's is: `process()` moves `expires`, refreshes timestamps, and turns
    FIN_WAIT2 into TIME_WAIT. Times are ns; `ts_recent_stamp is None` is the kernel's
    tw_ts_recent_stamp == 0 (the peer never sent timestamps).
    """

    tuple: FourTuple
    substate: TcpState
    rcv_nxt: int
    snd_nxt: int
    rcv_wnd: int
    ts_recent: int
    ts_recent_stamp: int | None
    ts_offset: int
    entry_stamp: int  # tw_entry_stamp: creation, refreshed on a timestamped FIN in FIN_WAIT2
    expires: int  # deadline of tw_timer
    first_timeout: int  # timeout the timer was first armed with (TW vs TWKilled)
    reuse: bool  # tw_reuse, copied from sk_reuse (SO_REUSEADDR)
    reuseport: bool
    uid: int
    last_oow_ack_time: int | None  # None: the kernel's tw_last_oow_ack_time == 0

    def __init__(
        self,
        *,
        tuple: FourTuple,
        substate: TcpState,
        rcv_nxt: int,
        snd_nxt: int,
        rcv_wnd: int,
        ts_recent: int,
        ts_recent_stamp: int | None,
        ts_offset: int,
        entry_stamp: int,
        expires: int,
        first_timeout: int,
        reuse: bool = False,
        reuseport: bool = False,
        uid: int = 0,
        last_oow_ack_time: int | None = None,
    ) -> None:
        # Written out so that mypyc compiles it (a dataclass-generated __init__ is not).
        self.tuple = tuple
        self.substate = substate
        self.rcv_nxt = rcv_nxt
        self.snd_nxt = snd_nxt
        self.rcv_wnd = rcv_wnd
        self.ts_recent = ts_recent
        self.ts_recent_stamp = ts_recent_stamp
        self.ts_offset = ts_offset
        self.entry_stamp = entry_stamp
        self.expires = expires
        self.first_timeout = first_timeout
        self.reuse = reuse
        self.reuseport = reuseport
        self.uid = uid
        self.last_oow_ack_time = last_oow_ack_time

    @classmethod
    def create(
        cls,
        *,
        tuple: FourTuple,
        substate: TcpState,
        timeout: int,
        now: int,
        rcv_nxt: int,
        snd_nxt: int,
        rcv_wnd: int,
        ts_recent: int,
        ts_recent_stamp: int | None,
        ts_offset: int,
        reuse: bool = False,
        reuseport: bool = False,
        uid: int = 0,
    ) -> MiniSocket:
        """K tcp_minisocks.c tcp_time_wait(): copy what is needed and arm the timer.

        The caller checks `tw_overflow()` first and counts `arm_counter(timeout)`.
        Raises ModelError for a substate other than TIME_WAIT/FIN_WAIT_2 or a negative timeout.
        """
        if substate not in (TcpState.TIME_WAIT, TcpState.FIN_WAIT_2):
            raise ModelError(f"a minisocket is TIME-WAIT or FIN-WAIT-2, not {substate}")
        if timeout < 0:
            raise ModelError(f"minisocket timeout must not be negative: {timeout} ns")
        return MiniSocket(  # not cls(): a direct, compiled constructor call (mypyc)
            tuple=tuple,
            substate=substate,
            rcv_nxt=rcv_nxt & MASK,
            snd_nxt=snd_nxt & MASK,
            rcv_wnd=rcv_wnd,
            ts_recent=ts_recent & MASK,
            ts_recent_stamp=ts_recent_stamp,
            ts_offset=ts_offset,
            entry_stamp=now,
            expires=now + timeout,
            first_timeout=timeout,
            reuse=reuse,
            reuseport=reuseport,
            uid=uid,
        )

    # -- what the port table and the observers see ----------------------------------------------

    @property
    def bind_addr(self) -> str:
        return self.tuple.laddr

    @property
    def bind_port(self) -> int:
        return self.tuple.lport

    @property
    def reuseaddr(self) -> bool:
        return self.reuse

    @property
    def is_listener(self) -> bool:
        return False

    @property
    def is_timewait(self) -> bool:
        """sk_state is TCP_TIME_WAIT for both substates (ref 1.2)."""
        return True

    def next_deadline(self) -> int:
        """When tw_timer fires: the minisocket is then freed silently (tw_timer_handler())."""
        return self.expires

    def expired(self, now: int) -> bool:
        """True once the timer has fired (`on_timer()` then kills it). Nothing is sent."""
        return now >= self.expires

    # -- segment processing --------------------------------------------------------------------

    def process(
        self,
        seg: Segment,
        now: int,
        config: KernelConfig,
        profile: Profile,
        counters: Counters,
    ) -> TwResult:
        """K tcp_minisocks.c tcp_timewait_state_process() plus the reply tcp_v4_rcv() sends.

        Updates this minisocket in place and bumps kernel counters; the host applies the result
        (sends the reply, logs the substate change, kills or reopens, reschedules at `expires`).
        """
        rules = rules_for(self.substate, profile)
        if self.substate is TcpState.FIN_WAIT_2:
            kind = classify_fin_wait2(self, seg, config, now, timestamps=rules.timestamps)
        else:
            kind = classify_time_wait(self, seg, config, now, timestamps=rules.timestamps)
        action = rules[kind]
        rule = f"{rules.name}.{kind.name}"
        saw_ts = _saw_tstamp(self, seg, rules.timestamps)

        if action.counter is not None:
            counters[action.counter] += 1

        if action.enter_time_wait:
            # FIN arrived: "enter true time-wait state". rcv_nxt moves past the FIN; with a
            # timestamp, tw_entry_stamp and ts_recent* are refreshed; full TIME_WAIT timer.
            change = StateChange(now, self.tuple, self.substate, TcpState.TIME_WAIT)
            self.substate = TcpState.TIME_WAIT
            self.rcv_nxt = seq_add(seg.seq, seg.seg_len)
            if saw_ts and action.refresh_ts:
                assert seg.tsval is not None
                self.entry_stamp = now
                self.ts_recent = seg.tsval
                self.ts_recent_stamp = now
            self.expires = now + profile.time_wait_len
            return self._result(TwVerdict.ACK, kind, rule, [self.ack_for(now)], [change])

        if action.kill:
            replies = self._reset(seg, counters) if action.verdict is TwVerdict.RST else []
            return self._result(action.verdict, kind, rule, replies, [self._closed(now)], KILL)

        if action.restart_timer:
            # inet_twsk_reschedule(tw, TCP_TIMEWAIT_LEN): the full length again (ref 1.3).
            self.expires = now + profile.time_wait_len
        if action.refresh_ts and saw_ts:
            assert seg.tsval is not None
            self.ts_recent = seg.tsval
            self.ts_recent_stamp = now

        verdict = action.verdict
        if verdict is TwVerdict.SYN:
            return self._result(verdict, kind, rule, [], op=Reopen(self.takeover_isn()))
        if verdict is TwVerdict.ACK:
            skipped = (
                C.ACK_SKIPPED_FINWAIT2
                if self.substate is TcpState.FIN_WAIT_2
                else C.ACK_SKIPPED_TIMEWAIT
            )
            if action.rate_limited and oow_rate_limited(self, seg, now, config, counters, skipped):
                return self._result(TwVerdict.SUCCESS, kind, rule, [])
            return self._result(verdict, kind, rule, [self.ack_for(now)])
        if verdict is TwVerdict.RST:
            return self._result(verdict, kind, rule, self._reset(seg, counters))
        return self._result(verdict, kind, rule, [])

    def on_timer(self, now: int) -> Outcome:
        """tw_timer_handler(): once `expires` has passed the minisocket goes, silently."""
        if self.expired(now):
            return self.kill(now)
        return Outcome([], deadline=self.expires)

    def kill(self, now: int) -> Outcome:
        """The minisocket goes now (timer, connect() takeover, a SYN that reopens the tuple)."""
        return Outcome([], [self._closed(now)], KILL)

    def timewait_ack(self, now: int) -> Outcome:
        """TCP_TW_SYN and no listener: tcp_v4_rcv() "falls through to ACK" (ack_for())."""
        return Outcome([self.ack_for(now)], deadline=self.expires)

    def takeover_isn(self) -> int:
        """The ISN of a connection that replaces this minisocket: tw_snd_nxt + 65535 + 2, never
        0 (tcp_timewait_state_process() for a SYN, tcp_twsk_unique() for connect(); ref 1.5)."""
        return seq_add(self.snd_nxt, TW_ISN_GAP) or 1

    def _result(
        self,
        verdict: TwVerdict,
        kind: SegmentKind,
        rule: str,
        segments: list[Segment],
        changes: list[StateChange] | None = None,
        op: TableOp | None = None,
    ) -> TwResult:
        return TwResult(
            verdict=verdict, kind=kind, rule=rule, segments=segments, changes=changes, op=op,
            deadline=self.expires,
        )  # fmt: skip

    def _closed(self, now: int) -> StateChange:
        return StateChange(now, self.tuple, self.substate, TcpState.CLOSED)

    @staticmethod
    def _reset(seg: Segment, counters: Counters) -> list[Segment]:
        """K tcp_v4_send_reset() answering `seg` (TCP_TW_RST)."""
        counters[C.OUT_RSTS] += 1
        return [reset_reply(seg)]

    def ack_for(self, now: int) -> Segment:
        """K tcp_ipv4.c tcp_v4_timewait_ack() -> tcp_v4_send_ack().

        SEQ = tw_snd_nxt, ACK = tw_rcv_nxt, window = tw_rcv_wnd (no window scaling in the
        model), TSval = clock + tw_ts_offset (tcp_tw_tsval()), TSecr = tw_ts_recent; the
        timestamp option is present iff tsecr != 0 (`if (tsecr)` in tcp_v4_send_ack()).
        """
        has_ts = self.ts_recent != 0
        ft = self.tuple
        return Segment(
            src=ft.laddr,
            sport=ft.lport,
            dst=ft.raddr,
            dport=ft.rport,
            seq=self.snd_nxt,
            ack=self.rcv_nxt,
            flags=Flags.ACK,
            window=self.rcv_wnd,
            tsval=clock_tsval(now, self.ts_offset) if has_ts else None,
            tsecr=self.ts_recent if has_ts else None,
        )


# -- classification (pure) -----------------------------------------------------------------------


def _saw_tstamp(tw: MiniSocket, seg: Segment, timestamps: bool) -> bool:
    """Options are parsed only if the minisocket has tw_ts_recent_stamp != 0 (K
    tcp_timewait_state_process(): `th->doff > 5 && tcptw->tw_ts_recent_stamp`)."""
    return timestamps and tw.ts_recent_stamp is not None and seg.tsval is not None


def _paws_rejected(tw: MiniSocket, seg: Segment, now: int) -> bool:
    """tcp_paws_reject() (timewait.model.tcp) on the minisocket's tw_ts_recent and its stamp."""
    if tw.ts_recent_stamp is None or seg.tsval is None:
        return False
    return paws_reject(tw.ts_recent, tw.ts_recent_stamp, seg.tsval, now, rst=seg.rst)


def classify_time_wait(
    tw: MiniSocket, seg: Segment, config: KernelConfig, now: int, *, timestamps: bool = True
) -> SegmentKind:
    """Which row of ref 1.3 a segment hits, in tcp_timewait_state_process()'s order."""
    saw_ts = _saw_tstamp(tw, seg, timestamps)
    paws = saw_ts and _paws_rejected(tw, seg, now)
    rcv_nxt = tw.rcv_nxt

    # "In window segment, it may be only reset or bare ack."
    if not paws and seg.seq == rcv_nxt and (seg.seg_len == 0 or seg.rst):
        if seg.rst:
            if config.tcp_rfc1337 == 0:
                return SegmentKind.RST_IN_WINDOW_RFC1337_OFF
            return SegmentKind.RST_IN_WINDOW_RFC1337_ON
        return SegmentKind.BARE_ACK_IN_WINDOW

    # New SYN: accepted on a higher seq, or (timestamps) a strictly newer TSval.
    if seg.syn and not seg.rst and not seg.has_ack and not paws:
        if seq_gt(seg.seq, rcv_nxt):
            return SegmentKind.SYN_ACCEPTABLE
        # (s32)(tw_ts_recent - rcv_tsval) < 0: a strictly newer TSval (RFC 6191-like)
        if saw_ts and seg.tsval is not None and seq_diff(tw.ts_recent, seg.tsval) < 0:
            return SegmentKind.SYN_ACCEPTABLE
        return SegmentKind.SYN_UNACCEPTABLE

    if seg.rst:
        return SegmentKind.RST_PAWS_REJECT if paws else SegmentKind.RST_OTHER
    if paws:
        return SegmentKind.PAWS_REJECT
    if not seg.has_ack:
        return SegmentKind.NO_ACK_OTHER
    if seg.fin and not seg.syn and seq_add(seg.seq, seg.seg_len) == rcv_nxt:
        return SegmentKind.FIN_RETRANSMIT
    if seg.seg_len > 0 and not seg.syn:
        return SegmentKind.DATA_OR_FIN
    return SegmentKind.OOW_ACK


def classify_fin_wait2(
    tw: MiniSocket, seg: Segment, config: KernelConfig, now: int, *, timestamps: bool = True
) -> SegmentKind:
    """Which row of ref 1.4 a segment hits ("repeat all the checks of tcp_rcv_state_process")."""
    del config  # no sysctl is consulted in this branch (tcp_rfc1337 included)
    saw_ts = _saw_tstamp(tw, seg, timestamps)
    rcv_nxt = tw.rcv_nxt
    end_seq = seq_add(seg.seq, seg.seg_len)

    if saw_ts and _paws_rejected(tw, seg, now):
        return SegmentKind.FW2_PAWS_REJECT
    if not in_window(seg.seq, end_seq, rcv_nxt, seq_add(rcv_nxt, tw.rcv_wnd)):
        return SegmentKind.FW2_RST_OUT_OF_WINDOW if seg.rst else SegmentKind.FW2_OUT_OF_WINDOW
    if seg.rst:
        return SegmentKind.FW2_RST_IN_WINDOW
    if seg.syn and not seq_lt(seg.seq, rcv_nxt):
        return SegmentKind.FW2_SYN_IN_WINDOW
    if not seg.has_ack or not seq_gt(end_seq, rcv_nxt) or seg.seg_len == 0:
        return SegmentKind.FW2_DUP_OR_NO_ACK
    if not seg.fin or end_seq != seq_add(rcv_nxt, 1):
        return SegmentKind.FW2_NEW_DATA
    return SegmentKind.FW2_FIN_AT_RCV_NXT


# -- creation-time rules --------------------------------------------------------------------------


def arm_counter(timeout: int) -> str:
    """K inet_timewait_sock.c __inet_twsk_schedule(): counted when the timer is first armed.

    TWKilled if the initial timeout <= 4 s (only short FIN_WAIT2 waits), else TW (ref 9.2).
    """
    return C.TW_KILLED if timeout <= TW_KILL_THRESHOLD else C.TW


def tw_overflow(current_count: int, config: KernelConfig) -> bool:
    """K inet_timewait_sock.c inet_twsk_alloc(): no minisocket when
    `refcount_read(&dr->tw_refcount) - 1 >= sysctl_max_tw_buckets` (ref 5).

    `current_count` counts both substates in the netns. On overflow the caller skips the wait,
    closes the socket (tcp_done()) and counts TCPTimeWaitOverflow; nothing is sent or logged.
    """
    return current_count >= config.tcp_max_tw_buckets


def _rto_floor(rto: int) -> int:
    """(rto << 2) - (rto >> 1) = 3.5 x RTO: the least an orphan's FIN_WAIT2 ever waits."""
    return (rto << 2) - (rto >> 1)


def tcp_fin_time(config: KernelConfig, *, linger2: int = 0, rto: int = TCP_RTO_MIN) -> int:
    """include/net/tcp.h tcp_fin_time(): TCP_LINGER2 (ns, 0 = unset; do_tcp_setsockopt() already
    capped it at TCP_FIN_TIMEOUT_MAX) or tcp_fin_timeout, but never below 3.5 * RTO."""
    fin_timeout = linger2 if linger2 else config.tcp_fin_timeout * SEC
    return max(fin_timeout, _rto_floor(rto))


@dataclass(frozen=True, slots=True, kw_only=True)
class FinWait2Plan:
    """How an orphan that reached FIN_WAIT_2 waits for the peer's FIN (ref 2.2).

    `abort`: TCP_LINGER2 < 0 -> RST now, TCPAbortOnLinger. Otherwise the full socket first waits
    `full_socket_wait` ns on its keepalive timer (0 = not at all), then becomes a FIN_WAIT2
    minisocket with timer `minisocket_timeout`.
    """

    abort: bool
    full_socket_wait: int
    minisocket_timeout: int

    @property
    def total(self) -> int:
        """How long the orphan can wait for the peer's FIN in all: 2 * (tmo - 60 s) above 60 s."""
        return self.full_socket_wait + self.minisocket_timeout


def fin_wait2_plan(
    config: KernelConfig, *, linger2: int = 0, rto: int = TCP_RTO_MIN
) -> FinWait2Plan:
    """K tcp.c __tcp_close(), tcp_input.c tcp_rcv_state_process() case TCP_FIN_WAIT1, and
    tcp_timer.c tcp_keepalive_timer() for an orphaned FIN_WAIT_2 (ref 2.2). The Connection
    follows this plan, asking it again when its keepalive timer fires (the kernel recomputes
    tcp_fin_time() there).

    tmo <= 60 s: minisocket for tmo at once. tmo > 60 s: the full socket keeps a keepalive timer
    for tmo - 60 s; when it fires, tcp_fin_time() - 60 s is recomputed and a minisocket is
    created for that long (tcp_time_wait() clamps it to >= 3.5 * RTO). Total 2 * (tmo - 60 s),
    equal to tmo only at 120 s [Lab E15]. Not modelled: the FIN-carrying-ACK case in FIN_WAIT1
    (the full socket then keeps waiting tmo; that is the connection's business).
    """
    if linger2 < 0:
        return FinWait2Plan(abort=True, full_socket_wait=0, minisocket_timeout=0)
    tmo = tcp_fin_time(config, linger2=linger2, rto=rto)
    if tmo <= TCP_TIMEWAIT_LEN:
        return FinWait2Plan(abort=False, full_socket_wait=0, minisocket_timeout=tmo)
    rest = tmo - TCP_TIMEWAIT_LEN
    return FinWait2Plan(
        abort=False,
        full_socket_wait=rest,
        minisocket_timeout=max(rest, _rto_floor(rto)),  # tcp_time_wait(): `if (timeo < rto)`
    )


# -- connect() taking a minisocket over (K tcp_ipv4.c tcp_twsk_unique(), ref 3) ------------------


def tw_reuse_enabled(config: KernelConfig, *, loopback: bool) -> bool:
    """The sysctl part of tcp_twsk_unique() for an autobinding connect(): tcp_tw_reuse 1, or 2
    when the minisocket's source or destination is a loopback address (Linux 4.18)."""
    reuse = config.tcp_tw_reuse
    return reuse == 1 or (reuse == 2 and loopback)


def tw_reuse_delay_passed(entry_stamp: int, now: int, config: KernelConfig) -> bool:
    """tcp_twsk_unique(): `time_after32(now_ms, tw_entry_stamp_ms + tcp_tw_reuse_delay)`,
    strictly later, in whole ms (tcp_tw_reuse_delay, Linux 6.14+; 1 s before)."""
    return now // MS > entry_stamp // MS + config.tcp_tw_reuse_delay


def tw_unique(
    tw: MiniSocket, *, config: KernelConfig, now: int, autobind: bool
) -> tuple[int, int, int | None] | None:
    """`tcp_twsk_unique()`: may connect() take over this minisocket?

    Returns (new write_seq, ts_recent, ts_recent_stamp) on takeover, None otherwise.
    * `autobind` (port being searched, twp != NULL): needs tw_reuse_enabled() (loopback per
      the four-tuple), substate TIME_WAIT, timestamps seen, and tw_reuse_delay_passed().
    * explicitly bound socket (twp == NULL): timestamps seen is enough; the sysctl, the delay
      and the FIN_WAIT2 rule are not consulted (ref 3 last bullet, Lab E7).
    """
    if tw.ts_recent_stamp is None:  # tw_ts_recent_stamp == 0: no PAWS protection, never
        return None
    if autobind:
        if tw.substate is TcpState.FIN_WAIT_2:
            return None
        ft = tw.tuple
        if not tw_reuse_enabled(config, loopback=is_loopback(ft.laddr) or is_loopback(ft.raddr)):
            return None
        if not tw_reuse_delay_passed(tw.entry_stamp, now, config):
            return None
    return (tw.takeover_isn(), tw.ts_recent, tw.ts_recent_stamp)
