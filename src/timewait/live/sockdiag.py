"""sock_diag (inet_diag) dumps: a vectorized decoder (the request and the raw dump live in
timewait.live.netlink, free of numpy, and are re-exported here).

Theory of operation
-------------------
`ss` and timewait ask the kernel the same question: one NETLINK_SOCK_DIAG datagram holding a
`struct nlmsghdr` (type SOCK_DIAG_BY_FAMILY, flags NLM_F_REQUEST|NLM_F_DUMP) and a
`struct inet_diag_req_v2` (family, IPPROTO_TCP, idiag_ext, idiag_states) per address family. The
state mask is applied in the kernel; for minisockets it tests `tw_substate`, so TIME_WAIT (6) and
FIN_WAIT2 (5) minisockets are selected by their own bits (ref 9.4; K net/ipv4/inet_diag.c dump
loop). TCP_BOUND_INACTIVE (13, Linux 6.5+) sockets are only dumped when their bit is asked for
(K net/ipv4/inet_diag.c, "bind-only sockets"), so ALL_STATES sets bits 1..13 explicitly.

The answer is a stream of `nlmsghdr + struct inet_diag_msg` (72 bytes) records, followed by
optional attributes, ending with NLMSG_DONE. With idiag_ext = 0 a minisocket record carries at
most INET_DIAG_MARK, for a CAP_NET_ADMIN reader only, so a TIME_WAIT-heavy dump is a run of
identical records. Measured on 6.18.44 (tests/fixtures/netns-population): minisockets 88 bytes
unprivileged, 96 as root (MARK); full sockets 124 as root (SHUTDOWN, MARK, CGROUP_ID, SOCKOPT),
IPv6 listeners and bound sockets 132 (+ SKV6ONLY). (The torvalds/linux revision read,
00ed905a, fills no attribute at all in `inet_twsk_diag_fill()`: sizes vary by kernel, which is
why the decoder walks lengths instead of assuming one.) The decoder reads the fixed 72-byte
inet_diag_msg and skips the attributes.

`dump()` returns the raw bytes (so tests can record fixtures and fuzz the decoder); `decode()`
is a pure function of bytes. It walks the nlmsghdr lengths with a scalar loop that switches to
numpy as soon as it sees a run of equal lengths: it then verifies the next 64, 128, 256, ...
headers at that stride in one vectorized comparison and jumps past them, so 200,000 TIME_WAIT
records cost a handful of numpy calls. The socket records are then read through one structured
numpy view (or a word gather when lengths differ) into SOCKET_DTYPE columns.

Layouts (K include/uapi/linux/netlink.h, include/uapi/linux/inet_diag.h, checked against
torvalds/linux at 00ed905a and by recording dumps on 6.18.44):
  struct nlmsghdr       { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }          16 bytes
  struct inet_diag_sockid { be16 sport, dport; be32 src[4], dst[4]; u32 if; u32 cookie[2]; } 48
  struct inet_diag_req_v2 { u8 family, protocol, ext, pad; u32 states; inet_diag_sockid id; } 56
  struct inet_diag_msg  { u8 family, state, timer, retrans; inet_diag_sockid id;
                          u32 expires, rqueue, wqueue, uid, inode; }                          72
Header and u32 fields are in host byte order, ports and addresses in network order. IPv4
addresses sit in src[0]/dst[0] with the rest zero (`inet_diag_msg_common_fill()`); the decoder
stores them IPv4-mapped (::ffff:a.b.c.d), as SOCKET_DTYPE wants.
"""

from __future__ import annotations

import os
from typing import Final

import numpy as np

