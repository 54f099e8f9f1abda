"""What one call into a socket did: the typed outcome the host applies in one place.

Theory of operation
-------------------
A full socket (`Connection`) and a minisocket (`MiniSocket`) never touch the host's tables.
Every entry point of theirs -- an application call, an arriving segment, a timer -- returns an
`Outcome` that says what happened, and `Host._apply()` is the one place that carries it out:

* `segments`: what to put on the wire, in order;
* `changes`: the state changes, in order, as `StateChange` records. The host's trace, the
  simulator's ladder diagrams and the scenarios that time a state all read these records;
* `op`: at most one operation on the host's tables, a `TableOp`:
  `HandOff` (K tcp_time_wait(): a minisocket replaces the full socket), `UNHASH` (tcp_done():
  the four-tuple is free), `KILL` (inet_twsk_kill(): the minisocket goes), or `Reopen`
  (TCP_TW_SYN: a listener may take the SYN with a forced ISN, else the minisocket ACKs it);
* `deadline`: when the socket next wants `on_timer()`, or None.

Outcomes are plain values: nothing reads them twice and nothing polls a socket for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from timewait.model.segment import FourTuple, Segment
from timewait.model.states import TcpState

# Not frozen: a frozen dataclass's generated __init__ stays interpreted under mypyc; the
# explicit __init__s below compile. Treat every class here as a value all the same.


@dataclass(slots=True, init=False)
class StateChange:
    """One socket of four-tuple `tuple` went from `old` to `new` at `time` (ns)."""

    time: int
    tuple: FourTuple
    old: TcpState
    new: TcpState

    def __init__(self, time: int, tuple: FourTuple, old: TcpState, new: TcpState) -> None:
        self.time = time
        self.tuple = tuple
        self.old = old
        self.new = new

    def __str__(self) -> str:
        return f"{self.old} -> {self.new}"


class TableOp:
    """An operation on the host's tables that a socket asks for (see the module docstring)."""


class HandOff(TableOp):
    """K tcp_time_wait(sk, substate, timeout): a minisocket takes the four-tuple over (ref 1.2)."""

    substate: TcpState  # TIME_WAIT, or FIN_WAIT_2 for an orphan waiting for the peer's FIN
    timeout: int  # ns the minisocket's timer is armed with

    def __init__(self, substate: TcpState, timeout: int) -> None:
        self.substate = substate
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"HandOff({self.substate}, {self.timeout})"


class Reopen(TableOp):
    """TCP_TW_SYN: a new SYN may reopen the minisocket's four-tuple through a listener, with
    `isn` forced (tcp_timewait_state_process(), ref 1.3 row 9)."""

    isn: int

    def __init__(self, isn: int) -> None:
        self.isn = isn

    def __repr__(self) -> str:
        return f"Reopen(isn={self.isn})"


class _Unhash(TableOp):
    """tcp_done() / tcp_set_state(TCP_CLOSE): the full socket leaves the established hash."""


class _Kill(TableOp):
    """inet_twsk_kill(): the minisocket leaves the hash and drops its bind-bucket reference."""


UNHASH: Final = _Unhash()
KILL: Final = _Kill()


@dataclass(slots=True, init=False)
class Outcome:
    """What one call into a socket did; see the module docstring."""

    segments: list[Segment]
    changes: list[StateChange] | None  # None: no state changed (the common case)
    op: TableOp | None
    deadline: int | None

    def __init__(
        self,
        segments: list[Segment],
        changes: list[StateChange] | None = None,
        op: TableOp | None = None,
        deadline: int | None = None,
    ) -> None:
        self.segments = segments
        self.changes = changes
        self.op = op
        self.deadline = deadline
