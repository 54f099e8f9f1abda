"""The doctor is core: pure functions over snapshots, no I/O, no clock (DESIGN.md, STYLE.md 9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..test_core_purity import FORBIDDEN, _imports

DOCTOR = sorted((Path(__file__).resolve().parents[2] / "src" / "timewait" / "doctor").glob("*.py"))


@pytest.mark.parametrize("path", DOCTOR, ids=lambda p: p.name)
def test_doctor_module_does_no_io(path: Path) -> None:
    bad = _imports(path) & FORBIDDEN
    assert not bad, f"doctor/{path.name} imports {sorted(bad)}"
    assert "timewait.live" not in path.read_text() and "timewait.lab" not in path.read_text()