from timewait.errors import TimewaitError
from timewait.live.netlink import (  # noqa: F401  (the dump API, re-exported)
    _HDR,
    ALL_STATES,
    INET_DIAG_MSG_LEN,
    MAX_STATE,
    NLM_F_MULTI,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDRLEN,
    NLMSG_NOOP,
    RECORD_LEN,
    SOCK_DIAG_BY_FAMILY,
    TCPDIAG_GETSOCK,
    SockDiagUnavailable,
    dump,
    encode_request,
    open_socket,
)
from timewait.snapshot import (
    AF_INET,
    AF_INET6,
    SOCKET_DTYPE,
    TCP_BOUND_INACTIVE,
    TCP_CLOSE,
)

# One record as the kernel lays it out (header fields native-endian, ports big-endian).
MSG_DTYPE: Final = np.dtype(
    {
        "names": [
            "len", "type", "flags", "seq", "pid", "family", "state", "timer", "retrans",
            "sport", "dport", "src", "dst", "ifindex", "cookie", "expires", "rqueue", "wqueue",
            "uid", "inode",
        ],
        "formats": [
            "=u4", "=u2", "=u2", "=u4", "=u4", "u1", "u1", "u1", "u1",
            ">u2", ">u2", "V16", "V16", "=u4", "V8", "=u4", "=u4", "=u4", "=u4", "=u4",
        ],
        "offsets": [0, 4, 6, 8, 12, 16, 17, 18, 19, 20, 22, 24, 40, 56, 60, 68, 72, 76, 80, 84],
        "itemsize": RECORD_LEN,
    }
)  # fmt: skip

_FIELD_OFFSET: Final = {"src": 8, "dst": 24}  # byte offsets in SOCKET_DTYPE (checked below)
assert all(SOCKET_DTYPE.fields[k][1] == v for k, v in _FIELD_OFFSET.items())  # type: ignore[index]

_RUN_TRIGGER: Final = 8  # equal lengths in a row before trying the vectorized jump
_RUN_CHUNK: Final = 64  # first vectorized check; doubles while the run holds


class MalformedDump(TimewaitError):
    """Bytes that are not a complete, well-formed sock_diag dump (truncated or corrupt)."""


# -- decoding --------------------------------------------------------------------------------


def _strerror(code: int) -> str:
    """errno text for a plausible errno; a corrupt status (found by hypothesis: INT_MIN, whose
    negation overflows strerror()) is shown as a number."""
    return os.strerror(code) if 0 < code < 4096 else f"status {code}"


def _fail(msg: str) -> MalformedDump:
    return MalformedDump(f"malformed sock_diag dump: {msg}; re-record it with `timewait snapshot`")


