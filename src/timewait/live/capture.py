"""capture(): one Snapshot of a live network namespace (this one, --netns NAME|PATH, --pid PID).

Theory of operation
-------------------
1. Resolve the target (netns.resolve) and enter it for as long as it takes to open what we need
   there: the sock_diag netlink socket (bound to the namespace it is created in), the socket
   table (sock_diag dump, or /proc/thread-self/net/tcp{,6}), the sysctls and the counters.
2. Come back to our own namespace (netns.entered's finally) and decode the dump (pure numpy).

source "auto" uses sock_diag and falls back to /proc with a note; "sock_diag" and "proc" force
one. Sockets of all states are taken, listeners and bind()-only sockets included, because a
port held by any socket counts against the ephemeral range.

Without root, the own namespace is fully visible: sock_diag dumps and /proc/net list every
socket of the namespace whatever its owner. Root is needed for other namespaces (setns needs
CAP_SYS_ADMIN) and for socket marks (INET_DIAG_MARK needs CAP_NET_ADMIN; we do not use them).
"""

from __future__ import annotations

import os
import time
from typing import Final

from timewait.errors import TimewaitError
from timewait.live import netns as _netns
from timewait.live import procnet, sockdiag, sysctl
from timewait.snapshot import Snapshot

SOURCES: Final = ("auto", "sock_diag", "proc")

NOTE_UNPRIVILEGED: Final = (
    "not running as root: this namespace is fully visible; other namespaces (--netns/--pid) "
    "need root (CAP_SYS_ADMIN), socket marks need CAP_NET_ADMIN"
)
NOTE_PROC: Final = (
    "source /proc/net/tcp{,6}: bind()-only sockets (BOUND-INACTIVE) are not listed and "
    "timers have 10 ms steps"
)


class CaptureError(TimewaitError):
    """capture() was asked for something it cannot do (unknown source, ...)."""


def capture(*, netns: str | None = None, pid: int | None = None, source: str = "auto") -> Snapshot:
    """Snapshot of the network namespace named by `netns` (name or path) or `pid` (or our own).

    Errors (all TimewaitError, one line, saying what to do): NamespaceNotFound, NeedRoot,
    SockDiagUnavailable (source "sock_diag" when the kernel refuses), MalformedDump,
    MalformedProcFile, CaptureError for an unknown source.
    """
    if source not in SOURCES:
        raise CaptureError(f"unknown source {source!r}: choose one of {', '.join(SOURCES)}")
    target = _netns.resolve(netns=netns, pid=pid)
    notes: list[str] = []
    raw: bytes | None = None
    with _netns.entered(target):
        time_ns = time.time_ns()
        mono_ns = time.monotonic_ns()
        used = source
        if source in ("auto", "sock_diag"):
            try:
                raw = sockdiag.dump()
                used = "sock_diag"
            except sockdiag.SockDiagUnavailable as e:
                if source == "sock_diag":
                    raise
                notes.append(f"sock_diag unavailable ({e}); fell back to /proc/net/tcp{{,6}}")
                used = "proc"
        table = procnet.read_tcp_tables() if used == "proc" else None
        config, cfg_notes = sysctl.read_config()
        counters = procnet.read_counters()
        label = target.label if target else _netns.own_label()
    sockets = sockdiag.decode(raw) if raw is not None else table
    assert sockets is not None
    if used == "proc":
        notes.append(NOTE_PROC)
    notes.extend(cfg_notes)
    if os.geteuid() != 0:
        notes.append(NOTE_UNPRIVILEGED)
    return Snapshot(
        sockets=sockets,
        config=config,
        counters=counters,
        time_ns=time_ns,
        monotonic_ns=mono_ns,
        kernel=os.uname().release,
        namespace=label,
        source=used,
        hostname=os.uname().nodename,
        notes=tuple(notes),
    )
