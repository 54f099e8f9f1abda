"""Workloads: small application drivers that make connections on model hosts, and count.

Theory of operation
-------------------
Each driver is an application on one host (network.App): it makes socket calls on the model
host at engine times it schedules itself, calls `net.flush(host)` after them, and reacts to its
sockets' events when the network reports activity (`on_activity(four_tuple, now)`). Socket call
failures are the kernel's errnos (timewait.errors.SocketError) and connection events are the
model's (Connected, DataReceived, PeerClosed, ConnectionReset, ...); both are counted in `Stats`
by errno name, never swallowed silently: an error that is not a SocketError propagates and stops
the run.

* `Server`: listen on a port, answer each request with a response; who closes first and how long
  the server waits after the client's FIN are parameters (a "slow-closing peer" never closes).
* `RequestClient`: one connection per request at a fixed rate, round-robin over destinations
  (addresses or ports: load balancing) and source addresses, optionally bind-before-connect with
  or without IP_BIND_ADDRESS_NO_PORT, SO_REUSEADDR, SO_LINGER {1,0}.
* `PoolClient`: K long-lived connections carrying the same request stream; `KeepAliveClient` is
  the pool of one.
* `restart_bind()`: the bind() of a restarted server (EADDRINUSE or "ok").
* `Sampler`: fixed-interval time series (TIME_WAIT count, ports in use, failures per second, ...).
* `FinalAckLoss`: a drop predicate for the network that loses the active closer's final ACK.
"""

from __future__ import annotations

import errno as _errno
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from timewait.errors import SocketError
from timewait.model.connection import Connection
from timewait.model.events import (
    Connected,
    ConnectionRefused,
    ConnectionReset,
    ConnectionTimedOut,
    DataReceived,
    PeerClosed,
)
from timewait.model.host import Host, SockOpt
from timewait.model.segment import Flags, FourTuple, Segment
from timewait.model.states import TcpState
from timewait.sim.engine import LATE, Engine
from timewait.sim.flow import InvalidWorkload
from timewait.sim.network import Network
from timewait.units import SEC

# Event -> errno name, as a blocking socket API reports them (model/events.py docstrings).
_EVENT_ERRNO = {
    ConnectionReset: "ECONNRESET",
    ConnectionRefused: "ECONNREFUSED",
    ConnectionTimedOut: "ETIMEDOUT",
}


@dataclass
class Stats:
    """What a driver saw. `failures` is keyed by errno name (EADDRNOTAVAIL, ECONNRESET, ...)."""

    attempts: int = 0
    connected: int = 0
    successes: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    first_failure: dict[str, int] = field(default_factory=dict)  # errno -> time (ns)

    def fail(self, errno_name: str, now: int) -> None:
        self.failures[errno_name] += 1
        self.first_failure.setdefault(errno_name, now)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def socket_tuple(host: Host, fd: int) -> FourTuple | None:
    """The four-tuple behind a descriptor, or None before connect().

    The model has no public getsockname()/getpeername(); this reads the host's socket record
    (the same access tests/model/host_helpers.py uses).
    """
    conn = host._sock(fd).conn
    return conn.tuple if conn is not None else None


def _errno_name(err: SocketError) -> str:
    return _errno.errorcode.get(err.errno_value, str(err.errno_value))


class _Conn:
    """A driver's record of one of its connections."""

    __slots__ = ("done", "fd", "ft", "got", "index", "opened", "sent_at")

    def __init__(self, fd: int, index: int, opened: int) -> None:
        self.fd = fd
        self.index = index
        self.opened = opened
        self.ft: FourTuple | None = None
        self.got = b""
        self.sent_at: int | None = None
        self.done = False


