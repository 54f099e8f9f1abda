"""The mypyc build (setup.py, timewait.compiled): the suite runs the compiled modules, and the
same model and simulator tests pass on the pure-Python sources, so neither can drift."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from timewait import compiled

ROOT = Path(__file__).resolve().parent.parent


def test_every_listed_module_has_a_source_file() -> None:
    missing = [p for p in compiled.source_files(ROOT / "src") if not p.exists()]
    assert not missing


@pytest.mark.skipif(
    bool(os.environ.get("TIMEWAIT_PURE")), reason="TIMEWAIT_PURE=1: built without mypyc"
)
def test_the_suite_runs_the_compiled_modules() -> None:
    """`make test` compiles before testing; a silently interpreted run would also make the
    packet-level benchmark measure the wrong thing."""
    assert compiled.loaded_compiled() == list(compiled.MODULES), compiled.describe()
    assert compiled.describe().startswith("compiled (mypyc")


def test_model_and_simulator_tests_pass_on_the_pure_python_sources(tmp_path: Path) -> None:
    """Same tests, sources copied without their extensions, run in a child interpreter."""
    src = tmp_path / "src"
    shutil.copytree(
        ROOT / "src" / "timewait",
        src / "timewait",
        ignore=shutil.ignore_patterns("*.so", "__pycache__"),
    )
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1"}
    probe = subprocess.run(
        [sys.executable, "-c", "from timewait import compiled; print(compiled.describe())"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == "pure Python"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "tests/model", "tests/sim"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout
