"""capture(): one Snapshot of a live network namespace (this one, --netns NAME|PATH, --pid PID).

Theory of operation
-------------------
1. Resolve the target (netns.resolve) and enter it for as long as it takes to open what we need
   there: the sock_diag netlink socket (bound to the namespace it is created in), the socket
   table (sock_diag dump, or /proc/thread-self/net/tcp{,6}), the sysctls and the counters.
2. Come back to our own namespace (netns.entered's finally) and decode the dump (pure numpy).

source "auto" uses sock_diag and falls back to /proc with a note; "sock_diag" and "proc" force
one.

Rate window (`rate_window=True`, what the live doctor asks for): one socket table cannot tell
the churn *now* -- after a burst, TIME_WAIT / 60 s is an average over the last minute and the
TIME_WAIT timers still show the burst (issue 17). So the TcpExt counters are read once before
the dump and once after, and the snapshot carries both (counters_before, counters_window_ns).
The dump itself takes a few ms to a few hundred. When the table shows recent churn (a
TIME_WAIT younger than RATE_RECENT_MS) the window is stretched, polling the counter, until it
holds RATE_MIN_EVENTS new TIME_WAITs or RATE_MAX_WAIT_S has passed: the TW counter steps by one
per TIME_WAIT, so 20 events bound the rate's quantization error at 5 %; at the 470/s that
exhausts one destination of the default range in a minute that takes ~45 ms, at 20/s one
second. A table with no recent TIME_WAIT is not waited for: nothing has been filling it for
10 s, and the short window still says what the counter saw (bench/bench_rate_window.py measures
the error against an offered rate).

Sockets of all states are taken, listeners and bind()-only sockets included, because a port
held by any socket counts against the ephemeral range.

Without root, the own namespace is fully visible: sock_diag dumps and /proc/net list every
socket of the namespace whatever its owner. Root is needed for other namespaces (setns needs
CAP_SYS_ADMIN) and for socket marks (INET_DIAG_MARK needs CAP_NET_ADMIN; we do not use them).
"""

from __future__ import annotations

import os
import time
from typing import Final

from timewait.config import TCP_TIMEWAIT_LEN
from timewait.errors import TimewaitError
from timewait.live import netns as _netns
from timewait.live import procnet, sockdiag, sysctl
from timewait.snapshot import TCP_TIME_WAIT, Snapshot
from timewait.units import MS

SOURCES: Final = ("auto", "sock_diag", "proc")
RATE_MIN_EVENTS: Final = 20  # TW counter steps: rate within 5 % of its quantization
RATE_MAX_WAIT_S: Final = 1.0
RATE_RECENT_MS: Final = 10_000  # a TIME_WAIT this young means churn is going on
RATE_POLL_S: Final = 0.02
TIME_WAIT_MS: Final = TCP_TIMEWAIT_LEN // MS

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


def capture(
    *,
    netns: str | None = None,
    pid: int | None = None,
    source: str = "auto",
    rate_window: bool = False,
) -> Snapshot:
    """Snapshot of the network namespace named by `netns` (name or path) or `pid` (or our own).

    With `rate_window` the counters are read around the dump too (see the theory above).

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
        before = procnet.read_counters() if rate_window else {}
        t_before = time.monotonic_ns()
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
        if rate_window and _recent_churn(sockets):
            counters = _stretch_window(before, counters, t_before)
        t_after = time.monotonic_ns()
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
        counters_before=before,
        counters_window_ns=(t_after - t_before) if rate_window else 0,
    )


def _recent_churn(sockets: object) -> bool:
    import numpy as np

    assert isinstance(sockets, np.ndarray)
    young = (sockets["state"] == TCP_TIME_WAIT) & (
        sockets["expires_ms"] > TIME_WAIT_MS - RATE_RECENT_MS
    )
    return bool(young.any())


def _stretch_window(before: dict[str, int], counters: dict[str, int], t0: int) -> dict[str, int]:
    """Poll the counters until the TW counter moved RATE_MIN_EVENTS or the wait is over."""
    deadline = t0 + int(RATE_MAX_WAIT_S * 1e9)
    while counters.get("TW", 0) - before.get("TW", 0) < RATE_MIN_EVENTS:
        if time.monotonic_ns() >= deadline:
            break
        time.sleep(RATE_POLL_S)
        counters = procnet.read_counters()
    return counters
