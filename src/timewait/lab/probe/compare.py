"""Kernel against model, segment by segment: the verdict of one probe.

Theory of operation
-------------------
Two traces of the same script (timewait.lab.probe.trace) are compared in three ways:

* Segments, flow by flow, in order: flags, sequence number (relative to the flow's local ISN),
  acknowledgement number, payload length, whether a timestamp option is present, its TSecr
  exactly and its TSval (relative to the flow's first TSval) within the time tolerance; and
  the time each segment left, as an interval from its anchor -- the later of the last script
  step before it and the flow's previous segment -- within packetdrill's default tolerance,
  4 ms plus 12.5 % of the interval (simulators-and-tests.md 1.2, 1.7). Windows are not
  compared: the model has no window scaling or receive-buffer tuning.
* Socket call results, exactly.
* Snapshots (each `state` line and the end): every socket of the script's flows with its state,
  timer kind, retransmission count, and time left within the same tolerance measured from the
  last event before the snapshot; the script's counters exactly.

A segment that one side sent and the other did not is a disagreement, unless it left within
the tolerance of the script's end: the other side may simply not have got there yet.

Written expectations (`>` lines, `= result`) are checked against each side separately, in the
packetdrill way: each `>` line is the next segment sent, and no segment may be sent that the
script does not list. A verdict `agrees` when the two sides agree with each other and with the
script.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from timewait.lab.probe.packet import flag_text
from timewait.lab.probe.script import Call, End, Expect, Inject, Script, SegSpec, StateCheck
from timewait.lab.probe.trace import Out, Snapshot, SockState, Trace

MS: Final = 1_000_000
TOLERANCE_ABS: Final = 4 * MS  # packetdrill --tolerance_usecs default (4000)
TOLERANCE_PCT: Final = 12.5  # packetdrill --tolerance_percent default
# A timer's time left, as sock_diag reports it, counts whole jiffies (4 ms at HZ=250) from a
# jiffies counter that lags real time by up to a few ticks when the CPUs were idle (NOHZ):
# measured here under load, timers read 10 ms after they were armed showed up to 22 ms
# less left than real time says, and the same timer read again later showed less lag.
JIFFIES_SLACK: Final = 16 * MS
# A kernel timer (delayed ACK, retransmission) fires on the first tick after it expires, up to a
# jiffy late, and on a busy machine the timer softirq may wait a little longer: a segment the
# model sent from a timer gets this much more tolerance (measured: a next-tick ACK came up to
# 7.8 ms after its FIN with two CPU-bound processes running).
TIMER_SLACK: Final = 8 * MS


def tolerance(interval: int) -> int:
    """Allowed timing error (ns) for an event `interval` ns after its anchor."""
    return TOLERANCE_ABS + int(abs(interval) * TOLERANCE_PCT / 100)


@dataclass(frozen=True, slots=True)
class Diff:
    """One disagreement. `where` is "kernel vs model", "kernel vs script" or "model vs script"."""

    where: str
    line: int  # script line it is about (0: the end)
    text: str

    def __str__(self) -> str:
        at = f"line {self.line}: " if self.line else ""
        return f"{self.where}: {at}{self.text}"


@dataclass(slots=True)
class Verdict:
    script: Script
    kernel: Trace
    model: Trace
    diffs: list[Diff] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return not self.diffs


def _anchor(script: Script, step_times: list[int], t: int) -> int:
    """Index of the last input step (a segment injected or a socket call) at or before `t`, 0
    if none: what a segment sent at `t` is timed from. `>`, state and flow lines are not
    inputs: nothing the kernel does is timed from them."""
    a = 0
    for i, st in enumerate(step_times):
        if st > t:
            break
        if isinstance(script.steps[i], Inject | Call):
            a = i
    return a


def _span(trace: Trace, step: int) -> int:
    """How long step `step` took on that side (a preempted socket call)."""
    return trace.step_spans[step] if step < len(trace.step_spans) else 0


def _by_flow(outs: list[Out]) -> dict[str, list[Out]]:
    d: dict[str, list[Out]] = {}
    for o in sorted(outs, key=lambda o: o.t):
        d.setdefault(o.flow, []).append(o)
    return d


ISN_TICK: Final = 64  # ns: the ISN clock (K secure_seq.c seq_scale(), ref 1.5)


def _same_segment(k: Out, m: Out, tol: int) -> list[str]:
    """Field by field; the ISN of a new incarnation is compared within `tol` ns of its clock
    (a keyed ISN moves 1 per 64 ns; the tw_snd_nxt + 65537 of a reopened TIME_WAIT is exact)."""
    bad = []
    if abs(k.isn - m.isn) > tol // ISN_TICK:
        bad.append(f"ISN {k.isn:+d} vs {m.isn:+d} from the flow's first")
    if k.flags != m.flags:
        bad.append(f"flags {flag_text(k.flags)} vs {flag_text(m.flags)}")
    if k.seq != m.seq:
        bad.append(f"seq {k.seq} vs {m.seq}")
    if k.ack != m.ack:
        bad.append(f"ack {k.ack} vs {m.ack}")
    if k.length != m.length:
        bad.append(f"length {k.length} vs {m.length}")
    if (k.ts is None) != (m.ts is None):
        bad.append(f"timestamp option {'present' if k.ts else 'absent'} vs "
                   f"{'present' if m.ts else 'absent'}")  # fmt: skip
    elif k.ts is not None and m.ts is not None and k.ts[1] != m.ts[1]:
        bad.append(f"TSecr {k.ts[1]} vs {m.ts[1]}")
    return bad


def compare(script: Script, kernel: Trace, model: Trace) -> Verdict:
    v = Verdict(script=script, kernel=kernel, model=model)
    kv = "kernel vs model"
    end_k, end_m = kernel.step_times[-1], model.step_times[-1]
    kf, mf = _by_flow(kernel.outs), _by_flow(model.outs)
    for flow in sorted(set(kf) | set(mf)):
        ks, ms = kf.get(flow, []), mf.get(flow, [])
        prev: tuple[int, int] | None = None
        for i in range(max(len(ks), len(ms))):
            k = ks[i] if i < len(ks) else None
            m = ms[i] if i < len(ms) else None
            if k is None or m is None:
                one = k or m
                assert one is not None
                times, end = (kernel.step_times, end_k) if k else (model.step_times, end_m)
                a = times[_anchor(script, times, one.t)]
                if prev is not None:
                    a = max(a, prev[0] if k else prev[1])
                if end - one.t <= tolerance(one.t - a) + TIMER_SLACK:
                    continue  # the other side may not have got there yet
                who = "only the kernel" if k else "only the model"
                v.diffs.append(Diff(kv, 0, f"{who} sent {one.text()} at {one.t / 1e9:.4f} s"))
                continue
            ik = _anchor(script, kernel.step_times, k.t)
            ak = kernel.step_times[ik]
            am = model.step_times[_anchor(script, model.step_times, m.t)]
            slack = _span(kernel, ik)
            if prev is not None and prev[0] > ak:
                ak, slack = prev[0], 0
            if prev is not None:
                am = max(am, prev[1])
            dk, dm = k.t - ak, m.t - am
            tol = tolerance(dm) + slack + (TIMER_SLACK if m.timer else 0)
            bad = _same_segment(k, m, tol)
            if abs(dk - dm) > tol:
                bad.append(f"sent {dk / 1e6:.1f} ms vs {dm / 1e6:.1f} ms after its anchor "
                           f"(tolerance {tol / 1e6:.1f} ms)")  # fmt: skip
            if k.ts is not None and m.ts is not None:
                dts = (k.ts[0] - m.ts[0]) * MS
                if abs(dts) > tolerance(m.t) + MS:
                    bad.append(f"TSval +{k.ts[0]} vs +{m.ts[0]} ms")
            if bad:
                what = f"kernel {k.text()}, model {m.text()}: {'; '.join(bad)}"
                v.diffs.append(Diff(kv, 0, f"segment {i + 1} of flow {flow}: {what}"))
            prev = (k.t, m.t)
    for i, step in enumerate(script.steps):
        if not isinstance(step, Call):
            continue
        rk, rm = kernel.results.get(i), model.results.get(i)
        if rk != rm:
            v.diffs.append(Diff(kv, step.line, f"{step.text()}: kernel {rk}, model {rm}"))
        if step.result is not None:
            for who, r in (("kernel", rk), ("model", rm)):
                if r != step.result:
                    what = f"{step.op} {step.sock} returned {r}, script says {step.result}"
                    v.diffs.append(Diff(f"{who} vs script", step.line, what))
    _compare_snapshots(script, kernel, model, v)
    if any(isinstance(s, Expect) for s in script.steps):
        for trace in (kernel, model):
            _check_expectations(script, trace, v)
    for trace in (kernel, model):
        _check_states(script, trace, v)
    return v


def against_script(script: Script, trace: Trace) -> list[Diff]:
    """One side against the script's written expectations alone: `>` lines, `= result` and
    state lines. With the model driven at the script's own times this needs no root and no
    kernel: CI runs the whole corpus that way (tests/lab/test_probe.py)."""
    v = Verdict(script=script, kernel=trace, model=trace)
    for i, step in enumerate(script.steps):
        if isinstance(step, Call) and step.result is not None:
            r = trace.results.get(i)
            if r != step.result:
                what = f"{step.op} {step.sock} returned {r}, script says {step.result}"
                v.diffs.append(Diff(f"{trace.side} vs script", step.line, what))
    if any(isinstance(s, Expect) for s in script.steps):
        _check_expectations(script, trace, v)
    _check_states(script, trace, v)
    return v.diffs


def _last_event(script: Script, trace: Trace, step: int, t: int) -> int:
    """The time of the latest event before step `step` (at `t`): an input step or a segment."""
    inputs = [i for i in range(step) if isinstance(script.steps[i], Inject | Call)]
    last = trace.step_times[inputs[-1]] if inputs else 0
    for o in trace.outs:
        if last < o.t <= t:
            last = o.t
    return last


def _compare_snapshots(script: Script, kernel: Trace, model: Trace, v: Verdict) -> None:
    kv = "kernel vs model"
    for ks, ms in zip(kernel.snapshots, model.snapshots, strict=False):
        line = script.steps[ks.step].line
        kd, md = {s.flow: s for s in ks.sockets}, {s.flow: s for s in ms.sockets}
        # The drift budget of a timer: packetdrill's tolerance of the time since what armed it.
        # A minisocket's or keepalive timer was armed by the last event (a step or a segment);
        # a retransmission timer by a chain of retransmissions since the last step, each fired
        # on the kernel's timer wheel (up to 8 jiffies late at 64..511 jiffies ahead).
        since = ms.t - _last_event(script, model, ms.step, ms.t)
        inputs = [i for i in range(ms.step) if isinstance(script.steps[i], Inject | Call)]
        since_step = ms.t - (model.step_times[inputs[-1]] if inputs else 0)
        for flow in sorted(set(kd) | set(md)):
            k, m = kd.get(flow), md.get(flow)
            if k is None or m is None:
                one = k or m
                assert one is not None
                who = "only the kernel" if k else "only the model"
                v.diffs.append(Diff(kv, line, f"{who} has {one.text()}"))
                continue
            bad = []
            if k.state != m.state:
                bad.append(f"state {k.state} vs {m.state}")
            # plus JIFFIES_SLACK: sock_diag reports whole jiffies of a counter that lags real
            # time on an idle (NOHZ) machine
            tol = tolerance(_timer_since(m, since_step, since)) + JIFFIES_SLACK + ks.span
            if k.timer != m.timer:
                bad.append(f"timer {k.timer} vs {m.timer}")
            elif k.timer and abs(k.expires_ms - m.expires_ms) * MS > tol:
                bad.append(f"timer left {k.expires_ms} ms vs {m.expires_ms} ms "
                           f"(tolerance {tol / 1e6:.0f} ms)")  # fmt: skip
            if k.timer == 1 and m.timer == 1 and k.retrans != m.retrans:
                bad.append(f"retransmissions {k.retrans} vs {m.retrans}")
            if bad:
                v.diffs.append(Diff(kv, line, f"{flow}: {'; '.join(bad)}"))
        if ks.counters != ms.counters:
            kc, mc = dict(ks.counters), dict(ms.counters)
            bad = [
                f"{c} {kc.get(c)} vs {mc.get(c)}" for c in script.counters if kc.get(c) != mc.get(c)
            ]
            v.diffs.append(Diff(kv, line, "counters " + ", ".join(bad)))


def _timer_since(m: SockState, since_step: int, since: int) -> int:
    """What a timer's drift budget is measured over. A minisocket's or keepalive timer was
    armed by the last event; a retransmission timer by the last step -- or, once it has fired,
    by a chain of retransmissions, each on the timer wheel's next bucket (up to 1/8 of its
    timeout late, kernel/time/timer.c calc_index()): the chain is about as long as the
    current timeout, so that is the interval packetdrill's tolerance applies to."""
    if m.timer != 1:
        return since
    if m.retrans:
        return max(since_step, m.expires_ms * MS)
    return since_step


