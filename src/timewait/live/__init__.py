"""Live collection: one Snapshot of a real network namespace.

- `capture.capture()`: the entry point (sock_diag with a /proc fallback, sysctls, counters).
- `sockdiag`: the netlink request, a raw dump and the vectorized decoder.
- `procnet`: /proc/net/tcp{,6}, netstat, snmp and sockstat parsers.
- `sysctl`: /proc/sys/net/ipv4 into KernelConfig.
- `netns`: enter a namespace by name, path or pid and come back.

I/O lives here (and in lab/), never in the core (config, model, doctor).
"""

from __future__ import annotations
