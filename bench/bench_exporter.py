"""Exporter scrape time with 200,000 TIME_WAIT sockets, side by side with ss (issue 6 item 5).

Builds the population in a throwaway namespace (lab.population.mass_time_wait), then measures
in one run, while every TIME_WAIT is alive (they last 60 s):
  - an HTTP GET of /metrics from an in-process exporter with the cache off (ttl 0), so every
    scrape is a fresh capture + analysis + exposition (goal <= 0.5 s);
  - the same through a real `timewait exporter --netns NS` process (scrapes 1.1 s apart, past
    its 1 s cache), its peak RSS, and 50 concurrent scrapes sharing one collection;
  - `ip netns exec NS sh -c 'ss -tan state time-wait | wc -l'` (the reference), and the ratio.
Best and median of N wall times. The exporter's TIME_WAIT count is printed next to ss's so both
are seen to answer about the same table. Needs root (namespaces); without it, says so.
All HTTP goes to 127.0.0.1 of a second throwaway namespace that this benchmark's thread enters
(the network rule: never the machine's own loopback); both namespaces and the exporter are
removed after.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

N_SOCKETS = 200_000
REPEAT = 5
GOAL_SCRAPE_S = 0.5
N_CONCURRENT = 50

ROOT = Path(__file__).resolve().parents[1]
TIMEWAIT = Path(sys.executable).with_name("timewait")


def _best(fn: Callable[[], Any], n: int = REPEAT) -> tuple[float, float, Any]:
    times, out = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), out


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read().decode()


def _tw_of(body: str, ns: str) -> str:
    m = re.search(rf'timewait_sockets{{netns="{re.escape(ns)}",state="TIME-WAIT"}} (\S+)', body)
    return str(int(float(m.group(1)))) if m else "?"


def _in_process(ns: str) -> tuple[list[str], float]:
    from prometheus_client import CollectorRegistry

    from timewait.exporter.collector import TimewaitCollector
    from timewait.exporter.server import MetricsServer

    reg = CollectorRegistry()
    reg.register(TimewaitCollector((ns,), ttl_s=0))
    with MetricsServer(reg, "127.0.0.1", 0) as srv:
        srv.start()
        _get(srv.url)  # warm: imports, page cache
        best, med, body = _best(lambda: _get(srv.url))
    verdict = "meets" if best <= GOAL_SCRAPE_S else "MISSES"
    return [
        f"scrape, in-process, no cache  best {best:.3f} s  median {med:.3f} s  "
        f"tw={_tw_of(body, ns)}  {len(body):,} bytes ({verdict} goal <= {GOAL_SCRAPE_S} s)"
    ], best


def _process(ns: str, log: Path) -> list[str]:
    if not TIMEWAIT.exists():
        return ["timewait exporter: CLI entry point not installed"]
    import socket

    with socket.socket() as s:  # --listen refuses port 0: a port free in this private namespace
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with log.open("w") as f:
        p = subprocess.Popen(
            [str(TIMEWAIT), "exporter", "--listen", f"127.0.0.1:{port}", "--netns", ns],
            stdout=subprocess.DEVNULL,
            stderr=f,
        )
    try:
        url = ""
        deadline = time.monotonic() + 20
        while not url and time.monotonic() < deadline:
            m = re.search(r"serving (http://\S+)", log.read_text())
            url = m.group(1) if m else ""
            time.sleep(0.02)
        if not url:
            return [f"timewait exporter did not start: {log.read_text().strip()[:200]}"]
        times = []
        body = ""
        for _ in range(REPEAT):
            time.sleep(1.1)  # past the 1 s cache: a fresh collection each time
            t0 = time.perf_counter()
            body = _get(url)
            times.append(time.perf_counter() - t0)
        time.sleep(1.1)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(N_CONCURRENT) as pool:
            list(pool.map(lambda _: _get(url), range(N_CONCURRENT)))
        conc = time.perf_counter() - t0
        hwm = 0
        for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) // 1024
        return [
            f"scrape, `timewait exporter`   best {min(times):.3f} s  median "
            f"{statistics.median(times):.3f} s  tw={_tw_of(body, ns)}  peak RSS {hwm} MB",
            f"{N_CONCURRENT} concurrent scrapes        {conc:.3f} s in all (one shared collection)",
        ]
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextlib.contextmanager
def _inside(ns: str) -> Iterator[None]:
    """This thread (and the threads and processes it starts) in namespace `ns` for the body."""
    from timewait.live.netns import setns

    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        setns(target)
        yield
    finally:
        setns(back)
        os.close(back)
        os.close(target)


def main() -> list[str]:
    sys.path.insert(0, str(ROOT / "src"))
    from timewait.lab.namespaces import LabUnavailable, throwaway_netns
    from timewait.lab.population import mass_time_wait

    if os.geteuid() != 0 or not shutil.which("ss"):
        return ["skipped: needs root (network namespaces) and ss"]
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return ["skipped: prometheus_client is not installed"]
    lines: list[str] = []
    try:
        with (
            tempfile.TemporaryDirectory(prefix="timewait-bench-") as tmp,
            throwaway_netns() as ns,
            throwaway_netns() as http_ns,
            _inside(http_ns),
        ):
            built = mass_time_wait(ns, N_SOCKETS)
            t_start = time.monotonic()
            lines.append(f"population: {N_SOCKETS:,} client TIME_WAIT in {built:.1f} s")
            in_proc, scrape_best = _in_process(ns)
            lines += in_proc

            ss_cmd = ["ip", "netns", "exec", ns, "sh", "-c", "ss -tan state time-wait | wc -l"]

            def ss() -> str:
                return subprocess.run(ss_cmd, capture_output=True, text=True, check=True).stdout

            ss_best, ss_med, out = _best(ss)
            ss_count = int(out.strip() or 0) - 1  # minus the header line
            lines.append(
                f"ss -tan state time-wait | wc -l  best {ss_best:.3f} s  median {ss_med:.3f} s  "
                f"tw={ss_count}"
            )
            lines.append(
                f"ratio scrape/ss = {scrape_best / ss_best:.2f}x (the scrape also analyzes every "
                "destination, reads sysctls and counters, and runs the doctor's rules)"
            )
            lines += _process(ns, Path(tmp) / "exporter.log")
            lines.append(f"(all measured within {time.monotonic() - t_start:.0f} s of the build; "
                         "TIME_WAIT lives 60 s)")  # fmt: skip
    except LabUnavailable as e:
        return [f"skipped: {e}"]
    return lines


if __name__ == "__main__":
    for line in main():
        print(line)