def lateness(script: Script, trace: Trace, snap: Snapshot) -> int:
    """How much later than the script says (ns) a snapshot was read, measured from the last
    input step before it: a `state` line's timers are written for the script's schedule."""
    inputs = [i for i in range(snap.step) if isinstance(script.steps[i], Inject | Call)]
    if not inputs:
        return snap.t - script.steps[snap.step].t
    a = inputs[-1]
    return (snap.t - trace.step_times[a]) - (script.steps[snap.step].t - script.steps[a].t)


def _check_states(script: Script, trace: Trace, v: Verdict) -> None:
    """The `state`/`end` lines' written expectations against one side's snapshots."""
    where = f"{trace.side} vs script"
    for snap in trace.snapshots:
        step = script.steps[snap.step]
        if not isinstance(step, StateCheck):
            continue
        socks = {s.flow: s for s in snap.sockets}
        since = snap.t - _last_event(script, trace, snap.step, snap.t)
        inputs = [i for i in range(snap.step) if isinstance(script.steps[i], Inject | Call)]
        since_step = snap.t - (trace.step_times[inputs[-1]] if inputs else 0)
        for e in step.expect:
            got = socks.get(e.flow)
            if e.state == "gone":
                if got is not None:
                    v.diffs.append(Diff(where, step.line, f"{e.text()}, but {got.text()}"))
                continue
            if got is None:
                v.diffs.append(Diff(where, step.line, f"{e.text()}, but {e.flow} has no socket"))
                continue
            bad = []
            if got.state != e.state:
                bad.append(f"state {got.state}")
            if e.timer:
                # Twice the jiffies slack: the written value is itself a kernel reading.
                span = since_step if e.timer == 1 else since
                if e.timer == 1 and e.retrans:
                    span = max(span, e.ms * MS)
                tol = tolerance(span) + 2 * JIFFIES_SLACK + snap.span
                if got.timer != e.timer:
                    bad.append(f"timer {got.timer}")
                elif abs(got.expires_ms * MS - (e.ms * MS - lateness(script, trace, snap))) > tol:
                    bad.append(f"{got.expires_ms} ms left (tolerance {tol / 1e6:.0f} ms)")
            if e.retrans and got.retrans != e.retrans:
                bad.append(f"retransmissions {got.retrans}")
            if bad:
                v.diffs.append(Diff(where, step.line, f"{e.text()}, but {'; '.join(bad)}"))
        have = dict(snap.counters)
        for name, n in step.counts:
            if have.get(name) != n:
                v.diffs.append(Diff(where, step.line, f"{name}={n}, but {have.get(name)}"))


