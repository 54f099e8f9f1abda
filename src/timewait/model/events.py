"""What a Connection tells its application: plain values, no behaviour.

Theory of operation: `Connection.next_event()` pops these in the order they happened, like
aioquic's event queue. They are what a blocking socket API would report (connect() returning,
recv() returning data or 0, ECONNRESET, ECONNREFUSED, ETIMEDOUT); `Closed` marks the moment the
connection reached CLOSED (it is not emitted when the socket is handed to a TIME_WAIT or
FIN_WAIT2 minisocket: the connection then lives on in the host's table, ref 1.2).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base class of everything `Connection.next_event()` returns."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Connected(Event):
    """The three-way handshake completed: ESTABLISHED (connect() returns / accept() ready)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DataReceived(Event):
    """In-order bytes were delivered to the receive buffer (`Connection.read()` drains them)."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerClosed(Event):
    """The peer's FIN arrived in order: end of stream (recv() returns 0)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionReset(Event):
    """An acceptable RST arrived in a synchronized state (ECONNRESET)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionRefused(Event):
    """The SYN was answered by an RST acknowledging it (ECONNREFUSED)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionTimedOut(Event):
    """Retransmissions ran out (tcp_syn_retries / tcp_retries2 / tcp_orphan_retries: ETIMEDOUT)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Closed(Event):
    """The connection reached CLOSED and holds nothing any more."""
