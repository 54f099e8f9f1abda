"""capture(): one Snapshot of a live network namespace (this one, --netns NAME|PATH, --pid PID).

Theory of operation
-------------------
capture() = build(read()), and the two halves are public:
1. `read()` resolves the target (netns.resolve) and enters it for as long as it takes to open
   what we need there: one sock_diag netlink socket per family (bound to the namespace it is
   created in), the socket table (the raw dumps, IPv4 and IPv6 at once, or the text of
   /proc/thread-self/net/tcp{,6}), the sysctls and the counters. It uses the standard library
   only, so the doctor runs it on a thread while its main thread imports numpy and the analysis
   (what start-up costs, issue 10 item 5). Its sources can be swapped (`Sources`: a recorded
   dump, a /proc/net directory, a sysctl directory), so a whole Snapshot is built from
   tests/fixtures without root.
2. `build()` decodes the dump (pure numpy), closes the rate window (below) and makes the
   Snapshot.

source "auto" uses sock_diag and falls back to /proc with a note; "sock_diag" and "proc" force
one.

Rate window (`rate_window=True`, what the live doctor asks for): one socket table cannot tell
the churn *now* -- after a burst, TIME_WAIT / 60 s is an average over the last minute and the
TIME_WAIT timers still show the burst (issue 17). So the TcpExt counters are read once before
the dump and once after, and the snapshot carries both (counters_before, counters_window_ns).
The dump itself takes a few ms to a few hundred. A table with no TIME_WAIT younger than
RATE_RECENT_MS is not waited for: nothing has filled it for 10 s. Otherwise the window lasts at
least RATE_MIN_WINDOW_S, and while TIME_WAITs keep coming it is stretched, polling the counter,
until it holds RATE_MIN_EVENTS of them or RATE_MAX_WAIT_S has passed: the TW counter steps by
one per TIME_WAIT, so 20 events bound the rate's quantization error at 5 %; at the 470/s that
exhausts one destination of the default range in a minute that takes ~45 ms, at 20/s one
second. No event at all in the minimum window means the burst is over (< ~30/s): the doctor
says so at once instead of waiting. bench/bench_rate_window.py measures the error against an
offered rate.

Sockets of all states are taken, listeners and bind()-only sockets included, because a port
held by any socket counts against the ephemeral range.

Without root, the own namespace is fully visible: sock_diag dumps and /proc/net list every
socket of the namespace whatever its owner. Root is needed for other namespaces (setns needs
CAP_SYS_ADMIN) and for socket marks (INET_DIAG_MARK needs CAP_NET_ADMIN; we do not use them).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from timewait.config import KernelConfig
from timewait.errors import TimewaitError
from timewait.live import ctnetlink, kconfig, netlink, procnet, sysctl
from timewait.live import netns as _netns
from timewait.model.states import TCP_TIMEWAIT_LEN, LinuxState
from timewait.units import MS

if TYPE_CHECKING:
    import numpy as np

    from timewait.snapshot import Snapshot

SOURCES: Final = ("auto", "sock_diag", "proc")
RATE_MIN_EVENTS: Final = 20  # TW counter steps: rate within 5 % of its quantization
RATE_MAX_WAIT_S: Final = 1.0
RATE_MIN_WINDOW_S: Final = 0.1
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Sources:
    """Where read() takes each part from; the defaults are the live kernel.

    dump: a recorded sock_diag dump (bytes) instead of asking the kernel; proc_net: a directory
    laid out like /proc/net (tcp, tcp6, netstat, snmp, sockstat{,6}); sysctl_dir: one laid out
    like /proc/sys/net/ipv4. With any of them set, nothing is entered or asked of the kernel for
    that part.
    """

    dump: bytes | None = None
    proc_net: str = procnet.PROC_NET
    sysctl_dir: str = sysctl.SYSCTL_DIR
    config_gz: str = kconfig.CONFIG_GZ
    # conntrack (issue 15): a recorded ctnetlink dump, the `nft -j list ruleset` text, and a
    # directory laid out like /proc/sys/net/netfilter. With `dump` or `conntrack_dump` set,
    # nothing about conntrack is asked of the kernel (a fixture without netfilter_dir files
    # is a namespace without conntrack).
    conntrack_dump: bytes | None = None
    nft_ruleset: str | None = None
    netfilter_dir: str | None = None  # None: /proc/sys/net/netfilter when live


@dataclass(frozen=True, slots=True, kw_only=True)
class Raw:
    """What read() saw inside the namespace, before any decoding."""

    target: _netns.Target | None
    label: str
    source: str  # "sock_diag" or "proc"
    dump: bytes | None
    tcp_text: tuple[str, str | None] | None  # /proc/net/tcp and tcp6 (None: IPv6 off)
    config: KernelConfig
    counters: dict[str, int]
    counters_before: dict[str, int]
    t_before_ns: int
    time_ns: int
    monotonic_ns: int
    rate_window: bool
    proc_net: str
    kernel_hz: int = 0
    notes: tuple[str, ...] = field(default=())
    conntrack: ctnetlink.State | None = None
    labels: Mapping[str, str] = field(default_factory=dict)  # Snapshot.labels (issue 14)


def read(
    *,
    netns: str | None = None,
    pid: int | None = None,
    source: str = "auto",
    rate_window: bool = False,
    sources: Sources | None = None,
    target: _netns.Target | None = None,
    labels: Mapping[str, str] | None = None,
    before: tuple[dict[str, int], int] | None = None,
    one_walk: bool = False,
) -> Raw:
    """Everything a Snapshot needs, read inside the target namespace (standard library only).

    For --all-netns (live.scan) a few more knobs: `target` is an already resolved namespace
    (netns and pid are then ignored), `labels` name it in the Snapshot, `before` is
    (counters, monotonic ns) read in it earlier -- the rate window then runs from that read
    (rate_window is implied) -- and `one_walk` dumps both families in one walk of the
    kernel's tables (netlink.dump_one_walk).

    Errors: NamespaceNotFound, NeedRoot, SockDiagUnavailable (source "sock_diag" when the
    kernel refuses), CaptureError for an unknown source.
    """
    if source not in SOURCES:
        raise CaptureError(f"unknown source {source!r}: choose one of {', '.join(SOURCES)}")
    src = sources or Sources()
    if target is None:
        target = _netns.resolve(netns=netns, pid=pid)
    if before is not None:
        rate_window = True
    notes: list[str] = []
    dump: bytes | None = None
    tcp_text: tuple[str, str | None] | None = None
    with _netns.entered(target):
        if before is not None:
            counters_before, t_before = before
        else:
            counters_before = procnet.read_counters(src.proc_net) if rate_window else {}
            t_before = time.monotonic_ns()
        time_ns = time.time_ns()
        mono_ns = time.monotonic_ns()
        used = source
        if src.dump is not None:
            dump, used = src.dump, "sock_diag"
        elif source in ("auto", "sock_diag"):
            try:
                dump = _dump_one_walk() if one_walk else _dump_both_families()
                used = "sock_diag"
            except netlink.SockDiagUnavailable as e:
                if source == "sock_diag":
                    raise
                notes.append(f"sock_diag unavailable ({e}); fell back to /proc/net/tcp{{,6}}")
                used = "proc"
        if used == "proc":
            tcp_text = procnet.read_tcp_text(src.proc_net)
        config, cfg_notes = sysctl.read_config(src.sysctl_dir)
        counters = procnet.read_counters(src.proc_net)
        live = src.dump is None and src.conntrack_dump is None
        nf_dir = src.netfilter_dir or (ctnetlink.NETFILTER_SYSCTL if live else "")
        ct = ctnetlink.read_state(
            src.proc_net, nf_dir, dump_bytes=src.conntrack_dump, ruleset=src.nft_ruleset,
            live=live,
        )  # fmt: skip
        label = target.label if target else _netns.own_label()
    if used == "proc":
        notes.append(NOTE_PROC)
    notes.extend(cfg_notes)
    if os.geteuid() != 0:
        notes.append(NOTE_UNPRIVILEGED)
    notes.extend(ct.notes)
    return Raw(
        target=target, label=label, source=used, dump=dump, tcp_text=tcp_text, config=config,
        counters=counters, counters_before=counters_before, t_before_ns=t_before,
        time_ns=time_ns, monotonic_ns=mono_ns, rate_window=rate_window, proc_net=src.proc_net,
        kernel_hz=kconfig.read_hz(src.config_gz), notes=tuple(notes), conntrack=ct,
        labels=dict(labels or {}),
    )  # fmt: skip


def _dump_one_walk() -> bytes:
    """Both families in one walk, on a socket opened here (in the target namespace)."""
    sock = netlink.open_socket()
    try:
        return netlink.dump_one_walk(sock)
    finally:
        sock.close()


def _dump_both_families() -> bytes:
    """IPv4 and IPv6 dumps at once, on sockets opened here (in the target namespace)."""
    socks = {netlink.AF_INET: netlink.open_socket()}
    try:
        with contextlib.suppress(netlink.SockDiagUnavailable):
            socks[netlink.AF_INET6] = netlink.open_socket()
        return netlink.dump_parallel(socks)
    finally:
        for s in socks.values():
            s.close()


def build(raw: Raw) -> Snapshot:
    """Decode what read() saw and make the Snapshot; with a rate window, poll the counters
    (inside the namespace again) while recent TIME_WAITs say churn is going on.

    Errors: MalformedDump, MalformedProcFile, NamespaceNotFound (gone meanwhile).
    """
    from timewait.live import sockdiag
    from timewait.snapshot import Snapshot

    if raw.dump is not None:
        sockets = sockdiag.decode(raw.dump)
    else:
        assert raw.tcp_text is not None
        sockets = procnet.parse_tcp_tables(*raw.tcp_text)
    counters = raw.counters
    if raw.rate_window and _recent_churn(sockets):
        with _netns.entered(raw.target):
            counters = _stretch_window(raw.counters_before, counters, raw.t_before_ns, raw)
    t_after = time.monotonic_ns()
    tables, ct_counters = _conntrack_tables(raw.conntrack)
    return Snapshot(
        sockets=sockets,
        config=raw.config,
        counters={**counters, **ct_counters},
        time_ns=raw.time_ns,
        monotonic_ns=raw.monotonic_ns,
        kernel=os.uname().release,
        namespace=raw.label,
        source=raw.source,
        hostname=os.uname().nodename,
        notes=raw.notes,
        counters_before=raw.counters_before,
        counters_window_ns=(t_after - raw.t_before_ns) if raw.rate_window else 0,
        kernel_hz=raw.kernel_hz,
        tables=tables,
        labels=raw.labels,
    )


def _conntrack_tables(ct: ctnetlink.State | None) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The conntrack and nat_rules tables and the conntrack.* counters of what read() saw."""
    if ct is None:
        return {}, {}
    from timewait.conntrack import NAT_TABLE, TABLE
    from timewait.live import conntrack as ctdecode

    tables: dict[str, np.ndarray] = {}
    if ct.dump is not None:
        tables[TABLE] = ctdecode.decode(ct.dump)
    if ct.ruleset is not None:
        tables[NAT_TABLE] = ctdecode.nat_rules(ct.ruleset)
    return tables, dict(ct.counters)


