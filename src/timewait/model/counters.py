"""Kernel counters under their kernel names (/proc/net/netstat TcpExt, /proc/net/snmp Tcp).

The model counts the same events the kernel counts, with the kernel's name, so a simulated host
and a live one can be compared line by line. `Counters` is a dict that reads missing names as 0;
these constants only exist so a typo is a NameError, not a silent new counter.
"""

from __future__ import annotations

from typing import Final

# TcpExt (include/uapi/linux/snmp.h, K net/ipv4/proc.c snmp4_net_list)
TW: Final = "TW"  # minisocket timer first armed with > 4 s (__inet_twsk_schedule())
TW_KILLED: Final = "TWKilled"  # ... armed with <= 4 s (short FIN_WAIT2 waits)
TW_RECYCLED: Final = "TWRecycled"  # TIME_WAIT taken over by connect() (__inet_check_established())
TIME_WAIT_OVERFLOW: Final = "TCPTimeWaitOverflow"  # tcp_max_tw_buckets hit, wait skipped
PAWS_TIMEWAIT: Final = "PAWSTimewait"  # PAWS reject in TIME_WAIT (6.16+)
PAWS_ESTAB: Final = "PAWSEstab"  # PAWS reject on a full socket
TSECR_REJECTED: Final = "TSEcrRejected"  # request: TSecr not one of our SYN-ACKs' TSvals
PAWS_OLD_ACK: Final = "PAWSOldAck"  # PAWS-rejected old pure ACK, dropped without a dupack
PAWS_ACTIVE: Final = "PAWSActive"  # SYN-ACK whose TSecr our SYN cannot have sent (SYN_SENT)
DELAYED_ACKS: Final = "DelayedACKs"  # the delayed-ACK timer sent an ACK
DELAYED_ACK_LOST: Final = "DelayedACKLost"  # old data arrived: our ACK was lost
LISTEN_OVERFLOWS: Final = "ListenOverflows"  # accept queue full: SYN or final ACK dropped
LISTEN_DROPS: Final = "ListenDrops"
EMBRYONIC_RSTS: Final = "EmbryonicRsts"  # RST or SYN in window of a request socket
ACK_SKIPPED_TIMEWAIT: Final = "TCPACKSkippedTimeWait"  # OOW ACK suppressed by the rate limit
ACK_SKIPPED_FINWAIT2: Final = "TCPACKSkippedFinWait2"
ACK_SKIPPED_SYNRECV: Final = "TCPACKSkippedSynRecv"  # SYN-ACK resend suppressed (tcp_check_req())
ABORT_ON_DATA: Final = "TCPAbortOnData"  # RST because data arrived after close / unread data
ABORT_ON_CLOSE: Final = "TCPAbortOnClose"  # close() with unread data
ABORT_ON_LINGER: Final = "TCPAbortOnLinger"  # TCP_LINGER2 < 0, or FIN_WAIT2 split ran out
ABORT_ON_TIMEOUT: Final = "TCPAbortOnTimeout"
CHALLENGE_ACK: Final = "TCPChallengeACK"
SYN_CHALLENGE: Final = "TCPSYNChallenge"  # SYN in a synchronized state (RFC 5961 §4)
ACK_SKIPPED_SEQ: Final = "TCPACKSkippedSeq"  # OOW ACK rate limit, full sockets
ACK_SKIPPED_PAWS: Final = "TCPACKSkippedPAWS"
ACK_SKIPPED_CHALLENGE: Final = "TCPACKSkippedChallenge"
# Tcp (RFC 1213 MIB, /proc/net/snmp)
ACTIVE_OPENS: Final = "ActiveOpens"
PASSIVE_OPENS: Final = "PassiveOpens"
ATTEMPT_FAILS: Final = "AttemptFails"
ESTAB_RESETS: Final = "EstabResets"
OUT_RSTS: Final = "OutRsts"
RETRANS_SEGS: Final = "RetransSegs"
IN_SEGS: Final = "InSegs"
OUT_SEGS: Final = "OutSegs"


class Counters(dict[str, int]):
    """Kernel-named event counts; missing names read as 0 (like collections.Counter).

    A dict with only `__missing__`, not a Counter: Counter defines `__delitem__` in Python, which
    sends every `counters[k] += 1` through a slot wrapper (perf: 8% of a packet-level run);
    a dict subclass keeps dict's own C slots.
    """

    def __missing__(self, key: str) -> int:
        return 0
