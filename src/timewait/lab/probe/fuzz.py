"""Differential fuzzing: random segment and call sequences on the kernel and the model.

Theory of operation
-------------------
Hypothesis draws a *sequence*: a connection opened passively (listen, SYN, ACK, accept) or
actively (connect, SYN-ACK), with or without timestamps, then up to ten steps, each after a gap
of 0, 1, 70 or 330 ms: a segment from the peer (data, pure ACK, FIN, RST, SYN; in order, old,
beyond a hole or outside the window; acknowledging everything, nothing, part, unsent data or far
too old; with a fresh, repeated or old TSval) or a socket call (write, read, shutdown, close,
an abortive close). `sequences()` writes it as a probe script (timewait.lab.probe.script) --
what a disagreement prints, ready to add to the corpus once its answers are recorded.

Each sequence runs on the kernel (its own namespace, timewait.lab.probe.kernel) and on the model
at the kernel's times, and the two traces are compared as for any script. A disagreement fails
the example; Hypothesis then shrinks it, re-running the kernel for every candidate, and the
minimal sequence is reported with the kernel's answers written in (`runner.record()`).

What the generator stays away from, because the model leaves it out on purpose (README, "The
model", departures): SACK, window scaling and zero windows (the peer always offers 65535 and
no SACK, so the kernel uses no tail loss probes either); fast retransmit (at most two pure ACKs
per sequence, so never three duplicate ACKs); the congestion window (no write or close while
data could have been retransmitted: nothing unacknowledged older than 150 ms, at most 6000
bytes in flight, well inside the initial window of ten segments); socket memory accounting (no
in-order data with an ACK too old for RFC 5961: whether the kernel keeps it depends on
sk_forward_alloc against the segment's truesize).

Timing: both sides see every step at the same instant, but a kernel timer fires on a jiffy
boundary (4 ms), on its timer-wheel bucket (up to 1/8 of its timeout late) and a little late on
a busy machine, while the model fires it at the mean. A step that close to a timer, or an
out-of-window segment about the 500 ms tcp_invalid_ratelimit after another, could meet the
kernel on either side of it: such a run is discarded (`hypothesis.reject()`) instead of judged
(`ambiguous()`). Discards are counted and reported.

Workers: `fuzz()` runs `jobs` forked processes, each its own Hypothesis run with its own seed;
each example's kernel side is a further forked child, so a worker dies with its parent
(PR_SET_PDEATHSIG) and its children with it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from hypothesis import HealthCheck, Phase, given, reject, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky

from timewait.lab.probe import script as sc
from timewait.lab.probe.compare import Verdict, compare
from timewait.lab.probe.kernel import PR_SET_PDEATHSIG, KernelRun, _libc
from timewait.lab.probe.modelside import ModelSide
from timewait.lab.probe.trace import Trace, drive
from timewait.model.rtt import HZ, JIFFY, jiffies_ceil
from timewait.model.timerwheel import mean_fire_delay

MS: Final = 1_000_000
MASK: Final = 0xFFFFFFFF
GAPS_MS: Final = (0, 0, 1, 70, 330)  # 0 twice: most steps follow each other at once
RATELIMIT: Final = 500 * MS  # tcp_invalid_ratelimit
NO_RTO_BEFORE: Final = 150  # ms: the RTO is at least 200 ms (TCP_RTO_MIN)
MAX_IN_FLIGHT: Final = 6000
COUNTERS: Final = (
    "TCPChallengeACK", "TCPSYNChallenge", "PAWSEstab", "PAWSOldAck", "PAWSTimewait",
    "TCPACKSkippedSeq", "TCPACKSkippedChallenge", "TCPACKSkippedPAWS", "TCPACKSkippedTimeWait",
    "TCPACKSkippedFinWait2", "EmbryonicRsts", "DelayedACKLost", "TW",
)  # fmt: skip


@dataclass(slots=True)
class _Gen:
    """The generator's picture of the connection: what the peer sent, what the kernel should
    have sent (sequence numbers relative to either ISN), so that drawn choices make sense."""

    active: bool
    ts: bool
    lines: list[str] = field(default_factory=list)
    t: int = 0  # ms, script time
    gap: int = 0  # ms before the next line
    peer_nxt: int = 1
    our_nxt: int = 1
    acked: int = 1
    unacked_since: int | None = None  # ms: when the oldest unacknowledged byte left
    tsval: int = 100
    pure_acks: int = 0
    rto_risk: bool = False  # data went unacknowledged long enough for an RTO
    closed: bool = False
    shut_wr: bool = False

    @property
    def sock(self) -> str:
        return "c" if self.active else "A"

    @property
    def tag(self) -> str:
        return "[c] " if self.active else ""

    def line(self, text: str) -> None:
        gap = "+0" if self.gap == 0 else f"+{self.gap / 1000:g}"
        self.lines.append(f"{gap:<7}{text}")
        self.gap = 0

    def wait(self, ms: int) -> None:
        self.gap += ms
        self.t += ms
        if self.unacked_since is not None and self.t - self.unacked_since >= NO_RTO_BEFORE:
            self.rto_risk = True

    def may_send(self, more: int, *, fin: bool = False) -> bool:
        """No write once data could have been retransmitted (after an RTO the congestion
        window holds new data back in the kernel; the model keeps none), a FIN only with
        nothing in flight then; never too much in flight."""
        if self.closed or self.shut_wr:
            return False
        if self.rto_risk:
            return fin and self.our_nxt == self.acked
        return (self.our_nxt - self.acked) + more <= MAX_IN_FLIGHT

    def sent(self, n: int) -> None:
        if self.unacked_since is None:
            self.unacked_since = self.t
        self.our_nxt += n

    def ts_opt(self, choice: str) -> str:
        if not self.ts or choice == "none":
            return ""
        if choice == "old":
            return f" <TS val {self.tsval - 50}>"
        if choice == "fresh":
            self.tsval += 1
        return f" <TS val {self.tsval}>"

    def ack_value(self, choice: str) -> int:
        return {
            "all": self.our_nxt,
            "none": self.acked,
            "part": self.acked + 1,
            "unsent": self.our_nxt + 1000,
            "too-old": self.our_nxt - 100_000,
        }[choice]

    def took_ack(self, value: int) -> None:
        """An acceptable in-order segment acknowledged `value`."""
        if 0 < value - self.acked <= self.our_nxt - self.acked:
            self.acked = value
            self.unacked_since = None if value == self.our_nxt else self.t


ACKS: Final = ("all", "none", "part", "unsent", "too-old")
TSS: Final = ("fresh", "same", "old", "none")
SEQS: Final = ("next", "old", "hole", "far", "behind")


def _seq(g: _Gen, choice: str, length: int) -> int:
    return {
        "next": g.peer_nxt,
        "old": g.peer_nxt - max(length, 1),
        "hole": g.peer_nxt + 100,
        "far": g.peer_nxt + 200_000,
        "behind": g.peer_nxt - 200_000,
    }[choice] & MASK


def _open(g: _Gen) -> None:
    ts = ",TS val 100 ecr 0" if g.ts else ""
    if g.active:
        g.line("connect c 192.0.2.2:8080")
        g.wait(10)
        ts = ",TS val 100" if g.ts else ""
        g.line(f"< [c] S. 0:0(0) ack 1 win 65535 <mss 1460{ts}>")
    else:
        g.line("listen L 8080")
        g.line(f"< S 0:0(0) win 65535 <mss 1460{ts}>")
        g.wait(10)
        g.tsval += 1
        g.line(f"< . 1:1(0) ack 1 win 65535{g.ts_opt('same')}")
        g.line("accept A L")


@st.composite
def _step(draw: st.DrawFn, g: _Gen) -> None:
    g.wait(draw(st.sampled_from(GAPS_MS)))
    kinds = ["data", "ack", "read", "fin", "write", "close", "rst", "syn", "shutdown", "abort"]
    if g.closed:
        kinds = [k for k in kinds if k not in ("read", "write", "close", "shutdown", "abort")]
    if g.pure_acks >= 2:
        kinds.remove("ack")
    kind = draw(st.sampled_from(kinds))
    s = g.sock
    if kind == "read":
        g.line(f"read {s}")
    elif kind == "write":
        n = draw(st.sampled_from((100, 1, 1000, 2000)))
        if g.may_send(n):
            g.line(f"write {s} {n}")
            g.sent(n)
    elif kind in ("close", "shutdown", "abort"):
        how = "wr" if kind != "shutdown" else draw(st.sampled_from(("wr", "rd", "rdwr")))
        if kind == "abort":
            g.line(f"setsockopt {s} linger 1 0")
            g.line(f"close {s}")
            g.closed = True
        elif how == "rd" or g.may_send(1, fin=True):
            g.line(f"close {s}" if kind == "close" else f"shutdown {s} {how}")
            if how != "rd" and not g.shut_wr:
                g.sent(1)
                g.shut_wr = True
            g.closed = g.closed or kind == "close"
    elif kind == "rst":
        where = draw(st.sampled_from(("next", "inwin", "far")))
        seq = {"next": g.peer_nxt, "inwin": g.peer_nxt + 1, "far": g.peer_nxt + 200_000}[where]
        with_ack = draw(st.booleans())
        ack_text = f" ack {g.ack_value('all') & MASK}" if with_ack else ""
        flags = "R." if with_ack else "R"
        g.line(f"< {g.tag}{flags} {seq & MASK}:{seq & MASK}(0){ack_text} win 65535"
               f"{g.ts_opt(draw(st.sampled_from(TSS)))}")  # fmt: skip
    elif kind == "syn":
        where = draw(st.sampled_from(("next", "inwin", "old")))
        seq = {"next": g.peer_nxt, "inwin": g.peer_nxt + 1000, "old": g.peer_nxt - 1000}[where]
        g.line(f"< {g.tag}S {seq & MASK}:{seq & MASK}(0) win 65535"
               f"{g.ts_opt(draw(st.sampled_from(TSS)))}")  # fmt: skip
    else:  # data, ack, fin
        length = 0
        if kind == "data":
            length = draw(st.sampled_from((10, 1, 100, 1000)))
        elif kind == "fin":
            length = draw(st.sampled_from((0, 10)))
        where = "next" if kind == "ack" else draw(st.sampled_from(SEQS))
        acks: tuple[str, ...] = ACKS
        if where == "next" and length:
            # In-order data with a too-old ACK is kept or dropped as the socket's memory
            # accounting says (header prediction's sk_forward_alloc test): a listed departure.
            acks = tuple(a for a in ACKS if a != "too-old")
        ack_choice = draw(st.sampled_from(acks))
        ts_choice = draw(st.sampled_from(TSS))
        seq = _seq(g, where, length)
        ack = g.ack_value(ack_choice) & MASK
        flags = {"data": "P.", "ack": ".", "fin": "F."}[kind]
        g.line(f"< {g.tag}{flags} {seq}:{seq + length}({length}) ack {ack} win 65535"
               f"{g.ts_opt(ts_choice)}")  # fmt: skip
        if kind == "ack":
            g.pure_acks += 1
        if where == "next":
            g.peer_nxt += length + (1 if kind == "fin" else 0)
            if ts_choice != "old":
                g.took_ack(g.ack_value(ack_choice))


@st.composite
def sequences(draw: st.DrawFn) -> str:
    """A random sequence as probe script text (see the module docstring)."""
    g = _Gen(active=draw(st.booleans()), ts=draw(st.booleans()))
    _open(g)
    for _ in range(draw(st.integers(1, 10))):
        draw(_step(g))
    g.wait(10)
    g.line("end")
    side = "client (connect)" if g.active else "server (accept)"
    head = [
        f"rule: fuzzed sequence on a {side}, timestamps {'on' if g.ts else 'off'}",
        "source: timewait.lab.probe.fuzz (Hypothesis); the kernel is the judge",
        "counters: " + " ".join(COUNTERS),
    ]
    return "\n".join(head + g.lines) + "\n"


# -- running -------------------------------------------------------------------------------


KernelSide = Callable[[sc.Script], Trace]


def kernel_trace(script: sc.Script) -> Trace:
    """The script on this kernel (root needed), in a namespace of its own."""
    return KernelRun(script, timeout=60.0).start().result()


TIMER_GAP: Final = MS // 2  # a kernel segment this long after the last step came from a timer
MARGIN: Final = 4 * MS  # a jiffy: the kernel's timer softirq may run that much late


def _window(duration: int) -> int:
    """How far from the model's mean the kernel may fire a timer armed `duration` ahead: half a
    bucket of its timer-wheel level (2 ms up to 252 ms, 16 ms up to 2 s, 128 ms beyond) and a
    margin."""
    return mean_fire_delay(duration, HZ) - jiffies_ceil(duration) + MARGIN


def ambiguous(script: sc.Script, kernel: Trace, model: ModelSide) -> bool:
    """Could the kernel have met a step on either side of a timer? A step within the timer's
    window (`_window()`) of a deadline the model had, or within MARGIN of a segment the kernel
    sent on its own (from a timer: more than TIMER_GAP after the step before it); or two
    segments about tcp_invalid_ratelimit apart (the out-of-window and challenge ACK limit)."""
    steps = kernel.step_times
    near = [(d, _window(d - seen)) for d, seen in model.timers.items()]
    for o in kernel.outs:
        before = [t for t in steps if t <= o.t]
        if before and o.t - before[-1] > TIMER_GAP:
            near.append((o.t, MARGIN))
    for t in steps:
        if any(abs(t - d) < w for d, w in near):
            return True
    seg_times = [
        kernel.step_times[i] for i, s in enumerate(script.steps) if isinstance(s, sc.Inject)
    ]
    return any(
        abs(abs(b - a) - RATELIMIT) < MARGIN + JIFFY for i, a in enumerate(seg_times)
        for b in seg_times[i + 1 :]
    )  # fmt: skip


def judge(text: str, run_kernel: KernelSide = kernel_trace) -> Verdict | None:
    """One sequence on both sides; None if it turned out ambiguous (see `ambiguous()`)."""
    script = sc.parse(text, name="fuzz")
    kernel = run_kernel(script)
    side = ModelSide(script)
    snaps = [s.t for s in kernel.snapshots]
    model = drive(script, side, "model", times=kernel.step_times, snap_times=snaps)
    if ambiguous(script, kernel, side):
        return None
    return compare(script, kernel, model)


class Disagreement(AssertionError):
    """A sequence on which the kernel and the model disagree; the message is the script with
    the kernel's answers and the differences as comments."""


