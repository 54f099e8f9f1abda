"""Read the sysctls of the current thread's network namespace into a KernelConfig.

/proc/sys/net/ipv4/* shows the namespace of the thread that opens it (net sysctls are
per-netns: K net/sysctl_net.c net_ctl_header_lookup() uses current->nsproxy->net_ns), so
`capture()` reads them while inside the target namespace. Every file there is world-readable,
so no root is needed. A setting the running kernel lacks (tcp_tw_reuse_delay before 6.14) keeps
the KernelConfig default and is reported in the notes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from timewait.config import SYSCTL_NAMES, KernelConfig

SYSCTL_DIR: Final = "/proc/sys/net/ipv4"


def read_sysctl_text(root: str = SYSCTL_DIR) -> tuple[dict[str, str], tuple[str, ...]]:
    """{leaf name: text} for every KernelConfig sysctl, and the names this kernel lacks."""
    base = Path(root)
    values: dict[str, str] = {}
    missing: list[str] = []
    for name in SYSCTL_NAMES:
        try:
            values[name] = (base / name).read_text()
        except OSError:
            missing.append(name)
    return values, tuple(missing)


def read_config(root: str = SYSCTL_DIR) -> tuple[KernelConfig, tuple[str, ...]]:
    """The namespace's KernelConfig and notes about settings that could not be read."""
    values, missing = read_sysctl_text(root)
    notes = tuple(
        f"net.ipv4.{name} is not on this kernel; assumed the default "
        f"{KernelConfig().to_sysctl()[name]!r}"
        for name in missing
    )
    return KernelConfig.from_sysctl(values), notes


def read_config_of(
    netns: str | None = None, pid: int | None = None
) -> tuple[KernelConfig, tuple[str, ...], str]:
    """(config, notes, label) of the live settings of a namespace: --netns NAME|PATH, --pid,
    or the caller's own. Raises NamespaceNotFound / NeedRoot (one line) like capture()."""
    from timewait.live import netns as _netns

    target = _netns.resolve(netns=netns, pid=pid)
    with _netns.entered(target):
        config, notes = read_config()
        label = target.label if target else _netns.own_label()
    return config, notes, label
