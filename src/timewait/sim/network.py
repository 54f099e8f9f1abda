"""Network: model hosts joined by links on one engine, with a capture of every segment.

Theory of operation
-------------------
The model hosts are sans-I/O (STYLE.md rules 2-3): they queue output and expose their earliest
timer as a deadline. The network is the driver that makes them a simulation:

* after every call into a host (a delivered segment, a timer, or an application's socket call
  followed by `flush(host)`), it drains `host.segments_to_send(now)` onto the link towards each
  segment's destination address and (re)schedules `host.on_timer` at `host.next_deadline()`;
* a segment to a loopback address stays in its host (it never leaves the namespace); any other
  destination is routed to the host that owns that address, over the link for that (sender,
  receiver) pair, created on first use with the network's default LinkParams;
* applications (timewait.sim.workloads) attach to a host and get `on_activity(four_tuple, now)`
  after each segment delivered to that host (the receiver's four-tuple), and
  `on_activity(None, now)` after each timer run; they then read their sockets' events.

Every transmission is appended to `capture` (link.Captured). `rungs()` turns the capture and the
hosts' state logs (hosts built with trace=True) into ladder-diagram rungs for one connection.

Only one timer wake per host is kept current: a wake whose time is no longer the host's recorded
wake is skipped, so superseded deadlines cost one heap pop and nothing else.
"""

from __future__ import annotations

import functools
import random
from typing import Protocol

from timewait.errors import TimewaitError
from timewait.model.host import Host
from timewait.model.segment import FourTuple, Segment, is_loopback
from timewait.sim.engine import Engine
from timewait.sim.link import Captured, DropPredicate, Link, LinkParams
from timewait.sim.trace import Rung
from timewait.units import MS


class RoutingError(TimewaitError):
    """A segment was sent to an address no host owns (a scenario wiring mistake)."""


class App(Protocol):
    """Something running on a host that wants to hear about activity on it."""

    def on_activity(self, ft: FourTuple | None, now: int) -> None: ...


class _Node:
    __slots__ = ("apps", "host", "index", "routes", "wake")

    def __init__(self, host: Host, index: int) -> None:
        self.host = host
        self.index = index
        self.apps: list[App] = []
        self.wake: int | None = None  # time of the current timer wake, if one is scheduled
        self.routes: dict[str, Link] = {}  # destination address -> link, filled on first use


