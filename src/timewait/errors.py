"""Every error timewait raises derives from TimewaitError; the subclass says whose fault it is.

Messages are one line: what happened, and what to do about it. The CLI prints `str(error)` and
exits with `error.exit_status`; nothing else is needed to report it.
"""

from __future__ import annotations

import errno as _errno

from timewait.status import ExitStatus


class TimewaitError(Exception):
    """Base class. `exit_status` is the hint the CLI uses."""

    exit_status: ExitStatus = ExitStatus.ERROR


class ConfigError(TimewaitError, ValueError):
    """A sysctl has a value the kernel would refuse, or text that does not parse."""

    def __init__(self, setting: str, value: object, allowed: str) -> None:
        self.setting = setting
        self.value = value
        self.allowed = allowed
        super().__init__(f"net.ipv4.{setting} = {value!r} is not accepted: {allowed}")


class ProfileError(TimewaitError, ValueError):
    """An unknown behaviour profile was asked for."""


class ModelError(TimewaitError):
    """The model was driven in a way that has no meaning (a bug in the caller, not in the peer)."""


class IllegalTransition(ModelError):
    """A (state, input) pair that has no row in the transition table."""

    def __init__(self, state: object, event: object) -> None:
        self.state = state
        self.event = event
        super().__init__(f"no transition from {state} on {event}")


class SocketError(ModelError, OSError):
    """A socket call of the model failed the way the kernel's would: carries the errno.

    These are the model's answers to the caller (EADDRNOTAVAIL, EADDRINUSE, ...), not bugs.
    """

    errno_value: int = 0

    def __init__(self, message: str) -> None:
        OSError.__init__(self, self.errno_value, message)
        self.message = message

    def __str__(self) -> str:
        return f"[{_errno.errorcode.get(self.errno_value, '?')}] {self.message}"


class AddressNotAvailable(SocketError):
    """connect(): no local port gives a unique four-tuple ("Cannot assign requested address")."""

    errno_value = _errno.EADDRNOTAVAIL


class AddressInUse(SocketError):
    """bind(): the port conflicts with an existing owner, or bind(port 0) found no free port."""

    errno_value = _errno.EADDRINUSE


class InvalidArgument(SocketError):
    """A socket call with arguments the kernel rejects with EINVAL."""

    errno_value = _errno.EINVAL


class NotConnected(SocketError):
    """Data operation on a socket that is not connected."""

    errno_value = _errno.ENOTCONN


class BadDescriptor(SocketError):
    """A socket handle that the host does not know (closed or never opened)."""

    errno_value = _errno.EBADF
