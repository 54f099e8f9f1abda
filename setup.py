"""Build hook: compile the packet-level hot path (model + simulator core) with mypyc.

Why: the packet-level simulator must handle >= 200,000 segment events/s (issue 3). Interpreted,
the model and the simulator layers cost ~27 us per segment (37k/s, bench/bench_sim_packet.py);
the profile was flat (no function above 9%), so no local rewrite reaches 5 us. mypyc compiles
the same type-checked sources to C extensions -- nothing is written twice -- and every module
still works uncompiled: `TIMEWAIT_PURE=1` skips the compiler, and tests/test_compiled.py runs
the model and simulator tests against the pure-Python sources too.

The module list lives in src/timewait/compiled.py (the package reports what it runs from it).
Everything else (CLI, live collector, doctor, exporter, lab) stays interpreted: it is not hot.
"""

from __future__ import annotations

import os
import runpy
import sys

from setuptools import setup


def ext_modules() -> list[object]:
    if os.environ.get("TIMEWAIT_PURE"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # a build without mypy: fine, just slower
        print("timewait: mypyc not available, installing pure Python", file=sys.stderr)
        return []
    here = os.path.dirname(os.path.abspath(__file__))
    modules = runpy.run_path(os.path.join(here, "src", "timewait", "compiled.py"))["MODULES"]
    paths = [os.path.join("src", *m.split(".")) + ".py" for m in modules]
    return list(mypycify(paths, opt_level="3", debug_level="0"))


setup(ext_modules=ext_modules())
