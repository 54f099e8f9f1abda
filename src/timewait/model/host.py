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

Sockets never touch these tables themselves: every call into a Connection or a MiniSocket
returns an `Outcome` (model/outcome.py), and `_apply()` is the one place that carries it out --
queue its segments, record its state changes (the trace, `state_log`), perform its table
operation (hand-off to a minisocket, unhash, kill) and schedule its next deadline.

Demultiplexing follows `tcp_v4_rcv()`: established hash first (full socket, or
`tcp_timewait_state_process()` for a minisocket), then listeners, else an RST
(`tcp_v4_send_reset()`). A minisocket that accepts a new SYN (TCP_TW_SYN) sends it down the same
listener path with a forced ISN, or, without a listener, answers with its ACK. The hand-off from
a full socket to a minisocket is `tcp_time_wait()` (K tcp_minisocks.c): the host checks
`tcp_max_tw_buckets` (`inet_twsk_alloc()`), swaps the entry in the hash and moves the
bind-bucket reference (`inet_twsk_hashdance_schedule()`).

`connect()` picks the local port with `__inet_hash_connect()` (PortTable.connect_port), whose
four-tuple check only asks; a TIME_WAIT that `tcp_twsk_unique()` (minisock.tw_unique) lets it
take over is killed once the port is chosen, as the kernel does after hashing.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

from timewait.config import LINUX, TCP_FIN_TIMEOUT_MAX, KernelConfig, Profile
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
from timewait.model.minisock import MiniSocket, arm_counter, tw_overflow, tw_unique
from timewait.model.outcome import KILL, UNHASH, HandOff, Outcome, Reopen, StateChange
from timewait.model.ports import PortTable, parse_ip_local_port_range
from timewait.model.segment import (
    WILDCARD_V4,
    WILDCARD_V6,
    FourTuple,
    Segment,
    is_loopback,
    reset_reply,
    wildcard_for,
)
from timewait.model.states import FD_OBJECT_BYTES, FULL_SOCK_BYTES, TW_SOCK_BYTES, TcpState
from timewait.model.timerwheel import fires_at
from timewait.units import SEC

ESTABLISHED: Final = TcpState.ESTABLISHED
SYN_RECEIVED: Final = TcpState.SYN_RECEIVED
# net.core.somaxconn default (Linux 5.4+): the cap of every listen() backlog.
SOMAXCONN: Final = 4096


