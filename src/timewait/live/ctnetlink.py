"""ctnetlink: the conntrack table dump, counters and settings, and the NAT rules (standard
library only, like live/netlink.py; timewait.live.conntrack decodes with numpy).

Theory of operation
-------------------
`conntrack -L` and this module ask the kernel the same question: one NETLINK_NETFILTER
datagram holding a `struct nlmsghdr` of type (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
with NLM_F_REQUEST|NLM_F_DUMP and a `struct nfgenmsg` (family AF_UNSPEC: every family). The
kernel walks the conntrack hash (`ctnetlink_dump_table()`, K net/netfilter/nf_conntrack_netlink.c)
and sends, per entry of the socket's namespace, one IPCTNL_MSG_CT_NEW message of nested
attributes, the datagrams filling while we sit in recv(). The namespace is the netlink
socket's: open it inside the target namespace.

Settings are /proc/sys/net/netfilter/* and the per-CPU statistics /proc/net/stat/nf_conntrack
(hex columns with a header line; K nf_conntrack_standalone.c ct_cpu_seq_show()), both of the
calling thread's namespace. A namespace without a connection tracker (the module not loaded)
has neither file: `read_state()` then says so (present = 0) instead of failing.

NAT rules: `nft -j list ruleset` run from the calling thread, so inside the target namespace
(a forked child inherits the thread's namespace). Only its text is kept here; the masquerade
and snat statements are picked out by timewait.live.conntrack.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from timewait.errors import TimewaitError
from timewait.live.netlink import NLM_F_DUMP, NLM_F_MULTI, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR

NETLINK_NETFILTER: Final = 12  # include/uapi/linux/netlink.h
NFNL_SUBSYS_CTNETLINK: Final = 1  # include/uapi/linux/netfilter/nfnetlink.h
IPCTNL_MSG_CT_NEW: Final = 0
IPCTNL_MSG_CT_GET: Final = 1
CT_NEW: Final = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW  # 0x100: one entry
CT_GET: Final = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
NFNETLINK_V0: Final = 0
AF_UNSPEC: Final = 0

NETFILTER_SYSCTL: Final = "/proc/sys/net/netfilter"
STAT_FILE: Final = "stat/nf_conntrack"  # under /proc/thread-self/net
# The first receive block is small (most namespaces track little; a zeroed 8 MiB block per
# exporter scrape would show in its peak RSS); later ones are 4 MiB.
FIRST_BLOCK: Final = 256 << 10
RECV_BLOCK: Final = 4 << 20
MAX_DATAGRAM: Final = 128 << 10
NFT_TIMEOUT_S: Final = 10.0

_HDR: Final = struct.Struct("=IHHII")
_NFGEN: Final = struct.Struct("=BBH")


class ConntrackUnavailable(TimewaitError):
    """The kernel refused the ctnetlink dump for a reason other than "no conntrack here"."""


def encode_request(family: int = AF_UNSPEC, *, seq: int = 1) -> bytes:
    """The IPCTNL_MSG_CT_GET dump request (nlmsghdr + nfgenmsg)."""
    body = _NFGEN.pack(family, NFNETLINK_V0, 0)
    n = _HDR.size + len(body)
    return _HDR.pack(n, CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def open_socket() -> socket.socket | None:
    """A NETLINK_NETFILTER socket in the calling thread's namespace; None without nfnetlink."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    except OSError:
        return None
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((0, 0))
    return sock


def dump(sock: socket.socket) -> bytes | None:
    """The raw dump (every message up to NLMSG_DONE), or None when the kernel has no
    conntrack netlink subsystem (EOPNOTSUPP/ENOENT/EPROTONOSUPPORT: nothing to see).
    ConntrackUnavailable for other errors (EPERM: ctnetlink dumps need CAP_NET_ADMIN)."""
    sock.send(encode_request())
    blocks: list[bytearray] = [bytearray(FIRST_BLOCK)]
    used = [0]
    while True:
        if len(blocks[-1]) - used[-1] < MAX_DATAGRAM:
            blocks.append(bytearray(RECV_BLOCK))
            used.append(0)
        view = memoryview(blocks[-1])[used[-1] :]
        n = sock.recv_into(view, 0, socket.MSG_TRUNC)
        if n > len(view):
            raise ConntrackUnavailable(f"a ctnetlink datagram of {n} bytes did not fit")
        if n < _HDR.size:
            raise ConntrackUnavailable(f"ctnetlink answered with {n} bytes")
        _len, mtype, _flags, _seq, _pid = _HDR.unpack_from(view, 0)
        if mtype == NLMSG_ERROR:
            err = -struct.unpack_from("=i", view, _HDR.size)[0] if n >= 20 else 0
            if err == 0:
                continue  # an ACK
            if err in (_errno.EOPNOTSUPP, _errno.ENOENT, _errno.EPROTONOSUPPORT):
                return None
            raise ConntrackUnavailable(
                f"the kernel refused the conntrack dump ({os.strerror(err)})"
                + (": it needs CAP_NET_ADMIN (run as root)" if err == _errno.EPERM else "")
            )
        used[-1] += n
        if n >= 20:
            t_len, t_type, t_flags, _, _ = _HDR.unpack_from(view, n - 20)
            if t_len == 20 and t_type == NLMSG_DONE and t_flags & NLM_F_MULTI:
                break
    return b"".join(memoryview(b)[:u] for b, u in zip(blocks, used, strict=True))


