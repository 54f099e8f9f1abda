"""Build hook: compile the packet-level hot path (model + simulator core) with mypyc.

Why: the packet-level simulator must handle >= 200,000 segment events/s (issue 3). Interpreted,
the model and the simulator layers cost ~27 us per segment (37k/s, bench/bench_sim_packet.py);
the profile is flat (no single function above 9%), so no local rewrite reaches 5 us. mypyc
compiles the same type-checked sources to C extensions -- nothing is written twice -- and the
modules keep working uncompiled: `TIMEWAIT_PURE=1 pip install -e .` skips the compiler, and
tests/test_build.py runs the model tests against the pure-Python sources too.

Everything else (CLI, live collector, doctor, exporter, lab) stays interpreted: it is not hot.
"""

from __future__ import annotations

import os

from setuptools import setup

# The per-segment path, in data-flow order; strictly typed (pyproject [tool.mypy] overrides),
# which is what lets mypyc use native attribute access and unboxed ints. Not model/counters.py:
# a compiled subclass of collections.Counter routes every `c[k] += 1` through slot wrappers
# (0.3 us each, perf).
COMPILED = [
    "src/timewait/units.py",
    "src/timewait/config.py",
    "src/timewait/model/seq.py",
    "src/timewait/model/states.py",
    "src/timewait/model/segment.py",
    "src/timewait/model/events.py",
    "src/timewait/model/clock.py",
    "src/timewait/model/transitions.py",
    "src/timewait/model/timerwheel.py",
    "src/timewait/model/ports.py",
    "src/timewait/model/minisock.py",
    "src/timewait/model/connection.py",
    "src/timewait/model/host.py",
    "src/timewait/sim/engine.py",
    "src/timewait/sim/link.py",
    "src/timewait/sim/network.py",
    "src/timewait/sim/workloads.py",
]


def ext_modules() -> list[object]:
    if os.environ.get("TIMEWAIT_PURE"):
        return []
    from mypyc.build import mypycify

    return list(mypycify(COMPILED, opt_level="3", debug_level="0"))


setup(ext_modules=ext_modules())
