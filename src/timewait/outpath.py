"""Is this a place to write an output file? Checked before the work, with the reason if not.

`check_output_file(path)` says, in one line, why `path` cannot take a new file: a directory,
something that is not a regular file (a device such as /dev/null: an atomic save renames its
temp file over the path, and as root that would replace the device node), a file of a kernel
filesystem (/proc, /sys: such files cannot be replaced, and new ones cannot be created there),
a missing parent directory, one we may not write to, or a read-only filesystem. Without it the
user saw only the error of the temp file next to the path ("No such file or directory" for
/proc/version). The filesystem type comes from /proc/self/mountinfo (the longest mount point
that contains the path).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Final

# Kernel filesystems: their files are views of kernel state, not storage.
KERNEL_FILESYSTEMS: Final = frozenset(
    {
        "proc", "sysfs", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "pstore",
        "bpf", "configfs", "efivarfs", "fusectl", "binfmt_misc", "mqueue", "devpts", "nsfs",
        "autofs", "rpc_pipefs", "selinuxfs",
    }
)  # fmt: skip
MOUNTINFO: Final = "/proc/self/mountinfo"

_KINDS: Final = (
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISFIFO, "named pipe"),
    (stat.S_ISSOCK, "socket"),
)


class OutputPathError(ValueError):
    """`path` cannot take the output file; the message says why and what to give instead."""


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo (octal)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def filesystem_type(path: str | Path, mountinfo: str = MOUNTINFO) -> str | None:
    """The type of the filesystem `path` (which must exist) is on, or None if unknown."""
    real = os.path.realpath(path)
    best, best_type = "", None
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        point = _unescape(fields[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, right.split()[0]
    return best_type


def check_output_file(path: str, *, example: str = "capture.npz") -> None:
    """Raise OutputPathError (one line) unless a new file can be written at `path`."""
    if not path.strip():
        raise OutputPathError(f"the file name is empty: give one, e.g. {example}")
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputPathError(f"{path}: {e.strerror}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise OutputPathError(f"{path} is a directory: give a file name in it, e.g. "
                                  f"{p / example}")  # fmt: skip
        for test, kind in _KINDS:
            if test(st.st_mode):
                raise OutputPathError(
                    f"{path} is a {kind}, not a regular file: give the name of a file to "
                    f"create, e.g. {example}"
                )
        fstype = filesystem_type(p)
        if fstype in KERNEL_FILESYSTEMS:
            raise OutputPathError(
                f"{path} is a file of the kernel's {fstype} filesystem, not a place to save "
                f"to: give a path on a disk, e.g. ./{example}"
            )
    parent = p.parent
    if not parent.exists():
        raise OutputPathError(f"directory {parent} does not exist: create it, or give another path")
    if not parent.is_dir():
        raise OutputPathError(f"{parent} is not a directory: give a path such as ./{example}")
    fstype = filesystem_type(parent)
    if fstype in KERNEL_FILESYSTEMS:
        raise OutputPathError(
            f"{parent} is on the kernel's {fstype} filesystem, where files cannot be created: "
            f"give a path on a disk, e.g. ./{example}"
        )
    if os.statvfs(parent).f_flag & os.ST_RDONLY:
        raise OutputPathError(f"{parent} is on a read-only filesystem: give another directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"no permission to create files in {parent}: give a directory you can write to"
        )


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all: a temp file beside it, then a rename.

    A reader never sees half a file, and an interrupted write leaves the old file as it was.
    The temp file's name is unique (two writers never share it) and it is removed on any error;
    the new file gets the mode a plain open() would give (0666 less the umask), not the 0600
    of a temp file, since reports and captures are made to be shared.
    """
    import tempfile

    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        mode = stat.S_IFREG
    if not stat.S_ISREG(mode):  # as root the rename would replace a device node or a socket
        raise OutputPathError(f"{p} is not a regular file: give the name of a file to create")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent or ".")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's umask, read without setting it (os.umask() would, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022
