"""Which modules mypyc compiles (setup.py reads MODULES from here), and what this process runs.

The packet-level simulator's per-segment path -- the model and the simulator core -- is built as
C extensions beside its sources (`make` runs `setup.py build_ext --inplace`; `pip install .`
builds them too). The sources stay the truth: `TIMEWAIT_PURE=1` skips the compiler and every
module works interpreted, only ~5x slower (bench/bench_sim_packet.py prints both).

An extension that is older than its source would silently run old code, so `stale()` lists
them; the test suite refuses to run with any (tests/conftest.py), and `make` rebuilds them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# In data-flow order. Not timewait.model.counters: a compiled subclass of a Python dict class
# routes every `counters[k] += 1` through slot wrappers (0.3 us each, measured with perf).
MODULES: tuple[str, ...] = (
    "timewait.units",
    "timewait.config",
    "timewait.model.seq",
    "timewait.model.states",
    "timewait.model.segment",
    "timewait.model.events",
    "timewait.model.outcome",
    "timewait.model.clock",
    "timewait.model.tcp",
    "timewait.model.rtt",
    "timewait.model.delack",
    "timewait.model.transitions",
    "timewait.model.timerwheel",
    "timewait.model.ports",
    "timewait.model.minisock",
    "timewait.model.connection",
    "timewait.model.host",
    "timewait.sim.engine",
    "timewait.sim.link",
    "timewait.sim.network",
    "timewait.sim.workloads",
)


def source_files(root: Path) -> list[Path]:
    """The .py file of each compiled module under a source root (the `src` directory)."""
    return [root.joinpath(*m.split(".")).with_suffix(".py") for m in MODULES]


def _extension(module: str) -> Path | None:
    """The C extension `module` imports from, or None when it runs from its .py source."""
    spec = importlib.util.find_spec(module)
    origin = Path(spec.origin) if spec is not None and spec.origin else None
    return origin if origin is not None and origin.suffix in (".so", ".pyd") else None


def loaded_compiled() -> list[str]:
    """Modules that import from a C extension in this process (empty when running pure)."""
    return [m for m in MODULES if _extension(m) is not None]


def stale() -> list[str]:
    """Compiled modules whose source changed after the extension was built."""
    out = []
    for m in MODULES:
        ext = _extension(m)
        if ext is None:
            continue
        source = ext.parent / (m.rsplit(".", 1)[-1] + ".py")
        if source.exists() and source.stat().st_mtime > ext.stat().st_mtime:
            out.append(m)
    return out


def describe() -> str:
    """One line for reports: "compiled (mypyc, 19 modules)", "pure Python", or "partly ..."."""
    n = len(loaded_compiled())
    if n == len(MODULES):
        return f"compiled (mypyc, {n} modules)"
    if n == 0:
        return "pure Python"
    return f"partly compiled ({n} of {len(MODULES)} modules)"
