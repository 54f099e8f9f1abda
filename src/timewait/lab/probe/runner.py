"""Run probe scripts: the kernel side in parallel namespaces, the model side here, a Verdict each.

`run(scripts, jobs)` starts up to `jobs` kernel runs at once (each a forked child in its own
namespace, timewait.lab.probe.kernel), and as each finishes replays the script on the model at
the kernel's times and compares. Children are killed if anything goes wrong here (an exception,
Ctrl-C, SIGTERM or SIGHUP, turned into SystemExit while `run()` runs), so no namespace outlives
the run; a child whose parent is killed outright dies too (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from timewait.lab.namespaces import require_root, signals_as_exit
from timewait.lab.probe import script as sc
from timewait.lab.probe.compare import Verdict, compare, lateness
from timewait.lab.probe.kernel import KernelRun
from timewait.lab.probe.modelside import ModelSide
from timewait.lab.probe.trace import Out, Snapshot, Trace, drive

CORPUS_PACKAGE = "timewait.lab.probe"
CORPUS_DIR = "scripts"


def corpus_dir() -> Path:
    return Path(str(resources.files(CORPUS_PACKAGE).joinpath(CORPUS_DIR)))


def corpus() -> list[sc.Script]:
    """Every script of the shipped corpus, by name."""
    return [sc.load(p) for p in sorted(corpus_dir().glob("*.probe"))]


def model_trace(script: sc.Script, kernel: Trace) -> Trace:
    """The script on a fresh model host, at the kernel's step times."""
    snaps = [s.t for s in kernel.snapshots]
    return drive(script, ModelSide(script), "model", times=kernel.step_times, snap_times=snaps)


def verdict(script: sc.Script, kernel: Trace) -> Verdict:
    return compare(script, kernel, model_trace(script, kernel))


@dataclass(slots=True)
class Failed:
    """A script whose kernel side could not run (the error says why)."""

    script: sc.Script
    error: str


def run(
    scripts: Iterable[sc.Script],
    *,
    jobs: int = 8,
    timeout: float = 60.0,
    progress: Callable[[str], None] | None = None,
) -> Iterator[Verdict | Failed]:
    """Verdicts in completion order. Root is required."""
    require_root()
    pending = list(scripts)
    running: list[KernelRun] = []
    with signals_as_exit():
        yield from _run(pending, running, jobs, timeout, progress)


def _run(
    pending: list[sc.Script],
    running: list[KernelRun],
    jobs: int,
    timeout: float,
    progress: Callable[[str], None] | None,
) -> Iterator[Verdict | Failed]:
    try:
        while pending or running:
            while pending and len(running) < jobs:
                running.append(KernelRun(pending.pop(0), timeout).start())
            ready, _, _ = select.select(running, [], [], timeout)
            if not ready:
                raise TimeoutError(f"no probe finished within {timeout} s")
            for r in ready:
                running.remove(r)
                try:
                    trace = r.result()
                except Exception as e:
                    yield Failed(r.script, str(e))
                    continue
                if progress:
                    progress(r.script.name)
                yield verdict(r.script, trace)
    finally:
        for r in running:
            r.kill()
            r._reap()


def wall_clock() -> float:
    return time.monotonic()


def choose(names: Iterable[str]) -> list[sc.Script]:
    """Scripts of the corpus by name (all when `names` is empty); a name may be a path to a
    script file of one's own. Raises ScriptError for an unknown name."""
    names = list(names)
    every = {s.name: s for s in corpus()}
    if not names:
        return list(every.values())
    out = []
    for n in names:
        if n in every:
            out.append(every[n])
        elif n.endswith(".probe") and Path(n).exists():
            out.append(sc.load(n))
        else:
            close = [k for k in every if n in k]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
            raise sc.ScriptError(f"no probe script named {n!r}{hint}: `timewait lab probe --list`")
    return out