def explain(v: Verdict) -> str:
    """A failing sequence as a ready-to-add script: the kernel's answers written in (as
    --record does), the disagreements as comments on top."""
    from timewait.lab.probe.runner import record

    script = v.script
    named = sc.Script(
        name="fuzz", rule=script.rule, source=script.source, sysctls=script.sysctls,
        counters=script.counters, steps=script.steps,
        comments=("kernel vs model (timewait lab probe --fuzz):", *(str(d) for d in v.diffs)),
    )  # fmt: skip
    return record(named, v.kernel)


@dataclass(slots=True)
class FuzzResult:
    examples: int = 0  # sequences judged
    ambiguous: int = 0  # sequences discarded (a step next to a timer)
    unstable: int = 0  # of those, disagreements that did not come back on a second run
    failures: list[str] = field(default_factory=list)  # shrunk scripts, kernel answers in
    errors: list[str] = field(default_factory=list)  # anything else that went wrong

    def add(self, other: FuzzResult) -> None:
        self.examples += other.examples
        self.ambiguous += other.ambiguous
        self.unstable += other.unstable
        self.failures += other.failures
        self.errors += other.errors


def fuzz_one_worker(
    examples: int, seed_value: int, run_kernel: KernelSide = kernel_trace
) -> FuzzResult:
    """One Hypothesis run of `examples` sequences in this process."""
    res = FuzzResult()
    shrinking = {"on": False}

    @seed(seed_value)
    @settings(
        max_examples=examples, deadline=None, database=None, derandomize=False,
        phases=(Phase.generate, Phase.shrink), report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck), print_blob=False,
    )  # fmt: skip
    @given(sequences())
    def check(text: str) -> None:
        v = judge(text, run_kernel)
        if v is not None and not v.agrees:
            # A rule differs the same way every time; a disagreement that does not come back
            # on a second run was timing (a step against a timer the kernel fired early or
            # late): counted as unstable, not judged.
            again = judge(text, run_kernel)
            if again is None or again.agrees:
                res.unstable += 1
                v = None
        if v is None:
            res.ambiguous += 1
            reject()
        if not shrinking["on"]:
            res.examples += 1
        if not v.agrees:
            shrinking["on"] = True
            last["text"] = explain(v)
            raise Disagreement(last["text"])

    last: dict[str, str] = {}
    try:
        check()
    except Disagreement as e:
        res.failures.append(str(e))
    except Flaky as e:
        # The shrunk sequence turned ambiguous when Hypothesis replayed it: report the last
        # disagreement seen (it had come back on a second run), with the reason.
        if "text" in last:
            res.failures.append(f"# (Hypothesis: {type(e).__name__} on replay)\n{last['text']}")
        else:
            res.errors.append(f"{type(e).__name__}: {e}")
    except Exception as e:
        res.errors.append(f"{type(e).__name__}: {e}")
    return res


