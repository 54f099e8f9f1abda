"""The running kernel's build configuration, where it exposes it (/proc/config.gz).

Only CONFIG_HZ is read: the timer wheel rounds each TIME_WAIT's death up to a bucket whose size
depends on it (model/timerwheel.py), so a TIME_WAIT really lasts 60.5-62 s at HZ=250, and a plan
run forward from a capture needs it to agree with the kernel (lab `plan`). Standard library only:
capture.read() calls it.
"""

from __future__ import annotations

import gzip
from typing import Final

CONFIG_GZ: Final = "/proc/config.gz"


def read_hz(path: str = CONFIG_GZ) -> int:
    """CONFIG_HZ, or 0 when the kernel does not expose its config (CONFIG_IKCONFIG_PROC off)."""
    try:
        with gzip.open(path, "rt") as f:
            for line in f:
                if line.startswith("CONFIG_HZ="):
                    return int(line.split("=", 1)[1])
    except (OSError, ValueError, EOFError):
        pass
    return 0