class Server:
    """A listener that answers every request with `response`.

    `close_first`: close right after the response (the server becomes the active closer, so
    TIME_WAIT lands on the server). Otherwise wait for the client's FIN (PeerClosed) and close
    `close_delay` ns later; `close_delay=None` never closes (a slow-closing peer: the client's
    orphaned FIN_WAIT2 then waits tcp_fin_timeout, ref 2.2).
    """

    def __init__(
        self,
        net: Network,
        host: Host,
        *,
        port: int = 80,
        addr: str = "0.0.0.0",
        reuseaddr: bool = False,
        close_first: bool = False,
        close_delay: int | None = 0,
        linger_zero: bool = False,
        response: bytes | Callable[[int], bytes] = b"OK",
    ) -> None:
        self.net = net
        self.host = host
        self.port = port
        self.reuseaddr = reuseaddr
        self.close_first = close_first
        self.close_delay = close_delay
        self.linger_zero = linger_zero
        self.response = response
        self.stats = Stats()
        self.received: dict[FourTuple, bytes] = {}  # every byte each accepted connection read
        self.accepted: list[FourTuple] = []
        self._conns: dict[FourTuple, _Conn] = {}
        now = net.now
        self.lfd: int | None = host.socket()
        if reuseaddr:
            host.setsockopt(self.lfd, SockOpt.SO_REUSEADDR, 1)
        host.bind(self.lfd, addr, port, now)
        host.listen(self.lfd, now)
        net.attach(host, self)

    def on_activity(self, ft: FourTuple | None, now: int) -> None:
        host = self.host
        if self.lfd is not None:
            while (fd := host.accept(self.lfd)) is not None:
                t = socket_tuple(host, fd)
                assert t is not None
                c = _Conn(fd, len(self.accepted), now)
                c.ft = t
                self._conns[t] = c
                self.accepted.append(t)
                self.received.setdefault(t, b"")
                self.stats.connected += 1
                if self.linger_zero:
                    host.setsockopt(fd, SockOpt.SO_LINGER, (1, 0))
                self._events(c, now)
        if ft is None:
            for c in list(self._conns.values()):
                self._events(c, now)
        elif (one := self._conns.get(ft)) is not None:
            self._events(one, now)

    def _events(self, c: _Conn, now: int) -> None:
        host = self.host
        if c.done:
            return
        for ev in host.events(c.fd):
            kind = type(ev)
            if kind is DataReceived:
                data = host.recv(c.fd)
                assert c.ft is not None
                self.received[c.ft] += data
                c.got += data
                # Every request chunk gets the response (keep-alive clients send many).
                first = c.sent_at is None
                c.sent_at = now
                resp = self.response
                body = resp(c.index) if callable(resp) else resp
                if body:
                    host.send(c.fd, body, now)
                if first:
                    self.stats.successes += 1
                if self.close_first:
                    self._close(c, now)
                    return
            elif kind is PeerClosed:
                if self.close_delay is not None:
                    if self.close_delay == 0:
                        self._close(c, now)
                        return
                    self.net.engine.at(now + self.close_delay, self._close_later, c)
            elif kind in _EVENT_ERRNO:
                self.stats.fail(_EVENT_ERRNO[kind], now)
                self._close(c, now)
                return

    def _close_later(self, c: _Conn) -> None:
        if not c.done:
            self._close(c, self.net.now)
            self.net.flush(self.host)

    def _close(self, c: _Conn, now: int) -> None:
        c.done = True
        if c.ft is not None:
            self._conns.pop(c.ft, None)
        self.host.recv(c.fd)  # read what is left: close() with unread data would RST (ref 8)
        self.host.close(c.fd, now)

    def stop(self, now: int) -> None:
        """The server process exits: every connection and the listener are closed."""
        for c in list(self._conns.values()):
            self._close(c, now)
        if self.lfd is not None:
            self.host.close(self.lfd, now)
            self.lfd = None
        self.net.flush(self.host)


