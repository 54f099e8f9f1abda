"""Prometheus exporter: per-destination TIME_WAIT and port headroom, with bounded labels.

    from timewait.exporter.collector import TimewaitCollector
    registry = CollectorRegistry()
    registry.register(TimewaitCollector(netns=("web",), top_k=10))
    # or, from the shell: timewait exporter --listen 127.0.0.1:19977 --netns web

`collector.py` is the custom collector (a fresh Snapshot per collection, analyzed by the doctor,
families built at scrape time: STYLE.md rule 11); `server.py` serves it over HTTP with
prometheus_client's WSGI app and stops cleanly on Ctrl-C and SIGTERM. This module imports
neither, so `timewait --help` does not need prometheus_client.
"""

from __future__ import annotations

from typing import Final

# Default port, 19977. Not 9977 (issue 6's suggestion) or anything else in 9100-9999: that block
# of the Prometheus "default port allocations" wiki page is fully allocated since 2023 (Chris
# Siebenmann, "Why Prometheus exporters really need fixed TCP ports", utcc.utoronto.ca/~cks,
# 2023-06-04, quoting Scott Laird), so every port there belongs to some exporter, and 9977 is
# also Gloo's xDS default. 19977 is in no /etc/services entry (Debian netbase) and sits below
# the default ephemeral range 32768-60999 (K net/ipv4/af_inet.c inet_init_net(); ref 7.1): a
# listener inside that range takes its port from every destination's budget, which is exactly
# what `timewait doctor` warns about (rule range-swallows-listeners).
DEFAULT_PORT: Final = 19977
DEFAULT_LISTEN: Final = f"127.0.0.1:{DEFAULT_PORT}"
DEFAULT_TOP_K: Final = 10
MAX_TOP_K: Final = 1000

__all__ = ["DEFAULT_LISTEN", "DEFAULT_PORT", "DEFAULT_TOP_K", "MAX_TOP_K"]
