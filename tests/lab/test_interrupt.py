"""A lab run ended by any signal leaves nothing behind, and cleanup spares runs still going.

The signal matrix: SIGINT (Ctrl-C), SIGTERM, SIGHUP (a closed terminal) and SIGKILL, each sent
to `timewait lab run` of an experiment with nginx (nginx-keepalive), one with nftables
(lost-final-ack) and one with a veth pair (who-closes-first), once the run has made what makes
it that kind of experiment. INT, TERM and HUP: the run removes everything itself. KILL: every
process of the run dies with it at once (PR_SET_PDEATHSIG; nginx's master and workers with
their PID namespace), and `timewait lab cleanup` removes the rest. Either way, afterwards: no
namespace, process, nftables table, temp directory or record of that run.

Every run records its things in a state directory of the test's own (TIMEWAIT_LAB_STATE), so
the cleanup these tests run can only ever see what they made; a finalizer removes whatever a
failing test left, by the run's pid, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import need_root, wait_for

pytestmark = pytest.mark.root

TIMEWAIT = str(Path(sys.executable).with_name("timewait"))


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False).stdout


def namespaces_of(pid: int) -> list[str]:
    d = Path("/run/netns")
    return (
        sorted(n.name for n in d.iterdir() if n.name.startswith(f"tw-{pid}-")) if d.exists() else []
    )


def pids_in(ns: str) -> list[int]:
    return [int(t) for t in _ip("netns", "pids", ns).split() if t.isdigit()]


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def session_members(sids: set[int]) -> list[int]:
    """Live processes whose session is one of `sids` (zombies excluded)."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X") and int(fields[3]) in sids:
            found.append(int(p.name))
    return found


def cmdline_has(text: str) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if text.encode() in (p / "cmdline").read_bytes():
                    found.append(int(p.name))
            except OSError:
                pass
    return found


def session_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[3])
    except (OSError, IndexError, ValueError):
        return None


class Run:
    """`timewait lab run ARGS` in a session of its own, with a private state directory; keeps
    what it saw the run make (namespaces, nginx's session) for the checks and the finalizer."""

    def __init__(self, args: list[str], state: Path) -> None:
        # faulthandler: a run that hangs is sent SIGABRT and shows where it hangs.
        self.env = {**os.environ, "TIMEWAIT_LAB_STATE": str(state), "PYTHONFAULTHANDLER": "1"}
        self.state = state
        self.proc = subprocess.Popen(
            [TIMEWAIT, "lab", "run", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            start_new_session=True,  # its session id finds every child that does not setsid
        )
        self.pid = self.proc.pid
        self.sessions = {self.pid}
        self.namespaces: set[str] = set()

    def observe(self) -> None:
        self.namespaces.update(namespaces_of(self.pid))
        for p in cmdline_has(f"timewait-lab-{self.pid}-"):  # unshare + nginx: their own session
            sid = session_of(p)
            if sid:
                self.sessions.add(sid)

    def made(self, check: Callable[[str], bool]) -> bool:
        self.observe()
        return any(check(ns) for ns in namespaces_of(self.pid))

    def processes(self) -> list[int]:
        return session_members(self.sessions)

    def leftovers(self) -> dict[str, object]:
        """Everything of this run still on the machine (empty values: nothing)."""
        tables = _ip_nft_host()
        return {
            "namespaces": namespaces_of(self.pid),
            "processes": self.processes(),
            "temp dirs": sorted(str(p) for p in Path("/tmp").glob(f"timewait-lab-{self.pid}-*")),
            "host nft tables": [t for t in tables.split() if t.startswith(f"tw_{self.pid}_")],
            "records": sorted(p.name for p in self.state.glob("*.json")),
        }

    def remove_everything(self) -> None:
        """Finalizer: kill this run's processes, delete its namespaces and temp dirs."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.observe()
        for pid in self.processes():
            with_suppress(lambda pid=pid: os.kill(pid, signal.SIGKILL))
        for ns in namespaces_of(self.pid):
            for pid in pids_in(ns):
                with_suppress(lambda pid=pid: os.kill(pid, signal.SIGKILL))
            _ip("netns", "del", ns)
        for d in Path("/tmp").glob(f"timewait-lab-{self.pid}-*"):
            shutil.rmtree(d, ignore_errors=True)


def with_suppress(fn: Callable[[], object]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        fn()


def _ip_nft_host() -> str:
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout


def lab_cleanup(state: Path) -> subprocess.CompletedProcess[str]:
    """`timewait lab cleanup` restricted to the test's own records."""
    try:
        from timewait.lab import owner  # noqa: F401 - only the recording cleanup is safe here
    except ImportError:  # pragma: no cover - an old tree: its cleanup deletes every tw-* namespace
        pytest.fail("this timewait has no ownership records: refusing to run its lab cleanup")
    env = {**os.environ, "TIMEWAIT_LAB_STATE": str(state)}
    return subprocess.run(
        [TIMEWAIT, "lab", "cleanup"], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Callable[[list[str]], Run]]:
    need_root()
    made: list[Run] = []

    def start(args: list[str]) -> Run:
        run = Run(args, tmp_path / "state")
        made.append(run)
        return run

    yield start
    for run in made:
        run.remove_everything()


def _nginx_running(ns: str) -> bool:
    return sum(comm(p) == "nginx" for p in pids_in(ns)) >= 2  # master and a worker


def _nft_table_loaded(ns: str) -> bool:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True, text=True
    ).stdout
    return "tw_" in out


