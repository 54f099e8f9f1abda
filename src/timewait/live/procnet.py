"""/proc/net readers: the tcp{,6} socket tables (the fallback source) and the kernel counters.

Theory of operation
-------------------
Every parser here is a pure function of the file's text, so tests feed recorded files from
tests/fixtures/; `read_*` functions only add the file reads. The directory defaults to
/proc/thread-self/net, which shows the namespace of the calling *thread* (after setns());
/proc/net is /proc/self/net, the namespace of the thread-group leader.

/proc/net/tcp{,6} rows (K net/ipv4/tcp_ipv4.c get_tcp4_sock()/get_timewait4_sock(),
net/ipv6/tcp_ipv6.c get_tcp6_sock()/get_timewait6_sock(); ref 9.3):
  sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
- addresses are the raw __be32 words printed with %08X, i.e. byte-swapped on little-endian
  hosts; ports are %04X in host order; st is the state in hex (minisockets: tw_substate,
  06 TIME_WAIT or 05 FIN_WAIT2);
- tr is the timer kind (0 none, 1 retransmit, 2 keepalive/sk_timer, 3 minisocket, 4 probe) and
  tm->when its remaining time in USER_HZ ticks (1/100 s, jiffies_delta_to_clock_t());
- listeners and request sockets (SYN_RECV) are listed; bind()-only sockets are not (they live
  only in the bind hash), so this source cannot count TCP_BOUND_INACTIVE ports.

Counters: /proc/net/netstat and /proc/net/snmp are pairs of lines "Prefix: names" /
"Prefix: values" (K net/ipv4/proc.c netstat_seq_show(), snmp_seq_show()); we keep TcpExt and
Tcp under the kernel's own names. /proc/net/sockstat{,6}: "TCP: inuse N orphan N tw N alloc N
mem N" (sockstat_seq_show()); "tw" counts TIME_WAIT *and* FIN_WAIT2 minisockets (ref 9.2).
"""

from __future__ import annotations

import contextlib
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

from timewait.errors import TimewaitError

if TYPE_CHECKING:
    import numpy as np

# numpy is imported by the table parsers only: the counters are read before numpy is loaded
# (the doctor's rate window opens while its imports run; live/netlink.py says why).
AF_INET: Final = int(socket.AF_INET)
AF_INET6: Final = int(socket.AF_INET6)

PROC_NET: Final = "/proc/thread-self/net"
USER_HZ_MS: Final = 10  # USER_HZ = 100 on every Linux ABI (include/asm-generic/param.h)
_V4_MAPPED: Final = b"\x00" * 10 + b"\xff\xff"
COUNTER_TABLES: Final = ("TcpExt", "Tcp")


class MalformedProcFile(TimewaitError):
    """A /proc/net file whose text does not have the kernel's layout."""


def _hex_addr(text: str, byteorder: str) -> bytes:
    """'0100007F' -> 127.0.0.1 as 16 IPv4-mapped bytes; 32 hex digits -> IPv6 bytes."""
    words = [int(text[i : i + 8], 16).to_bytes(4, byteorder) for i in range(0, len(text), 8)]  # type: ignore[arg-type]
    raw = b"".join(words)
    return _V4_MAPPED + raw if len(raw) == 4 else raw


