"""What one side did with a script: a Trace, and the driver that produces it on either side.

Theory of operation
-------------------
The kernel and the model run the same script through the same `drive()`; only the `Side`
differs (timewait.lab.probe.kernel drives real sockets and a TUN device inside a throwaway
namespace, timewait.lab.probe.modelside a model `Host`). The driver keeps, per flow, what each
side's own output taught it -- the local ISN (from the first outbound SYN or SYN-ACK), the first
and the latest local TSval, the local port of a connect() -- and uses it both ways:

* inbound segments are built from the script with that side's numbers (ack = ISN + relative
  ack, TS ecr = the side's latest TSval), so both sides see "the same" segment although their
  ISNs and timestamp offsets differ;
* outbound segments are recorded relative to them (`Out`), so the two traces compare directly.

Time: the kernel side runs in real time, each step its scripted gap after the previous one as
that actually happened, and records when each step happened (a late injection on a loaded
machine is recorded as late, and delays the steps after it) and when each segment left, from
the kernel's own packet timestamps. The model side then replays the script at
exactly those recorded times, so model and kernel see the same inputs at the same moments and
their outputs differ only where their rules do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from timewait.lab.probe.packet import Options, Packet, flag_text
from timewait.lab.probe.script import (
    DEFAULT_FLOW,
    LOCAL_ADDR,
    Call,
    Inject,
    Script,
    SegSpec,
    StateCheck,
)

MASK = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Out:
    """One outbound segment, relative to its flow (see the module docstring)."""

    t: int  # ns since the script started
    flow: str
    flags: int
    seq: int  # relative to the local ISN of the flow's current incarnation (absolute before)
    ack: int | None  # literal (the script's sequence space); None without the ACK flag
    length: int  # payload bytes
    ts: tuple[int, int] | None  # (TSval relative to the flow's first local TSval, TSecr)
    window: int
    isn: int = 0  # this incarnation's ISN minus the flow's first ISN (signed; 0 for the first)
    timer: bool = False  # the model sent it from a timer (the kernel's own side cannot tell)

    def text(self) -> str:
        ack = f" ack {self.ack}" if self.ack is not None else ""
        isn = f" isn {self.isn:+d}" if self.isn else ""
        ts = f" <TS val {self.ts[0]} ecr {self.ts[1]}>" if self.ts else ""
        return (
            f"> [{self.flow}] {flag_text(self.flags)} "
            f"{self.seq}:{(self.seq + self.length) & MASK}({self.length}){ack}{isn}{ts}"
        )


@dataclass(frozen=True, slots=True)
class SockState:
    """One socket as sock_diag reports it (or the model's equivalent)."""

    flow: str  # flow name, or "listen:PORT" for a listener
    state: str  # kernel label (TIME-WAIT, FIN-WAIT-2, ESTABLISHED, LISTEN, ...)
    timer: int  # idiag_timer: 0 none, 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 probe
    expires_ms: int  # what the timer has left (0 without one)
    retrans: int  # idiag_retrans: retransmissions done by the timer in charge

    def text(self) -> str:
        timer = f" timer {self.timer} {self.expires_ms} ms" if self.timer else ""
        rtx = f" retrans {self.retrans}" if self.retrans else ""
        return f"{self.flow}: {self.state}{timer}{rtx}"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Sockets and counters at one moment (a `state` line, or the end)."""

    t: int
    step: int  # index of the step it belongs to
    sockets: tuple[SockState, ...]
    span: int  # how long reading the table took (ns): the time the timers were read is fuzzy
    counters: tuple[tuple[str, int], ...]  # the script's counters, as deltas since the start


@dataclass(slots=True)
class Trace:
    """Everything one side did: step times and results, outbound segments, snapshots."""

    side: str
    step_times: list[int] = field(default_factory=list)
    # How long each step took on this side (ns): a socket call may be preempted between the
    # time taken and the system call, so what it caused may come that much later.
    step_spans: list[int] = field(default_factory=list)
    results: dict[int, str] = field(default_factory=dict)  # step index -> call result
    outs: list[Out] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    error: str | None = None
    kernel: str = ""


class Side(Protocol):
    """One end of the comparison: real kernel or model host. Times are ns since the start."""

    def wait_until(self, t: int) -> int:
        """Let time run to `t` (collecting output); returns the actual time."""
        ...

    def inject(self, pkt: Packet) -> int:
        """Deliver a segment from the remote end; returns when it was received."""
        ...

    def call(self, step: Call) -> tuple[int, str]:
        """Run a socket call; returns (time it was made, result)."""
        ...

    def local_port(self, sock: str) -> int:
        """The local port socket `sock` ended up with (after connect())."""
        ...

    def drain(self) -> list[tuple[int, Packet, bool]]:
        """Outbound segments since the last call, with their times and whether a timer sent
        them (False where the side cannot tell), in order."""
        ...

    dumped_at: int  # when the last sockets() call read the table
    last_span: int  # how long the last call() or sockets() took (ns)

    def sockets(self, at: int | None = None) -> list[tuple[int, str, int, int, str, int, int, int]]:
        """(lport, raddr, rport, state number, label, timer, expires_ms, retrans) for every
        TCP socket of the namespace; timers as of `at` where the side can choose (the model
        reads them at the kernel's dump time), else now. Sets `dumped_at`."""
        ...

    def counters(self) -> dict[str, int]: ...


@dataclass(slots=True)
class FlowMap:
    """Per-flow numbers one side learned from its own output."""

    flows: dict[str, tuple[str, int, int | None]]
    isn: dict[str, int] = field(default_factory=dict)  # the flow's first local ISN
    cur: dict[str, int] = field(default_factory=dict)  # the current incarnation's ISN
    ts_first: dict[str, int] = field(default_factory=dict)
    ts_last: dict[str, int] = field(default_factory=dict)

    def flow_of(self, pkt: Packet) -> str:
        """The flow an outbound segment belongs to ("?addr:port>port" if none)."""
        # The latest flow with that four-tuple wins (a connect() reusing a TIME_WAIT's tuple).
        for name, (raddr, rport, lport) in reversed(self.flows.items()):
            if pkt.dst == raddr and pkt.dport == rport and pkt.sport == lport:
                return name
        return f"?{pkt.dst}:{pkt.dport}>{pkt.sport}"

    def record(self, t: int, pkt: Packet, timer: bool = False) -> Out:
        flow = self.flow_of(pkt)
        if pkt.flags & 0x02:
            # A SYN with another ISN than the current one starts a new incarnation (a SYN that
            # reopened a TIME_WAIT, or a fresh connection on the same four-tuple).
            self.isn.setdefault(flow, pkt.seq)
            self.cur[flow] = pkt.seq
        ts = pkt.options.ts
        rel_ts = None
        if ts is not None:
            first = self.ts_first.setdefault(flow, ts[0])
            self.ts_last[flow] = ts[0]
            rel_ts = (_signed(ts[0] - first), ts[1])
        # An RST answering a segment without ACK carries SEQ 0 (RFC 9293 §3.10.7.1, K
        # tcp_v4_send_reset()): that 0 is absolute, not an offset from our ISN.
        literal = pkt.flags & 0x04 and pkt.seq == 0
        return Out(
            t=t,
            flow=flow,
            flags=pkt.flags,
            seq=0 if literal else (pkt.seq - self.cur.get(flow, 0)) & MASK,
            ack=pkt.ack if pkt.flags & 0x10 else None,
            length=len(pkt.payload),
            ts=rel_ts,
            window=pkt.window,
            isn=_signed(self.cur.get(flow, 0) - self.isn.get(flow, 0)) if pkt.flags & 0x02 else 0,
            timer=timer,
        )

    def build(self, spec: SegSpec) -> Packet:
        """The inbound segment `spec` with this side's numbers."""
        raddr, rport, lport = self.flows[spec.flow]
        if lport is None:
            raise ValueError(f"flow {spec.flow} has no local port yet (connect first)")
        ack = 0
        if spec.ack is not None:
            ack = (spec.ack + self.cur.get(spec.flow, 0)) & MASK
        ts = None
        if spec.ts is not None:
            last = self.ts_last.get(spec.flow, 0)
            if spec.ts.ecr is None:
                ecr = last
            elif spec.ts.ecr_rel:
                ecr = (last + spec.ts.ecr) & MASK
            else:
                ecr = spec.ts.ecr
            ts = (spec.ts.val or 0, ecr)
        return Packet(
            src=raddr, sport=rport, dst=LOCAL_ADDR, dport=lport, seq=spec.seq & MASK, ack=ack,
            flags=spec.flags, window=65535 if spec.win is None else spec.win,
            payload=payload(spec.seq, spec.length),
            options=Options(mss=spec.mss, sack_ok=spec.sack_ok, wscale=spec.wscale, ts=ts),
        )  # fmt: skip


def _signed(d: int) -> int:
    d &= MASK
    return d - (1 << 32) if d >= 1 << 31 else d


def payload(seq: int, n: int) -> bytes:
    """Deterministic payload bytes for sequence range [seq, seq + n)."""
    return bytes((seq + i) % 251 for i in range(n))


def drive(
    script: Script,
    side: Side,
    name: str,
    times: list[int] | None = None,
    snap_times: list[int] | None = None,
) -> Trace:
    """Run `script` on `side`. `times` (the kernel's recorded step times) makes the model side
    replay exactly when the kernel saw each step, and `snap_times` read its timers when the
    kernel read its own; without them the script's own times are used."""
    trace = Trace(side=name)
    fm = FlowMap(flows=dict(script.flows()))
    counters0 = side.counters()

    def pump() -> None:
        for t, pkt, timer in side.drain():
            trace.outs.append(fm.record(t, pkt, timer))

    prev_t = prev_actual = 0
    for i, step in enumerate(script.steps):
        # Each step keeps its gap to the one before, as it actually happened: a step that came
        # late on a loaded machine delays the rest instead of squeezing the next gap (which
        # would, say, leave no time for an ACK the script expects in between).
        target = times[i] if times is not None else prev_actual + (step.t - prev_t)
        actual = side.wait_until(target)
        pump()
        span = 0
        if isinstance(step, Inject):
            actual = side.inject(fm.build(step.seg))
        elif isinstance(step, Call):
            actual, result = side.call(step)
            span = side.last_span
            trace.results[i] = result
            if step.op == "connect" and result in ("ok", "EINPROGRESS"):
                raddr, rport, _ = fm.flows[step.sock]
                fm.flows[step.sock] = (raddr, rport, side.local_port(step.sock))
        pump()
        trace.step_times.append(actual)
        trace.step_spans.append(span)
        prev_t, prev_actual = step.t, actual
        if isinstance(step, StateCheck) or i == len(script.steps) - 1:
            at = snap_times[len(trace.snapshots)] if snap_times is not None else None
            trace.snapshots.append(_snapshot(script, side, fm, at, i, counters0))
            pump()  # what left between the step and the dump
    return trace


def _snapshot(
    script: Script, side: Side, fm: FlowMap, at: int | None, step: int, counters0: dict[str, int]
) -> Snapshot:
    socks: list[SockState] = []
    listen_ports = set()
    rows = side.sockets(at)
    t = side.dumped_at
    for lport, raddr, rport, _num, label, timer, expires, retrans in rows:
        if label == "LISTEN":
            listen_ports.add(lport)
            socks.append(SockState(f"listen:{lport}", label, 0, 0, 0))
            continue
        flow = None
        for name, (fa, fp, fl) in reversed(fm.flows.items()):
            if fa == raddr and fp == rport and fl == lport:
                flow = name
                break
        if flow is None:
            flow = f"?{raddr}:{rport}>{lport}"
        socks.append(SockState(flow, label, timer, expires, retrans))
    now = side.counters()
    counters = tuple((c, now.get(c, 0) - counters0.get(c, 0)) for c in script.counter_names())
    return Snapshot(t=t, step=step, sockets=tuple(sorted(socks, key=lambda s: s.flow)),
                    counters=counters, span=side.last_span)  # fmt: skip


__all__ = ["DEFAULT_FLOW", "FlowMap", "Out", "Side", "Snapshot", "SockState", "Trace", "drive"]
