"""Live collection: one Snapshot of a real network namespace.

- `capture.capture()`: the entry point (sock_diag with a /proc fallback, sysctls, counters).
- `sockdiag`: the netlink request, a raw dump and the vectorized decoder.
- `procnet`: /proc/net/tcp{,6}, netstat, snmp and sockstat parsers.
- `sysctl`: /proc/sys/net/ipv4 into KernelConfig.
- `netns`: enter a namespace by name, path or pid and come back.
- `discover`: every network namespace of the machine, named by pod, container, `ip netns`
  name or process (issue 14). `discover.discover(roots=None).namespaces` gives
  FoundNamespace(inode, path, labels, ...) for any `--all-netns` command (doctor, top,
  exporter, trace): enter `path` -- or the fd `scan.open_verified(found)` returns, checked by
  inode -- and put `labels` in the Snapshot.
- `scan`: capture them all, streaming (`scan.capture_all(namespaces)`), skipping the ones that
  vanish mid-scan.

I/O lives here (and in lab/), never in the core (config, model, doctor).
"""

from __future__ import annotations