def parse_tcp(text: str, family: int, *, byteorder: str = sys.byteorder) -> np.ndarray:
    """Rows of /proc/net/tcp (family AF_INET) or /proc/net/tcp6 (AF_INET6) as SOCKET_DTYPE.

    `byteorder` is that of the machine that wrote the file (the %08X words are its native u32).
    Raises MalformedProcFile naming the line for text that does not parse.
    """
    import numpy as np

    from timewait.snapshot import SOCKET_DTYPE

    addr_len = 8 if family == AF_INET else 32
    lines = text.splitlines()
    if not lines or not lines[0].lstrip().startswith("sl"):
        raise MalformedProcFile(
            f"not a /proc/net/tcp{'6' if family == AF_INET6 else ''} table (no header line)"
        )
    body = [ln for ln in lines[1:] if ln.strip()]
    out = np.zeros(len(body), dtype=SOCKET_DTYPE)
    srcs: list[bytes] = []
    dsts: list[bytes] = []
    cols: list[tuple[int, int, int, int, int, int, int]] = []
    for i, line in enumerate(body, start=2):
        f = line.split()
        try:
            local, remote = f[1], f[2]
            la, lp = local.split(":")
            ra, rp = remote.split(":")
            if len(la) != addr_len or len(ra) != addr_len:
                raise ValueError("address width")
            tr, when = f[5].split(":")
            timer = int(tr, 16)
            cols.append(
                (
                    int(lp, 16),
                    int(rp, 16),
                    int(f[3], 16),
                    timer,
                    min(int(when, 16) * USER_HZ_MS, 0xFFFFFFFF),
                    int(f[7]),
                    int(f[9]),
                )
            )
            srcs.append(_hex_addr(la, byteorder))
            dsts.append(_hex_addr(ra, byteorder))
        except (IndexError, ValueError):
            raise MalformedProcFile(
                f"line {i} of the tcp table does not parse: {line[:80]!r}"
            ) from None
    if not body:
        return out
    arr = np.array(cols, dtype=np.int64)
    state = arr[:, 2]
    if ((state < 1) | (state > 13)).any():
        raise MalformedProcFile(f"tcp table has an unknown state {int(state.max())}")
    out["family"] = family
    out["sport"] = arr[:, 0]
    out["dport"] = arr[:, 1]
    out["state"] = state
    out["timer"] = arr[:, 3]
    out["minisock"] = arr[:, 3] == 3  # get_timewait4_sock(): tr 3 only for minisockets
    out["expires_ms"] = arr[:, 4]
    out["uid"] = arr[:, 5]
    out["inode"] = arr[:, 6]
    out["src"] = np.frombuffer(b"".join(srcs), dtype="V16")
    out["dst"] = np.frombuffer(b"".join(dsts), dtype="V16")
    return out


def parse_snmp_pairs(text: str, tables: tuple[str, ...] = COUNTER_TABLES) -> dict[str, int]:
    """Counters of /proc/net/netstat or /proc/net/snmp for `tables`, by the kernel's names."""
    out: dict[str, int] = {}
    lines = text.splitlines()
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        prefix, _, names = head.partition(":")
        vprefix, _, values = vals.partition(":")
        if prefix != vprefix:
            raise MalformedProcFile(f"counter lines out of step: {prefix!r} vs {vprefix!r}")
        if prefix not in tables:
            continue
        n, v = names.split(), values.split()
        if len(n) != len(v):
            raise MalformedProcFile(f"{prefix}: {len(n)} names but {len(v)} values")
        for name, value in zip(n, v, strict=True):
            try:
                out[name] = int(value)
            except ValueError:
                raise MalformedProcFile(f"{prefix} {name} = {value!r} is not a number") from None
    return out


def parse_sockstat(text: str, *, prefix: str = "sockstat") -> dict[str, int]:
    """The TCP/TCP6 line of /proc/net/sockstat{,6}: {'sockstat.tw': N, 'sockstat.inuse': N, ...}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        proto, _, rest = line.partition(":")
        if proto not in ("TCP", "TCP6"):
            continue
        items = rest.split()
        for key, value in zip(items[::2], items[1::2], strict=False):
            if value.lstrip("-").isdigit():
                out[f"{prefix}.{key}"] = int(value)
    return out


def read_text(path: Path) -> str:
    return path.read_text()


def read_tcp_text(proc_net: str = PROC_NET) -> tuple[str, str | None]:
    """The text of both tcp tables of the current thread's namespace (tcp6: None if IPv6 is
    off). No parsing here: capture.read() runs before numpy is imported."""
    base = Path(proc_net)
    tcp6 = base / "tcp6"
    return read_text(base / "tcp"), (read_text(tcp6) if tcp6.exists() else None)


def parse_tcp_tables(tcp: str, tcp6: str | None) -> np.ndarray:
    import numpy as np

    parts = [parse_tcp(tcp, AF_INET)]
    if tcp6 is not None:
        parts.append(parse_tcp(tcp6, AF_INET6))
    return np.concatenate(parts)


def read_tcp_tables(proc_net: str = PROC_NET) -> np.ndarray:
    """Both tcp tables of the current thread's namespace (tcp6 skipped if IPv6 is off)."""
    return parse_tcp_tables(*read_tcp_text(proc_net))


def read_counters(proc_net: str = PROC_NET) -> dict[str, int]:
    """TcpExt + Tcp counters and sockstat{,6} TCP lines; unreadable files are skipped."""
    base = Path(proc_net)
    out: dict[str, int] = {}
    for name, parse in (
        ("netstat", parse_snmp_pairs),
        ("snmp", parse_snmp_pairs),
        ("sockstat", parse_sockstat),
    ):
        try:
            out.update(parse(read_text(base / name)))
        except OSError:
            continue
    with contextlib.suppress(OSError):
        out.update(parse_sockstat(read_text(base / "sockstat6"), prefix="sockstat6"))
    return out
