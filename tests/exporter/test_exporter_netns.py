"""The capability set documented in deploy/timewait-exporter.service, checked on the kernel:
exporting another namespace needs CAP_SYS_ADMIN (setns) and nothing else; without it the
command fails at start with a one-line error. Runs the exporter as user nobody via setpriv(1),
on a throwaway namespace with a known population; scrapes go to 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from timewait.status import ExitStatus

from ..lab.helpers import need_root
from .helpers import TIMEWAIT, exporter, free_port, sample, scrape

pytestmark = pytest.mark.root

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
ONLY_SYS_ADMIN = [*NOBODY, "--inh-caps=+sys_admin", "--ambient-caps=+sys_admin"]


@pytest.fixture(scope="module")
def populated_ns() -> Iterator[tuple[str, Any]]:
    need_root()
    from timewait.lab.namespaces import throwaway_netns
    from timewait.lab.population import populated

    with throwaway_netns() as ns, populated(ns) as holder:
        yield ns, holder.report


def test_nobody_with_only_cap_sys_admin_exports_another_namespace(
    populated_ns: tuple[str, Any], tmp_path: Path
) -> None:
    ns, expected = populated_ns
    with exporter(["--netns", ns], tmp_path / "log", prefix=ONLY_SYS_ADMIN) as exp:
        body = scrape(exp.url)
        assert sample(body, "timewait_collection_error", netns=ns) == 0
        tw = sample(body, "timewait_sockets", netns=ns, state="TIME-WAIT")
        assert tw == len(expected.time_wait)
        assert exp.stop() == 0


def test_nobody_without_capabilities_gets_one_line_error(populated_ns: tuple[str, Any]) -> None:
    ns, _ = populated_ns
    r = subprocess.run(
        [*NOBODY, TIMEWAIT, "exporter", "--listen", f"127.0.0.1:{free_port()}", "--netns", ns],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "HOME": "/tmp"},
    )
    assert r.returncode == ExitStatus.ERROR, r.stderr
    assert r.stderr.count("\n") == 1 and "needs root (CAP_SYS_ADMIN" in r.stderr
