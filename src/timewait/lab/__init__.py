"""The lab: the same questions asked of the real kernel, in throwaway network namespaces.

- `namespaces`: create/remove `tw-*` namespaces with guaranteed cleanup; run code inside them.
- `population`: fill a namespace with a known mix of sockets (and a fast mass-TIME_WAIT
  generator for the benchmark).

Traffic only ever flows on the loopback of namespaces created here (DESIGN.md, network rule).
"""

from __future__ import annotations
