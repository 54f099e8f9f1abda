"""The IP_BIND_ADDRESS_NO_PORT remedy's code works as written, in Python and in C.

In a namespace whose range has 20 ports, a client that pins its source address opens 30
connections to two destinations (15 each): with plain bind(ip, 0) the kernel refuses the 21st
bind() (EADDRINUSE); with the remedy's `connect_from` every connection succeeds, because each
port now serves both destinations (ref 7.4).
"""

from __future__ import annotations

import errno
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from timewait.doctor.remedies import NO_PORT_C, NO_PORT_PY
from timewait.lab.namespaces import run_in_netns, throwaway_netns, write_sysctl

from ..lab.helpers import need_root

pytestmark = pytest.mark.root

SRC, DSTS = "198.18.0.1", ("198.18.0.2", "198.18.0.3")

C_MAIN = """
#include <stdio.h>
int main(void)
{
    const char *dsts[2] = {"198.18.0.2", "198.18.0.3"};
    int ok = 0;
    for (int i = 0; i < 30; i++)
        if (connect_from("198.18.0.1", dsts[i % 2], 8080) >= 0)
            ok++;
    printf("%d\\n", ok);
    return 0;
}
"""


def _setup() -> list[socket.socket]:
    write_sysctl("ip_local_port_range", "40000 40019")
    for a in (SRC, *DSTS):
        subprocess.run(["ip", "addr", "add", f"{a}/32", "dev", "lo"], check=True)
    out = []
    for a in DSTS:
        ls = socket.socket()
        ls.bind((a, 8080))
        ls.listen(64)
        out.append(ls)
    return out


def _plain_bind() -> str:
    keep = _setup()
    for i in range(30):
        s = socket.socket()
        try:
            s.bind((SRC, 0))
        except OSError as e:
            return f"{i} {errno.errorcode[e.errno or 0]}"
        s.connect((DSTS[i % 2], 8080))
        keep.append(s)
    return "30 ok"


def _python_remedy() -> int:
    keep = _setup()
    scope: dict[str, object] = {}
    exec(NO_PORT_PY, scope)
    connect_from = scope["connect_from"]
    keep += [connect_from(SRC, DSTS[i % 2], 8080) for i in range(30)]  # type: ignore[operator]
    return len(keep) - 2


def _c_remedy(binary: str) -> int:
    keep = _setup()
    out = subprocess.run([binary], capture_output=True, text=True, check=True).stdout
    del keep
    return int(out)


def test_plain_bind_zero_runs_out_at_the_range_size() -> None:
    need_root()
    with throwaway_netns() as ns:
        assert run_in_netns(ns, _plain_bind) == "20 EADDRINUSE"


def test_python_remedy_shares_ports_across_destinations() -> None:
    need_root()
    with throwaway_netns() as ns:
        assert run_in_netns(ns, _python_remedy) == 30


def test_c_remedy_compiles_and_shares_ports_across_destinations(tmp_path: Path) -> None:
    need_root()
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc, "gcc is installed by scripts/system-packages.sh"
    src = tmp_path / "no_port.c"
    src.write_text(NO_PORT_C + C_MAIN)
    binary = tmp_path / "no_port"
    subprocess.run([cc, "-std=c99", "-Wall", "-Werror", "-o", str(binary), str(src)], check=True)
    with throwaway_netns() as ns:
        assert run_in_netns(ns, _c_remedy, str(binary)) == 30