@dataclass(frozen=True, slots=True, kw_only=True)
class State:
    """What read_state() saw: whether conntrack exists here, its settings and counters
    (Snapshot.counters "conntrack.*"), the raw dump, the ruleset text, and notes."""

    present: bool
    counters: dict[str, int] = field(default_factory=dict)
    dump: bytes | None = None
    ruleset: str | None = None
    notes: tuple[str, ...] = ()


def read_settings(root: str = NETFILTER_SYSCTL) -> dict[str, int] | None:
    """The nf_conntrack_* settings as integers; None when the directory has none (no
    connection tracker in this namespace or kernel)."""
    from timewait.conntrack import SETTING_KEYS

    if not root:
        return None
    base = Path(root)
    out: dict[str, int] = {}
    for name in SETTING_KEYS:
        try:
            out[name] = int((base / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return out if "nf_conntrack_count" in out or "nf_conntrack_max" in out else None


def parse_stat(text: str) -> dict[str, int]:
    """/proc/net/stat/nf_conntrack: a header of names and one line of hex values per CPU;
    the sum over CPUs of each column ("entries" is a global gauge: taken from CPU 0)."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return {}
    names = lines[0]
    out: dict[str, int] = {}
    for row in lines[1:]:
        if len(row) != len(names):
            continue
        for name, value in zip(names, row, strict=True):
            try:
                v = int(value, 16)
            except ValueError:
                continue
            if name == "entries":
                out.setdefault(name, v)
            else:
                out[name] = out.get(name, 0) + v
    return out


def read_stat(proc_net: str) -> dict[str, int]:
    try:
        return parse_stat((Path(proc_net) / STAT_FILE).read_text())
    except OSError:
        return {}


def read_ruleset() -> tuple[str | None, str]:
    """(`nft -j list ruleset` output, "") or (None, why not)."""
    nft = shutil.which("nft") or ("/usr/sbin/nft" if os.access("/usr/sbin/nft", os.X_OK) else "")
    if not nft:
        return None, "nft is not installed: the NAT rules (port range, random-fully) are unknown"
    try:
        res = subprocess.run(
            [nft, "-j", "list", "ruleset"],
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"nft list ruleset failed ({type(e).__name__}): NAT rules unknown"
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"nft list ruleset failed ({why}): NAT rules unknown"
    return res.stdout, ""


def read_state(
    proc_net: str,
    root: str = NETFILTER_SYSCTL,
    *,
    dump_bytes: bytes | None = None,
    ruleset: str | None = None,
    live: bool = True,
) -> State:
    """Everything about conntrack in the calling thread's namespace. With `live` False only
    the given dump/ruleset and the files are used (fixtures: nothing is asked of the kernel).
    """
    from timewait.conntrack import COUNTER_KEYS, PRESENT, key

    settings = read_settings(root)
    if settings is None:
        return State(present=False, counters={PRESENT: 0})
    counters = {PRESENT: 1, **{key(k): v for k, v in settings.items()}}
    stat = read_stat(proc_net)
    counters.update({key(k): stat[k] for k in COUNTER_KEYS if k in stat})
    notes: list[str] = []
    raw = dump_bytes
    if raw is None and live:
        sock = open_socket()
        if sock is None:
            notes.append("no NETLINK_NETFILTER socket: the conntrack table was not read")
        else:
            try:
                raw = dump(sock)
            except ConntrackUnavailable as e:
                notes.append(f"conntrack table not read: {e}")
            finally:
                sock.close()
    rules = ruleset
    if rules is None and live:
        rules, why = read_ruleset()
        if why:
            notes.append(why)
    return State(present=True, counters=counters, dump=raw, ruleset=rules, notes=tuple(notes))
