"""`snapshot -o` says why a path cannot take the capture, before capturing (issue 17).

/proc/version used to fail with "No such file or directory" (the temp file beside it), and a
device or a named pipe was silently replaced by the capture (the save renames its temp file
over the path: as root, `-o /dev/null` replaced the device node). Devices here are made in
tmp_path, never the machine's own.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from timewait.cli import main
from timewait.env import Environment
from timewait.outpath import check_output_file, filesystem_type
from timewait.status import ExitStatus


def snapshot(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(["snapshot", *args], env=Environment(stdout=out, stderr=err))
    return status, err.getvalue()


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/proc/version", "/proc/version is a file of the kernel's proc filesystem"),
        ("/proc/sys/net/new.npz", "is on the kernel's proc filesystem, where files cannot be"),
        ("/sys/kernel/capture.npz", "is on the kernel's sysfs filesystem"),
        ("/nonexistent-dir-17/capture.npz", "directory /nonexistent-dir-17 does not exist"),
        ("", "the file name is empty"),
    ],
)
def test_snapshot_output_names_the_real_problem(path: str, needle: str) -> None:
    status, err = snapshot("-o", path)
    assert status == ExitStatus.USAGE, err
    assert err.count("\n") == 1 and needle in err and "No such file" not in err


def test_a_named_pipe_is_refused_not_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    status, err = snapshot("-o", str(fifo))
    assert status == ExitStatus.USAGE and "is a named pipe, not a regular file" in err
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_a_device_is_refused_not_replaced(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod of a character device needs root")
    dev = tmp_path / "null"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # our own copy of /dev/null's node
    status, err = snapshot("-o", str(dev))
    assert status == ExitStatus.USAGE and "is a character device, not a regular file" in err
    assert stat.S_ISCHR(dev.stat().st_mode)


def test_a_plain_new_file_is_fine(tmp_path: Path) -> None:
    check_output_file(str(tmp_path / "capture.npz"))
    (tmp_path / "old.npz").write_bytes(b"x")
    check_output_file(str(tmp_path / "old.npz"))  # an existing file is replaced


def test_filesystem_type_takes_the_longest_mount_point(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        "23 22 0:22 / /proc rw,nosuid - proc proc rw\n"
        "24 22 0:23 / /my\\040disk rw - tmpfs tmpfs rw\n"
    )
    assert filesystem_type("/proc/version", str(info)) == "proc"
    assert filesystem_type("/procx", str(info)) == "ext4"
    assert filesystem_type("/my disk/a", str(info)) == "tmpfs"
    assert filesystem_type("/", str(info)) == "ext4"


def test_write_atomic_replaces_whole_with_a_shareable_mode(tmp_path: Path) -> None:
    from timewait.outpath import _umask, write_atomic

    f = tmp_path / "report.html"
    f.write_text("old")
    write_atomic(f, b"new")
    assert f.read_bytes() == b"new" and f.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_write_atomic_leaves_no_temp_file_when_the_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from timewait.outpath import write_atomic

    def fail(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        write_atomic(tmp_path / "x.html", b"data")
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_never_replaces_what_is_not_a_regular_file(tmp_path: Path) -> None:
    """As root a rename would replace /dev/null itself: Snapshot.save() and the report refuse."""
    from timewait.outpath import OutputPathError, write_atomic

    from .doctor.helpers import snap

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OutputPathError, match="not a regular file"):
        write_atomic(fifo, b"x")
    with pytest.raises(OutputPathError, match="not a regular file"):
        snap([]).save(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode) and sorted(tmp_path.iterdir()) == [fifo]