class SockOpt(Enum):
    """Socket options the model honours, with their kernel level/name."""

    SO_REUSEADDR = "SO_REUSEADDR"
    SO_REUSEPORT = "SO_REUSEPORT"
    SO_LINGER = "SO_LINGER"  # value: (onoff, linger_seconds)
    IP_BIND_ADDRESS_NO_PORT = "IP_BIND_ADDRESS_NO_PORT"  # SOL_IP 24, Linux 4.2
    IP_LOCAL_PORT_RANGE = "IP_LOCAL_PORT_RANGE"  # SOL_IP 51, Linux 6.3; u32 hi << 16 | lo
    TCP_LINGER2 = "TCP_LINGER2"  # seconds; < 0 resets an orphaned FIN_WAIT2 at once


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
    backlog: int  # listen(2) backlog (sk_max_ack_backlog)
    requests: int  # passive children still in SYN_RECV: Linux's request queue length
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
        self.backlog = 0
        self.requests = 0
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
        # Every state change of every socket, in order, when tracing (ladder diagrams): the
        # StateChange records of the outcomes `_apply()` carried out.
        self.state_log: list[StateChange] | None = [] if trace else None
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
            s.linger2 = None if secs == 0 else min(secs * SEC, TCP_FIN_TIMEOUT_MAX)
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

    def listen(self, fd: int, now: int, backlog: int = SOMAXCONN) -> None:
        """listen(2): an unbound socket autobinds like bind(port 0). `backlog` is capped at
        net.core.somaxconn (4096) as the kernel does."""
        s = self._sock(fd)
        s.backlog = min(max(backlog, 0), SOMAXCONN)
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
        if s.lport:
            # __inet_hash_connect() with a bound port: only the four-tuple check (twp == NULL).
            ft = FourTuple(laddr, s.lport, addr, port)
            autobind = False
            if not self._four_tuple_free(ft, now, autobind=False):
                raise AddressNotAvailable(f"four-tuple {ft} is in use (bound port {s.lport})")
        else:
            s.lport = self.ports.connect_port(
                s,
                laddr,
                addr,
                port,
                now=now,
                config=self.config,
                port_offset=self.clocks.port_offset(laddr, addr, port, now),
                rng=self.rng,
                check=lambda p: self._four_tuple_free(FourTuple(laddr, p, addr, port), now, True),
                local_range=s.local_range,
            )
            s.port_held = True
            ft = FourTuple(laddr, s.lport, addr, port)
            autobind = True
        s.bind_addr = laddr
        iss, ts_off = self.clocks.isn_and_ts_offset(ft, now, self.config.tcp_timestamps)
        ts_recent: int | None = None
        ts_recent_stamp: int | None = None
        tw = self.ehash.get(ft)
        if isinstance(tw, MiniSocket):
            # The TIME_WAIT the check accepted: tcp_twsk_unique() hands its sequence space and
            # timestamps to the new connection (ISN tw_snd_nxt + 65537, not the keyed one), and
            # __inet_hash_connect() kills it once the new socket is hashed (TWRecycled).
            takeover = tw_unique(tw, config=self.config, now=now, autobind=autobind)
            assert takeover is not None
            iss, ts_recent, ts_recent_stamp = takeover
            self.counters[C.TW_RECYCLED] += 1
            self._apply(tw, tw.kill(now), now)
        conn = Connection(
            tuple=ft,
            config=self.config,
            profile=self.profile,
            iss=iss,
            ts_offset=ts_off,
            ts_recent=ts_recent,
            ts_recent_stamp=ts_recent_stamp,
            name=f"{self.name}:{fd}",
            counters=self.counters,
        )
        self._adopt(conn, s)
        self._apply(conn, conn.connect(now), now)

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
        self._apply(conn, conn.send(data, now), now)

    def recv(self, fd: int, now: int | None = None) -> bytes:
        """read(2) of everything delivered so far (b"" when nothing). With `now`, the read may
        send the ACK it makes due (K tcp_cleanup_rbuf(): Connection.read_done())."""
        s = self._sock(fd)
        conn = s.conn
        if conn is None:
            return b""
        data = conn.read()
        if now is not None and data and self.ehash.get(conn.tuple) is conn:
            self._apply(conn, conn.read_done(len(data), now), now)
        return data

    def events(self, fd: int) -> list[Event]:
        """Drain the connection events (Connected, DataReceived, PeerClosed, ...) of a socket."""
        s = self._sock(fd)
        out: list[Event] = []
        if s.conn is not None:
            while (ev := s.conn.next_event()) is not None:
                out.append(ev)
        return out

    def state(self, fd: int) -> TcpState:
        """The TCP state behind a descriptor: CLOSED once the connection left the table, also
        when a minisocket replaced it (tcp_time_wait() ends in tcp_done() for the full socket)."""
        s = self._sock(fd)
        if s.listening:
            return TcpState.LISTEN
        conn = s.conn
        if conn is None or self.ehash.get(conn.tuple) is not conn:
            return TcpState.CLOSED
        return conn.state

    def shutdown(self, fd: int, now: int, *, read: bool = False, write: bool = True) -> None:
        """shutdown(2): SHUT_WR (the default) sends a FIN without orphaning (FIN_WAIT_2 then has
        no timeout, ref 2.2); SHUT_RD sends nothing (`read=True, write=False`)."""
        conn = self._conn(fd)
        if self.state(fd) is TcpState.CLOSED:
            # K af_inet.c inet_shutdown(): "case TCP_CLOSE: err = -ENOTCONN" (reset, timed out,
            # or replaced by a TIME_WAIT minisocket).
            raise NotConnected(f"fd {fd} is not connected")
        if read:
            conn.shutdown_read()
        if write:
            self._apply(conn, conn.shutdown_write(now), now)

    def close(self, fd: int, now: int) -> None:
        """close(2). A connection lives on as an orphan (FIN_WAIT_1, LAST_ACK, ...)."""
        s = self._sock(fd)
        del self._sockets[fd]
        s.fd_open = False
        if s.listening:
            s.listening = False
            for child in list(s.accept_queue):  # K inet_csk_listen_stop(): children aborted
                if child.conn is not None:
                    self._apply(child.conn, child.conn.abort(now), now)
            s.accept_queue.clear()
            self._release_port(s)
            return
        if s.conn is None:
            self._release_port(s)
            return
        conn = s.conn
        if self.ehash.get(conn.tuple) is conn:
            conn.linger_zero = s.linger_zero
            conn.linger2 = s.linger2
            self._apply(conn, conn.close(now), now)
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
            if sk.state is SYN_RECEIVED:
                owner = self._owner.get(ft)
                parent = owner.parent if owner is not None else None
                if parent is not None:
                    # tcp_check_req() creates the child only if the accept queue has room;
                    # else the final ACK is dropped and the SYN-ACK timer goes on.
                    sk.accept_full = len(parent.accept_queue) > parent.backlog
            self._apply(sk, sk.receive(seg, now), now)
            return
        if sk is None:
            listener = self._listener(ft.laddr, ft.lport)
            if listener is not None:
                self._listen_rcv(listener, seg, now, None)
            else:
                self._send_reset(seg)
            return
        res = sk.process(seg, now, self.config, self.profile, self.counters)
        reopen = res.op
        if not isinstance(reopen, Reopen):
            self._apply(sk, res, now)
            return
        # TCP_TW_SYN: a listener takes the SYN with the forced ISN; none -> the minisocket ACKs.
        listener = self._listener(ft.laddr, ft.lport)
        if listener is not None:
            self._apply(sk, sk.kill(now), now)  # inet_twsk_deschedule_put(); goto process
            self._listen_rcv(listener, seg, now, reopen.isn)
        else:
            self._apply(sk, sk.timewait_ack(now), now)  # "fall through to ACK"

    def _listen_rcv(self, listener: Socket, seg: Segment, now: int, isn: int | None) -> None:
        """A segment for a listener (K tcp_rcv_state_process() case TCP_LISTEN): an ACK is
        answered with a RST, an RST dropped, a SYN (without FIN) may open a connection
        (tcp_conn_request()), anything else is dropped."""
        if seg.has_ack:
            self._send_reset(seg)
            return
        if seg.rst or not seg.syn or seg.fin:
            return
        # tcp_conn_request(): a full request queue means SYN cookies in Linux (tcp_syncookies
        # 1); the model has none and drops the SYN, as tcp_syncookies=0 does. A reopened
        # TIME_WAIT skips that test ("peer is evidently real"), not the accept queue's.
        if isn is None and listener.requests > listener.backlog:
            self.counters[C.LISTEN_DROPS] += 1
            return
        if len(listener.accept_queue) > listener.backlog:  # sk_acceptq_is_full()
            self.counters[C.LISTEN_OVERFLOWS] += 1
            self.counters[C.LISTEN_DROPS] += 1
            return
        self._passive_open(listener, seg, now, isn)

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
            if sk is not None:
                self._apply(sk, sk.on_timer(now), now)

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
        """Kernel memory estimate from slab sizes (ref 9.1, model/states.py): ~256 B per
        minisocket, ~2.4 KB per full socket plus ~1.2 KB for its file objects while a descriptor
        is open."""
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

    def _four_tuple_free(self, ft: FourTuple, now: int, autobind: bool) -> bool:
        """`__inet_check_established()`: is the four-tuple free, or a TIME_WAIT that
        tcp_twsk_unique() lets connect() take over? Asks only; `connect()` does the takeover."""
        sk = self.ehash.get(ft)
        if sk is None:
            return True
        return (
            isinstance(sk, MiniSocket)
            and tw_unique(sk, config=self.config, now=now, autobind=autobind) is not None
        )

    def _adopt(self, conn: Connection, s: Socket) -> None:
        conn.linger_zero = s.linger_zero
        conn.linger2 = s.linger2
        s.conn = conn
        self.ehash[conn.tuple] = conn
        self._owner[conn.tuple] = s

    def _passive_open(self, listener: Socket, syn: Segment, now: int, isn: int | None) -> None:
        """A listener takes a SYN: a child socket in its bind bucket and a Connection in
        SYN_RECEIVED. `isn` is forced when the SYN reopened a TIME_WAIT's four-tuple."""
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
        conn = Connection(
            tuple=ft,
            config=self.config,
            profile=self.profile,
            iss=isn if isn is not None else iss,
            ts_offset=ts_off,
            counters=self.counters,
        )
        child.conn = conn
        self.ehash[ft] = conn
        self._owner[ft] = child
        # __inet_inherit_port(): the child joins the listener's bind bucket.
        self.ports.inherit(listener, child)
        child.port_held = True
        listener.requests += 1
        self._apply(conn, conn.accept_syn(syn, now), now)

    def _send_reset(self, seg: Segment) -> None:
        """tcp_v4_send_reset() for a segment no socket wants; never answers an RST."""
        if seg.rst:
            return
        self.counters[C.OUT_RSTS] += 1
        self._out.append(reset_reply(seg))

    def _apply(self, sk: Connection | MiniSocket, out: Outcome, now: int) -> None:
        """Carry out what one call into `sk` did: the one place where a socket's outcome
        reaches the namespace (module docstring)."""
        if out.segments:
            self._out.extend(out.segments)
        ft = sk.tuple
        changes = out.changes
        if changes is not None and self.state_log is not None:
            self.state_log.extend(changes)
        if self.ehash.get(ft) is not sk:
            return  # a socket no longer in the table (closed, handed off): nothing to apply
        if changes is not None and isinstance(sk, Connection):
            self._queue_if_established(ft, changes)
        op = out.op
        if op is None:
            if isinstance(sk, MiniSocket):
                self._schedule(ft, self._tw_fires(sk, now))
            elif out.deadline is not None:
                self._schedule(ft, out.deadline)
            else:
                self._scheduled.pop(ft, None)  # every timer stopped (e.g. all data acknowledged)
        elif isinstance(op, HandOff):
            assert isinstance(sk, Connection)
            self._time_wait(sk, op, now)
        elif op is UNHASH:
            assert isinstance(sk, Connection)
            self._unhash(sk)
        elif op is KILL:
            assert isinstance(sk, MiniSocket)
            self._kill_tw(sk)
        else:
            raise InvalidArgument(f"{op!r} is for Host.receive() to apply, not _apply()")

    def _queue_if_established(self, ft: FourTuple, changes: list[StateChange]) -> None:
        """An accepted child that reached ESTABLISHED joins its listener's accept queue
        (inet_csk_reqsk_queue_add()); accept() then gives it a descriptor. A child leaving
        SYN_RECV leaves the listener's request queue."""
        owner = self._owner.get(ft)
        if owner is None or owner.parent is None or owner.queued:
            return
        parent = owner.parent
        if any(ch.old is SYN_RECEIVED for ch in changes):
            parent.requests -= 1
        if not parent.listening:
            return
        if any(ch.new is ESTABLISHED for ch in changes):
            parent.accept_queue.append(owner)
            owner.queued = True

    def _time_wait(self, conn: Connection, op: HandOff, now: int) -> None:
        """tcp_time_wait(): replace the full socket by a minisocket, or skip the wait."""
        ft = conn.tuple
        owner = self._owner.pop(ft)
        del self.ehash[ft]
        if tw_overflow(self._tw_count, self.config):
            # inet_twsk_alloc() returned NULL: no wait at all, the tuple is free (ref 5).
            self.counters[C.TIME_WAIT_OVERFLOW] += 1
            self._scheduled.pop(ft, None)
            self._release_port(owner)
            return
        tw = MiniSocket.create(
            tuple=ft,
            substate=op.substate,
            timeout=op.timeout,
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
        self.counters[arm_counter(op.timeout)] += 1
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

    def _kill_tw(self, tw: MiniSocket) -> None:
        """inet_twsk_kill(): unhash and drop the bind-bucket reference."""
        ft = tw.tuple
        del self.ehash[ft]
        self._scheduled.pop(ft, None)
        self._tw_armed.pop(ft, None)
        self._tw_count -= 1
        self.ports.release(tw, ft.lport)

    def _unhash(self, conn: Connection) -> None:
        ft = conn.tuple
        del self.ehash[ft]
        self._scheduled.pop(ft, None)
        owner = self._owner.pop(ft, None)
        if owner is None:
            return
        # tcp_set_state(TCP_CLOSE) -> inet_put_port() unless the user bound the port
        # (SOCK_BINDPORT_LOCK); then close() releases it.
        if not owner.user_bound_port or not owner.fd_open:
            self._release_port(owner)
        # A child reset before accept() stays in the accept queue: accept() returns it and its
        # first read reports the reset (K tcp_done() leaves the queue alone).

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