def spec_matches(spec: SegSpec, o: Out, tol: int) -> list[str]:
    """Where outbound segment `o` differs from the script's `>` line `spec` (flow not checked)."""
    bad = []
    if spec.isn is not None and abs(o.isn - spec.isn) > tol // ISN_TICK:
        bad.append(f"ISN {o.isn:+d} from the first, script {spec.isn:+d}")
    if spec.flags != o.flags:
        bad.append(f"flags {flag_text(o.flags)}, script {flag_text(spec.flags)}")
    if spec.seq != o.seq:
        bad.append(f"seq {o.seq}, script {spec.seq}")
    if spec.length != o.length:
        bad.append(f"length {o.length}, script {spec.length}")
    if spec.ack is not None and spec.ack != o.ack:
        bad.append(f"ack {o.ack}, script {spec.ack}")
    if spec.options_given:
        if (spec.ts is None) != (o.ts is None):
            bad.append("timestamp option " + ("missing" if o.ts is None else "not in the script"))
        elif (
            spec.ts is not None and o.ts is not None
            and spec.ts.ecr is not None and spec.ts.ecr != o.ts[1]
        ):  # fmt: skip
            bad.append(f"TSecr {o.ts[1]}, script {spec.ts.ecr}")
    return bad


def _check_expectations(script: Script, trace: Trace, v: Verdict) -> None:
    where = f"{trace.side} vs script"
    outs = sorted(trace.outs, key=lambda o: o.t)
    j = 0
    anchor_step = 0
    end = trace.step_times[-1]
    for i, step in enumerate(script.steps):
        if isinstance(step, Expect):
            if j >= len(outs):
                v.diffs.append(Diff(where, step.line, f"expected {step.seg.text(with_flow=True)}, "
                                                      "nothing was sent"))  # fmt: skip
                continue
            o = outs[j]
            j += 1
            bad = []
            if o.flow != step.seg.flow:
                bad.append(f"flow {o.flow}, script {step.seg.flow}")
            want = step.t - script.steps[anchor_step].t
            bad += spec_matches(step.seg, o, tolerance(want))
            got = o.t - trace.step_times[anchor_step]
            # A `>` line written later than its step is a timer's doing: TIMER_SLACK too.
            slack = _span(trace, anchor_step) + (TIMER_SLACK if want > 0 else 0)
            if abs(got - want) > tolerance(want) + slack:
                bad.append(f"sent {got / 1e6:.1f} ms after line {script.steps[anchor_step].line}, "
                           f"script {want / 1e6:.1f} ms")  # fmt: skip
            if bad:
                v.diffs.append(Diff(where, step.line, f"{o.text()}: {'; '.join(bad)}"))
            continue
        if isinstance(step, Inject | Call | StateCheck | End):
            # Everything sent before this step must have been listed by `>` lines.
            t = trace.step_times[i]
            while j < len(outs) and outs[j].t < t:
                v.diffs.append(Diff(where, step.line, f"unexpected {outs[j].text()} before it"))
                j += 1
            if isinstance(step, Inject | Call):
                anchor_step = i
    while j < len(outs):
        o = outs[j]
        a = trace.step_times[anchor_step]
        if end - o.t > tolerance(o.t - a) + TIMER_SLACK:
            v.diffs.append(Diff(where, 0, f"unexpected {o.text()} at the end"))
        j += 1


def render_verdict(v: Verdict) -> str:
    """A verdict as text: one line, then each disagreement."""
    status = "agree" if v.agrees else "DISAGREE"
    lines = [f"{v.script.name}: {status} ({len(v.kernel.outs)} segments)  {v.script.rule}"]
    lines += [f"  {d}" for d in v.diffs]
    return "\n".join(lines)


__all__ = [
    "Diff",
    "Inject",
    "Snapshot",
    "Verdict",
    "against_script",
    "compare",
    "render_verdict",
    "tolerance",
]
