"""Every exporter test that opens a socket runs inside a namespace it made (DESIGN.md, the
network rule): the test thread enters a fresh namespace with loopback up for the module, so
the exporter, Prometheus and the scrapes, all started from it, talk on *that* loopback and never
on the machine's own. setns() needs root; without it the root-marked tests skip (and fail under
CI=true, tests/conftest.py) before any traffic is sent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from timewait.live.netns import setns

NETWORK_MODULES = {"test_server", "test_prometheus", "test_robustness", "test_exporter_netns"}


@pytest.fixture(scope="module", autouse=True)
def _private_netns(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.module.__name__.rsplit(".", 1)[-1] not in NETWORK_MODULES or os.geteuid() != 0:
        yield None
        return
    from timewait.lab.namespaces import throwaway_netns

    with throwaway_netns() as ns:
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            setns(target)
            yield ns
        finally:
            setns(back)
            os.close(back)
            os.close(target)