def capture(
    *,
    netns: str | None = None,
    pid: int | None = None,
    source: str = "auto",
    rate_window: bool = False,
    sources: Sources | None = None,
) -> Snapshot:
    """Snapshot of the network namespace named by `netns` (name or path) or `pid` (or our own).

    With `rate_window` the counters are read around the dump too (see the theory above);
    `sources` swaps the kernel for recorded files. Errors: those of read() and build().
    """
    return build(
        read(netns=netns, pid=pid, source=source, rate_window=rate_window, sources=sources)
    )


def _recent_churn(sockets: np.ndarray) -> bool:
    young = (sockets["state"] == LinuxState.TIME_WAIT) & (
        sockets["expires_ms"] > TIME_WAIT_MS - RATE_RECENT_MS
    )
    return bool(young.any())


def _stretch_window(
    before: dict[str, int], counters: dict[str, int], t0: int, raw: Raw
) -> dict[str, int]:
    """Poll the counters: at least RATE_MIN_WINDOW_S; then, while TIME_WAITs keep coming, until
    RATE_MIN_EVENTS of them or RATE_MAX_WAIT_S."""
    least = t0 + int(RATE_MIN_WINDOW_S * 1e9)
    deadline = t0 + int(RATE_MAX_WAIT_S * 1e9)
    while True:
        now = time.monotonic_ns()
        events = counters.get("TW", 0) - before.get("TW", 0)
        if now >= deadline or events >= RATE_MIN_EVENTS or (now >= least and events == 0):
            return counters
        time.sleep(RATE_POLL_S)
        counters = procnet.read_counters(raw.proc_net)
