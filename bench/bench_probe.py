"""Conformance corpus speed: `timewait lab probe` over the whole corpus (goal <= 60 s, issue 12).

There is no reference tool to run beside it (packetdrill is GPL, has no Debian package, and
runs one script at a time), so the reference is the corpus's own serial floor: the sum of every
script's kernel timeline (last step time, what a one-script-at-a-time runner must wait through
at the least). Printed: wall time with the default 8 jobs against the 60 s goal, that floor and
the speed-up over it, the model side's share, and the agreement (a fast wrong run is no run).
Also a short fuzzing run: judged sequences per second. Needs root; without it the benchmark
says so and skips.
"""

from __future__ import annotations

import os
import time

GOAL_S = 60.0
FUZZ_EXAMPLES = 64


def main() -> list[str]:
    if os.geteuid() != 0:
        return ["skipped: needs root (namespaces and a TUN device per script)"]
    from timewait.lab.probe import fuzz, report, runner

    scripts = runner.corpus()
    result = report.run(scripts, jobs=8)
    floor_s = sum(v.kernel.step_times[-1] for v in result.verdicts.values()) / 1e9
    t0 = time.perf_counter()
    for v in result.verdicts.values():
        runner.model_trace(v.script, v.kernel)
    model_s = time.perf_counter() - t0
    lines = [
        f"corpus: {len(scripts)} scripts, {result.agreeing} agree, {len(result.failed)} failed"
        f" to run (kernel {result.kernel})",
        f"wall, 8 jobs: {result.wall_s:.1f} s (goal <= {GOAL_S:.0f} s: "
        f"{'met' if result.wall_s <= GOAL_S else 'MISSED'}; "
        f"{result.wall_s / GOAL_S:.2f}x the goal)",
        f"serial floor (sum of the scripts' kernel timelines): {floor_s:.1f} s; "
        f"wall / floor = {result.wall_s / floor_s:.2f}x",
        f"model side alone, every script: {model_s:.2f} s",
    ]
    t0 = time.perf_counter()
    res = fuzz.fuzz(FUZZ_EXAMPLES, jobs=4, base_seed=1)
    fuzz_s = time.perf_counter() - t0
    lines.append(
        f"fuzz: {res.examples} judged + {res.ambiguous} ambiguous of {FUZZ_EXAMPLES} in "
        f"{fuzz_s:.1f} s = {res.examples / fuzz_s:.1f} judged sequences/s; "
        f"{len(res.failures)} disagreements"
    )
    return lines
