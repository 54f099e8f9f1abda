"""The tracer's pure parts: preflight on fake machines, the program it writes, its parser.

The real kernel is in test_tracer_kernel.py; here every path is swapped for a temp tree, so
each bad condition of issue 13 item 4 gets its one line without root.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from timewait.doctor import trace as T
from timewait.live import tracer as TR
from timewait.snapshot import addr_bytes


def fake_machine(tmp: Path, *groups: str) -> dict[str, str]:
    """A tracefs with these tracepoints (e.g. "sock/inet_sock_set_state"), a BTF file, an
    executable bpftrace and a lockdown file saying none."""
    for g in groups:
        (tmp / "tracing" / "events" / g).mkdir(parents=True)
    (tmp / "tracing" / "events").mkdir(parents=True, exist_ok=True)
    (tmp / "vmlinux").write_text("")
    exe = tmp / "bpftrace"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (tmp / "lockdown").write_text("[none] integrity confidentiality\n")
    return dict(
        bpftrace=str(exe), tracefs=str(tmp / "tracing"), btf=str(tmp / "vmlinux"),
        lockdown=str(tmp / "lockdown"),
    )  # fmt: skip


ALL = ("syscalls/sys_enter_connect", "syscalls/sys_exit_connect", "syscalls/sys_enter_bind",
       "syscalls/sys_exit_bind", "sock/inet_sock_set_state")  # fmt: skip


def test_preflight_on_a_complete_machine(tmp_path: Path) -> None:
    plan = TR.preflight(**fake_machine(tmp_path, *ALL), euid=0)
    assert (plan.connect, plan.bind, plan.state, plan.notes) == (True, True, True, ())


def test_not_root_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TR.TraceUnavailable, match=r"^tracing needs root: .*sudo$"):
        TR.preflight(**fake_machine(tmp_path, *ALL), euid=1000)


def test_bpftrace_missing_is_one_line(tmp_path: Path) -> None:
    paths = {**fake_machine(tmp_path, *ALL), "bpftrace": str(tmp_path / "nope" / "bpftrace")}
    with pytest.raises(TR.TraceUnavailable, match="is not installed: apt-get install bpftrace"):
        TR.preflight(**paths, euid=0)


def test_tracefs_not_mounted_and_not_ours_to_mount(tmp_path: Path) -> None:
    paths = {**fake_machine(tmp_path, *ALL), "tracefs": str(tmp_path / "absent")}
    with pytest.raises(TR.TraceUnavailable, match=r"tracefs is not mounted at .*mount -t tracefs"):
        TR.preflight(**paths, euid=0, mount=False)


def test_lockdown_confidentiality_is_one_line(tmp_path: Path) -> None:
    paths = fake_machine(tmp_path, *ALL)
    Path(paths["lockdown"]).write_text("none integrity [confidentiality]\n")
    with pytest.raises(TR.TraceUnavailable, match="lockdown"):
        TR.preflight(**paths, euid=0)
    Path(paths["lockdown"]).write_text("none [integrity] confidentiality\n")
    assert TR.preflight(**paths, euid=0).state  # integrity still lets eBPF read


def test_no_btf_is_one_line(tmp_path: Path) -> None:
    paths = {**fake_machine(tmp_path, *ALL), "btf": str(tmp_path / "no-btf")}
    with pytest.raises(TR.TraceUnavailable, match="no BTF"):
        TR.preflight(**paths, euid=0)


def test_an_unknown_tracepoint_drops_its_part_and_says_so(tmp_path: Path) -> None:
    """An older kernel (no syscall tracepoints: CONFIG_FTRACE_SYSCALLS off) still traces the
    closes; the notes say what is not seen, and the program has no syscall probe."""
    plan = TR.preflight(**fake_machine(tmp_path, "sock/inet_sock_set_state"), euid=0)
    assert (plan.connect, plan.bind, plan.state) == (False, False, True)
    assert any("connect() failures other than EADDRNOTAVAIL" in n for n in plan.notes)
    assert any("bind() failures not seen" in n for n in plan.notes)
    text = TR.program(plan, [4026531840])
    assert "sys_enter_connect" not in text and "@c[" not in text
    assert "inet_sock_set_state" in text


def test_no_tracepoint_at_all_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TR.TraceUnavailable, match="none of the tracepoints"):
        TR.preflight(**fake_machine(tmp_path), euid=0)


def test_program_filters_by_namespace_inode() -> None:
    plan = TR.Plan(connect=True, bind=True, state=True, bpftrace="bpftrace")
    text = TR.program(plan, [4026532001, 4026532002])
    assert text.count("$ns == 4026532001 || $ns == 4026532002)") == 3
    assert "$ns == " not in TR.program(plan, None)  # --all-netns
    assert "interval:ms:250" in TR.program(plan, None, interval_s=0.25)
    # the exporter's keys carry no pid (but @own still remembers the caller)
    no_pid = TR.program(plan, [1], with_pid=False)
    assert "cgroup, (uint64)pid," not in no_pid and "@own[$key] = ((uint64)pid" in no_pid


def _key(kind: int, ns: int, pid: int, err: int, fam: int, laddr: tuple[int, int], lport: int,
         raddr: tuple[int, int], rport: int, comm: str, cg: int = 1) -> str:  # fmt: skip
    return ",".join(
        str(x) for x in (kind, ns, cg, pid, err, fam, *laddr, lport, *raddr, rport, comm)
    )


def _v4(a: str) -> tuple[int, int]:
    """How the program holds an IPv4 address: s_addr as a little-endian load."""
    return 0, struct.unpack("<I", bytes(int(x) for x in a.split(".")))[0]


def _v6(a: str) -> tuple[int, int]:
    b = addr_bytes(a)
    return struct.unpack("<QQ", b)


def test_rows_of_map_decodes_addresses_and_sides() -> None:
    data = {
        _key(1, 77, 1234, 99, 2, (0, 0), 0, _v4("198.18.0.2"), 80, "cli,ent"): 50,
        _key(4, 77, 1234, 0, 2, _v4("198.18.0.1"), 0, _v4("198.18.0.2"), 80, "client"): 9,
        _key(4, 77, 99, 0, 10, _v6("2001:db8::2"), 443, (0, 0), 0, "server"): 3,
        _key(3, 77, 5, 98, 2, _v4("198.18.0.1"), 0, (0, 0), 0, "binder"): 2,
        "garbage": 1,
    }
    tr = T.Traced(rows=TR.rows_of_map(data), window_ns=10**9)
    assert tr.total(T.Kind.CONNECT_ERROR) == 50
    (fail,) = tr.groups(T.Kind.CONNECT_ERROR)
    assert (fail.comm, fail.raddr, fail.rport, fail.errno_name, fail.pid) == (
        "cli,ent", "198.18.0.2", 80, "EADDRNOTAVAIL", 1234,
    )  # fmt: skip
    client, server = sorted(tr.groups(T.Kind.ACTIVE_CLOSE), key=lambda g: g.side)
    assert (client.side, client.laddr, client.destination) == (
        T.SIDE_CLIENT, "198.18.0.1", "198.18.0.2:80",
    )  # fmt: skip
    assert (server.side, server.destination) == (T.SIDE_SERVER, "local [2001:db8::2]:443")
    (bind,) = tr.groups(T.Kind.BIND_ERROR)
    assert (bind.errno_name, bind.destination) == ("EADDRINUSE", "local 198.18.0.1:0")


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/", "/"),
        ("/system.slice/docker-0123456789abcdef0123.scope", "docker:0123456789ab"),
        ("/kubepods.slice/kubepods-pod1.slice/cri-containerd-fedcba9876543210.scope",
         "containerd:fedcba987654"),
        ("/docker/0123456789abcdef0123", "docker:0123456789ab"),
        ("/system.slice/ssh.service", "ssh.service"),
    ],
)  # fmt: skip
def test_container_names(path: str, name: str) -> None:
    assert TR.container_name(path) == name


def test_netns_label_names_run_netns_entries(tmp_path: Path) -> None:
    (tmp_path / "web").write_text("")
    ino = os.stat(tmp_path / "web").st_ino
    assert TR.netns_label(ino, run_dir=str(tmp_path)) == "netns:web"
    assert TR.netns_label(12345, run_dir=str(tmp_path)).startswith("netns:[12345]")