class RequestClient:
    """One connection per request, `count` requests every `interval` ns from `start`.

    Request i goes to `dests[i % len(dests)]` from `sources[i % len(sources)]` (load balancing
    over destination addresses or ports; several client source addresses). `bind` is "none"
    (autobind at connect), "bind" (bind(src, 0) first: the port is locked for every destination,
    ref 7.3) or "bind-no-port" (IP_BIND_ADDRESS_NO_PORT: the port is chosen at connect() per
    destination). `client_closes` picks the active closer: the client closes after reading the
    response, or waits for the server's FIN.
    """

    def __init__(
        self,
        net: Network,
        host: Host,
        *,
        dests: Sequence[tuple[str, int]],
        interval: int,
        count: int,
        start: int = 0,
        sources: Sequence[str] | None = None,
        client_closes: bool = True,
        bind: str = "none",
        reuseaddr: bool = False,
        linger_zero: bool = False,
        request: bytes = b"GET",
        close_after_send: bool = False,
        close_delay: int = 0,
    ) -> None:
        if bind not in ("none", "bind", "bind-no-port"):
            raise InvalidWorkload(f"bind={bind!r}: choose none, bind or bind-no-port")
        if not dests:
            raise InvalidWorkload("RequestClient needs at least one destination: pass dests=")
        if sources is not None and not sources and bind != "none":
            raise InvalidWorkload("bind-before-connect needs a source address: pass sources=")
        self.net = net
        self.host = host
        self.dests = list(dests)
        self.sources = list(sources) if sources else None
        self.interval = interval
        self.count = count
        self.client_closes = client_closes
        self.bind = bind
        self.reuseaddr = reuseaddr
        self.linger_zero = linger_zero
        self.request = request
        self.close_after_send = close_after_send
        self.close_delay = close_delay  # ns between the write and close() (close_after_send)
        self.stats = Stats()
        self.tuples: list[FourTuple] = []  # four-tuple of every connection that got one
        self.ports_per_dest: dict[tuple[str, int], set[int]] = {}
        self._conns: dict[FourTuple, _Conn] = {}
        self._next = 0
        net.attach(host, self)
        net.engine.at(max(start, net.now), self._open)

    @property
    def active(self) -> int:
        return len(self._conns)

    def _open(self) -> None:
        i = self._next
        self._next += 1
        if self._next < self.count:
            self.net.engine.at(self.net.now + self.interval, self._open)
        host = self.host
        now = self.net.now
        dst = self.dests[i % len(self.dests)]
        self.stats.attempts += 1
        fd = host.socket()
        try:
            if self.reuseaddr:
                host.setsockopt(fd, SockOpt.SO_REUSEADDR, 1)
            if self.linger_zero:
                host.setsockopt(fd, SockOpt.SO_LINGER, (1, 0))
            if self.bind != "none":
                src = self.sources[i % len(self.sources)] if self.sources else "0.0.0.0"
                if self.bind == "bind-no-port":
                    host.setsockopt(fd, SockOpt.IP_BIND_ADDRESS_NO_PORT, 1)
                host.bind(fd, src, 0, now)
            elif self.sources:
                src = self.sources[i % len(self.sources)]
                host.setsockopt(fd, SockOpt.IP_BIND_ADDRESS_NO_PORT, 1)
                host.bind(fd, src, 0, now)  # pick the source address, port at connect()
            host.connect(fd, dst[0], dst[1], now)
        except SocketError as err:
            self.stats.fail(_errno_name(err), now)
            host.close(fd, now)
            self.net.flush(host)
            return
        ft = socket_tuple(host, fd)
        assert ft is not None
        c = _Conn(fd, i, now)
        c.ft = ft
        self._conns[ft] = c
        self.tuples.append(ft)
        self.ports_per_dest.setdefault(dst, set()).add(ft.lport)
        self.net.flush(host)

    def on_activity(self, ft: FourTuple | None, now: int) -> None:
        if ft is None:
            for c in list(self._conns.values()):
                self._events(c, now)
            return
        one = self._conns.get(ft)
        if one is not None:
            self._events(one, now)

    def _events(self, c: _Conn, now: int) -> None:
        host = self.host
        for ev in host.events(c.fd):
            kind = type(ev)
            if kind is Connected:
                self.stats.connected += 1
                host.send(c.fd, self.request, now)
                c.sent_at = now
                if self.close_after_send:
                    self.stats.successes += 1
                    if self.close_delay:
                        self.net.engine.at(now + self.close_delay, self._close_later, c)
                        return
                    self._close(c, now)  # send() then close() at once: a fire-and-forget client
                    return
            elif kind is DataReceived:
                c.got += host.recv(c.fd)
                if not c.done:
                    c.done = True
                    self.stats.successes += 1
                    if self.client_closes:
                        self._close(c, now)
                        return
            elif kind is PeerClosed:
                self._close(c, now)
                return
            elif kind in _EVENT_ERRNO:
                self.stats.fail(_EVENT_ERRNO[kind], now)
                self._close(c, now)
                return

    def _close_later(self, c: _Conn) -> None:
        self._close(c, self.net.now)
        self.net.flush(self.host)

    def _close(self, c: _Conn, now: int) -> None:
        assert c.ft is not None
        self._conns.pop(c.ft, None)
        self.host.recv(c.fd)
        self.host.close(c.fd, now)


