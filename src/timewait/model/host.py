"""Host: one network namespace's TCP tables, driven without I/O.

Theory of operation
-------------------
A Host owns what a Linux network namespace owns for TCP:

* the established hash `ehash` (K inet_hashtables.c): four-tuple -> full Connection *or*
  MiniSocket. One dict, as in the kernel, so four-tuple uniqueness across live connections and
  TIME_WAIT/FIN_WAIT2 minisockets is a property of the data structure, not of a check.
* the bind buckets (`PortTable`, model/ports.py): local port -> owners. Full sockets,
  listeners and minisockets all hold a bucket reference, which is why a TIME_WAIT keeps its local
  port "owned" (ref 1.2) and blocks server restarts (ref 8).
* listeners, accept queues and file descriptors (`Socket`), the per-netns KernelConfig, the
  kernel counters (model/counters.py) and a keyed-hash clock source (model/clock.py).

Applications drive it with socket calls (`socket`, `setsockopt`, `bind`, `listen`, `connect`,
`accept`, `send`, `recv`, `shutdown`, `close`); the wire drives it with `receive(segment, now)`;
time drives it with `on_timer(now)` at `next_deadline()`. Output is pulled with
`segments_to_send(now)`. Every entry point takes `now` (int ns); nothing reads a clock.

Demultiplexing follows `tcp_v4_rcv()`: established hash first (full socket or `do_time_wait`),
then listeners, else an RST (`tcp_v4_send_reset()`). The hand-off from a full socket to a
minisocket is `tcp_time_wait()` (K tcp_minisocks.c): the Connection raises `pending_minisock`,
the host checks `tcp_max_tw_buckets` (`inet_twsk_alloc()`), swaps the entry in the hash and moves
the bind-bucket reference (`inet_twsk_hashdance_schedule()`).

`connect()` picks the local port with `__inet_hash_connect()` (PortTable.connect_port) and takes
over a TIME_WAIT only through `tcp_twsk_unique()` (K tcp_ipv4.c), reproduced in `tw_unique()`.
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

from timewait.config import LINUX, KernelConfig, Profile
from timewait.errors import (
    AddressNotAvailable,
    BadDescriptor,
    InvalidArgument,
    NotConnected,
)
from timewait.model import counters as C
from timewait.model.clock import HostClocks
from timewait.model.connection import Connection
from timewait.model.counters import Counters
from timewait.model.events import Event
from timewait.model.minisock import MiniSocket, TwVerdict, arm_counter, tw_overflow
from timewait.model.ports import PortTable, parse_ip_local_port_range
from timewait.model.segment import FourTuple, Segment, reset_reply
from timewait.model.states import TcpState
from timewait.model.timerwheel import fires_at
from timewait.units import MS

# Memory estimates from slab object sizes measured on the reference machine (ref 9.1).
TW_SOCK_BYTES: Final = 256  # tw_sock_TCPv6 (tw_sock_TCP is 248)
FULL_SOCK_BYTES: Final = 2432  # TCP slab object, IPv4 (2304 B object, 2432 B per slab slot)
FD_OBJECT_BYTES: Final = 1216  # sock_inode_cache 832 + filp 192 + dentry 192, per open fd
# ISN offset for a connection that replaces a TIME_WAIT: tw_snd_nxt + 65535 + 2
# (tcp_twsk_unique() and tcp_timewait_state_process(); ref 1.5).
TW_ISN_GAP: Final = 65535 + 2

WILDCARD_V4: Final = "0.0.0.0"
WILDCARD_V6: Final = "::"


class SockOpt(Enum):
    """Socket options the model honours, with their kernel level/name."""

    SO_REUSEADDR = "SO_REUSEADDR"
    SO_REUSEPORT = "SO_REUSEPORT"
    SO_LINGER = "SO_LINGER"  # value: (onoff, linger_seconds)
    IP_BIND_ADDRESS_NO_PORT = "IP_BIND_ADDRESS_NO_PORT"  # SOL_IP 24, Linux 4.2
    IP_LOCAL_PORT_RANGE = "IP_LOCAL_PORT_RANGE"  # SOL_IP 51, Linux 6.3; u32 hi << 16 | lo
    TCP_LINGER2 = "TCP_LINGER2"  # seconds; < 0 resets an orphaned FIN_WAIT2 at once


@functools.lru_cache(maxsize=4096)
def is_loopback(addr: str) -> bool:
    """127/8, ::1 and ::ffff:127/104 (the addresses tcp_twsk_unique() treats as loopback)."""
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def wildcard_for(addr: str) -> str:
    return WILDCARD_V6 if ":" in addr else WILDCARD_V4


@dataclass(eq=False, init=False)
class Socket:
    """A file descriptor's socket. It is the bind-bucket owner for its port (ports.PortOwner).

    The __init__ is written out (not dataclass-generated) so that mypyc compiles it (setup.py).
    """

    fd: int
    uid: int
    reuseaddr: bool
    reuseport: bool
    linger_zero: bool
    bind_address_no_port: bool
    local_range: tuple[int, int] | None
    linger2: int | None  # ns
    bind_addr: str
    lport: int
    user_bound_port: bool  # SOCK_BINDPORT_LOCK: explicit bind(port != 0)
    listening: bool
    conn: Connection | None
    accept_queue: list[Socket]
    parent: Socket | None
    queued: bool  # an established child waiting in its listener's accept queue
    fd_open: bool
    port_held: bool

    def __init__(
        self,
        *,
        fd: int,
        uid: int = 0,
        reuseaddr: bool = False,
        reuseport: bool = False,
        bind_addr: str = WILDCARD_V4,
        lport: int = 0,
        parent: Socket | None = None,
        fd_open: bool = True,
    ) -> None:
        self.fd = fd
        self.uid = uid
        self.reuseaddr = reuseaddr
        self.reuseport = reuseport
        self.linger_zero = False
        self.bind_address_no_port = False
        self.local_range = None
        self.linger2 = None
        self.bind_addr = bind_addr
        self.lport = lport
        self.user_bound_port = False
        self.listening = False
        self.conn = None
        self.accept_queue = []
        self.parent = parent
        self.queued = False
        self.fd_open = fd_open
        self.port_held = False

    @property
    def is_listener(self) -> bool:
        return self.listening

    @property
    def is_timewait(self) -> bool:
        return False


def tw_unique(
    tw: MiniSocket, *, config: KernelConfig, now: int, autobind: bool
) -> tuple[int, int, int | None] | None:
    """`tcp_twsk_unique()` (K net/ipv4/tcp_ipv4.c): may connect() take over this minisocket?

    Returns (new write_seq, ts_recent, ts_recent_stamp) on takeover, None otherwise.
    * `autobind` (port being searched, twp != NULL): needs tcp_tw_reuse (1, or 2 with a loopback
      address), substate TIME_WAIT, timestamps seen, and now_ms > entry_stamp_ms + delay
      (time_after32, strict; tcp_tw_reuse_delay, ref 3).
    * explicitly bound socket (twp == NULL): timestamps seen is enough; the sysctl, the delay
      and the FIN_WAIT2 rule are not consulted (ref 3 last bullet, Lab E7).
    """
    if tw.ts_recent_stamp is None:  # tw_ts_recent_stamp == 0: no PAWS protection, never
        return None
    if autobind:
        reuse = config.tcp_tw_reuse
        if tw.substate is TcpState.FIN_WAIT_2:
            reuse = 0
        if reuse == 2 and not (is_loopback(tw.tuple.laddr) or is_loopback(tw.tuple.raddr)):
            reuse = 0
        if not reuse:
            return None
        if not now // MS > tw.entry_stamp // MS + config.tcp_tw_reuse_delay:
            return None
    seq = (tw.snd_nxt + TW_ISN_GAP) & 0xFFFFFFFF
    return (seq or 1, tw.ts_recent, tw.ts_recent_stamp)


class Host:
    """One network namespace. See the module docstring for the theory of operation."""

    def __init__(
        self,
        *,
        addrs: Sequence[str],
        rng: random.Random,
        config: KernelConfig | None = None,
        profile: Profile = LINUX,
        name: str = "host",
        trace: bool = False,
        timer_hz: int | None = None,
    ) -> None:
        self.name = name
        # None: minisockets die exactly at their deadline. An int (CONFIG_HZ, 250 on the
        # reference kernel) rounds their death up to the timer wheel's bucket, as the kernel does
        # (model/timerwheel.py): a TIME_WAIT then lives 60-62 s, as measured.
        self.timer_hz = timer_hz
        self._tw_armed: dict[FourTuple, tuple[int, int]] = {}  # deadline -> wheel fire time
        # (now, four-tuple, old, new) for every state change, when tracing (ladder diagrams).
        self.state_log: list[tuple[int, FourTuple, TcpState, TcpState]] | None = (
            [] if trace else None
        )
        self._hist_seen: dict[FourTuple, int] = {}
        self.addrs: tuple[str, ...] = tuple(dict.fromkeys([*addrs, "127.0.0.1", "::1"]))
        self.config = config or KernelConfig()
        self.profile = profile
        self.rng = rng
        self.clocks = HostClocks.from_rng(rng)
        self.ports = PortTable()
        self.ehash: dict[FourTuple, Connection | MiniSocket] = {}
        self.counters = Counters()
        self._sockets: dict[int, Socket] = {}
        self._owner: dict[FourTuple, Socket] = {}  # full connection -> its Socket
        self._next_fd = 3
        self._out: list[Segment] = []
        self._timers: list[tuple[int, int, FourTuple]] = []
        self._scheduled: dict[FourTuple, int] = {}
        self._seq = 0
        self._tw_count = 0
        self._syn_takeover: dict[FourTuple, tuple[int, int, int | None]] = {}

    # -- socket calls ------------------------------------------------------------------------

    def socket(self, *, uid: int = 0) -> int:
        """A new TCP socket; returns its descriptor."""
        fd = self._next_fd
        self._next_fd += 1
        self._sockets[fd] = Socket(fd=fd, uid=uid)
        return fd

    def setsockopt(self, fd: int, opt: SockOpt, value: object) -> None:
        """Set an option before bind/connect/close as an application would."""
        s = self._sock(fd)
        if opt is SockOpt.SO_REUSEADDR:
            s.reuseaddr = bool(value)
        elif opt is SockOpt.SO_REUSEPORT:
            s.reuseport = bool(value)
        elif opt is SockOpt.SO_LINGER:
            if not (isinstance(value, tuple) and len(value) == 2):
                raise InvalidArgument("SO_LINGER takes (onoff, seconds)")
            onoff, linger = value
            s.linger_zero = bool(onoff) and int(linger) == 0
        elif opt is SockOpt.IP_BIND_ADDRESS_NO_PORT:
            s.bind_address_no_port = bool(value)
        elif opt is SockOpt.IP_LOCAL_PORT_RANGE:
            s.local_range = parse_ip_local_port_range(int(value))  # type: ignore[call-overload]
        elif opt is SockOpt.TCP_LINGER2:
            secs = int(value)  # type: ignore[call-overload]
            # K tcp.c do_tcp_setsockopt(): capped at TCP_FIN_TIMEOUT_MAX (120 s); < 0 kept.
            s.linger2 = None if secs == 0 else min(secs, 120) * 1000 * MS
        if s.conn is not None:
            s.conn.linger_zero = s.linger_zero
            s.conn.linger2 = s.linger2

    def bind(self, fd: int, addr: str, port: int, now: int) -> int:
        """bind(2). Port 0 picks one (odd first) unless IP_BIND_ADDRESS_NO_PORT defers it.

        Raises AddressInUse (conflict, or no free port for port 0), InvalidArgument (bound twice).
        """
        s = self._sock(fd)
        if s.lport or s.conn is not None or s.listening:
            raise InvalidArgument(f"fd {fd} is already bound")
        if addr not in (WILDCARD_V4, WILDCARD_V6) and addr not in self.addrs:
            raise AddressNotAvailable(f"{addr} is not an address of {self.name}")
        s.bind_addr = addr
        if port == 0 and s.bind_address_no_port:
            return 0  # K af_inet.c __inet_bind(): address only, port chosen at connect()
        s.lport = self.ports.bind(
            s, addr, port, now=now, config=self.config, rng=self.rng, local_range=s.local_range
        )
        s.port_held = True
        s.user_bound_port = port != 0
        return s.lport

    def listen(self, fd: int, now: int) -> None:
        """listen(2): an unbound socket autobinds like bind(port 0)."""
        s = self._sock(fd)
        if not s.lport:
            self.bind(fd, s.bind_addr, 0, now)
        s.listening = True
        try:
            self.ports.listen(s, s.lport)  # inet_csk_listen_start() re-checks conflicts
        except Exception:
            s.listening = False
            raise

    def connect(self, fd: int, addr: str, port: int, now: int) -> None:
        """connect(2), non-blocking: picks the local port, queues the SYN.

        Raises AddressNotAvailable when no local port gives a unique four-tuple (EADDRNOTAVAIL),
        or when an explicitly bound four-tuple is taken.
        """
        s = self._sock(fd)
        if s.conn is not None or s.listening:
            raise InvalidArgument(f"fd {fd} is already connected or listening")
        laddr = s.bind_addr
        if laddr in (WILDCARD_V4, WILDCARD_V6):
            laddr = self._source_address(addr)
        takeover: tuple[int, int, int | None] | None = None
        if s.lport:
            # __inet_hash_connect() with a bound port: only the four-tuple check (twp == NULL).
            ft = FourTuple(laddr, s.lport, addr, port)
            ok, takeover = self._check_established(ft, now, autobind=False)
            if not ok:
                raise AddressNotAvailable(f"four-tuple {ft} is in use (bound port {s.lport})")
        else:
            found: dict[str, tuple[int, int, int | None] | None] = {}

            def check(p: int) -> bool:
                ok, tk = self._check_established(FourTuple(laddr, p, addr, port), now, True)
                if ok:
                    found["takeover"] = tk
                return ok

            s.lport = self.ports.connect_port(
                s,
                laddr,
                addr,
                port,
                now=now,
                config=self.config,
                port_offset=self.clocks.port_offset(laddr, addr, port, now),
                rng=self.rng,
                check=check,
                local_range=s.local_range,
            )
            s.port_held = True
            takeover = found.get("takeover")
            ft = FourTuple(laddr, s.lport, addr, port)
        s.bind_addr = laddr
        iss, ts_off = self.clocks.isn_and_ts_offset(ft, now, self.config.tcp_timestamps)
        if takeover:
            iss = takeover[0]  # tcp_twsk_unique(): tw_snd_nxt + 65537, not the keyed ISN
        conn = Connection(
            tuple=ft,
            config=self.config,
            profile=self.profile,
            iss=iss,
            ts_offset=ts_off,
            ts_recent=takeover[1] if takeover else None,
            ts_recent_stamp=takeover[2] if takeover else None,
            name=f"{self.name}:{fd}",
            counters=self.counters,
        )
        self._adopt(conn, s)
        conn.connect(now)
        self._after(conn, now)

    def accept(self, fd: int) -> int | None:
        """accept(2): the next established child, or None if the queue is empty."""
        s = self._sock(fd)
        if not s.listening:
            raise InvalidArgument(f"fd {fd} is not listening")
        if not s.accept_queue:
            return None
        child = s.accept_queue.pop(0)
        fd2 = self._next_fd
        self._next_fd += 1
        child.fd = fd2
        child.fd_open = True
        self._sockets[fd2] = child
        return fd2

    def send(self, fd: int, data: bytes, now: int) -> None:
        """write(2)."""
        conn = self._conn(fd)
        conn.send(data, now)
        self._after(conn, now)

    def recv(self, fd: int) -> bytes:
        """read(2) of everything delivered so far (b"" when nothing)."""
        s = self._sock(fd)
        return s.conn.read() if s.conn is not None else b""

    def events(self, fd: int) -> list[Event]:
        """Drain the connection events (Connected, DataReceived, PeerClosed, ...) of a socket."""
        s = self._sock(fd)
        out: list[Event] = []
        if s.conn is not None:
            while (ev := s.conn.next_event()) is not None:
                out.append(ev)
        return out

    def state(self, fd: int) -> TcpState:
        """The TCP state behind a descriptor (CLOSED once the connection left the table)."""
        s = self._sock(fd)
        if s.listening:
            return TcpState.LISTEN
        if s.conn is None or s.conn.tuple not in self.ehash:
            return s.conn.state if s.conn is not None else TcpState.CLOSED
        return s.conn.state

    def shutdown(self, fd: int, now: int) -> None:
        """shutdown(SHUT_WR): FIN without orphaning (FIN_WAIT_2 then has no timeout, ref 2.2)."""
        conn = self._conn(fd)
        conn.shutdown_write(now)
        self._after(conn, now)

    def close(self, fd: int, now: int) -> None:
        """close(2). A connection lives on as an orphan (FIN_WAIT_1, LAST_ACK, ...)."""
        s = self._sock(fd)
        del self._sockets[fd]
        s.fd_open = False
        if s.listening:
            s.listening = False
            for child in s.accept_queue:  # K inet_csk_listen_stop(): children are aborted
                if child.conn is not None:
                    child.conn.abort(now)
                    self._after(child.conn, now)
            s.accept_queue.clear()
            self._release_port(s)
            return
        if s.conn is None:
            self._release_port(s)
            return
        conn = s.conn
        if conn.tuple in self.ehash and self.ehash[conn.tuple] is conn:
            conn.linger_zero = s.linger_zero
            conn.linger2 = s.linger2
            conn.close(now)
            self._after(conn, now)
        else:
            self._release_port(s)

    # -- the wire ----------------------------------------------------------------------------

    def owns(self, addr: str) -> bool:
        return addr in self.addrs

    def receive(self, seg: Segment, now: int) -> None:
        """A segment arrives from the wire (tcp_v4_rcv())."""
        self.counters[C.IN_SEGS] += 1
        ft = seg.receiver_tuple
        sk = self.ehash.get(ft)
        if isinstance(sk, Connection):
            sk.receive(seg, now)
            self._after(sk, now)
            return
        if isinstance(sk, MiniSocket):
            self._do_time_wait(sk, seg, now)
            return
        listener = self._listener(ft.laddr, ft.lport)
        if listener is not None and seg.syn and not seg.has_ack and not seg.rst:
            self._passive_open(listener, seg, now)
            return
        self._send_reset(seg)

    def segments_to_send(self, now: int) -> list[Segment]:
        """Everything queued for the wire since the last call, in order."""
        out, self._out = self._out, []
        self.counters[C.OUT_SEGS] += len(out)
        return out

    def next_deadline(self) -> int | None:
        """Earliest timer (ns); calling on_timer earlier is harmless."""
        timers = self._timers
        scheduled = self._scheduled
        while timers:
            deadline, _, ft = timers[0]
            if scheduled.get(ft) == deadline:
                return deadline
            # Superseded (re-armed, stopped, or its socket is gone): drop it now, so a driver
            # is not woken for a timer that no longer exists.
            heapq.heappop(timers)
        return None

    def on_timer(self, now: int) -> None:
        """Run every timer due at `now`: retransmissions, FIN_WAIT2 and TIME_WAIT expiry."""
        while self._timers and self._timers[0][0] <= now:
            deadline, _, ft = heapq.heappop(self._timers)
            if self._scheduled.get(ft) != deadline:
                continue  # superseded by a later reschedule
            del self._scheduled[ft]
            sk = self.ehash.get(ft)
            if isinstance(sk, Connection):
                sk.on_timer(now)
                self._after(sk, now)
            elif isinstance(sk, MiniSocket):
                if sk.expires <= now:
                    self._kill_tw(sk, now)  # tw_timer_handler(): nothing is sent on expiry
                else:
                    self._schedule(ft, self._tw_fires(sk, now))

    # -- tables, for snapshots and tests -----------------------------------------------------

    def connections(self) -> Iterator[Connection]:
        return (sk for sk in self.ehash.values() if isinstance(sk, Connection))

    def minisockets(self) -> Iterator[MiniSocket]:
        return (sk for sk in self.ehash.values() if isinstance(sk, MiniSocket))

    def listeners(self) -> list[Socket]:
        return [s for s in self._sockets.values() if s.listening]

    @property
    def tw_count(self) -> int:
        """Minisockets of both substates: sockstat "tw" (ref 9.2)."""
        return self._tw_count

    def count_state(self, state: TcpState) -> int:
        """Sockets in `state`; for minisockets the substate (what ss and sock_diag report)."""
        n = 0
        for sk in self.ehash.values():
            st = sk.substate if isinstance(sk, MiniSocket) else sk.state
            n += st is state
        return n

    def memory_bytes(self) -> dict[str, int]:
        """Kernel memory estimate from slab sizes (ref 9.1): ~256 B per minisocket, ~2.4 KB per
        full socket plus ~1.2 KB for its file objects while a descriptor is open."""
        full = sum(1 for _ in self.connections())
        fds = sum(1 for s in self._sockets.values() if s.fd_open)
        tw = self._tw_count
        return {
            "minisockets": tw * TW_SOCK_BYTES,
            "full_sockets": full * FULL_SOCK_BYTES,
            "file_objects": fds * FD_OBJECT_BYTES,
            "total": tw * TW_SOCK_BYTES + full * FULL_SOCK_BYTES + fds * FD_OBJECT_BYTES,
        }

    # -- internals ---------------------------------------------------------------------------

    def _sock(self, fd: int) -> Socket:
        try:
            return self._sockets[fd]
        except KeyError:
            raise BadDescriptor(f"fd {fd} is not an open socket of {self.name}") from None

    def _conn(self, fd: int) -> Connection:
        s = self._sock(fd)
        if s.conn is None:
            raise NotConnected(f"fd {fd} is not connected")
        return s.conn

    def _source_address(self, raddr: str) -> str:
        """Route lookup, reduced: loopback for loopback peers, our own address for ourselves,
        else the first non-loopback address of the right family."""
        v6 = ":" in raddr
        if raddr in self.addrs:
            return raddr
        if is_loopback(raddr):
            return "::1" if v6 else "127.0.0.1"
        for a in self.addrs:
            if (":" in a) == v6 and not is_loopback(a):
                return a
        raise AddressNotAvailable(f"{self.name} has no address to reach {raddr}")

    def _listener(self, laddr: str, lport: int) -> Socket | None:
        best: Socket | None = None
        for s in self._sockets.values():
            if s.listening and s.lport == lport:
                if s.bind_addr == laddr:
                    return s  # exact address beats wildcard (inet_lhash2 scoring)
                if s.bind_addr == wildcard_for(laddr):
                    best = s
        return best

    def _check_established(
        self, ft: FourTuple, now: int, autobind: bool
    ) -> tuple[bool, tuple[int, int, int | None] | None]:
        """`__inet_check_established()`: is the four-tuple free, or a TIME_WAIT we may take?"""
        sk = self.ehash.get(ft)
        if sk is None:
            return True, None
        if isinstance(sk, MiniSocket):
            tk = tw_unique(sk, config=self.config, now=now, autobind=autobind)
            if tk is not None:
                self.counters[C.TW_RECYCLED] += 1
                self._kill_tw(sk, now)
                return True, tk
        return False, None

    def _adopt(self, conn: Connection, s: Socket) -> None:
        conn.linger_zero = s.linger_zero
        conn.linger2 = s.linger2
        s.conn = conn
        self._hist_seen[conn.tuple] = 0
        self.ehash[conn.tuple] = conn
        self._owner[conn.tuple] = s

    def _passive_open(
        self, listener: Socket, syn: Segment, now: int, isn: int | None = None
    ) -> None:
        ft = syn.receiver_tuple
        child = Socket(
            fd=-1,
            uid=listener.uid,
            # ref 8: accepted sockets inherit SO_REUSEADDR/SO_REUSEPORT from their listener.
            reuseaddr=listener.reuseaddr,
            reuseport=listener.reuseport,
            bind_addr=ft.laddr,
            lport=ft.lport,
            parent=listener,
            fd_open=False,
        )
        iss, ts_off = self.clocks.isn_and_ts_offset(ft, now, self.config.tcp_timestamps)
        conn = Connection.accept_syn(
            syn,
            config=self.config,
            profile=self.profile,
            iss=isn if isn is not None else iss,
            ts_offset=ts_off,
            now=now,
            counters=self.counters,
        )
        child.conn = conn
        self._hist_seen[ft] = 0
        self.ehash[ft] = conn
        self._owner[ft] = child
        # __inet_inherit_port(): the child joins the listener's bind bucket.
        self.ports.inherit(listener, child)
        child.port_held = True
        self._after(conn, now)

    def _do_time_wait(self, tw: MiniSocket, seg: Segment, now: int) -> None:
        """tcp_v4_rcv() label do_time_wait."""
        before = tw.substate
        res = tw.process(seg, now, self.config, self.profile, self.counters)
        if self.state_log is not None and tw.substate is not before:
            # FIN on a FIN_WAIT2 minisocket: substate becomes TIME_WAIT (ref 1.4).
            self.state_log.append((now, tw.tuple, before, tw.substate))
        if res.verdict is TwVerdict.SYN:
            listener = self._listener(tw.tuple.laddr, tw.tuple.lport)
            if listener is not None and res.isn is not None:
                self._kill_tw(tw, now)
                self._passive_open(listener, seg, now, isn=res.isn)
                return
            self._out.append(tw.ack_for(now))
        elif res.reply is not None:
            self._out.append(res.reply)
            if res.reply.rst:
                self.counters[C.OUT_RSTS] += 1
        if res.killed and self.ehash.get(tw.tuple) is tw:
            self._kill_tw(tw, now)
        elif self.ehash.get(tw.tuple) is tw:
            self._schedule(tw.tuple, self._tw_fires(tw, now))

    def _send_reset(self, seg: Segment) -> None:
        """tcp_v4_send_reset() for a segment no socket wants; never answers an RST."""
        if seg.rst:
            return
        self.counters[C.OUT_RSTS] += 1
        self._out.append(reset_reply(seg))

    def _after(self, conn: Connection, now: int) -> None:
        """Collect output and apply the table changes a connection asked for."""
        self._out.extend(conn.segments_to_send(now))
        ft = conn.tuple
        if self.state_log is not None:
            seen = self._hist_seen.get(ft, 0)
            for when, old, new in conn.history[seen:]:
                self.state_log.append((when, ft, old, new))
            self._hist_seen[ft] = len(conn.history)
        if self.ehash.get(ft) is not conn:
            return
        owner = self._owner.get(ft)
        if (
            owner is not None
            and owner.parent is not None
            and not owner.queued
            and conn.state is TcpState.ESTABLISHED
            and owner.parent.listening
        ):
            owner.parent.accept_queue.append(owner)
            owner.queued = True  # accept() gives it a descriptor
        if conn.pending_minisock is not None:
            substate, timeout = conn.pending_minisock
            self._time_wait(conn, substate, timeout, now)
            return
        if conn.state is TcpState.CLOSED:
            self._unhash(conn)
            return
        deadline = conn.next_deadline()
        if deadline is not None:
            self._schedule(ft, deadline)
        else:
            self._scheduled.pop(ft, None)  # every timer stopped (e.g. all data acknowledged)

    def _time_wait(self, conn: Connection, substate: TcpState, timeout: int, now: int) -> None:
        """tcp_time_wait(): replace the full socket by a minisocket, or skip the wait."""
        ft = conn.tuple
        owner = self._owner.pop(ft)
        del self.ehash[ft]
        self._hist_seen.pop(ft, None)
        if tw_overflow(self._tw_count, self.config):
            # inet_twsk_alloc() returned NULL: no wait at all, the tuple is free (ref 5).
            self.counters[C.TIME_WAIT_OVERFLOW] += 1
            self._release_port(owner)
            return
        tw = MiniSocket.create(
            tuple=ft,
            substate=substate,
            timeout=timeout,
            now=now,
            rcv_nxt=conn.rcv_nxt,
            snd_nxt=conn.snd_nxt,
            rcv_wnd=conn.rcv_wnd,
            ts_recent=conn.ts_recent or 0,
            ts_recent_stamp=conn.ts_recent_stamp,
            ts_offset=conn.ts_offset,
            reuse=owner.reuseaddr,  # inet_twsk_alloc(): tw_reuse/tw_reuseport copied
            reuseport=owner.reuseport,
            uid=owner.uid,
        )
        self.counters[arm_counter(timeout)] += 1
        self.ehash[ft] = tw
        self._tw_count += 1
        if owner.port_held:
            self.ports.transfer(owner, tw, ft.lport)
            owner.port_held = False
        self._schedule(ft, self._tw_fires(tw, now))

    def _tw_fires(self, tw: MiniSocket, now: int) -> int:
        """When the minisocket's timer fires. A deadline that did not move keeps the bucket it
        was filed in when armed (mod_timer() is only called on a restart)."""
        if self.timer_hz is None:
            return tw.expires
        armed = self._tw_armed.get(tw.tuple)
        if armed is not None and armed[0] == tw.expires:
            return armed[1]
        fire = fires_at(now, tw.expires, self.timer_hz)
        self._tw_armed[tw.tuple] = (tw.expires, fire)
        return fire

    def _kill_tw(self, tw: MiniSocket, now: int) -> None:
        """inet_twsk_kill(): unhash and drop the bind-bucket reference."""
        if self.state_log is not None:
            self.state_log.append((now, tw.tuple, tw.substate, TcpState.CLOSED))
        if self.ehash.get(tw.tuple) is tw:
            del self.ehash[tw.tuple]
            self._scheduled.pop(tw.tuple, None)
            self._tw_armed.pop(tw.tuple, None)
            self._tw_count -= 1
            self.ports.release(tw, tw.tuple.lport)

    def _unhash(self, conn: Connection) -> None:
        ft = conn.tuple
        del self.ehash[ft]
        self._scheduled.pop(ft, None)
        self._hist_seen.pop(ft, None)
        owner = self._owner.pop(ft, None)
        if owner is None:
            return
        # tcp_set_state(TCP_CLOSE) -> inet_put_port() unless the user bound the port
        # (SOCK_BINDPORT_LOCK); then close() releases it.
        if not owner.user_bound_port or not owner.fd_open:
            self._release_port(owner)
        if owner.parent is not None and owner in owner.parent.accept_queue:
            owner.parent.accept_queue.remove(owner)

    def _release_port(self, s: Socket) -> None:
        if s.port_held:
            self.ports.release(s, s.lport)
            s.port_held = False

    def _schedule(self, ft: FourTuple, deadline: int) -> None:
        if self._scheduled.get(ft) == deadline:
            return
        self._scheduled[ft] = deadline
        self._seq += 1
        heapq.heappush(self._timers, (deadline, self._seq, ft))