def _worker(examples: int, seed_value: int, wfd: int, parent: int) -> None:  # pragma: no cover
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
    try:
        res = fuzz_one_worker(examples, seed_value)
    except BaseException as e:
        res = FuzzResult(errors=[f"{type(e).__name__}: {e}"])
    with os.fdopen(wfd, "wb") as w:
        w.write(pickle.dumps(res))
    os._exit(0)


def fuzz(
    examples: int,
    *,
    jobs: int = 8,
    base_seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> FuzzResult:
    """`examples` sequences over `jobs` worker processes (root needed); each worker a seed of
    its own, `base_seed + i`."""
    from timewait.lab.namespaces import require_root, signals_as_exit

    require_root()
    total = FuzzResult()
    shares = [examples // jobs + (1 if i < examples % jobs else 0) for i in range(jobs)]
    with signals_as_exit(), _workers(shares, base_seed) as pipes:
        left = dict(pipes)
        while left:
            ready, _, _ = select.select(list(left), [], [])
            for fd in ready:
                with os.fdopen(fd, "rb") as r:
                    data = r.read()
                del left[fd]
                res = pickle.loads(data) if data else FuzzResult(errors=["a worker died"])
                total.add(res)
                if progress:
                    progress(f"fuzz: {total.examples} sequences, {len(left)} workers left")
    return total


@contextlib.contextmanager
def _workers(shares: list[int], base_seed: int) -> Iterator[dict[int, int]]:
    pids: list[int] = []
    pipes: dict[int, int] = {}
    parent = os.getpid()
    try:
        for i, n in enumerate(shares):
            if n == 0:
                continue
            rfd, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - worker
                os.close(rfd)
                _worker(n, base_seed + i, wfd, parent)
            os.close(wfd)
            pids.append(pid)
            pipes[rfd] = pid
        yield pipes
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def render(res: FuzzResult) -> str:
    lines = [
        f"fuzz: {res.examples} sequences judged, {len(res.failures)} disagreement(s), "
        f"{res.ambiguous} discarded as ambiguous (a step next to a timer; {res.unstable} of "
        "them disagreed once and agreed when run again)"
    ]
    for f in res.failures:
        lines += ["", "--- shrunk sequence, ready to add (kernel answers written in):", f]
    for e in res.errors:
        lines.append(f"error: {e}")
    return "\n".join(lines)


def to_json(res: FuzzResult) -> dict[str, Any]:
    return {
        "examples": res.examples,
        "ambiguous": res.ambiguous,
        "unstable": res.unstable,
        "disagreements": res.failures,
        "errors": res.errors,
    }
