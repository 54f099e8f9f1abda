"""A corpus run: every verdict, a table for people, JSON for machines (and CI's drift check).

`run()` drives timewait.lab.probe.runner and keeps the verdicts in corpus order with the wall
time; `render()` prints one line per script (agree / DISAGREE / FAILED, segments compared, the
rule) and each disagreement under its script, then a summary line with the agreement in
percent, the kernel release and the time taken.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from timewait.lab.probe import runner
from timewait.lab.probe.compare import Verdict
from timewait.lab.probe.script import Script
from timewait.live.kconfig import read_hz
from timewait.model.rtt import HZ as MODEL_HZ


@dataclass(slots=True)
class ProbeRun:
    scripts: list[Script]
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    extra: dict[str, list[Verdict]] = field(default_factory=dict)  # repeated runs (record)
    wall_s: float = 0.0
    kernel: str = field(default_factory=lambda: os.uname().release)
    kernel_hz: int = field(default_factory=read_hz)  # 0: the kernel does not expose its config

    def hz_note(self) -> str | None:
        """The model's jiffy-based timers (RTO rounding, the delayed-ACK tick, the timer wheel)
        assume the reference kernel's HZ; on another CONFIG_HZ a few ms of timing can differ."""
        if self.kernel_hz in (0, MODEL_HZ):
            return None
        return (
            f"note: this kernel runs at CONFIG_HZ={self.kernel_hz}, the model's timers at "
            f"HZ={MODEL_HZ} (the reference kernel's): a timing difference of a jiffy or two comes "
            "from that, not from a rule"
        )

    @property
    def agreeing(self) -> int:
        return sum(1 for v in self.verdicts.values() if v.agrees)

    @property
    def all_agree(self) -> bool:
        return not self.failed and self.agreeing == len(self.scripts)

    def recorded(self) -> list[str]:
        """Each script with the kernel's answers written in (`--record`); timers are the
        median over the runs kept in `extra` (run(..., repeat=3))."""
        return [
            runner.record(v.script, v.kernel, [e.kernel for e in self.extra.get(v.script.name, [])])
            for v in self._in_order()
        ]

    def _in_order(self) -> list[Verdict]:
        return [self.verdicts[s.name] for s in self.scripts if s.name in self.verdicts]

    def to_json(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "scripts": len(self.scripts),
            "agree": self.agreeing,
            "failed": len(self.failed),
            "agreement_pct": round(100.0 * self.agreeing / max(1, len(self.scripts)), 2),
            "wall_s": round(self.wall_s, 2),
            "kernel_hz": self.kernel_hz or None,
            "model_hz": MODEL_HZ,
            "results": [
                {
                    "name": s.name,
                    "rule": s.rule,
                    "source": s.source,
                    "status": self._status(s.name),
                    "segments": {
                        "kernel": len(self.verdicts[s.name].kernel.outs),
                        "model": len(self.verdicts[s.name].model.outs),
                    }
                    if s.name in self.verdicts
                    else None,
                    "diffs": [str(d) for d in self.verdicts[s.name].diffs]
                    if s.name in self.verdicts
                    else [self.failed.get(s.name, "")],
                }
                for s in self.scripts
            ],
        }

    def _status(self, name: str) -> str:
        if name in self.failed:
            return "failed"
        return "agree" if self.verdicts[name].agrees else "disagree"


def run(
    scripts: Sequence[Script],
    *,
    jobs: int = 8,
    progress: Callable[[str], None] | None = None,
    repeat: int = 1,
) -> ProbeRun:
    """Run `scripts` on the kernel and the model (each `repeat` times: the first verdict
    counts, the others are kept for --record); root is required."""
    result = ProbeRun(scripts=list(scripts))
    t0 = time.monotonic()
    todo = [s for s in scripts for _ in range(repeat)]
    for done, v in enumerate(runner.run(todo, jobs=jobs), start=1):
        name = v.script.name
        if isinstance(v, runner.Failed):
            result.failed[name] = v.error
        elif name not in result.verdicts:
            result.verdicts[name] = v
        else:
            result.extra.setdefault(name, []).append(v)
        if progress:
            progress(f"probe {done}/{len(todo)}: {name}")
    result.wall_s = time.monotonic() - t0
    return result


def render(result: ProbeRun, out: TextIO, *, verbose: bool = False) -> None:
    width = max((len(s.name) for s in result.scripts), default=4)
    out.write(f"probe on Linux {result.kernel}: kernel vs model, segment by segment\n\n")
    for s in result.scripts:
        if s.name in result.failed:
            out.write(f"{s.name:<{width}}  FAILED    {result.failed[s.name]}\n")
            continue
        v = result.verdicts[s.name]
        status = "agree   " if v.agrees else "DISAGREE"
        out.write(f"{s.name:<{width}}  {status}  {len(v.kernel.outs):>3} seg  {s.rule}\n")
        for d in v.diffs:
            out.write(f"{'':<{width}}    {d}\n")
        if verbose or not v.agrees:
            for side in (v.kernel, v.model):
                out.write(f"{'':<{width}}    {side.side}:\n")
                for o in sorted(side.outs, key=lambda o: o.t):
                    out.write(f"{'':<{width}}      {o.t / 1e9:8.4f} {o.text()}\n")
    n = len(result.scripts)
    pct = 100.0 * result.agreeing / max(1, n)
    out.write(
        f"\n{result.agreeing} of {n} scripts agree ({pct:.1f}%)"
        + (f", {len(result.failed)} failed to run" if result.failed else "")
        + f"; {result.wall_s:.1f} s\n"
    )
    note = result.hz_note()
    if note:
        out.write(note + "\n")


def render_list(scripts: Sequence[Script], out: TextIO, *, as_json: bool = False) -> None:
    if as_json:
        import json

        json.dump([{"name": s.name, "rule": s.rule, "source": s.source} for s in scripts],
                  out, indent=2)  # fmt: skip
        out.write("\n")
        return
    width = max((len(s.name) for s in scripts), default=4)
    for s in scripts:
        out.write(f"{s.name:<{width}}  {s.rule}\n")
    out.write(f"\n{len(scripts)} scripts. Run them (as root): timewait lab probe [NAME ...]\n")
