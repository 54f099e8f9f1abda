"""Exit statuses of the `timewait` command. One place, so scripts can rely on them."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """What the process exit code means."""

    OK = 0  #: success; for `doctor`: healthy
    WARNING = 1  #: `doctor`: warnings found
    CRITICAL = 2  #: `doctor`: critical findings
    ERROR = 3  #: the command could not do its job (bad input, missing permission, ...)
    USAGE = 64  #: bad command line (EX_USAGE from sysexits.h)
    INTERRUPTED = 130  #: Ctrl-C (128 + SIGINT)
