"""Lab experiments: each question of the TIME_WAIT story asked of the running kernel, in
throwaway namespaces, with the simulator's answer beside it (see base.py).

- `ports`: exhaustion, tw-reuse, max-tw-buckets, bind-before-connect, who-closes-first
- `closing`: reuseaddr-restart, lost-final-ack (nftables), fin-timeout-myth
- `apps`: http-pooling (requests, urllib3), nginx-keepalive (Debian's nginx)
"""

from __future__ import annotations

from timewait.lab.experiments.base import Experiment, LabError, LabResult
from timewait.lab.experiments.registry import CATALOG, get, load_catalog, register

__all__ = ["CATALOG", "Experiment", "LabError", "LabResult", "get", "load_catalog", "register"]
