"""Suite-wide rules.

* Tests marked `root` need root and network namespaces. They skip with a reason on a developer's
  unprivileged machine, but under CI=true a skip would hide a failure (CI runs as root and must
  run them), so there it is a failure.
* The suite refuses to start when a mypyc extension is older than its source (it would test old
  code): `make test` rebuilds them, `find src -name '*.so' -delete` drops them.
"""

from __future__ import annotations

import os
import shutil

import pytest


def pytest_configure(config: pytest.Config) -> None:
    from timewait import compiled

    if old := compiled.stale():
        raise pytest.UsageError(
            f"compiled modules older than their sources: {', '.join(old)}; "
            "run `make test` (rebuilds them) or `find src -name '*.so' -delete` (pure Python)"
        )


def _root_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN/CAP_SYS_ADMIN) for network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`): run `make test`, which installs it"
    return None


@pytest.fixture(autouse=True)
def _require_root(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("root") is None:
        return
    problem = _root_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{problem}; under CI=true this test must run, not skip")
    pytest.skip(problem)