class SerialClient:
    """`count` connections to `dest`, one after the other, each reading `expect` bytes.

    connect() failing with EADDRNOTAVAIL (the four-tuple is still in TIME_WAIT) is counted and
    retried after `retry` ns, doubling after each consecutive failure up to `retry_max` (a client
    backing off). The client closes first once `expect` bytes arrived. `streams[i]`
    holds every byte connection i read, so a scenario can tell old data from new.
    """

    def __init__(
        self,
        net: Network,
        host: Host,
        *,
        dest: tuple[str, int],
        count: int,
        expect: int,
        retry: int,
        retry_max: int | None = None,
        gap: int = 0,
        request: bytes = b"GET",
    ) -> None:
        self.net = net
        self.host = host
        self.dest = dest
        self.count = count
        self.expect = expect
        self.retry = retry
        self.retry_max = retry_max if retry_max is not None else retry
        self._backoff = retry
        self.gap = gap
        self.request = request
        self.stats = Stats()
        self.streams: list[bytes] = []
        self.tuples: list[FourTuple] = []
        self.started: list[int] = []
        self._c: _Conn | None = None
        net.attach(host, self)
        net.engine.at(net.now, self._open)

    def _open(self) -> None:
        host = self.host
        now = self.net.now
        fd = host.socket()
        self.stats.attempts += 1
        try:
            host.connect(fd, self.dest[0], self.dest[1], now)
        except SocketError as err:
            self.stats.fail(_errno_name(err), now)
            host.close(fd, now)
            self.net.engine.at(now + self._backoff, self._open)
            self._backoff = min(self._backoff * 2, self.retry_max)
            return
        self._backoff = self.retry
        ft = socket_tuple(host, fd)
        assert ft is not None
        self._c = _Conn(fd, len(self.streams), now)
        self._c.ft = ft
        self.tuples.append(ft)
        self.started.append(now)
        self.streams.append(b"")
        self.net.flush(host)

    def on_activity(self, ft: FourTuple | None, now: int) -> None:
        c = self._c
        if c is None or (ft is not None and ft != c.ft):
            return
        host = self.host
        for ev in host.events(c.fd):
            kind = type(ev)
            if kind is Connected:
                self.stats.connected += 1
                host.send(c.fd, self.request, now)
            elif kind is DataReceived:
                c.got += host.recv(c.fd)
                self.streams[c.index] = c.got
                if len(c.got) >= self.expect:
                    self.stats.successes += 1
                    self._finish(c, now)
                    return
            elif kind is PeerClosed or kind in _EVENT_ERRNO:
                if kind in _EVENT_ERRNO:
                    self.stats.fail(_EVENT_ERRNO[kind], now)
                self._finish(c, now)
                return

    def _finish(self, c: _Conn, now: int) -> None:
        self._c = None
        self.host.recv(c.fd)
        self.host.close(c.fd, now)
        if len(self.streams) < self.count:
            self.net.engine.at(now + self.gap, self._open)


