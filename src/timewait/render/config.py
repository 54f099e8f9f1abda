"""The `config show` report: settings plus what they imply, as JSON-ready data and as text.

The report says which settings it shows: the live ones of a namespace (read from
/proc/sys/net/ipv4 inside it) or Linux's defaults (what a new network namespace starts with),
and which values --set changed on top of them (a what-if: nothing is written). Values are
shown with single spaces (the kernel writes ip_local_port_range with a tab) and never with a
control character.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from timewait.config import KernelConfig, Profile
from timewait.render.text import printable
from timewait.units import SEC

LIVE = "live"
DEFAULTS = "defaults"


def _clean(value: str) -> str:
    return printable(value)


def config_report(
    cfg: KernelConfig,
    profile: Profile,
    *,
    shows: str = DEFAULTS,
    namespace: str | None = None,
    base: KernelConfig | None = None,
    overridden: Iterable[str] = (),
    notes: Iterable[str] = (),
) -> dict[str, Any]:
    """Settings in sysctl text form (single spaces) and derived numbers.

    `shows` is LIVE (the settings of `namespace`) or DEFAULTS; `base` is what --set changed
    (`cfg` is base plus --set), `overridden` the names --set gave.
    """
    usable = cfg.usable_ephemeral_ports
    tw_s = profile.time_wait_len // SEC
    settings = {k: _clean(v) for k, v in cfg.to_text().items()}
    before = {k: _clean(v) for k, v in (base or cfg).to_text().items()}
    return {
        "shows": shows,
        "namespace": None if namespace is None else printable(namespace),
        "profile": profile.name,
        "settings": settings,
        "set": {k: {"value": settings[k], "was": before[k]} for k in overridden if k in settings},
        "derived": {
            "time_wait_seconds": tw_s,
            "ephemeral_ports": cfg.port_range_size,
            "usable_ports_per_destination": usable,
            # ref 7.3: without reuse, a destination sustains usable/TIME_WAIT new connections/s.
            "max_new_connections_per_s_per_destination": round(usable / tw_s, 1),
            "tw_reuse": {0: "off", 1: "on (connect only)", 2: "loopback only"}[cfg.tcp_tw_reuse],
            "timestamps": "on" if cfg.timestamps_enabled else "off",
        },
        "notes": [printable(n) for n in notes],
    }


def config_lines(report: dict[str, Any]) -> list[str]:
    """The report as text lines: what is shown, the settings, what they imply, notes."""
    if report["shows"] == LIVE:
        head = (
            f"live settings of {report['namespace']}, read from /proc/sys/net/ipv4 "
            "(Linux defaults: --defaults)"
        )
    else:
        head = (
            "Linux defaults (a new namespace's settings), not read from this host "
            "(live: drop --defaults)"
        )
    if report["set"]:
        head += "; --set: what if, nothing written"
    lines = [head]
    width = max(len(k) for k in report["settings"]) + len("net.ipv4.")
    was = "live" if report["shows"] == LIVE else "default"
    for key, value in report["settings"].items():
        line = f"{'net.ipv4.' + key:<{width}}  {value or '(none)'}"
        if key in report["set"]:
            line = f"{line:<{width + 16}}  --set ({was}: {report['set'][key]['was'] or '(none)'})"
        lines.append(line)
    lines.append("")
    width = max(len(k) for k in report["derived"])
    lines += [f"{key:<{width}}  {value}" for key, value in report["derived"].items()]
    lines += [f"note: {n}" for n in report["notes"]]
    return lines
