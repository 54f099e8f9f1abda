"""The capability set documented in deploy/timewait-exporter.service, checked on the kernel:
exporting another namespace needs CAP_SYS_ADMIN (setns) and nothing else; without it the
command fails at start with a one-line error. Runs the exporter as user nobody via setpriv(1)
(tests/lab/helpers.as_nobody: plus CAP_DAC_READ_SEARCH only when the checkout lies where nobody
cannot read it), on a throwaway namespace with a known population; scrapes go to 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from timewait.status import ExitStatus

from ..lab.helpers import as_nobody, need_root
from .helpers import TIMEWAIT, exporter, free_port, sample, scrape

pytestmark = pytest.mark.root


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
    with exporter(["--netns", ns], tmp_path / "log", prefix=as_nobody("sys_admin")) as exp:
        body = scrape(exp.url)
        assert sample(body, "timewait_collection_error", netns=ns) == 0
        tw = sample(body, "timewait_sockets", netns=ns, state="TIME-WAIT")
        assert tw == len(expected.time_wait)
        assert exp.stop() == 0


def test_nobody_without_capabilities_gets_one_line_error(populated_ns: tuple[str, Any]) -> None:
    ns, _ = populated_ns
    r = subprocess.run(
        [*as_nobody(), TIMEWAIT, "exporter", "--listen", f"127.0.0.1:{free_port()}", "--netns", ns],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "HOME": "/tmp"},
    )
    assert r.returncode == ExitStatus.ERROR, r.stderr
    assert r.stderr.count("\n") == 1 and "needs root (CAP_SYS_ADMIN" in r.stderr
