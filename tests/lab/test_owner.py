"""Ownership records (lab.owner), the lab's signal handling and its children (lab.namespaces).

Each test points TIMEWAIT_LAB_STATE at a directory of its own, so sweeps see only its records.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from timewait.lab import owner
from timewait.lab.namespaces import fork_child, reap, signals_as_exit

from .helpers import need_root


@pytest.fixture(autouse=True)
def _private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv(owner.ENV, str(state))
    return state


def gone_owner() -> owner.Owner:
    """A process that existed and exited (reaped): an owner that is gone."""
    p = subprocess.Popen(["sleep", "60"])
    o = owner.Owner.of(p.pid)
    p.kill()
    p.wait()
    assert o is not None
    return o


def wait_for(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# -- owners ---------------------------------------------------------------------------------


def test_owner_is_pid_and_start_time() -> None:
    me = owner.me()
    assert me.pid == os.getpid() and me.alive()
    assert not owner.Owner(me.pid, me.start + 1).alive()  # same pid, another process


def test_a_zombie_owner_is_gone() -> None:
    p = subprocess.Popen(["true"])
    o = owner.Owner.of(p.pid)
    wait_for(lambda: Path(f"/proc/{p.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z")
    assert o is None or not o.alive()
    p.wait()


def test_records_round_trip(_private_state: Path) -> None:
    owner.record("netns", "tw-x-1")
    owner.record("tmpdir", "/tmp/timewait-lab-1-a", owner=owner.Owner(1, 2))
    got = {(r.kind, r.key): r for r in owner.records()}
    assert got[("netns", "tw-x-1")].owner == owner.me()
    assert got[("tmpdir", "/tmp/timewait-lab-1-a")].owner == owner.Owner(1, 2)
    assert oct(_private_state.stat().st_mode & 0o777) == "0o700"
    owner.forget("netns", "tw-x-1")
    owner.forget("netns", "tw-x-1")  # forgetting twice is fine
    assert [(r.kind, r.key) for r in owner.records()] == [("tmpdir", "/tmp/timewait-lab-1-a")]


def test_sweep_removes_only_what_gone_owners_left(tmp_path: Path) -> None:
    dead, live = gone_owner(), owner.me()
    left = tmp_path / "timewait-lab-1-dead"
    kept = tmp_path / "timewait-lab-2-live"
    foreign = tmp_path / "precious"  # a record naming something not made by the lab
    for d in (left, kept, foreign):
        d.mkdir()
    owner.record("tmpdir", str(left), owner=dead)
    owner.record("tmpdir", str(kept), owner=live)
    owner.record("tmpdir", str(foreign), owner=dead)
    swept = owner.sweep()
    assert swept.removed == [f"directory {left} (left by pid {dead.pid})"]
    assert swept.live_runs == [live] and swept.failed == []
    assert not left.exists() and kept.exists() and foreign.exists()
    assert {r.key for r in owner.records()} == {str(kept)}


def test_sweep_kills_a_recorded_child_of_a_gone_owner_and_spares_a_reused_pid() -> None:
    child = subprocess.Popen(["sleep", "60"])
    other = subprocess.Popen(["sleep", "60"])
    try:
        dead = gone_owner()
        owner.record("child", str(child.pid), owner=dead, pid=child.pid,
                     start=owner.start_time(child.pid), what="test child")  # fmt: skip
        # `other` stands for a process that got a recorded pid after the child died.
        owner.record("child", str(other.pid), owner=dead, pid=other.pid,
                     start=(owner.start_time(other.pid) or 0) + 1, what="reused pid")  # fmt: skip
        swept = owner.sweep()
        assert swept.removed == [f"process {child.pid} (test child) (left by pid {dead.pid})"]
        assert child.wait(timeout=10) == -signal.SIGKILL
        assert other.poll() is None
        assert owner.records() == []
    finally:
        for p in (child, other):
            p.kill()
            p.wait()


def test_make_temp_dir_is_recorded_before_and_forgotten_after() -> None:
    d = owner.make_temp_dir()
    assert os.path.basename(d).startswith(f"{owner.TMP_PREFIX}{os.getpid()}-")
    assert oct(os.stat(d).st_mode & 0o777) == "0o700"
    assert [(r.kind, r.key) for r in owner.records()] == [("tmpdir", d)]
    owner.remove_temp_dir(d)
    assert not os.path.exists(d) and owner.records() == []


# -- signals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "raised"),
    [(signal.SIGHUP, SystemExit), (signal.SIGTERM, SystemExit), (signal.SIGINT, KeyboardInterrupt)],
)
def test_terminating_signals_unwind(sig: int, raised: type[BaseException]) -> None:
    cleaned = []
    with pytest.raises(raised) as info, signals_as_exit():
        try:
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler raises before this returns
        finally:
            os.kill(os.getpid(), sig)  # a second signal while unwinding: ignored
            cleaned.append(True)
    assert cleaned == [True]
    if raised is SystemExit:
        assert info.value.code == 128 + sig
    assert signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler)


def test_an_ignored_hangup_stays_ignored() -> None:
    """Under nohup the run must survive a hangup, as the user asked."""
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with signals_as_exit():
            os.kill(os.getpid(), signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)


# -- children -------------------------------------------------------------------------------


def test_a_child_dies_by_a_signal_instead_of_running_the_parents_handlers() -> None:
    """Ctrl-C reaches the whole process group: the child must not raise in a copy of the
    parent (and run its `finally` blocks, which delete namespaces), it must just die."""
    r, w = os.pipe()
    with signals_as_exit():
        pid = fork_child("test")
        if pid == 0:  # pragma: no cover - child
            try:
                os.close(w)
                os.read(r, 1)  # until killed
            finally:
                os._exit(7)  # reached only if the signal raised an exception here
        os.close(r)
        assert [rec.key for rec in owner.records()] == [str(pid)]
        os.kill(pid, signal.SIGHUP)
        status = reap(pid)
    os.close(w)
    assert status is not None and os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGHUP
    assert owner.records() == []


CHILD_OF_SIGKILLED_PARENT = """
import os, sys, time
from timewait.lab.namespaces import fork_child
pid = fork_child("grandchild")
if pid == 0:
    time.sleep(60)
    os._exit(0)
