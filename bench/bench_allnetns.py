"""`doctor --all-netns` on a node of 200 pods, side by side with `ss` in every namespace.

Builds a node in miniature (lab.fakenode): 200 network namespaces named as Kubernetes pods
(kubelet + containerd cgroups, fake kubelet pod directories), each holding 1,000 sockets: two
listeners and 499 ESTABLISHED pairs on loopback, held by a process in the pod. (ESTABLISHED,
not TIME_WAIT: TIME_WAITs would expire during the measurements, which take longer than their
60 s on a busy 2-core machine; to the kernel's dump, which is what both tools wait for, a
socket is a socket in the same hash tables.) Then, in the same run:
  - `timewait doctor --all-netns --json` (discovery, naming, one capture and diagnosis per
    namespace, rate window included), wall time and peak RSS (goal <= 0.5 x the ss loop,
    <= 300 MB);
  - the reference: one shell running `ip netns exec NS ss -tan` for each of the 200 (what
    people do today), output to /dev/null.
Best of REPEAT wall times; counts are printed so both are seen to answer the same question.
The doctor also looks at every other namespace on the machine (other runs'): it does more
than the loop, never less. Needs root; without it the benchmark says so and stops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

N_NS = 200
PER_NS = 1_000  # sockets per namespace: 999 TIME_WAIT + 1 listener
REPEAT = 3
GOAL_RATIO = 0.5
GOAL_RSS_MB = 300

TIMEWAIT = Path(sys.executable).with_name("timewait")

_RSS_WRAPPER = (
    "import resource, subprocess, sys, time; out = open(sys.argv[1], 'wb'); "
    "t0 = time.perf_counter(); "
    "subprocess.run(sys.argv[2:], stdout=out, stderr=subprocess.DEVNULL); "
    "ru = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print(time.perf_counter() - t0, ru.ru_maxrss, ru.ru_utime + ru.ru_stime)"
)


def _timed(cmd: list[str], env: dict[str, str], out: str) -> tuple[float, float, float, str]:
    """(wall seconds, peak RSS MB, CPU seconds, stdout) of `cmd`, measured from a small
    wrapper process (a child forked from this big process would count our pages until it
    execs); stdout goes to a file, as cheap for both sides as /dev/null, and is read back to
    count what was seen. CPU time (user + system, the kernel's walks included) is what a busy
    machine disturbs least."""
    got = subprocess.run(
        [sys.executable, "-c", _RSS_WRAPPER, out, *cmd],
        capture_output=True, text=True, check=True, env=env,
    ).stdout.split()  # fmt: skip
    return float(got[0]), int(got[1]) / 1024, float(got[2]), Path(out).read_text()


def _pairs(n: int) -> tuple[int, list[object]]:
    """Inside a namespace: a listener on 127.0.0.1:9090 and n ESTABLISHED pairs to it, kept
    open (beside the fake node's listener on 8080: 2 + 2n sockets)."""
    import socket

    ls = socket.socket()
    ls.bind(("127.0.0.1", 9090))
    ls.listen(1024)
    keep: list[object] = [ls]
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", 9090))
        s, _ = ls.accept()
        keep += [c, s]
    return n, keep


def main() -> list[str]:
    if os.geteuid() != 0:
        return ["needs root (network namespaces, cgroups): run `sudo make bench`"]
    import contextlib

    from timewait.lab.fakenode import FakeNode, Pod
    from timewait.lab.namespaces import NetnsProcess

    pods = tuple(
        Pod(namespace=f"team-{i % 8}", name=f"svc-{i:03d}-7d9f6c", time_waits=0)
        for i in range(N_NS)
    )
    t0 = time.perf_counter()
    with FakeNode(pods=pods, port_range=(32768, 60999)) as node, contextlib.ExitStack() as stack:
        built = time.perf_counter() - t0
        names = sorted(node.names.values())
        t1 = time.perf_counter()
        for name in names:
            holder = NetnsProcess(name, _pairs, (PER_NS - 2) // 2)
            stack.callback(holder.stop)
            holder.start()
        filled = time.perf_counter() - t1
        env = {**os.environ, "TIMEWAIT_PODS_DIR": node.roots.pods}
        out = os.path.join(node.tmp, "out")
        doctor = [str(TIMEWAIT), "doctor", "--all-netns", "--json"]
        script = 'for ns in "$@"; do ip netns exec "$ns" ss -tan; done'
        ss = ["bash", "-c", script, "ss-loop", *names]

        def doctor_run(*extra: str) -> tuple[float, float, int, int, int, float]:
            wall, rss, cpu, text = _timed([*doctor, *extra], env, out)
            doc = json.loads(text)
            ours = [e for e in doc["namespaces"] if e["inode"] in node.expected]
            named = sum(1 for e in ours if e["name"] == node.expected[e["inode"]].name)
            return wall, rss, len(ours), named, sum(e["sockets"] for e in ours), cpu

        def ss_run() -> tuple[float, int, float]:
            wall, _, cpu, text = _timed(ss, env, out)
            seen = sum(1 for ln in text.splitlines() if ln and not ln.startswith("State"))
            return wall, seen, cpu

        doctor_run()  # warm: imports, page cache
        runs, loops, quick = [], [], []
        for _ in range(REPEAT):
            runs.append(doctor_run())
            loops.append(ss_run())
        quick.append(doctor_run("--interval", "0"))
    best = min(r[0] for r in runs)
    rss = max(r[1] for r in runs)
    ss_best = min(w for w, _, _ in loops)
    ratio = best / ss_best
    cpu, ss_cpu = min(r[5] for r in runs), min(c for _, _, c in loops)
    counts = sorted({r[4] for r in runs} | {n for _, n, _ in loops})
    return [
        f"node: {N_NS} pod namespaces named in {built:.1f} s, {PER_NS:,} sockets each filled "
        f"in {filled:.1f} s",
        f"seen: doctor {runs[-1][2]} of our namespaces ({runs[-1][3]} named as their pod); "
        f"sockets per run, both tools: {', '.join(f'{c:,}' for c in counts)}",
        f"ss loop (ip netns exec NS ss -tan) x {len(names)}  best {ss_best:.3f} s  "
        f"CPU {ss_cpu:.2f} s",
        f"timewait doctor --all-netns --json   best {best:.3f} s  CPU {cpu:.2f} s  "
        f"peak RSS {rss:.0f} MB",
        f"  ratio {ratio:.2f} x the ss loop (goal <= {GOAL_RATIO}): "
        f"{'meets' if ratio <= GOAL_RATIO else 'MISSES'}; RSS goal <= {GOAL_RSS_MB} MB: "
        f"{'meets' if rss <= GOAL_RSS_MB else 'MISSES'}",
        f"  CPU time ratio {cpu / ss_cpu:.2f} x (user + system: what load from other jobs "
        "disturbs least)",
        f"  (--interval 0, no rate window: {quick[0][0]:.3f} s, {quick[0][0] / ss_best:.2f} x)",
    ]


if __name__ == "__main__":
    for line in main():
        print(line)
