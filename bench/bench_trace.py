"""What tracing costs (issue 13 item 6): the loopback connect+close rate with the tracer off and
on, in the same run, and the tracer's own CPU.

lab.loadgen runs flat out (2 worker processes, each connect, accept, close, close: the client
closes first, so every connection is an active close, a passive close, an open and an accept
for the tracer) on the loopback of a throwaway namespace, PHASE_S seconds at a time. Each round
runs four phases in a rotating order: tracing off; tracing on (a Tracer, live/tracer.py,
counting that namespace); the same tracepoints with an empty program (their predicates never
hold), which separates what attaching to the tracepoints costs from what the counting adds;
and the tracer without the syscall tracepoints (what a kernel without CONFIG_FTRACE_SYSCALLS
gets: closes, opens, EADDRNOTAVAIL and the peer's failures, no bind() failures), because
attaching any syscall tracepoint sends every syscall of every task through the slow path
(TIF_SYSCALL_TRACEPOINT), which costs without a single event counted. A tracer is started
before and stopped after its phase, so its start-up (~1 s of LLVM) is not in the rate. Each
"on" phase also checks the counts: active closes traced == connections the load made.

Ratios are taken within a round (phases seconds apart) and the median over ROUNDS rounds is
reported: on a shared machine (other jobs on the same 2 cores) the rate swings by 2x between
phases whatever the tracer does. Two measures: the wall-clock rate, and connections per
CPU-second of the load's own processes (their user+system time, os.times() of the reaped
workers), which other jobs disturb less; the load is CPU-bound, so on a quiet machine they
agree. The verdict uses the CPU one. The tracer's own CPU is bpftrace's user+system time over
its phase (/proc/PID/stat); the eBPF programs run in the traced tasks' context, so their cost
is in the rate. The load average is printed with the numbers.

The namespace has ports 1024-65535, tcp_tw_reuse=1 (loopback, timestamps on: TIME_WAITs older
than 1 s are taken over) and room for 2,000,000 TIME_WAITs, so the rate holds for the whole run.
Goal: tracing costs <= 5 % of the rate. Needs root (namespaces, eBPF) and bpftrace.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
from pathlib import Path

PHASE_S = 1.5
ROUNDS = 8
PROCS = 2
GOAL = 0.05


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> list[str]:
    if os.geteuid() != 0:
        return ["skipped: needs root (network namespaces, eBPF)"]
    if shutil.which("bpftrace") is None:
        return ["skipped: needs bpftrace (`make bench` installs it)"]
    from timewait.doctor import trace as T
    from timewait.lab.experiments.base import set_sysctls
    from timewait.lab.loadgen import LoadSpec, run_load
    from timewait.lab.namespaces import run_in_netns, throwaway_netns
    from timewait.live import tracer as TR

    sysctls = {
        "ip_local_port_range": "1024 65535",
        "tcp_tw_reuse": "1",
        "tcp_max_tw_buckets": "2000000",
    }
    spec = LoadSpec(procs=PROCS, duration=PHASE_S)
    plan = TR.preflight()
    arms = ("off", "on", "empty", "state")
    wall: dict[str, list[float]] = {a: [] for a in arms}
    per_cpu: dict[str, list[float]] = {a: [] for a in arms}
    tracer_cpu: list[float] = []
    exact: list[str] = []
    with throwaway_netns() as ns:
        run_in_netns(ns, set_sysctls, sysctls)
        (inode,), _ = TR.inodes_of([ns])  # type: ignore[misc]

        def phase(arm: str) -> None:
            tracer = None
            if arm != "off":
                text = TR.empty_program(plan) if arm == "empty" else None
                use = (
                    dataclasses.replace(plan, connect=False, bind=False) if arm == "state" else plan
                )
                tracer = TR.Tracer([inode], plan=use, text=text).start()
                assert tracer.pid is not None
                cpu0 = _cpu_s(tracer.pid)
            t0 = os.times()
            res = run_load(ns, spec)
            t1 = os.times()
            used = t1.children_user - t0.children_user + t1.children_system - t0.children_system
            wall[arm].append(res.rate)
            per_cpu[arm].append(res.connections / max(used, 1e-9))
            if tracer is not None:
                assert tracer.pid is not None
                spent = _cpu_s(tracer.pid) - cpu0
                r = tracer.stop()
                if arm == "on":
                    tracer_cpu.append(spent / res.elapsed_s)
                    tr = T.Traced(rows=r.rows, window_ns=r.window_ns)
                    exact.append(f"{tr.total(T.Kind.ACTIVE_CLOSE):,}/{res.connections:,}")

        run_load(ns, LoadSpec(procs=PROCS, duration=1.0))  # warm up
        for i in range(ROUNDS):
            for arm in arms[i % len(arms) :] + arms[: i % len(arms)]:
                phase(arm)

    def ratios(d: dict[str, list[float]], arm: str) -> float:
        return statistics.median(x / o for x, o in zip(d[arm], d["off"], strict=True))

    def each(xs: list[float]) -> str:
        return ", ".join(f"{x:,.0f}" for x in xs)

    on_wall, on_cpu = ratios(wall, "on"), ratios(per_cpu, "on")
    empty_cpu = ratios(per_cpu, "empty")
    state_cpu = ratios(per_cpu, "state")
    verdict = "ok" if 1 - on_cpu <= GOAL else f"ABOVE the {GOAL:.0%} goal"
    return [
        f"loopback connect+close, {PROCS} processes, {ROUNDS} rounds of {PHASE_S:g} s phases "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)",
        f"tracing off: {statistics.median(wall['off']):,.0f} conn/s wall "
        f"({each(wall['off'])}); {statistics.median(per_cpu['off']):,.0f} conn per CPU-second",
        f"tracing on:  {statistics.median(wall['on']):,.0f} conn/s wall "
        f"({each(wall['on'])}); {statistics.median(per_cpu['on']):,.0f} conn per CPU-second",
        f"on/off ratio (median of rounds): {on_wall:.3f} wall, {on_cpu:.3f} per CPU-second: "
        f"tracing costs {1 - on_cpu:.1%} of the rate [{verdict}]",
        f"the same tracepoints with an empty program: {empty_cpu:.3f} of the rate per "
        f"CPU-second: attaching at all costs {1 - empty_cpu:.1%}, the counting "
        f"{empty_cpu - on_cpu:+.1%}",
        f"without the syscall tracepoints (sock:inet_sock_set_state only: no bind() failures, "
        f"connect() failures but routing ones): {state_cpu:.3f}, costs {1 - state_cpu:.1%}",
        f"tracer's own CPU (bpftrace, user+system): {statistics.median(tracer_cpu):.1%} of one "
        f"core (max {max(tracer_cpu):.1%})",
        f"active closes traced / connections made, per phase: {'; '.join(exact)}",
    ]