def record(script: sc.Script, kernel: Trace, others: Sequence[Trace] = ()) -> str:
    """The script with the kernel's answers written in: every segment it sent as a `>` line at
    the time it left (to the ms, relative to the step before it), every call's `= result`, and
    at each state line the sockets, timers and counters. A timer's time left is the median
    over `kernel` and `others` (more runs of the same script): one reading can be off by a few
    jiffies. What `timewait lab probe --record` prints; the kernel is the judge."""
    runs = [kernel, *others]
    lines: list[tuple[int, str]] = []
    outs = sorted(kernel.outs, key=lambda o: o.t)
    j = 0
    steps = [(i, s) for i, s in enumerate(script.steps) if not isinstance(s, sc.Expect)]
    snaps = {s.step: s for s in kernel.snapshots}
    seen = {o.flow for o in kernel.outs}
    for n, (i, step) in enumerate(steps):
        if isinstance(step, sc.Call):
            step = sc.Call(t=step.t, line=step.line, op=step.op, sock=step.sock, args=step.args,
                           result=kernel.results.get(i))  # fmt: skip
        elif isinstance(step, sc.StateCheck) and i in snaps:
            step = _with_state(step, snaps[i], seen, _timer_medians(script, runs, i))
        lines.append((step.t, sc.step_text(step)))
        nxt = steps[n + 1] if n + 1 < len(steps) else None
        until = kernel.step_times[nxt[0]] if nxt is not None else None
        while j < len(outs) and (until is None or outs[j].t < until):
            o = outs[j]
            j += 1
            delta = round((o.t - kernel.step_times[i]) / 1e6) * 1_000_000
            t = step.t + max(0, delta)
            if nxt is not None:
                t = min(t, nxt[1].t)
            lines.append((t, expect_text(o)))
    return sc.format_script(script, lines)


def expect_text(o: Out) -> str:
    """A `>` line for an outbound segment as the kernel sent it."""
    from timewait.lab.probe.packet import flag_text

    parts = [
        ">",
        f"[{o.flow}]",
        flag_text(o.flags),
        f"{o.seq}:{(o.seq + o.length) & 0xFFFFFFFF}({o.length})",
    ]
    if o.ack is not None:
        parts.append(f"ack {o.ack}")
    if o.isn:
        parts.append(f"isn {o.isn:+d}")
    if o.ts is not None:
        parts.append(f"<TS val {o.ts[0]} ecr {o.ts[1]}>")
    else:
        parts.append("<>")
    return " ".join(parts)


def _timer_medians(script: sc.Script, runs: Sequence[Trace], step: int) -> dict[str, int]:
    """Per flow, the median over `runs` of its timer's ms left at the script's own time of
    state line `step` (each reading corrected by how late its snapshot was read)."""
    values: dict[str, list[int]] = {}
    for run in runs:
        for snap in run.snapshots:
            if snap.step != step:
                continue
            late = lateness(script, run, snap)
            for k in snap.sockets:
                if k.timer:
                    values.setdefault(k.flow, []).append(k.expires_ms + round(late / 1e6))
    return {f: sorted(v)[len(v) // 2] for f, v in values.items()}


def _with_state(
    step: sc.StateCheck, snap: Snapshot, seen: set[str], timers: dict[str, int]
) -> sc.StateCheck:
    """A state/end line with the kernel's snapshot written in (timers from `timers`)."""
    expect = []
    have = set()
    for k in snap.sockets:
        have.add(k.flow)
        expect.append(sc.SockExpect(flow=k.flow, state=k.state, timer=k.timer,
                                    ms=timers.get(k.flow, k.expires_ms) if k.timer else 0,
                                    retrans=k.retrans if k.timer == 1 else 0))  # fmt: skip
    for flow in sorted(seen - have):
        if not flow.startswith("?"):
            expect.append(sc.SockExpect(flow=flow, state="gone"))
    cls = sc.End if isinstance(step, sc.End) else sc.StateCheck
    return cls(t=step.t, line=step.line, expect=tuple(expect), counts=snap.counters)