def _veth_up(ns: str) -> bool:
    return bool(_ip("-n", ns, "-o", "link", "show", "type", "veth").strip())


EXPERIMENTS = {
    "nginx": (["nginx-keepalive", "--set", "duration_s=30"], _nginx_running),
    "nftables": (["lost-final-ack", "--set", "wait_s=20", "--set", "connections=3"],
                 _nft_table_loaded),
    "veth": (["who-closes-first", "--set", "duration_s=30"], _veth_up),
}  # fmt: skip
SIGNALS = {"INT": signal.SIGINT, "TERM": signal.SIGTERM, "HUP": signal.SIGHUP,
           "KILL": signal.SIGKILL}  # fmt: skip
EXIT = {"INT": 130, "TERM": 128 + signal.SIGTERM, "HUP": 128 + signal.SIGHUP,
        "KILL": -signal.SIGKILL}  # fmt: skip


@pytest.mark.parametrize("sig", list(SIGNALS))
@pytest.mark.parametrize("kind", list(EXPERIMENTS))
def test_signal_leaves_nothing(kind: str, sig: str, runs: Callable[[list[str]], Run]) -> None:
    args, ready = EXPERIMENTS[kind]
    run = runs(args)
    wait_for(lambda: run.made(ready) or run.proc.poll() is not None, f"{kind} to be set up")
    assert run.proc.poll() is None, run.proc.communicate()[1]
    run.observe()
    run.proc.send_signal(SIGNALS[sig])
    try:
        _, err = run.proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        run.proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
        _, err = run.proc.communicate(timeout=30)
        pytest.fail(f"the run did not stop within 30 s of SIG{sig}; where it was:\n{err[-4000:]}")
    assert run.proc.returncode == EXIT[sig], err
    assert "Traceback" not in err, err
    if sig == "KILL":
        # Nothing of the run keeps running: not nginx, not a client, not a helper...
        wait_for(lambda: not run.processes(), "the run's processes to die with it", 10)
        assert all(not pids_in(ns) for ns in namespaces_of(run.pid))
        # ... and what cannot die (namespaces, the temp dir, the records) is left for cleanup.
        assert namespaces_of(run.pid), "nothing recorded for cleanup to find"
    else:
        assert {k: v for k, v in run.leftovers().items() if v} == {}
    res = lab_cleanup(run.state)
    assert res.returncode == 0, res.stderr
    if sig == "KILL":
        for ns in run.namespaces:
            assert f"removed namespace {ns}" in res.stdout
    else:
        assert "nothing to clean up" in res.stdout
    assert {k: v for k, v in run.leftovers().items() if v} == {}


def test_cleanup_spares_a_concurrent_run(runs: Callable[[list[str]], Run]) -> None:
    """`lab cleanup` while one run goes on and another was SIGKILLed: the dead run's things
    go, the live run keeps its namespace and finishes with a result."""
    alive = runs(["exhaustion", "--quick", "--set", "duration_s=8"])
    wait_for(lambda: namespaces_of(alive.pid), "the live run's namespace")
    dead = runs(["exhaustion", "--set", "duration_s=30"])
    wait_for(lambda: namespaces_of(dead.pid), "the doomed run's namespace")
    dead.observe()
    dead.proc.kill()
    dead.proc.wait()
    res = lab_cleanup(alive.state)
    assert alive.proc.poll() is None, "the live run ended before cleanup ran: make it longer"
    assert res.returncode == 0, res.stderr
    assert namespaces_of(alive.pid), "cleanup deleted the namespace of a running run"
    assert f"running lab run(s) hold (pid {alive.pid})" in res.stdout
    for ns in dead.namespaces:
        assert f"removed namespace {ns}" in res.stdout
    assert {k: v for k, v in dead.leftovers().items() if v and k != "records"} == {}
    out, err = alive.proc.communicate(timeout=60)
    assert alive.proc.returncode == 0, err
    assert "verdict:" in out
    assert {k: v for k, v in alive.leftovers().items() if v} == {}


def test_next_run_removes_what_a_killed_run_left(runs: Callable[[list[str]], Run]) -> None:
    dead = runs(["exhaustion", "--set", "duration_s=30"])
    wait_for(lambda: namespaces_of(dead.pid), "the doomed run's namespace")
    dead.observe()
    dead.proc.kill()
    dead.proc.wait()
    assert namespaces_of(dead.pid)
    nxt = runs(["lost-final-ack", "--quick"])
    _, err = nxt.proc.communicate(timeout=60)
    assert nxt.proc.returncode == 0, err
    assert "leftover(s) of interrupted runs" in err and f"namespace tw-{dead.pid}-" in err
    assert {k: v for k, v in dead.leftovers().items() if v} == {}
