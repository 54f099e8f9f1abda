"""`timewait trace`, `doctor --trace S`, `top --trace` and `exporter --trace` as a user runs
them (issue 13), on the real kernel in throwaway namespaces.

Done means: in a namespace where a client hits EADDRNOTAVAIL N times, `timewait doctor --trace
5 --json` reports N failures for that process and destination, and the measured churn. Each
command announces on stderr when bpftrace is attached; the workload starts after that line
(a condition, not a sleep). Bad conditions (no bpftrace, no root) give one line and the rest
still works.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from timewait.lab.experiments.base import set_sysctls
from timewait.lab.namespaces import run_in_netns, throwaway_netns
from timewait.status import ExitStatus

from .lab.helpers import as_nobody, need_bpftrace, need_root

TIMEWAIT = str(Path(sys.executable).with_name("timewait"))
SERVER = ("127.0.0.1", 20000)


@pytest.fixture
def ns() -> Iterator[str]:
    """A namespace with 10 ports and no tcp_tw_reuse: 10 closes fill it."""
    need_bpftrace()
    with throwaway_netns() as name:
        run_in_netns(name, set_sysctls, {"ip_local_port_range": "40000 40009", "tcp_tw_reuse": "0"})
        yield name


def churn_and_fail(closes: int, failures: int) -> int:
    """`closes` connections the client closes first (their TIME_WAITs fill the range), then
    `failures` connect()s that fail with EADDRNOTAVAIL; returns the pid."""
    import errno
    import socket

    ls = socket.socket()
    ls.bind(SERVER)
    ls.listen(128)
    for _ in range(closes):
        c = socket.socket()
        c.connect(SERVER)
        s, _ = ls.accept()
        c.close()
        s.close()
    for _ in range(failures):
        c = socket.socket()
        assert c.connect_ex(SERVER) == errno.EADDRNOTAVAIL
        c.close()
    return os.getpid()


class Running:
    """A timewait command with stderr in a file; `.attached()` waits for its tracer."""

    def __init__(self, args: list[str], tmp: Path, env: dict[str, str] | None = None) -> None:
        self.err_path = tmp / "stderr"
        self._err: IO[str] = self.err_path.open("w")
        self.proc = subprocess.Popen(
            [TIMEWAIT, *args], stdout=subprocess.PIPE, stderr=self._err, text=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip

    def attached(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "attached" in self.err_path.read_text():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}: {self.stderr()}")
            time.sleep(0.02)
        raise AssertionError(f"tracer not attached: {self.stderr()}")

    def finish(self, timeout: float = 60.0) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=timeout)
        self._err.close()
        return self.proc.returncode, out

    def stderr(self) -> str:
        return self.err_path.read_text()


def test_doctor_trace_reports_n_failures_for_the_process_and_destination(
    ns: str, tmp_path: Path
) -> None:
    """The issue's "done": N EADDRNOTAVAIL -> N failures for that pid and destination, and
    the churn measured from the active closes."""
    doctor = Running(["doctor", "--netns", ns, "--trace", "5", "--json"], tmp_path)
    doctor.attached()
    pid = run_in_netns(ns, churn_and_fail, 10, 37)
    code, out = doctor.finish()
    assert code == ExitStatus.CRITICAL, doctor.stderr()
    doc = json.loads(out)
    assert doc["schema"] == "timewait-doctor/3"
    failures = doc["trace"]["connect_failures"]
    assert failures["total"] == 37 and failures["by_errno"] == {"EADDRNOTAVAIL": 37}
    (top,) = failures["top"]
    assert (top["pid"], top["dst"], top["dport"], top["count"], top["errno"]) == (
        pid, "127.0.0.1", 20000, 37, "EADDRNOTAVAIL",
    )  # fmt: skip
    window = doc["trace"]["window_s"]
    assert 5.0 <= window < 15.0
    assert doc["churn_method"] == "traced"
    assert doc["trace"]["active_closes"]["client"] == 10
    (dest,) = doc["destinations"]
    assert dest["churn_per_s"] == pytest.approx(10 / window, rel=0.01)
    assert dest["eta_s"] == 0.0  # full already
    first = doc["findings"][0]
    assert first["id"] == "connect-failures" and first["severity"] == "critical"
    assert f"python[{pid}] -> 127.0.0.1:20000 EADDRNOTAVAIL x37" in first["title"]


def test_trace_streams_intervals_and_sums_up_exactly(ns: str, tmp_path: Path) -> None:
    run = Running(["trace", "--netns", ns, "--duration", "3", "--interval", "0.5", "--json"],
                  tmp_path)  # fmt: skip
    run.attached()
    pid = run_in_netns(ns, churn_and_fail, 10, 23)
    code, out = run.finish()
    assert code == 0, run.stderr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert {ln["schema"] for ln in lines} == {"timewait-trace/1"}
    intervals = [ln for ln in lines if ln["type"] == "interval"]
    summary = lines[-1]
    assert summary["type"] == "summary" and len(intervals) >= 3
    # the intervals add up to the summary
    assert sum(i["namespaces"][0]["connect_failures"]["total"] for i in intervals) <= 23
    (space,) = summary["namespaces"]
    assert space["netns"] == f"netns:{ns}"
    assert space["connect_failures"]["total"] == 23
    (top,) = space["connect_failures"]["top"]
    assert (top["pid"], top["destination"]) == (pid, "127.0.0.1:20000")
    assert space["active_closes"]["total"] == 10 and space["passive_closes"]["total"] == 10
    assert space["opened"]["total"] == 10 and space["accepted"]["total"] == 10
    (closes,) = space["active_closes"]["top"]
    assert (closes["src"], closes["dst"], closes["dport"], closes["count"]) == (
        "127.0.0.1", "127.0.0.1", 20000, 10,
    )  # fmt: skip


def test_trace_terminal_output_names_process_and_destination(ns: str, tmp_path: Path) -> None:
    run = Running(["trace", "--netns", ns, "--duration", "2"], tmp_path)
    run.attached()
    pid = run_in_netns(ns, churn_and_fail, 10, 5)
    code, out = run.finish()
    assert code == 0
    assert f"EADDRNOTAVAIL        5  python[{pid}] -> 127.0.0.1:20000 (connect())" in out
    assert "connect() and bind() failures in the last" in out
    assert "127.0.0.1 -> 127.0.0.1:20000 │ client │     10" in out


def test_top_trace_shows_failures_per_second(ns: str, tmp_path: Path) -> None:
    """Without a terminal top prints one frame, after one interval of counting."""
    run = Running(["top", "--netns", ns, "--trace", "--interval", "3"], tmp_path)
    run.attached()
    pid = run_in_netns(ns, churn_and_fail, 10, 12)
    code, out = run.finish()
    assert code == 0, run.stderr()
    assert "connect() fail/s" in out
    assert "EADDRNOTAVAIL" in out and f"python[{pid}] -> 127.0.0.1:20000" in out


# -- bad conditions: one line, the rest still works -----------------------------------------


def test_no_bpftrace_trace_fails_in_one_line_doctor_goes_on(tmp_path: Path) -> None:
    need_root()
    env = {**os.environ, "TIMEWAIT_BPFTRACE": str(tmp_path / "no-such-bpftrace")}
    r = subprocess.run([TIMEWAIT, "trace", "--duration", "1"], capture_output=True, text=True,
                       env=env, timeout=60)  # fmt: skip
    assert r.returncode == ExitStatus.ERROR
    assert r.stderr.count("\n") == 1 and "is not installed: apt-get install bpftrace" in r.stderr
    d = subprocess.run([TIMEWAIT, "doctor", "--trace", "1", "--json"], capture_output=True,
                       text=True, env=env, timeout=60)  # fmt: skip
    assert d.returncode in (0, 1, 2), d.stderr
    assert d.stderr.count("\n") == 1 and "trace unavailable" in d.stderr
    doc = json.loads(d.stdout)
    assert doc["trace"] is None
    assert any(n.startswith("not traced: ") for n in doc["snapshot"]["notes"])


def test_not_root_is_one_line(tmp_path: Path) -> None:
    need_root()
    env = {**os.environ, "HOME": "/tmp"}
    r = subprocess.run([*as_nobody(), TIMEWAIT, "trace", "--duration", "1"], capture_output=True,
                       text=True, env=env, timeout=60)  # fmt: skip
    assert r.returncode == ExitStatus.ERROR
    assert r.stderr.count("\n") == 1 and "tracing needs root" in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("trace", "--all-netns", "--netns", "x"),
        ("doctor", "--trace", "1", "--interval", "1"),
        ("doctor", "--trace", "0"),
        ("top", "--trace", "--from", "f.npz"),
    ],
)
def test_bad_trace_flags_are_usage_errors(args: tuple[str, ...]) -> None:
    r = subprocess.run([TIMEWAIT, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == ExitStatus.USAGE, r.stderr
    assert r.stderr.count("\n") == 1


def test_unknown_namespace_is_one_line() -> None:
    need_root()
    r = subprocess.run([TIMEWAIT, "trace", "--netns", "tw-no-such-ns"], capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == ExitStatus.ERROR and r.stderr.count("\n") == 1
    assert "no network namespace named 'tw-no-such-ns'" in r.stderr


# -- exporter --trace ---------------------------------------------------------------------------


def scrape_until(url: str, done: Callable[[dict[Any, float]], bool]) -> dict[Any, float]:
    """Scrape until `done(samples)` (a tick away at most), or give up after 30 s."""
    from .exporter.helpers import samples, scrape

    deadline = time.monotonic() + 30
    while True:
        got = samples(scrape(url))
        if done(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def by(got: dict[Any, float], name: str, label: str) -> dict[str, float]:
    return {dict(k[1])[label]: v for k, v in got.items() if k[0] == name}


def test_exporter_trace_counters_are_exact_and_bounded(ns: str, tmp_path: Path) -> None:
    """The exporter runs in a namespace of its own (it listens on that loopback: the network
    rule) and exports and traces `ns`; --top-k 1 keeps one series plus "other"."""
    from timewait.live.netns import setns

    from .exporter.helpers import exporter

    with throwaway_netns() as home:
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{home}", os.O_RDONLY)
        try:
            setns(target)
            with exporter(["--netns", ns, "--trace", "--top-k", "1"], tmp_path / "log") as exp:
                log = (tmp_path / "log").read_text()
                assert "tracing connect()/bind() failures" in log, log
                run_in_netns(ns, churn_and_fail, 10, 19)
                run_in_netns(ns, fail_other, 3)  # after the 19: its series is "other"
                got = scrape_until(
                    exp.url,
                    lambda got: (
                        by(got, "timewait_connect_errors_total", "destination").get("other") == 3
                    ),
                )
        finally:
            setns(back)
            os.close(back)
            os.close(target)
    errors = by(got, "timewait_connect_errors_total", "destination")
    assert errors == {"127.0.0.1:20000": 19, "other": 3}  # top-k 1 + other
    assert by(got, "timewait_connect_errors_total", "errno") == {
        "EADDRNOTAVAIL": 19, "ECONNREFUSED": 3,
    }  # fmt: skip
    assert {dict(k[1])["netns"] for k in got if k[0].startswith("timewait_connect")} == {ns}
    assert by(got, "timewait_active_closes_total", "side") == {"client": 10}
    assert by(got, "timewait_trace_up", "netns") == {ns: 1}


def fail_other(n: int) -> None:
    import socket

    for _ in range(n):
        c = socket.socket()
        assert c.connect_ex(("127.0.0.1", 9)) != 0
        c.close()


def test_report_trace_shows_the_traced_failures_and_plans_from_the_traced_churn(
    ns: str, tmp_path: Path
) -> None:
    """`report --trace S -o` (issue 16 item 3, "the trace summary when present"): the page's
    Trace section has the N failures for that process and destination, and the plan says its
    churn came from the trace."""
    import re

    out = tmp_path / "traced.html"
    report = Running(["report", "--netns", ns, "--trace", "3", "-o", str(out)], tmp_path)
    report.attached()
    pid = run_in_netns(ns, churn_and_fail, 10, 29)
    code, _ = report.finish()
    assert code == ExitStatus.CRITICAL, report.stderr()
    page = out.read_text()
    section = page[page.index('<section id="trace">') :]
    section = section[: section.index("</section>")]
    text = " ".join(re.sub(r"<[^>]+>", " ", section).split())
    assert "connect() failures 29" in text and "EADDRNOTAVAIL 29" in text
    assert f"EADDRNOTAVAIL 29 connect() python[{pid}]" in text and "127.0.0.1:20000" in text
    assert "active closes 10" in text
    assert "the active closes counted in the kernel per destination (eBPF trace)" in page
