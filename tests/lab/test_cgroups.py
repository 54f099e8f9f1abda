"""lab.cgroups: trees of our own, named as runtimes name theirs, removed on every way out --
with a process still inside, after an exception, and after a SIGKILL (by the sweep)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from pathlib import Path

import pytest

from timewait.lab import cgroups, owner

from .helpers import need_root

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv(owner.ENV, str(state))
    return state


def _cgroup_of(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return ""


def test_a_process_is_filed_and_the_tree_removed_even_on_error() -> None:
    need_root()
    p = subprocess.Popen(["sleep", "60"])
    try:
        with pytest.raises(RuntimeError), cgroups.cgroup_tree("v2") as tree:
            d = tree.place(p.pid, "kubepods.slice/kubepods-besteffort.slice/x.scope")
            assert _cgroup_of(p.pid).endswith("/kubepods.slice/kubepods-besteffort.slice/x.scope")
            assert [r.kind for r in owner.records()] == ["cgroup"]
            raise RuntimeError("boom")
        assert not os.path.exists(tree.root) and not os.path.exists(d)
        assert p.poll() is None  # the caller's process is moved out, not killed
        assert owner.records() == []
    finally:
        p.kill()
        p.wait()


def test_place_refuses_paths_outside_the_tree() -> None:
    need_root()
    with cgroups.cgroup_tree("v2") as tree, pytest.raises(ValueError):
        tree.place(os.getpid(), "../escape")


def test_sweep_removes_the_tree_of_a_run_that_is_gone() -> None:
    """A SIGKILLed run leaves its tree; the next sweep (lab cleanup) removes it."""
    need_root()
    p = subprocess.Popen(["sleep", "60"])
    gone = owner.Owner.of(p.pid)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert gone is not None
    root = os.path.join(cgroups.hierarchies()["v2"],
                        f"{cgroups.PREFIX}{p.pid}-{secrets.token_hex(3)}")  # fmt: skip
    owner.record("cgroup", root, owner=gone)
    os.makedirs(os.path.join(root, "system.slice", "docker-x.scope"))
    try:
        swept = owner.sweep()
        assert not os.path.exists(root)
        assert any(root in r for r in swept.removed)
        assert owner.records() == []
    finally:
        if os.path.exists(root):
            cgroups.remove_tree(root)


def test_remove_tree_refuses_what_is_not_ours(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        cgroups.remove_tree(str(tmp_path / "kubepods.slice"))


def test_hierarchies_read_from_mountinfo(tmp_path: Path) -> None:
    mi = tmp_path / "mountinfo"
    mi.write_text(
        "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
        "31 25 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n"
        "32 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    )
    assert cgroups.hierarchies(str(mi)) == {
        "v2": "/sys/fs/cgroup", "v1-systemd": "/sys/fs/cgroup/systemd"}  # fmt: skip
