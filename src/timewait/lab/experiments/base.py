"""What every lab experiment is and returns, and the helpers they share.

Theory of operation
-------------------
An `Experiment` asks one question of the TIME_WAIT story of the running kernel. `run()` checks
root (and nft/nginx when needed), turns SIGTERM and SIGHUP into SystemExit for the whole run
(lab.namespaces.signals_as_exit: every `finally` that deletes a namespace, an nft table, a
process or a temp dir runs), then calls the experiment's function, which

1. creates its own throwaway namespaces (`lab.namespaces.throwaway_netns`), writes sysctls only
   inside them, and drives traffic on their loopback or on a veth pair between two of them
   (198.18.0.0/15);
2. samples each namespace over time with the live collector (`Sampler`, timewait.live.capture:
   the same Snapshot the doctor reads) and keeps the series;
3. runs the simulator with the same parameters;
4. returns a `LabResult`: kernel and model numbers per variant, the comparison rows
   (lab.compare: > 5 % = MODEL DEFECT), a verdict line and the series for --plot.

Parameters reuse the simulator's `Param` (parse, bounds, help), so `--set` behaves the same in
`sim run` and `lab run`. Each experiment also declares `quick`: overrides that make it run in a
few seconds for the test suite.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from timewait.config import KernelConfig
from timewait.errors import ConfigError, TimewaitError
from timewait.lab import compare as cmp
from timewait.lab.namespaces import LabUnavailable, require_root, signals_as_exit, write_sysctl
from timewait.live.capture import capture
from timewait.sim.scenario import Param, ParamValue, ScenarioError, ScenarioResult, Series
from timewait.snapshot import TCP_TIME_WAIT, Snapshot

Progress = Callable[[str], None]


class LabError(TimewaitError):
    """Unknown experiment, bad parameter, or a tool the experiment needs is missing."""


def _quiet(_: str) -> None:
    return None


@dataclass
class LabResult:
    """What one run measured and predicted; `to_json()` is the documented --json shape."""

    experiment: str
    params: dict[str, ParamValue]
    kernel: dict[str, dict[str, Any]]
    model: dict[str, dict[str, Any]]
    rows: list[cmp.Row]
    verdict: str
    series: dict[str, Series] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    kernel_release: str = field(default_factory=lambda: os.uname().release)
    elapsed_s: float = 0.0

    @property
    def defects(self) -> list[cmp.Row]:
        return cmp.defects(self.rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "kernel_release": self.kernel_release,
            "params": dict(self.params),
            "kernel": self.kernel,
            "model": self.model,
            "comparison": [r.to_json() for r in self.rows],
            "model_defects": [r.to_json() for r in self.defects],
            "verdict": self.verdict,
            "notes": list(self.notes),
            "elapsed_s": round(self.elapsed_s, 2),
        }

    def as_scenario_result(self) -> ScenarioResult:
        """For render.plot.plot_result: kernel and model series overlaid."""
        return ScenarioResult(
            scenario=f"lab {self.experiment} (kernel {self.kernel_release} vs model)",
            params=self.params,
            variants={},
            verdict=self.verdict,
            series=self.series,
        )


RunFn = Callable[[dict[str, ParamValue], Progress], LabResult]


@dataclass(frozen=True)
class Experiment:
    """A question for the kernel, its parameters, and the function that answers it."""

    name: str
    question: str
    params: Sequence[Param]
    run_fn: RunFn
    quick: Mapping[str, ParamValue] = field(default_factory=dict)
    needs: tuple[str, ...] = ()  # external tools: "nft", "nginx"

    def resolve(self, overrides: Mapping[str, str | ParamValue]) -> dict[str, ParamValue]:
        by_name = {p.name: p for p in self.params}
        values: dict[str, ParamValue] = {p.name: p.default for p in self.params}
        for key, text in overrides.items():
            if key not in by_name:
                raise LabError(
                    f"experiment {self.name} has no parameter {key!r}: "
                    f"choose from {', '.join(by_name) or '(none)'}"
                )
            try:
                values[key] = by_name[key].parse(text)
            except ScenarioError as e:
                raise LabError(str(e)) from None
        if "port_range" in values:
            check_port_range(str(values["port_range"]))
        return values

    def run(
        self,
        overrides: Mapping[str, str | ParamValue] | None = None,
        progress: Progress | None = None,
    ) -> LabResult:
        """Validate, check root and tools, run (SIGTERM -> SystemExit); LabError/LabUnavailable."""
        params = self.resolve(overrides or {})
        require_root()
        check_tools(self.needs)
        t0 = time.monotonic()
        with signals_as_exit():
            result = self.run_fn(params, progress or _quiet)
        result.elapsed_s = time.monotonic() - t0
        return result


def check_port_range(text: str) -> tuple[int, int]:
    """A port_range parameter as Linux takes it for ip_local_port_range, or LabError naming
    what is wrong: the ends swapped, an end that is no port, a low end below 1024."""
    from timewait.sim.scenarios.flow import parse_range

    try:
        low, high = parse_range(text)
    except ScenarioError as e:
        raise LabError(str(e)) from None
    example = "give LOW-HIGH, e.g. 40000-40999"
    if low > high:
        raise LabError(
            f"parameter port_range={text}: the low end {low} is above the high end {high} "
            f"({example})"
        )
    try:
        KernelConfig(ip_local_port_range=(low, high))
    except ConfigError as e:  # an end outside 1..65535, or below ip_unprivileged_port_start
        raise LabError(f"parameter port_range={text}: {e.allowed} ({example})") from None
    return low, high


NGINX = "/usr/sbin/nginx"


def check_tools(needs: Sequence[str]) -> None:
    for tool in needs:
        if tool == "nft" and shutil.which("nft") is None:
            raise LabUnavailable(
                "this experiment needs nftables (`nft`): run `bash scripts/system-packages.sh` "
                "or apt-get install nftables"
            )
        if tool == "nginx" and not os.access(NGINX, os.X_OK):
            raise LabUnavailable(
                f"this experiment needs nginx ({NGINX}): run `bash scripts/system-packages.sh` "
                "(installs nginx-light without starting the service)"
            )
        if tool == "nginx" and shutil.which("unshare") is None:
            raise LabUnavailable(
                "this experiment needs unshare(1) to keep nginx from outliving the run: "
                "apt-get install util-linux"
            )


# -- sampling the kernel -------------------------------------------------------------------


def tw_mask(snap: Snapshot) -> np.ndarray:
    """Minisockets in substate TIME_WAIT (what `ss state time-wait` lists)."""
    s = snap.sockets
    mask: np.ndarray = (s["state"] == TCP_TIME_WAIT) & s["minisock"]
    return mask


def count_tw(snap: Snapshot, *, sport: int | None = None, dport: int | None = None) -> int:
    m = tw_mask(snap)
    if sport is not None:
        m &= snap.sockets["sport"] == sport
    if dport is not None:
        m &= snap.sockets["dport"] == dport
    return int(m.sum())


def count_state(snap: Snapshot, state: int, *, port: int | None = None) -> int:
    s = snap.sockets
    m = s["state"] == state
    if port is not None:
        m &= (s["sport"] == port) | (s["dport"] == port)
    return int(m.sum())


Probe = Callable[[Snapshot], float]


class Sampler:
    """Snapshots of several namespaces over time, reduced by probes to series.

    `sample()` captures every namespace once (sock_diag, ~25 ms for 30,000 sockets) and
    appends probe values at the time since `start`; `series(label)` gives ScenarioResult-style
    {metric: (times_s, values)}.
    """

    def __init__(self, targets: Mapping[str, str], probes: Mapping[str, Probe]) -> None:
        self.targets = dict(targets)  # label -> namespace name
        self.probes = dict(probes)
        self.t0 = time.monotonic()
        self.times: dict[str, list[float]] = {k: [] for k in self.targets}
        self.values: dict[str, dict[str, list[float]]] = {
            k: {p: [] for p in self.probes} for k in self.targets
        }
        self.last: dict[str, Snapshot] = {}

    def restart(self) -> None:
        self.t0 = time.monotonic()

    def sample(self, extra: Mapping[str, Mapping[str, float]] | None = None) -> None:
        for label, ns in self.targets.items():
            snap = capture(netns=ns)
            self.last[label] = snap
            self.times[label].append(round(time.monotonic() - self.t0, 3))
            for name, probe in self.probes.items():
                self.values[label][name].append(float(probe(snap)))
            for name, value in (extra or {}).get(label, {}).items():
                self.values[label].setdefault(name, []).append(float(value))

    def every(self, period: float, until: float, poll: Callable[[], Any] | None = None) -> None:
        """Sample every `period` s until `until` s after start (poll() called before each)."""
        n = 0
        while True:
            due = n * period
            if due > until + 1e-9:
                return
            now = time.monotonic() - self.t0
            if due > now:
                time.sleep(due - now)
            extra = poll() if poll is not None else None
            self.sample(extra)
            n += 1

    def series(self, label: str) -> Series:
        t = self.times[label]
        return {k: (t, v) for k, v in self.values[label].items() if len(v) == len(t)}


def counters(ns: str) -> dict[str, int]:
    return dict(capture(netns=ns).counters)


def counter_delta(before: Mapping[str, int], after: Mapping[str, int], key: str) -> int:
    return int(after.get(key, 0)) - int(before.get(key, 0))


def set_sysctls(values: Mapping[str, str]) -> None:
    """For run_in_netns: write net.ipv4 sysctls in the (private) namespace."""
    for k, v in values.items():
        write_sysctl(k, v)


def model_series(
    times: Sequence[float], values: Sequence[float]
) -> tuple[list[float], list[float]]:
    return list(times), [float(v) for v in values]


def r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def kernel_hz() -> int:
    """CONFIG_HZ of the running kernel (from /proc/config.gz), for the model's timer wheel.

    250 when the config is not exposed: the reference kernel's value (ref section 0)."""
    from timewait.live.kconfig import read_hz

    return read_hz() or 250


TIMER_WHEEL_NOTE = (
    "TIME_WAIT really lasts 60.5-62 s (timer wheel at HZ=250, ref simulators-and-tests 6); the "
    "model rounds its expiry the same way (timer_hz = the kernel's CONFIG_HZ)"
)
