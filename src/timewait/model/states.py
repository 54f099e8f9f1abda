"""TCP states with their RFC 9293 names and Linux numbers.

`TcpState.TIME_WAIT` prints as `TIME-WAIT` (the RFC spelling). `.linux` is the kernel's number
(include/net/tcp_states.h), which sock_diag and /proc/net/tcp report, so the model, the live
collector and the doctor share one enum.
"""

from __future__ import annotations

from enum import Enum


class TcpState(Enum):
    """The eleven states of RFC 9293 §3.3.2; values are the RFC spellings."""

    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"

    def __str__(self) -> str:
        return self.value

    # Members are singletons, so identity hashing is exact; Enum's default hashes the name in
    # Python code, which showed up at 2% of simulator time (every `state in {...}` test).
    __hash__ = object.__hash__

    @property
    def linux(self) -> int:
        """The kernel's number for this state (include/net/tcp_states.h)."""
        return _LINUX_NUMBERS[self]

    @classmethod
    def from_linux(cls, number: int) -> TcpState:
        """TcpState for a kernel state number (TCP_ESTABLISHED = 1 ... TCP_CLOSING = 11)."""
        try:
            return _FROM_LINUX[number]
        except KeyError:
            raise ValueError(f"not a Linux TCP state number: {number}") from None


# include/net/tcp_states.h. TCP_NEW_SYN_RECV (12) and TCP_BOUND_INACTIVE (13) are internal
# states with no RFC name; the live decoder maps 12 to SYN_RECEIVED and skips 13 itself.
_LINUX_NUMBERS: dict[TcpState, int] = {
    TcpState.ESTABLISHED: 1,
    TcpState.SYN_SENT: 2,
    TcpState.SYN_RECEIVED: 3,
    TcpState.FIN_WAIT_1: 4,
    TcpState.FIN_WAIT_2: 5,
    TcpState.TIME_WAIT: 6,
    TcpState.CLOSED: 7,
    TcpState.CLOSE_WAIT: 8,
    TcpState.LAST_ACK: 9,
    TcpState.LISTEN: 10,
    TcpState.CLOSING: 11,
}
_FROM_LINUX: dict[int, TcpState] = {v: k for k, v in _LINUX_NUMBERS.items()}
