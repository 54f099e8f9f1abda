"""Kernel-version facts the doctor's advice depends on, in one table (ref section 13).

Every remedy that names a sysctl or a socket option checks this table against the snapshot's
kernel, so advice is correct for the kernel that was captured, not for the one running the tool.
Versions marked "confirmed" in ref 13 are backed by man pages, a pull request or a dated note;
the others are inferred from commit dates there and are used only where a wrong guess is harmless
(a remedy mentioned with its requirement).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from timewait.snapshot import Snapshot

# A model host implements Linux 6.18 semantics (README "The model"; config.py defaults).
MODEL_KERNEL: Final = (6, 18)
UNKNOWN: Final = (0, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelFact:
    """A feature and the first mainline release that has it (or lost it, for removals)."""

    version: tuple[int, int]
    what: str
    source: str


KERNEL_FACTS: Final[Mapping[str, KernelFact]] = {
    "so_reuseport": KernelFact(version=(3, 9), what="SO_REUSEPORT", source="ref 8, ref 13"),
    "ip_bind_address_no_port": KernelFact(
        version=(4, 2),
        what="IP_BIND_ADDRESS_NO_PORT socket option",
        source="ref 7.4, commit 90c337da1524 (confirmed)",
    ),
    "tcp_timestamps_2": KernelFact(
        version=(4, 10),
        what="per-connection timestamp offsets; tcp_timestamps=2",
        source="ref 3.1, 13, commits 95a22ca/25429d7b7dca",
    ),
    "tw_reuse_per_netns": KernelFact(
        version=(4, 11), what="tcp_tw_reuse per network namespace", source="ref 3, 56ab6b93007e"
    ),
    "tcp_tw_recycle_removed": KernelFact(
        version=(4, 12),
        what="tcp_tw_recycle removed",
        source="ref 4, commit 4396e46187ca (confirmed)",
    ),
    "tw_reuse_loopback": KernelFact(
        version=(4, 18),
        what="tcp_tw_reuse=2 (loopback only, the default)",
        source="ref 3, commit 79e9fed46038",
    ),
    "ip_autobind_reuse": KernelFact(
        version=(5, 7), what="ip_autobind_reuse sysctl", source="ref 7.4"
    ),
    "ip_local_port_range_sockopt": KernelFact(
        version=(6, 3),
        what="IP_LOCAL_PORT_RANGE socket option",
        source="ref 7.4, commit 91d0b78c (confirmed)",
    ),
    "tcp_tw_reuse_delay": KernelFact(
        version=(6, 14),
        what="tcp_tw_reuse_delay sysctl (ms), ms-precision reuse test",
        source="ref 3, commits ca6a6f93867a/19ce8cd30465 (confirmed)",
    ),
}


def kernel_of(snapshot: Snapshot) -> tuple[int, int]:
    """The (major, minor) the advice targets: the captured kernel, 6.18 for a model host,
    (0, 0) when unknown."""
    if snapshot.kernel == "model":
        return MODEL_KERNEL
    return snapshot.kernel_version


def has(kernel: tuple[int, int], feature: str) -> bool | None:
    """True/False when the kernel is known; None when it is unknown (state the requirement)."""
    if kernel == UNKNOWN:
        return None
    return kernel >= KERNEL_FACTS[feature].version


def needs(feature: str) -> str:
    """'Linux >= 4.2' for a feature: the text a remedy shows when the kernel is unknown."""
    v = KERNEL_FACTS[feature].version
    return f"Linux >= {v[0]}.{v[1]}"