print(pid, flush=True)
time.sleep(60)
"""


def test_a_child_dies_with_its_sigkilled_parent() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", CHILD_OF_SIGKILLED_PARENT], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    start = owner.start_time(child)
    assert start is not None
    parent.kill()
    parent.wait()
    wait_for(lambda: owner.start_time(child) != start)  # gone (reaped by init) or a zombie


def test_cleanup_command_removes_recorded_leftovers_and_spares_the_rest() -> None:
    need_root()
    from click.testing import CliRunner

    from timewait.lab.command import lab_group
    from timewait.lab.namespaces import delete_netns

    tag = os.getpid()
    gone, mine, unrecorded = (f"tw-cleanuptest-{tag}-{x}" for x in ("gone", "mine", "none"))
    for name in (gone, mine, unrecorded):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        owner.record("netns", gone, owner=gone_owner())
        owner.record("netns", mine)
        res = CliRunner().invoke(lab_group, ["cleanup"])
        assert res.exit_code == 0, res.output
        assert f"removed namespace {gone}" in res.output
        assert not os.path.exists(f"/run/netns/{gone}")
        assert os.path.exists(f"/run/netns/{mine}") and os.path.exists(f"/run/netns/{unrecorded}")
        assert f"running lab run(s) hold (pid {os.getpid()})" in res.output
        assert "with no owner record" in res.output
    finally:
        for name in (gone, mine, unrecorded):
            delete_netns(name)


SIGNAL_IN_TIMER_START = """
import threading
from timewait.lab.namespaces import run_in_netns, throwaway_netns

real_start = threading.Timer.start


def start(self):
    real_start(self)
    raise KeyboardInterrupt  # a Ctrl-C landing inside start(), once the thread runs


threading.Timer.start = start
with throwaway_netns() as ns:
    try:
        run_in_netns(ns, int, timeout=600)
    except KeyboardInterrupt:
        pass
print("unwound", flush=True)
"""


def test_a_signal_inside_the_child_watchdog_does_not_hold_the_exit() -> None:
    """The watchdog timer of run_in_netns is a daemon thread: a Ctrl-C that lands while it
    starts (so it is never cancelled) must not keep the process alive for its 600 s
    (seen as a lab run that did not stop within 30 s of SIGINT)."""
    need_root()
    r = subprocess.run(
        [sys.executable, "-c", SIGNAL_IN_TIMER_START], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stdout == "unwound\n", r.stderr