class PoolClient:
    """`k` long-lived connections to `dest` carrying `count` requests, one every `interval` ns.

    A request goes to an idle connection or waits for one; a connection that fails is replaced.
    `stop(now)` closes the pool (the client then holds k TIME_WAITs, nothing more).
    """

    def __init__(
        self,
        net: Network,
        host: Host,
        *,
        dest: tuple[str, int],
        k: int,
        interval: int,
        count: int,
        start: int = 0,
        request: bytes = b"GET",
    ) -> None:
        if k < 1:
            raise InvalidWorkload(f"pool size k={k}: need at least 1")
        self.net = net
        self.host = host
        self.dest = dest
        self.k = k
        self.interval = interval
        self.count = count
        self.request = request
        self.stats = Stats()
        self.opened = 0
        self._conns: dict[FourTuple, _Conn] = {}
        self._idle: list[_Conn] = []
        self._waiting = 0
        self._issued = 0
        net.attach(host, self)
        for _ in range(k):
            self._open_one(net.now)
        net.flush(host)
        net.engine.at(max(start, net.now), self._request)

    def _open_one(self, now: int) -> None:
        host = self.host
        fd = host.socket()
        try:
            host.connect(fd, self.dest[0], self.dest[1], now)
        except SocketError as err:
            self.stats.fail(_errno_name(err), now)
            host.close(fd, now)
            return
        ft = socket_tuple(host, fd)
        assert ft is not None
        c = _Conn(fd, self.opened, now)
        c.ft = ft
        c.done = True  # not busy
        self.opened += 1
        self._conns[ft] = c

    def _request(self) -> None:
        now = self.net.now
        self._issued += 1
        if self._issued < self.count:
            self.net.engine.at(now + self.interval, self._request)
        self.stats.attempts += 1
        self._waiting += 1
        self._dispatch(now)
        self.net.flush(self.host)

    def _dispatch(self, now: int) -> None:
        while self._waiting and self._idle:
            c = self._idle.pop()
            self._waiting -= 1
            c.done = False
            self.host.send(c.fd, self.request, now)

    def on_activity(self, ft: FourTuple | None, now: int) -> None:
        conns = list(self._conns.values()) if ft is None else [self._conns.get(ft)]
        for c in conns:
            if c is not None:
                self._events(c, now)
        self._dispatch(now)

    def _events(self, c: _Conn, now: int) -> None:
        host = self.host
        for ev in host.events(c.fd):
            kind = type(ev)
            if kind is Connected:
                self.stats.connected += 1
                self._idle.append(c)
            elif kind is DataReceived:
                host.recv(c.fd)
                if not c.done:
                    c.done = True
                    self.stats.successes += 1
                    self._idle.append(c)
            elif kind is PeerClosed or kind in _EVENT_ERRNO:
                if kind in _EVENT_ERRNO:
                    self.stats.fail(_EVENT_ERRNO[kind], now)
                if not c.done:
                    self._waiting += 1  # the request in flight is retried
                self._drop(c, now)
                self._open_one(now)
                return

    def _drop(self, c: _Conn, now: int) -> None:
        assert c.ft is not None
        self._conns.pop(c.ft, None)
        if c in self._idle:
            self._idle.remove(c)
        self.host.recv(c.fd)
        self.host.close(c.fd, now)

    def stop(self, now: int) -> None:
        """Close every pooled connection (the client closes first)."""
        for c in list(self._conns.values()):
            self._drop(c, now)
        self.net.flush(self.host)


class KeepAliveClient(PoolClient):
    """One long-lived connection carrying every request (HTTP keep-alive): a pool of one."""

    def __init__(
        self,
        net: Network,
        host: Host,
        *,
        dest: tuple[str, int],
        interval: int,
        count: int,
        start: int = 0,
        request: bytes = b"GET",
    ) -> None:
        super().__init__(
            net, host, dest=dest, k=1, interval=interval, count=count, start=start, request=request
        )


