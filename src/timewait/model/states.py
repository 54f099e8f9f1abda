"""The TCP state vocabulary and the kernel's fixed sizes and lengths, in one place.

Theory of operation
-------------------
Two numberings of the same sockets meet in timewait, and this module is the only place either is
written down:

* `TcpState`: the eleven states of RFC 9293 §3.3.2, the model's vocabulary. `str()` gives the
  RFC spelling (`TIME-WAIT`), which traces and ladder diagrams print.
* `LinuxState`: the kernel's numbers (include/net/tcp_states.h), which sock_diag and
  /proc/net/tcp report, including the two internal states with no RFC name: NEW_SYN_RECV (12, a
  request socket) and BOUND_INACTIVE (13, a socket bind() holds without listen or connect,
  Linux 6.5+). `.label` is the text users see for a kernel state number (reports, metric
  labels); `STATE_NAMES` is the same text keyed by number, for numpy columns.

`TcpState.X.linux` and `LinuxState.X.tcp_state` translate between them. The labels follow the
kernel where it differs from the RFC ("SYN-RECV" for SYN-RECEIVED, "CLOSE" for CLOSED), and
SYN-RECV covers both 3 and 12, as `ss` shows them.

Beside the names, the compile-time constants every layer needs (the model, the simulator's
closed forms, the doctor's memory estimate) live here, each with its source: the TIME_WAIT
length and the slab object sizes. Nothing here imports anything heavier than timewait.units.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum, IntEnum
from types import MappingProxyType
from typing import Final

from timewait.units import SEC

# include/net/tcp.h: #define TCP_TIMEWAIT_LEN (60*HZ) -- a compile-time constant, no sysctl.
TCP_TIMEWAIT_LEN: Final = 60 * SEC

# Kernel memory per socket, from slab object sizes measured on the reference machine (ref 9.1).
TW_SOCK_BYTES: Final = 256  # tw_sock_TCPv6 (tw_sock_TCP is 248): one minisocket
FULL_SOCK_BYTES: Final = 2432  # TCP slab slot, IPv4 (2304 B object): one full socket
FD_OBJECT_BYTES: Final = 1216  # sock_inode_cache 832 + filp 192 + dentry 192, per open fd


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
    def linux(self) -> LinuxState:
        """The kernel's number for this state (include/net/tcp_states.h)."""
        return _LINUX_OF[self]


class LinuxState(IntEnum):
    """include/net/tcp_states.h: what sock_diag and /proc/net/tcp report (minisockets report
    their tw_substate: 6 or 5)."""

    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT1 = 4
    FIN_WAIT2 = 5
    TIME_WAIT = 6
    CLOSE = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    LISTEN = 10
    CLOSING = 11
    NEW_SYN_RECV = 12  # a request socket (inet_reqsk), before the handshake completes
    BOUND_INACTIVE = 13  # bind() only, no listen/connect (Linux 6.5+; the bhash2 walk)

    @property
    def label(self) -> str:
        """The text users see for this state number (the kernel's spelling, as `ss` uses)."""
        return _LABELS[self]

    @property
    def tcp_state(self) -> TcpState | None:
        """The RFC state this number stands for; None for BOUND_INACTIVE, which has none."""
        return _TCP_OF.get(self)


_LINUX_OF: Final[Mapping[TcpState, LinuxState]] = MappingProxyType(
    {
        TcpState.ESTABLISHED: LinuxState.ESTABLISHED,
        TcpState.SYN_SENT: LinuxState.SYN_SENT,
        TcpState.SYN_RECEIVED: LinuxState.SYN_RECV,
        TcpState.FIN_WAIT_1: LinuxState.FIN_WAIT1,
        TcpState.FIN_WAIT_2: LinuxState.FIN_WAIT2,
        TcpState.TIME_WAIT: LinuxState.TIME_WAIT,
        TcpState.CLOSED: LinuxState.CLOSE,
        TcpState.CLOSE_WAIT: LinuxState.CLOSE_WAIT,
        TcpState.LAST_ACK: LinuxState.LAST_ACK,
        TcpState.LISTEN: LinuxState.LISTEN,
        TcpState.CLOSING: LinuxState.CLOSING,
    }
)
_TCP_OF: Final[Mapping[LinuxState, TcpState]] = MappingProxyType(
    {**{v: k for k, v in _LINUX_OF.items()}, LinuxState.NEW_SYN_RECV: TcpState.SYN_RECEIVED}
)
_LABELS: Final[Mapping[LinuxState, str]] = MappingProxyType(
    {
        LinuxState.ESTABLISHED: "ESTABLISHED",
        LinuxState.SYN_SENT: "SYN-SENT",
        LinuxState.SYN_RECV: "SYN-RECV",
        LinuxState.FIN_WAIT1: "FIN-WAIT-1",
        LinuxState.FIN_WAIT2: "FIN-WAIT-2",
        LinuxState.TIME_WAIT: "TIME-WAIT",
        LinuxState.CLOSE: "CLOSE",
        LinuxState.CLOSE_WAIT: "CLOSE-WAIT",
        LinuxState.LAST_ACK: "LAST-ACK",
        LinuxState.LISTEN: "LISTEN",
        LinuxState.CLOSING: "CLOSING",
        LinuxState.NEW_SYN_RECV: "SYN-RECV",
        LinuxState.BOUND_INACTIVE: "BOUND-INACTIVE",
    }
)

# Kernel state number -> label, for code that holds plain integers (numpy columns).
STATE_NAMES: Final[Mapping[int, str]] = MappingProxyType(
    {int(s): label for s, label in _LABELS.items()}
)
