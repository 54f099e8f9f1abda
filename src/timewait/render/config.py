"""The `config show` report: settings plus what they imply, as JSON-ready data."""

from __future__ import annotations

from typing import Any

from timewait.config import KernelConfig, Profile
from timewait.units import SEC


def config_report(cfg: KernelConfig, profile: Profile) -> dict[str, Any]:
    """Settings in sysctl text form and derived numbers (ports per destination, churn limit)."""
    usable = cfg.usable_ephemeral_ports
    tw_s = profile.time_wait_len // SEC
    return {
        "profile": profile.name,
        "settings": cfg.to_sysctl(),
        "derived": {
            "time_wait_seconds": tw_s,
            "ephemeral_ports": cfg.port_range_size,
            "usable_ports_per_destination": usable,
            # ref 7.3: without reuse, a destination sustains usable/TIME_WAIT new connections/s.
            "max_new_connections_per_s_per_destination": round(usable / tw_s, 1),
            "tw_reuse": {0: "off", 1: "on (connect only)", 2: "loopback only"}[cfg.tcp_tw_reuse],
            "timestamps": "on" if cfg.timestamps_enabled else "off",
        },
    }
