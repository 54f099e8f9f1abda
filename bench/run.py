"""`make bench`: run every benchmark in bench/ and print its ratios against the reference tools.

Each benchmark module is `bench/bench_*.py` with a `main() -> list[str]` that measures timewait
and the reference tool (ss, pyroute2, psutil, a bare heapq loop, ...) in the same run and returns
report lines. Benchmarks report; they do not fail on speed (tests assert behaviour, not time).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path


def main() -> int:
    here = Path(__file__).resolve().parent
    modules = sorted(here.glob("bench_*.py"))
    if not modules:
        print("no benchmarks yet")
        return 0
    for path in modules:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        t0 = time.perf_counter()
        print(f"== {path.stem}")
        for line in mod.main():
            print(f"   {line}")
        print(f"   ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