def restart_bind(host: Host, *, port: int, reuseaddr: bool, now: int, addr: str = "0.0.0.0") -> str:
    """The new process of a restarted server: socket(), SO_REUSEADDR?, bind(), listen().

    Returns "ok" or the errno name (EADDRINUSE while the old process's TIME_WAIT children block
    the port, ref 8 / Lab E6). On failure the socket is closed again.
    """
    fd = host.socket()
    try:
        if reuseaddr:
            host.setsockopt(fd, SockOpt.SO_REUSEADDR, 1)
        host.bind(fd, addr, port, now)
        host.listen(fd, now)
    except SocketError as err:
        host.close(fd, now)
        return _errno_name(err)
    return "ok"


Probe = Callable[[], float]


def time_wait_probe(host: Host) -> Probe:
    """Minisockets in substate TIME_WAIT (what `ss state time-wait` lists)."""
    return lambda: float(host.count_state(TcpState.TIME_WAIT))


def ports_in_use_probe(host: Host) -> Probe:
    """Local ports with at least one owner (bind bucket) on the host."""
    return lambda: float(len(host.ports.buckets))


class Sampler:
    """Samples probes every `every` ns from `start` to `until` (inclusive), after everything else
    due at the same instant (priority LATE). `rates` are cumulative counters reported per second
    (delta since the previous sample / interval)."""

    def __init__(
        self,
        engine: Engine,
        *,
        every: int,
        until: int,
        probes: dict[str, Probe] | None = None,
        rates: dict[str, Probe] | None = None,
        start: int = 0,
    ) -> None:
        if every <= 0:
            raise InvalidWorkload(f"sampling interval {every} ns: must be > 0")
        self.engine = engine
        self.every = every
        self.until = until
        self.probes = probes or {}
        self.rates = rates or {}
        self.times: list[float] = []
        self.values: dict[str, list[float]] = {k: [] for k in [*self.probes, *self.rates]}
        self._last: dict[str, float] = {k: f() for k, f in self.rates.items()}
        engine.schedule(self._sample, at=max(start, engine.now), priority=LATE)

    def _sample(self) -> None:
        now = self.engine.now
        self.times.append(now / SEC)
        for k, f in self.probes.items():
            self.values[k].append(f())
        for k, f in self.rates.items():
            v = f()
            self.values[k].append((v - self._last[k]) * SEC / self.every)
            self._last[k] = v
        if now + self.every <= self.until:
            self.engine.schedule(self._sample, at=now + self.every, priority=LATE)

    def series(self) -> dict[str, tuple[list[float], list[float]]]:
        """{metric: (times in s, values)} -- ScenarioResult.series for one variant."""
        return {k: (list(self.times), list(v)) for k, v in self.values.items()}


class FinalAckLoss:
    """Drop predicate: the client's ACK of the server's FIN (server in LAST_ACK, RFC 9293 Fig. 5)
    is lost with probability p -- only the first one of each connection, so a re-ACK from
    TIME_WAIT gets through and the two variants differ only in what answers the retransmitted FIN.
    """

    def __init__(self, server: Host, p: float, rng: random.Random) -> None:
        self.server = server
        self.p = p
        self.rng = rng
        self.seen: set[FourTuple] = set()
        self.lost: list[tuple[int, FourTuple]] = []  # (time, client-side four-tuple)

    def __call__(self, seg: Segment, now: int) -> bool:
        if seg.flags != Flags.ACK or seg.payload:
            return False
        ft = seg.receiver_tuple
        conn = self.server.ehash.get(ft)
        if not isinstance(conn, Connection) or conn.state is not TcpState.LAST_ACK:
            return False
        if ft in self.seen:
            return False
        self.seen.add(ft)
        if self.p and self.rng.random() < self.p:
            self.lost.append((now, seg.sender_tuple))
            return True
        return False
