"""Experiment `pool-headroom`: the doctor's headroom for every pool against what the kernel
then allows (timewait.lab.pools; README "Pools").

Here the "model" column is the doctor: each population is built, diagnosed, then probed with
connect() or bind(0) until the kernel refuses. The searches are exhaustive, so anything but
an exact match is a defect (the comparison's 5 % tolerance is not used).
"""

from __future__ import annotations

from timewait.lab import compare as cmp
from timewait.lab.experiments.base import Experiment, LabResult, Progress
from timewait.lab.experiments.registry import register
from timewait.lab.pools import POPULATIONS, POPULATIONS_BY_NAME, check
from timewait.sim.scenario import Param, ParamValue

ALL = "all"


def run_pool_headroom(p: dict[str, ParamValue], progress: Progress) -> LabResult:
    name = str(p["population"])
    pops = POPULATIONS if name == ALL else (POPULATIONS_BY_NAME[name],)
    kernel: dict[str, dict[str, int]] = {}
    doctor: dict[str, dict[str, int]] = {}
    rows: list[cmp.Row] = []
    for i, pop in enumerate(pops, 1):
        progress(f"[{i}/{len(pops)}] {pop.name}: building, diagnosing, probing")
        checks, _ = check(pop)
        kernel[pop.name] = {c.pool: c.allowed for c in checks}
        doctor[pop.name] = {c.pool: c.predicted for c in checks}
        rows += [
            cmp.Row(
                variant=pop.name, metric=c.pool, kernel=c.allowed, model=c.predicted,
                rel_error=0.0 if c.exact else 1.0,
            )
            for c in checks
        ]  # fmt: skip
    exact = sum(1 for r in rows if not r.defect)
    verdict = (
        f"{exact} of {len(rows)} pools: the doctor's predicted headroom equals what the kernel "
        f"allowed ({len(pops)} population(s); 'model' = the doctor)"
    )
    return LabResult(
        experiment="pool-headroom",
        params=dict(p),
        kernel=kernel,
        model=doctor,
        rows=rows,
        verdict=verdict,
        notes=[f"{pop.name}: {pop.about}" for pop in pops],
    )


register(
    Experiment(
        name="pool-headroom",
        question="For each pool a local port comes from (connect() per destination, connect() "
        "to a new destination, bind(addr, 0)), does the doctor's headroom equal what the "
        "kernel then allows?",
        params=(
            Param(
                name="population",
                default=ALL,
                help="which population to build (README 'Pools'), or all",
                choices=(ALL, *POPULATIONS_BY_NAME),
            ),
        ),
        run_fn=run_pool_headroom,
        quick={"population": "bind-before-connect-full"},
    )
)