class Network:
    """Hosts, links and the engine. See the module docstring."""

    def __init__(
        self,
        *,
        rng: random.Random,
        engine: Engine | None = None,
        link: LinkParams | None = None,
        drop: DropPredicate | None = None,
        capture: bool = True,
        strict_routing: bool = True,
    ) -> None:
        self.engine = engine or Engine()
        self.rng = rng
        self.default_link = link or LinkParams()
        self.drop = drop
        self.capture: list[Captured] | None = [] if capture else None
        self.strict_routing = strict_routing
        self._nodes: dict[int, _Node] = {}  # id(host) -> node
        self._by_addr: dict[str, _Node] = {}
        self._links: dict[tuple[int, int], Link] = {}
        self._link_params: dict[tuple[int, int], LinkParams] = {}
        self.unroutable = 0

    # -- building ----------------------------------------------------------------------------

    @property
    def now(self) -> int:
        return self.engine.now

    @property
    def hosts(self) -> list[Host]:
        return [n.host for n in self._nodes.values()]

    def add_host(self, host: Host) -> Host:
        """Attach a host; its non-loopback addresses become routable."""
        node = _Node(host, len(self._nodes))
        self._nodes[id(host)] = node
        for addr in host.addrs:
            if is_loopback(addr):
                continue
            if addr in self._by_addr:
                raise RoutingError(f"address {addr} is owned by two hosts")
            self._by_addr[addr] = node
        return host

    def set_link(self, src: Host, dst: Host, params: LinkParams) -> None:
        """Parameters of the src -> dst direction (before any segment crossed it)."""
        key = (self._node(src).index, self._node(dst).index)
        if key in self._links:
            raise RoutingError(f"link {src.name} -> {dst.name} is already in use")
        self._link_params[key] = params

    def link(self, src: Host, dst: Host) -> Link:
        """The src -> dst link (created with its parameters on first use)."""
        return self._link_for(self._node(src), self._node(dst))

    def attach(self, host: Host, app: App) -> None:
        """`app.on_activity` will run after each delivery to / timer of `host`."""
        self._node(host).apps.append(app)

    # -- running -----------------------------------------------------------------------------

    def run(self, until: int | None = None) -> None:
        """Advance the simulation (engine.run); flush everything queued first."""
        for node in self._nodes.values():
            self._flush(node)
        self.engine.run(until)

    def flush(self, host: Host) -> None:
        """Call after an application's socket call on `host`: sends its output, arms its timer."""
        self._flush(self._nodes[id(host)])

    def _node(self, host: Host) -> _Node:
        try:
            return self._nodes[id(host)]
        except KeyError:
            raise RoutingError(f"host {host.name} is not part of this network") from None

    def _link_for(self, src: _Node, dst: _Node) -> Link:
        key = (src.index, dst.index)
        link = self._links.get(key)
        if link is None:
            params = self._link_params.get(key, self.default_link)
            link = Link(
                self.engine,
                params,
                random.Random(self.rng.getrandbits(64)),
                functools.partial(self._deliver_rec, dst),
                name=f"{src.host.name}->{dst.host.name}",
                capture=self.capture,
                drop=self.drop,
            )
            self._links[key] = link
        return link

    def _flush(self, node: _Node) -> None:
        host = node.host
        now = self.engine.now
        out = host.segments_to_send(now)
        if out:
            routes = node.routes
            for seg in out:
                link = routes.get(seg.dst)
                if link is None:
                    link = self._route(node, seg)
                    if link is None:
                        continue
                link.send(seg)
        d = host.next_deadline()
        if d is not None:
            w = node.wake
            if w is None or d < w:
                if d < now:
                    d = now
                node.wake = d
                self.engine.at(d, self._wake, node, d)

    def _route(self, node: _Node, seg: Segment) -> Link | None:
        """The link for a segment from `node` (cached per destination address); None when the
        destination is unroutable and strict_routing is off."""
        dst = seg.dst
        target = self._by_addr.get(dst)
        if target is None:
            if is_loopback(dst):
                target = node
            else:
                self.unroutable += 1
                if self.strict_routing:
                    raise RoutingError(f"no host owns {dst} (segment {seg})")
                return None
        link = self._links.get((node.index, target.index))
        if link is None:
            link = self._link_for(node, target)
        node.routes[dst] = link
        return link

    def _deliver_rec(self, node: _Node, seg: Segment, rec: Captured) -> None:
        self._deliver(node, seg)

    def _deliver(self, node: _Node, seg: Segment) -> None:
        now = self.engine.now
        node.host.receive(seg, now)
        if node.apps:
            ft = seg.receiver_tuple
            for app in node.apps:
                app.on_activity(ft, now)
        self._flush(node)

    def _wake(self, node: _Node, when: int) -> None:
        if node.wake != when:
            return  # superseded by an earlier wake that already ran
        node.wake = None
        now = self.engine.now
        node.host.on_timer(now)
        for app in node.apps:
            app.on_activity(None, now)
        self._flush(node)

    # -- traces ------------------------------------------------------------------------------

    def segments_of(self, ft: FourTuple) -> list[Captured]:
        """Captured transmissions of the connection `ft` (either direction), in send order."""
        if self.capture is None:
            return []
        rev = ft.reversed()
        return [c for c in self.capture if c.segment.sender_tuple in (ft, rev)]

    def rungs(
        self,
        ft: FourTuple,
        left: Host,
        right: Host,
        *,
        start: int = 0,
        end: int | None = None,
    ) -> list[Rung]:
        """Ladder rungs of connection `ft` (as `left` sees it) between `start` and `end`.

        Segments come from the capture (lost ones marked, link duplicates noted with their
        arrival time); state changes are the hosts' StateChange records (`state_log`; hosts
        need trace=True).
        """
        rev = ft.reversed()
        out: list[Rung] = []
        for c in self.segments_of(ft):
            if c.sent < start or (end is not None and c.sent > end):
                continue
            note = ""
            if c.duplicate:
                fate = "lost" if c.delivered is None else f"arrives {c.delivered / MS:.3f} ms"
                note = f"duplicate ({fate})"
            out.append(
                Rung(
                    time=c.sent,
                    left=c.segment.sender_tuple == ft,
                    segment=c.segment,
                    lost=c.lost,
                    note=note,
                )
            )
        for host, is_left, mine in ((left, True, ft), (right, False, rev)):
            for ch in host.state_log or ():
                if ch.tuple == mine and ch.time >= start and (end is None or ch.time <= end):
                    out.append(Rung(time=ch.time, left=is_left, state=str(ch)))
        out.sort(key=lambda r: (r.time, r.state is None))
        return out
