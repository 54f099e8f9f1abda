"""`timewait doctor`, `snapshot` and `top`: exit statuses, JSON, one-line errors, a real TTY."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from timewait.cli import main
from timewait.env import Environment
from timewait.snapshot import Snapshot
from timewait.status import ExitStatus

from .doctor.helpers import S1, SMALL, C, listener, snap, tws

TIMEWAIT = str(Path(sys.executable).with_name("timewait"))


@dataclass
class Result:
    stdout: str
    stderr: str
    exit_status: int


def run(*args: str, tty: bool = False) -> Result:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(args), env=Environment(stdout=out, stderr=err, stdout_isatty=tty))
    return Result(out.getvalue(), err.getvalue(), status)


def save(path: Path, n_tw: int, *, monotonic_ns: int = 10**12, overflow: int = 0) -> str:
    s = snap(
        [*tws(C, S1, 80, range(40000, 40000 + n_tw), 58_000), listener(22)],
        SMALL,
        counters={"TW": 1000 + n_tw, "TCPTimeWaitOverflow": overflow},
        monotonic_ns=monotonic_ns,
    )
    s.save(path)
    return str(path)


@pytest.mark.parametrize(
    ("n_tw", "status", "word"),
    [(10, ExitStatus.OK, "healthy"), (75, ExitStatus.WARNING, "warning"),
     (95, ExitStatus.CRITICAL, "critical")],
)  # fmt: skip
def test_doctor_exit_status_is_0_healthy_1_warning_2_critical(
    tmp_path: Path, n_tw: int, status: int, word: str
) -> None:
    f = save(tmp_path / "cap.npz", n_tw)
    r = run("doctor", "--from", f, "--json")
    assert r.exit_status == status, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == word and doc["exit_status"] == status
    assert doc["destinations"][0]["in_use"] == n_tw


def test_doctor_report_has_totals_destinations_histogram_findings(tmp_path: Path) -> None:
    r = run("doctor", "--from", save(tmp_path / "cap.npz", 95))
    assert r.exit_status == ExitStatus.CRITICAL
    for text in ("CRITICAL", "TIME_WAIT", "Top destinations", "198.18.0.1 -> 198.18.0.2:80",
                 "TIME_WAIT timers left", "port-exhaustion", "requests.Session()",
                 "sysctl -w net.ipv4.tcp_tw_reuse=1"):  # fmt: skip
        assert text in r.stdout, text
    assert "\x1b[" not in r.stdout  # no colour codes when stdout is not a terminal


def test_doctor_two_files_give_interval_rates(tmp_path: Path) -> None:
    a = save(tmp_path / "a.npz", 10, monotonic_ns=10**12)
    b = save(tmp_path / "b.npz", 30, monotonic_ns=10**12 + 4 * 10**9)
    doc = json.loads(run("doctor", "--from", b, "--from", a, "--json").stdout)
    assert doc["interval_s"] == 4.0 and doc["churn_method"] == "tw_counter"
    assert doc["churn_per_s"] == 5.0  # TW counter +20 over 4 s
    assert doc["destinations"][0]["trend_per_s"] == 5.0


def test_doctor_top_limits_destinations(tmp_path: Path) -> None:
    s = snap([*tws(C, S1, 80, range(40000, 40003)), *tws(C, "198.18.0.7", 81, range(40000, 40002))])
    s.save(tmp_path / "c.npz")
    doc = json.loads(
        run("doctor", "--from", str(tmp_path / "c.npz"), "--json", "--top", "1").stdout
    )
    assert len(doc["destinations"]) == 1 and doc["destinations_total"] == 2


def test_truncated_from_file_is_one_line_error(tmp_path: Path) -> None:
    f = tmp_path / "cut.npz"
    f.write_bytes(Path(save(tmp_path / "ok.npz", 5)).read_bytes()[:200])
    r = run("doctor", "--from", str(f))
    assert r.exit_status == ExitStatus.ERROR
    assert r.stderr.count("\n") == 1 and "truncated or corrupt" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_from_file_is_one_line_error(tmp_path: Path) -> None:
    r = run("doctor", "--from", str(tmp_path / "nope.npz"))
    assert r.exit_status == ExitStatus.ERROR and "no snapshot file" in r.stderr


@pytest.mark.parametrize(
    "args",
    [("doctor", "--bogus"), ("doctor", "--from", "x", "--netns", "y"),
     ("doctor", "--from", "x", "--interval", "2"), ("doctor", "--interval", "0.05"),
     ("doctor", "--top", "-1"), ("snapshot",), ("top", "--interval", "0")],
)  # fmt: skip
def test_bad_flags_are_usage_errors(args: tuple[str, ...]) -> None:
    r = run(*args)
    assert r.exit_status == ExitStatus.USAGE, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("timewait: usage error:")


def test_unknown_netns_is_one_line_error() -> None:
    r = run("doctor", "--netns", "tw-no-such-namespace")
    assert r.exit_status == ExitStatus.ERROR
    assert r.stderr.count("\n") == 1 and "ip netns list" in r.stderr


def test_snapshot_then_doctor_from_it(tmp_path: Path) -> None:
    """Our own namespace needs no root: capture it, then analyze the file like a laptop would."""
    out = tmp_path / "here.npz"
    r = run("snapshot", "-o", str(out))
    assert r.exit_status == ExitStatus.OK, r.stderr
    assert "saved" in r.stdout and out.exists()
    s = Snapshot.load(out)
    assert s.source == "file:" + s.source.removeprefix("file:")
    r2 = run("doctor", "--from", str(out), "--json")
    assert r2.exit_status in (ExitStatus.OK, ExitStatus.WARNING, ExitStatus.CRITICAL)
    assert json.loads(r2.stdout)["snapshot"]["rows"] == len(s)


def test_snapshot_to_unwritable_path_is_one_line_error(tmp_path: Path) -> None:
    r = run("snapshot", "-o", str(tmp_path / "no" / "such" / "dir.npz"))
    assert r.exit_status in (ExitStatus.ERROR, ExitStatus.USAGE)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_top_without_a_terminal_prints_one_frame(tmp_path: Path) -> None:
    r = run("top", "--from", save(tmp_path / "cap.npz", 80))
    assert r.exit_status == ExitStatus.OK, r.stderr
    assert "timewait top" in r.stdout and "198.18.0.1 -> 198.18.0.2:80" in r.stdout
    assert "port-pressure" not in r.stdout  # titles only
    assert "[warning]" in r.stdout


# -- a real terminal: tmux -------------------------------------------------------------------


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=False).stdout


@pytest.fixture
def tmux_session(tmp_path: Path):
    if shutil.which("tmux") is None:
        pytest.skip("needs tmux for a real terminal")
    name = f"tw-top-{os.getpid()}"
    sock = str(tmp_path / "tmux.sock")

    def t(*args: str) -> str:
        return _tmux("-S", sock, *args)

    yield name, t
    t("kill-server")


def _wait_for(t, name: str, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    pane = ""
    while time.monotonic() < deadline:
        pane = t("capture-pane", "-p", "-t", name)
        if text in pane:
            return pane
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not on screen:\n{pane}")


@pytest.mark.parametrize("key", ["q", "C-c"])
def test_top_in_tmux_refreshes_and_quits_cleanly(tmp_path: Path, tmux_session, key: str) -> None:
    """A real TTY: the view draws, refreshes (frame counter moves the sparkline), q or Ctrl-C
    leaves the alternate screen and the shell gets exit status 0."""
    name, t = tmux_session
    a = save(tmp_path / "a.npz", 20, monotonic_ns=10**12)
    b = save(tmp_path / "b.npz", 60, monotonic_ns=10**12 + 10**9)
    cmd = f"{TIMEWAIT} top --from {a} --from {b} --interval 0.2; echo TOP-EXIT=$?; sleep 30"
    t("new-session", "-d", "-s", name, "-x", "120", "-y", "40", cmd)
    pane = _wait_for(t, name, "198.18.0.1 -> 198.18.0.2:80")
    assert "timewait top" in pane and "q quits" in pane
    _wait_for(t, name, "60")  # the second capture (60 TIME_WAITs) was drawn
    t("send-keys", "-t", name, key)
    pane = _wait_for(t, name, "TOP-EXIT=")
    assert "TOP-EXIT=0" in pane
    assert "timewait top" not in pane  # alternate screen left: the view is gone


def test_damaged_snapshot_header_is_one_line_error_exit_3(tmp_path: Path) -> None:
    """issue 17: a non-integer counter gave a traceback and exit 1."""
    import io
    import json

    import numpy as np

    from timewait.snapshot import SOCKET_DTYPE

    meta = {"format": "timewait-snapshot", "version": 2, "rows": 0, "counters": {"TW": "x"}}
    buf = io.BytesIO()
    np.savez(
        buf,
        sockets=np.zeros(0, SOCKET_DTYPE),
        meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
    )
    f = tmp_path / "bad.npz"
    f.write_bytes(buf.getvalue())
    r = run("doctor", "--from", str(f))
    assert r.exit_status == ExitStatus.ERROR == 3
    assert r.stderr.count("\n") == 1 and "damaged header (counters must map" in r.stderr


def test_live_doctor_reads_the_churn_now_and_interval_0_does_not() -> None:
    """issue 17: one snapshot cannot know the rate; the live doctor reads the counters around
    it (churn_method tw_counter), --interval 0 asks for one snapshot (Little's law)."""
    live = json.loads(run("doctor", "--json").stdout)
    assert live["churn_method"] == "tw_counter" and live["rate_window_s"] > 0
    one = json.loads(run("doctor", "--json", "--interval", "0").stdout)
    assert one["churn_method"] == "littles_law" and one["rate_window_s"] is None


def test_two_captures_of_different_namespaces_are_refused(tmp_path: Path) -> None:
    a = snap([], SMALL, namespace="netns:a", monotonic_ns=10**12)
    b = snap([], SMALL, namespace="netns:b", monotonic_ns=2 * 10**12)
    a.save(tmp_path / "a.npz")
    b.save(tmp_path / "b.npz")
    for cmd in ("doctor", "plan", "report"):
        r = run(cmd, "--from", str(tmp_path / "a.npz"), "--from", str(tmp_path / "b.npz"))
        assert r.exit_status == ExitStatus.USAGE, (cmd, r.stderr)
        assert "different namespaces (netns:a; netns:b)" in r.stderr
        assert len(r.stderr.splitlines()) == 1
