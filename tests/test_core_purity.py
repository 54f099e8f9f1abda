"""The core (config, model) never does I/O or reads the clock (DESIGN.md, STYLE.md rule 9)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "timewait"
# DESIGN.md: the core (config, model, sim, doctor) never imports socket, subprocess or the
# clock. sim/command.py is the `sim` command's CLI layer (it may print and write plot files),
# not core.
CORE = [
    SRC / "config.py",
    SRC / "units.py",
    *sorted((SRC / "model").rglob("*.py")),
    *sorted(p for p in (SRC / "sim").rglob("*.py") if p.name != "command.py"),
    *sorted((SRC / "doctor").rglob("*.py")),
]
FORBIDDEN = {"socket", "subprocess", "time", "datetime", "os", "threading", "asyncio", "select"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(SRC)))
def test_core_module_does_no_io(path: Path) -> None:
    """A core module imports none of socket, subprocess, time, os, ... (sans-I/O)."""
    bad = _imports(path) & FORBIDDEN
    assert not bad, f"{path.name} imports {sorted(bad)}"


def _timewait_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("timewait."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("timewait."))
    return names


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(SRC)))
def test_core_module_imports_no_output_layer(path: Path) -> None:
    """The core hands records to the renderers (e.g. sim.trace.Rung to render.ladder) and never
    imports them, nor the I/O packages (live, lab, exporter, cli)."""
    bad = _timewait_imports(path) & {"render", "live", "lab", "exporter", "cli"}
    assert not bad, f"{path.name} imports timewait.{sorted(bad)}"


def test_core_uses_no_global_random() -> None:
    """Randomness comes from a passed-in random.Random, never random.random() and friends."""
    for path in CORE:
        src = path.read_text()
        for fn in ("random.random(", "random.randint(", "random.randrange(", "random.choice("):
            assert fn not in src, f"{path.name} calls {fn}"
