"""What a Connection tells its application: plain values, no behaviour.

Theory of operation: `Connection.next_event()` pops these in the order they happened, like
aioquic's event queue. They are what a blocking socket API would report (connect() returning,
recv() returning data or 0, ECONNRESET, ECONNREFUSED, ETIMEDOUT); `Closed` marks the moment the
connection reached CLOSED (it is not emitted when the socket is handed to a TIME_WAIT or
FIN_WAIT2 minisocket: the connection then lives on in the host's table, ref 1.2).
"""

from __future__ import annotations

from dataclasses import dataclass

# Not frozen: a frozen dataclass's generated __init__ stays interpreted under mypyc (setup.py).
# Treat events as values all the same; the field-less ones are shared instances (connection.py).


@dataclass(slots=True, kw_only=True)
class Event:
    """Base class of everything `Connection.next_event()` returns."""


@dataclass(slots=True, kw_only=True)
class Connected(Event):
    """The three-way handshake completed: ESTABLISHED (connect() returns / accept() ready)."""


@dataclass(slots=True, kw_only=True, init=False)
class DataReceived(Event):
    """In-order bytes were delivered to the receive buffer (`Connection.read()` drains them)."""

    data: bytes

    def __init__(self, *, data: bytes) -> None:  # compiled; a dataclass __init__ is not (mypyc)
        self.data = data


@dataclass(slots=True, kw_only=True)
class PeerClosed(Event):
    """The peer's FIN arrived in order: end of stream (recv() returns 0)."""


@dataclass(slots=True, kw_only=True)
class ConnectionReset(Event):
    """An acceptable RST arrived in a synchronized state (ECONNRESET)."""


@dataclass(slots=True, kw_only=True)
class BrokenPipe(Event):
    """An acceptable RST arrived after the peer's FIN (CLOSE_WAIT): K tcp_reset() reports EPIPE
    there, ECONNRESET elsewhere."""


@dataclass(slots=True, kw_only=True)
class ConnectionRefused(Event):
    """The SYN was answered by an RST acknowledging it (ECONNREFUSED)."""


@dataclass(slots=True, kw_only=True)
class ConnectionTimedOut(Event):
    """Retransmissions ran out (tcp_syn_retries / tcp_retries2 / tcp_orphan_retries: ETIMEDOUT)."""


@dataclass(slots=True, kw_only=True)
class Closed(Event):
    """The connection reached CLOSED and holds nothing any more."""
