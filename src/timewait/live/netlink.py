"""sock_diag (inet_diag) netlink: the request and the raw dump, with the standard library only.

Theory of operation
-------------------
`ss` and this module ask the kernel the same question: one NETLINK_SOCK_DIAG datagram holding a
`struct nlmsghdr` (type SOCK_DIAG_BY_FAMILY, flags NLM_F_REQUEST|NLM_F_DUMP) and a
`struct inet_diag_req_v2` (family, IPPROTO_TCP, idiag_ext, idiag_states) per address family.
The kernel walks its established and listening hashes once per request, filling the reply while
we sit in recv(); timewait.live.sockdiag decodes the bytes (with numpy).

Kept free of numpy on purpose: the doctor starts the dump on a thread while the main thread
imports numpy and the analysis (the dump of 200,000 sockets is ~0.17 s of kernel time, the
imports ~0.1 s of Python), and `dump_parallel()` runs the IPv4 and IPv6 requests on two
sockets at once -- the IPv6 walk of a table holding 200,000 IPv4 TIME_WAITs finds nothing but
still costs ~75 ms (measured on 6.18.44), so doing it beside the IPv4 walk hides it on a
machine with two cores.

Layouts: K include/uapi/linux/netlink.h, include/uapi/linux/inet_diag.h (see sockdiag.py).
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
import queue
import socket
import struct
import threading
from collections.abc import Callable
from typing import Final

from timewait.errors import TimewaitError

AF_INET: Final = int(socket.AF_INET)
AF_INET6: Final = int(socket.AF_INET6)

# include/uapi/linux/netlink.h, include/uapi/linux/sock_diag.h
NETLINK_SOCK_DIAG: Final = 4
SOCK_DIAG_BY_FAMILY: Final = 20
NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLM_F_REQUEST: Final = 0x01
NLM_F_MULTI: Final = 0x02
NLM_F_DUMP: Final = 0x300  # NLM_F_ROOT | NLM_F_MATCH
IPPROTO_TCP: Final = 6

NLMSG_HDRLEN: Final = 16
INET_DIAG_MSG_LEN: Final = 72
RECORD_LEN: Final = NLMSG_HDRLEN + INET_DIAG_MSG_LEN  # 88: a minisocket's whole message
REQUEST_LEN: Final = NLMSG_HDRLEN + 56

# Bits 1..13: every state of include/net/tcp_states.h, TCP_BOUND_INACTIVE (13) included.
ALL_STATES: Final = sum(1 << s for s in range(1, 14))
MAX_STATE: Final = 13

RECV_BUFSIZE: Final = 4 << 20  # receive block; datagrams are received back to back into it
# A dump datagram is at most SKB_WITH_OVERHEAD(32768) (K net/netlink/af_netlink.c
# netlink_recvmsg() caps max_recvmsg_len); 64 KiB of room per recv leaves a margin.
MAX_DATAGRAM: Final = 64 << 10
SO_RCVBUF_BYTES: Final = 4 << 20

_HDR: Final = struct.Struct("=IHHII")
_REQ: Final = struct.Struct("=BBBBI48s")


class SockDiagUnavailable(TimewaitError):
    """The kernel refused or cannot answer a sock_diag request (no inet_diag, seccomp, ...)."""


def encode_request(family: int, states: int = ALL_STATES, *, seq: int = 1, ext: int = 0) -> bytes:
    """One SOCK_DIAG_BY_FAMILY dump request for TCP sockets of `family` in the `states` mask."""
    body = _REQ.pack(family, IPPROTO_TCP, ext, 0, states & 0xFFFFFFFF, b"\0" * 48)
    return _HDR.pack(REQUEST_LEN, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


# include/uapi/linux/inet_diag.h: the original request (struct inet_diag_req), still served.
# Its dump asks for family AF_UNSPEC (K net/ipv4/inet_diag.c inet_diag_dump_compat()), so
# ONE walk of the kernel's tables returns IPv4 and IPv6 sockets alike.
TCPDIAG_GETSOCK: Final = 18
_REQ_COMPAT: Final = struct.Struct("=BBBB48sII")


def encode_one_walk_request(states: int = ALL_STATES, *, seq: int = 1) -> bytes:
    """One TCPDIAG_GETSOCK dump request: TCP sockets of both families in `states`."""
    body = _REQ_COMPAT.pack(0, 0, 0, 0, b"\0" * 48, states & 0xFFFFFFFF, 0)
    return (
        _HDR.pack(NLMSG_HDRLEN + len(body), TCPDIAG_GETSOCK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
        + body
    )


def dump_one_walk(sock: socket.socket, *, states: int = ALL_STATES) -> bytes:
    """IPv4 and IPv6 TCP sockets in one walk of the kernel's hash tables (TCPDIAG_GETSOCK).

    Every dump walks the whole established hash, which is global unless the namespace was
    made with its own (tcp_child_ehash_entries), and the bind hash for BOUND_INACTIVE: ~1 ms
    each on this 24 GiB machine whatever the namespace holds, so a namespace with 1,000
    sockets costs ~2.4 ms per family. One walk instead of two halves that for --all-netns,
    where the walk, not the sockets, is the cost. The replies carry type TCPDIAG_GETSOCK and
    the same struct inet_diag_msg; sockdiag.decode() reads both.
    """
    blocks = _Blocks()
    sock.send(encode_one_walk_request(states))
    _recv_until_done(sock, blocks, 1)
    return blocks.join()


def open_socket() -> socket.socket:
    """A NETLINK_SOCK_DIAG socket in the calling thread's network namespace.

    A netlink socket stays bound to the namespace it was created in, so `capture()` opens it
    inside the target namespace and may dump after returning to its own.
    """
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    except OSError as e:
        raise SockDiagUnavailable(
            f"cannot open a sock_diag netlink socket ({os.strerror(e.errno or 0)}): "
            "use --source proc"
        ) from None
    # More room for queued datagrams; not required, the dump is paced by our recv() calls.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SO_RCVBUF_BYTES)
    sock.bind((0, 0))
    return sock


def dump(
    sock: socket.socket | None = None,
    *,
    families: tuple[int, ...] = (AF_INET, AF_INET6),
    states: int = ALL_STATES,
) -> bytes:
    """Dump TCP sockets of `families` in `states`; returns the raw reply stream (for decode()).

    Each family's reply ends with its NLMSG_DONE; the bytes of all replies are concatenated.
    Raises SockDiagUnavailable if the kernel answers with an error (e.g. EAFNOSUPPORT when IPv6
    is disabled: that family is skipped instead).
    """
    own = sock is None
    s = open_socket() if sock is None else sock
    try:
        blocks = _Blocks()
        for seq, family in enumerate(families, start=1):
            s.send(encode_request(family, states, seq=seq))
            _recv_until_done(s, blocks, seq)
        return blocks.join()
    finally:
        if own:
            s.close()


class _Blocks:
    """Receive buffers: datagrams land back to back in 4 MiB blocks, joined once at the end
    (one copy of the dump instead of one per datagram)."""

    def __init__(self) -> None:
        self.blocks: list[bytearray] = []
        self.used: list[int] = []
        self._new()

    def _new(self) -> None:
        self.blocks.append(bytearray(RECV_BUFSIZE))
        self.used.append(0)

    def room(self) -> memoryview:
        if RECV_BUFSIZE - self.used[-1] < MAX_DATAGRAM:
            self._new()
        return memoryview(self.blocks[-1])[self.used[-1] :]

    def commit(self, n: int) -> None:
        self.used[-1] += n

    def rollback_to(self, block: int, used: int) -> None:
        del self.blocks[block + 1 :]
        del self.used[block + 1 :]
        self.used[block] = used

    def join(self) -> bytes:
        return b"".join(memoryview(b)[:u] for b, u in zip(self.blocks, self.used, strict=True))


def _recv_until_done(s: socket.socket, blocks: _Blocks, seq: int) -> None:
    """Append the datagrams of one dump up to NLMSG_DONE; nothing if the family is unsupported."""
    mark = (len(blocks.blocks) - 1, blocks.used[-1])
    while True:
        view = blocks.room()
        # MSG_TRUNC: netlink returns the datagram's real length even if it did not fit.
        n = s.recv_into(view, 0, socket.MSG_TRUNC)
        if n > len(view):
            raise SockDiagUnavailable(
                f"a sock_diag datagram of {n} bytes did not fit in {len(view)}: use --source proc"
            )
        if n < NLMSG_HDRLEN:
            raise SockDiagUnavailable(f"sock_diag answered with {n} bytes: use --source proc")
        _length, mtype, _flags, _seq, _pid = _HDR.unpack_from(view, 0)
        if mtype == NLMSG_ERROR:
            err = -struct.unpack_from("=i", view, NLMSG_HDRLEN)[0] if n >= 20 else 0
            if err in (_errno.EAFNOSUPPORT, _errno.ENOENT):
                blocks.rollback_to(*mark)
                return
            raise SockDiagUnavailable(
                f"the kernel refused the sock_diag dump ({os.strerror(err)}): "
                "is inet_diag/tcp_diag available? use --source proc"
            )
        blocks.commit(n)
        # The kernel appends NLMSG_DONE (len 20, NLM_F_MULTI, our seq) to the last datagram
        # when it fits, else sends it alone (K net/netlink/af_netlink.c netlink_dump()).
        if n >= 20:
            t_len, t_type, t_flags, t_seq, _ = _HDR.unpack_from(view, n - 20)
            if t_len == 20 and t_type == NLMSG_DONE and t_seq == seq and t_flags & NLM_F_MULTI:
                return


class _Helper:
    """One daemon thread, reused by every dump_parallel() call: a thread per call would give
    each dump's 4 MiB receive blocks a fresh glibc arena, and the exporter's memory grew 13 MB
    over three rounds of scrapes that way (tests/exporter/test_robustness.py)."""

    def __init__(self) -> None:
        self._reset()
        # A forked child has the object but not the thread (the lab forks into namespaces).
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def run(self, job: Callable[[], None]) -> threading.Event:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="timewait-dump",
                                                daemon=True)  # fmt: skip
                self._thread.start()
        done = threading.Event()
        self._jobs.put((job, done))
        return done

    def _loop(self) -> None:
        while True:
            job, done = self._jobs.get()
            try:
                job()
            finally:
                done.set()


_HELPER = _Helper()


def dump_parallel(socks: dict[int, socket.socket], *, states: int = ALL_STATES) -> bytes:
    """One dump per family at once, each on its own socket (opened in the target namespace):
    the other families' requests run on a helper thread while this one runs the first. Returns
    the replies concatenated in family order, as dump() does."""
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def one(family: int) -> None:
        try:
            results[family] = dump(socks[family], families=(family,), states=states)
        except BaseException as e:  # re-raised below, in the caller's thread
            errors.append(e)

    families = sorted(socks)
    pending = [_HELPER.run(lambda f=f: one(f)) for f in families[1:]]  # type: ignore[misc]
    one(families[0])
    for done in pending:
        done.wait()
    if errors:
        raise errors[0]
    return b"".join(results[f] for f in families)