def _message_offsets(data: bytes) -> np.ndarray:
    """Start offsets of every netlink message; MalformedDump if a length runs off the end."""
    n = len(data)
    whole = n - n % 4
    words = np.frombuffer(data, dtype="=u4", count=whole // 4)
    mv = memoryview(data)[:whole].cast("I") if whole else memoryview(b"")
    starts: list[np.ndarray] = []
    singles: list[int] = []
    p = 0
    prev = -1
    same = 0
    while p < n:
        if n - p < NLMSG_HDRLEN:
            raise _fail(f"{n - p} stray bytes at offset {p} (truncated header)")
        length = mv[p >> 2]
        if length < NLMSG_HDRLEN:
            raise _fail(f"message at offset {p} has length {length} < {NLMSG_HDRLEN}")
        if p + length > n:
            raise _fail(f"message at offset {p} claims {length} bytes, only {n - p} left")
        step = (length + 3) & ~3
        singles.append(p)
        same = same + 1 if length == prev else 0
        prev = length
        p += step
        if same >= _RUN_TRIGGER and p + step <= n:
            # Vectorized jump: verify headers at this stride in growing chunks.
            stride = step >> 2
            chunk = _RUN_CHUNK
            while p + step <= n:
                avail = (n - p) // step
                k = min(chunk, avail)
                lens = words[(p >> 2) : (p >> 2) + k * stride : stride]
                bad = np.flatnonzero(lens != length)
                good = int(bad[0]) if bad.size else k
                if good:
                    if singles:
                        starts.append(np.asarray(singles, dtype=np.int64))
                        singles = []
                    starts.append(p + step * np.arange(good, dtype=np.int64))
                    p += step * good
                if good < k or k == avail:
                    break
                chunk *= 2
            same = 0
    if singles:
        starts.append(np.asarray(singles, dtype=np.int64))
    if not starts:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(starts) if len(starts) > 1 else starts[0]


def decode(data: bytes | bytearray | memoryview, *, require_done: bool = True) -> np.ndarray:
    """Decode a sock_diag TCP dump (one or more replies) into SOCKET_DTYPE rows, in dump order.

    Pure function of bytes. Raises MalformedDump, with a one-line reason, for anything that is
    not a sequence of whole, well-formed messages: a length that runs past the end, a message
    shorter than its type needs, an unknown message type, an address family other than
    AF_INET/AF_INET6, a state outside 1..13, a kernel error reply, and (with require_done) a
    stream that does not end with NLMSG_DONE, i.e. a dump cut short at a message boundary.
    With require_done=False a prefix of whole messages decodes to exactly its sockets.
    """
    buf = bytes(data)
    offs = _message_offsets(buf)
    if offs.size == 0:
        if require_done:
            raise _fail("empty input (no NLMSG_DONE)")
        return np.zeros(0, dtype=SOCKET_DTYPE)
    n = len(buf)
    whole = n - n % 4
    words = np.frombuffer(buf, dtype="=u4", count=whole // 4)
    w = offs >> 2
    lengths = words[w]
    types = words[w + 1] & 0xFFFF
    is_sock = (types == SOCK_DIAG_BY_FAMILY) | (types == TCPDIAG_GETSOCK)  # netlink.py
    is_done = types == NLMSG_DONE
    is_err = types == NLMSG_ERROR
    known = is_sock | is_done | is_err | (types == NLMSG_NOOP)
    if not known.all():
        i = int(np.flatnonzero(~known)[0])
        raise _fail(f"message at offset {int(offs[i])} has unknown type {int(types[i])}")
    if is_err.any():
        i = int(np.flatnonzero(is_err)[0])
        if lengths[i] < NLMSG_HDRLEN + 4:
            raise _fail(f"short NLMSG_ERROR at offset {int(offs[i])}")
        code = -int(np.int32(words[w[i] + 4]))
        raise _fail(f"it holds a kernel error reply ({_strerror(code)})")
    if is_done.any():
        d = np.flatnonzero(is_done)
        if (lengths[d] < NLMSG_HDRLEN + 4).any():
            raise _fail("short NLMSG_DONE")
        status = words[w[d] + 4].astype(np.int32)
        if (status < 0).any():
            code = -int(status[status < 0][0])
            raise _fail(f"the kernel ended the dump with an error ({_strerror(code)})")
    if require_done and not is_done[-1]:
        raise _fail("it does not end with NLMSG_DONE (truncated at a message boundary?)")
    sock_offs = offs[is_sock]
    if (lengths[is_sock] < RECORD_LEN).any():
        i = int(np.flatnonzero(is_sock & (lengths < RECORD_LEN))[0])
        raise _fail(f"socket message at offset {int(offs[i])} has only {int(lengths[i])} bytes")
    recs, r8 = _records(buf, words, sock_offs)
    return _to_sockets(recs, r8)


def _records(buf: bytes, words: np.ndarray, offs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The socket records as MSG_DTYPE and as (k, 88) uint8 rows.

    Uniform stride (the common case): views into `buf`, no copy. Mixed lengths: one word
    gather into a contiguous copy.
    """
    k = offs.size
    if k == 0:
        return np.zeros(0, dtype=MSG_DTYPE), np.zeros((0, RECORD_LEN), dtype=np.uint8)
    if k == 1 or (np.diff(offs) == offs[1] - offs[0]).all():
        stride = int(offs[1] - offs[0]) if k > 1 else RECORD_LEN
        o0 = int(offs[0])
        recs = np.ndarray(shape=(k,), dtype=MSG_DTYPE, buffer=buf, offset=o0, strides=(stride,))
        r8 = np.ndarray(
            shape=(k, RECORD_LEN), dtype=np.uint8, buffer=buf, offset=o0, strides=(stride, 1)
        )
        return recs, r8
    idx = (offs >> 2)[:, None] + np.arange(RECORD_LEN // 4)
    g = np.ascontiguousarray(words[idx])
    return g.view(MSG_DTYPE).reshape(k), g.view(np.uint8).reshape(k, RECORD_LEN)


def _to_sockets(recs: np.ndarray, r8: np.ndarray) -> np.ndarray:
    fam = recs["family"]
    state = recs["state"]
    bad_fam = (fam != AF_INET) & (fam != AF_INET6)
    if bad_fam.any():
        raise _fail(f"socket record with address family {int(fam[bad_fam][0])}")
    bad_state = (state < 1) | (state > MAX_STATE)
    if bad_state.any():
        raise _fail(f"socket record with unknown TCP state {int(state[bad_state][0])}")
    k = recs.shape[0]
    out = np.empty(k, dtype=SOCKET_DTYPE)
    out["family"] = fam
    # Bind()-only sockets come from the bind-hash walk that only TCPF_BOUND_INACTIVE enables,
    # but the record carries their sk_state, TCP_CLOSE (K net/ipv4/inet_diag.c "Dump bound but
    # inactive" loop; measured on 6.18.44). No other TCP_CLOSE socket is ever dumped (they are
    # in no lookup table), so CLOSE here means BOUND_INACTIVE, the name Snapshot uses.
    out["state"] = np.where(state == TCP_CLOSE, TCP_BOUND_INACTIVE, state)
    out["timer"] = recs["timer"]
    # Minisockets (TIME_WAIT and FIN_WAIT2 substates) report idiag_timer 3 (inet_twsk_diag_fill).
    out["minisock"] = recs["timer"] == 3
    out["sport"] = recs["sport"]
    out["dport"] = recs["dport"]
    out["expires_ms"] = recs["expires"]
    out["uid"] = recs["uid"]
    out["inode"] = recs["inode"]
    # Addresses as byte columns: a (k, 16) uint8 copy per column is ~10x faster than V16
    # assignment. IPv4 rows get the IPv4-mapped prefix (::ffff:a.b.c.d) and their 4 bytes.
    o8 = out.view(np.uint8).reshape(k, SOCKET_DTYPE.itemsize)
    v4 = fam == AF_INET
    all_v4, no_v4 = bool(v4.all()), not v4.any()
    for col, src_at in (("src", 24), ("dst", 40)):
        at = _FIELD_OFFSET[col]
        if no_v4:
            o8[:, at : at + 16] = r8[:, src_at : src_at + 16]
        elif all_v4:
            o8[:, at : at + 10] = 0
            o8[:, at + 10 : at + 12] = 0xFF
            o8[:, at + 12 : at + 16] = r8[:, src_at : src_at + 4]
        else:
            o8[:, at : at + 16] = r8[:, src_at : src_at + 16]
            o8[v4, at : at + 10] = 0
            o8[v4, at + 10 : at + 12] = 0xFF
            o8[v4, at + 12 : at + 16] = r8[v4, src_at : src_at + 4]
    return out


def count_messages(data: bytes) -> int:
    """Socket records in a dump, by walking headers only (for tests and fixtures)."""
    offs = _message_offsets(bytes(data))
    if offs.size == 0:
        return 0
    n = len(data)
    words = np.frombuffer(bytes(data), dtype="=u4", count=(n - n % 4) // 4)
    return int(((words[(offs >> 2) + 1] & 0xFFFF) == SOCK_DIAG_BY_FAMILY).sum())
