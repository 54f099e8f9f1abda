"""Probe scripts: one conformance case per file, readable by a person, run by both sides.

Theory of operation
-------------------
A script is a header and a timeline. The header says what the case is about and how the
namespace is set up:

    rule: a retransmitted FIN in TIME_WAIT is re-ACKed and the 60 s timer starts again
    source: K tcp_minisocks.c tcp_timewait_state_process() (TCP_TW_ACK); ref 1.3 row 5
    sysctl: tcp_timestamps=1 tcp_rfc1337=0
    counters: TW

The timeline has one event per line, each with a time: absolute seconds (`0.5`) or relative to
the previous line (`+0.04`). The ideas are packetdrill's (simulators-and-tests.md 1.3), the
syntax our own:

    0     listen L 8080                                   socket(), bind(:8080), listen()
    +0    < S 0:0(0) win 65535 <mss 1460,TS val 100 ecr 0>  inject a segment (remote -> local)
    +0    > S. 0:0(0) ack 1 <TS val 0 ecr 100>              expect the next outbound segment
    +0    accept A L = ok                                  a socket call and its result
    +0.5  state                                            compare sockets and timers now

Segments are written `FLAGS START:END(LEN) [ack N] [win N] [<options>]` with packetdrill's
flags (S F R P U, `.` for ACK). Sequence numbers of inbound segments are literal (the remote
ISN is whatever the script says, usually 0); acknowledgement numbers of inbound segments and
sequence numbers of outbound ones are relative to the local ISN of the flow, learned from its
first outbound SYN or SYN-ACK (absolute until then). TSvals of outbound segments are relative to
the flow's first local TSval; an inbound `TS val V` echoes the latest local TSval unless it
says `ecr E` (literal) or `ecr +N`/`ecr -N` (relative to that latest TSval).

A flow is one four-tuple. `A` is 192.0.2.2:40000 -> local port 8080; `flow B 192.0.2.3:40001 >
8080` declares another; `connect c 192.0.2.2:8080` declares flow `c` with whatever local port
the side picks. A segment line may name its flow (`< [B] S 0:0(0)`); without a name it belongs
to the last flow the script named (a declaration, a connect, or a tag), A at first.

Expectations (`>` lines, `= result` after a call) are optional: the kernel and the model are
always compared with each other, segment by segment (timewait.lab.probe.compare). Written
expectations pin the rule as well, and `timewait lab probe --record` fills them in from the
kernel, which is the judge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Final

from timewait.errors import TimewaitError
from timewait.lab.probe.packet import flag_text, parse_flags

LOCAL_ADDR: Final = "192.0.2.1"
REMOTE_ADDR: Final = "192.0.2.2"
DEFAULT_FLOW: Final = "A"
DEFAULT_RPORT: Final = 40000
DEFAULT_LPORT: Final = 8080

SEC: Final = 1_000_000_000


class ScriptError(TimewaitError):
    """A probe script does not parse; the message names the file and line."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TsSpec:
    """The timestamp option of a script segment.

    Inbound: `val` is the TSval sent; `ecr` None echoes the flow's latest local TSval, else it is
    literal (`ecr_rel` False) or relative to that latest TSval (`ecr_rel` True).
    Outbound: `val` is relative to the flow's first local TSval (None: not checked), `ecr` is
    literal (None: not checked).
    """

    val: int | None
    ecr: int | None = None
    ecr_rel: bool = False

    def text(self, inbound: bool) -> str:
        val = "*" if self.val is None else str(self.val)
        if self.ecr is None:
            return f"TS val {val}" if inbound else f"TS val {val} ecr *"
        ecr = f"{self.ecr:+d}" if self.ecr_rel else str(self.ecr)
        return f"TS val {val} ecr {ecr}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SegSpec:
    """One segment line: `<` inbound (injected), `>` outbound (expected)."""

    inbound: bool
    flow: str
    flags: int
    seq: int
    length: int
    ack: int | None = None
    win: int | None = None
    mss: int | None = None
    sack_ok: bool = False
    wscale: int | None = None
    ts: TsSpec | None = None
    options_given: bool = False  # `<...>` written: for `>` lines, TS presence is then checked
    # `>` lines of a SYN: the ISN of a new incarnation minus the flow's first (`isn +65539`
    # for a reopened TIME_WAIT); None (`isn *`) accepts any.
    isn: int | None = 0

    def text(self, *, with_flow: bool = False) -> str:
        parts = ["<" if self.inbound else ">"]
        if with_flow:
            parts.append(f"[{self.flow}]")
        parts.append(flag_text(self.flags))
        parts.append(f"{self.seq}:{self.seq + self.length}({self.length})")
        if self.ack is not None:
            parts.append(f"ack {self.ack}")
        if self.win is not None:
            parts.append(f"win {self.win}")
        if self.isn != 0:
            parts.append("isn *" if self.isn is None else f"isn {self.isn:+d}")
        if self.options_given:
            opts = []
            if self.mss is not None:
                opts.append(f"mss {self.mss}")
            if self.sack_ok:
                opts.append("sackOK")
            if self.ts is not None:
                opts.append(self.ts.text(self.inbound))
            if self.wscale is not None:
                opts.append(f"wscale {self.wscale}")
            parts.append(f"<{','.join(opts)}>")
        return " ".join(parts)


# Socket calls: name -> (minimum, maximum) number of arguments after the socket name.
CALLS: Final = {
    "socket": (0, 0),
    "setsockopt": (1, 3),
    "bind": (1, 2),
    "listen": (0, 3),
    "connect": (1, 1),
    "accept": (1, 1),
    "write": (1, 1),
    "read": (0, 1),
    "shutdown": (1, 1),
    "close": (0, 0),
}
SOCKOPTS: Final = ("reuseaddr", "reuseport", "linger", "linger2")


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One timeline line. `t` is script time in ns; `line` its line number (1-based)."""

    t: int
    line: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Inject(Step):
    seg: SegSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class Expect(Step):
    seg: SegSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class Call(Step):
    """A socket call on socket `sock` with its arguments; `result` is the written expectation."""

    op: str
    sock: str
    args: tuple[str, ...]
    result: str | None = None

    def text(self) -> str:
        res = f" = {self.result}" if self.result is not None else ""
        return " ".join([self.op, self.sock, *self.args]) + res


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowDecl(Step):
    name: str
    raddr: str
    rport: int
    lport: int


TIMER_KINDS: Final = {1: "rto", 2: "keepalive", 3: "tw", 4: "probe"}


@dataclass(frozen=True, slots=True, kw_only=True)
class SockExpect:
    """`FLOW=STATE[@KIND:MSms][,retrans=N]` on a state line; STATE `gone` says the flow has no
    socket at all. KIND is rto, keepalive, tw or probe (sock_diag's idiag_timer 1..4)."""

    flow: str
    state: str
    timer: int = 0
    ms: int = 0
    retrans: int = 0

    def text(self) -> str:
        out = f"{self.flow}={self.state}"
        if self.timer:
            out += f"@{TIMER_KINDS[self.timer]}:{self.ms}ms"
        if self.retrans:
            out += f",retrans={self.retrans}"
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class StateCheck(Step):
    """Compare every socket of the script's flows, their timers, and the named counters; the
    `expect` entries (sockets) and `counts` (COUNTER=N, deltas since the start) are checked
    against each side as well."""

    expect: tuple[SockExpect, ...] = ()
    counts: tuple[tuple[str, int], ...] = ()

    def text(self) -> str:
        items = [e.text() for e in self.expect] + [f"{k}={v}" for k, v in self.counts]
        return " ".join([self.word, *items])

    @property
    def word(self) -> str:
        return "state"


@dataclass(frozen=True, slots=True, kw_only=True)
class End(StateCheck):
    """The script's end time (otherwise the last line's time), with its own expectations."""

    @property
    def word(self) -> str:
        return "end"


_SOCK_EXPECT = re.compile(
    r"^(?P<flow>[^=@,]+)=(?P<state>[A-Za-z0-9-]+)"
    r"(?:@(?P<kind>rto|keepalive|tw|probe):(?P<ms>\d+)ms)?(?:,retrans=(?P<rtx>\d+))?$"
)


def _parse_state(
    words: list[str], line: int
) -> tuple[tuple[SockExpect, ...], tuple[tuple[str, int], ...]]:
    socks: list[SockExpect] = []
    counts: list[tuple[str, int]] = []
    kinds = {v: k for k, v in TIMER_KINDS.items()}
    for w in words:
        name, eq, value = w.partition("=")
        if eq and value.lstrip("-").isdigit():
            counts.append((name, int(value)))
            continue
        m = _SOCK_EXPECT.match(w)
        if not m:
            raise ScriptError(
                f"line {line}: expected FLOW=STATE[@KIND:MSms][,retrans=N] or COUNTER=N, got {w!r}"
            )
        socks.append(SockExpect(
            flow=m["flow"], state=m["state"], timer=kinds[m["kind"]] if m["kind"] else 0,
            ms=int(m["ms"] or 0), retrans=int(m["rtx"] or 0),
        ))  # fmt: skip
    return tuple(socks), tuple(counts)


@dataclass(frozen=True, slots=True, kw_only=True)
class Script:
    name: str
    rule: str
    source: str
    sysctls: tuple[tuple[str, str], ...]
    counters: tuple[str, ...]
    steps: tuple[Step, ...]
    path: str = ""
    comments: tuple[str, ...] = field(default=())

    @property
    def end(self) -> int:
        """Script time at which both sides stop and compare the end state."""
        return self.steps[-1].t if self.steps else 0

    def counter_names(self) -> tuple[str, ...]:
        """The header's counters and any a state line checks, in that order."""
        names = list(self.counters)
        for s in self.steps:
            if isinstance(s, StateCheck):
                names += [k for k, _ in s.counts if k not in names]
        return tuple(names)

    def flows(self) -> dict[str, tuple[str, int, int | None]]:
        """Flow name -> (remote address, remote port, local port or None for connect())."""
        out: dict[str, tuple[str, int, int | None]] = {
            DEFAULT_FLOW: (REMOTE_ADDR, DEFAULT_RPORT, DEFAULT_LPORT)
        }
        for s in self.steps:
            if isinstance(s, FlowDecl):
                out[s.name] = (s.raddr, s.rport, s.lport)
            elif isinstance(s, Call) and s.op == "connect":
                addr, port = split_endpoint(s.args[0], s.line)
                out[s.sock] = (addr, port, None)
        return out


_TIME = re.compile(r"^(\+?)(\d+(?:\.\d*)?|\.\d+)$")
_SEG = re.compile(r"^(\d+):(\d+)\((\d+)\)$")


def parse_time(token: str, prev: int, line: int) -> int:
    m = _TIME.match(token)
    if not m:
        raise ScriptError(f"line {line}: bad time {token!r} (use 0.5 or +0.04)")
    try:
        ns = int(Decimal(m.group(2)) * SEC)
    except InvalidOperation:
        raise ScriptError(f"line {line}: bad time {token!r}") from None
    t = prev + ns if m.group(1) else ns
    if t < prev:
        raise ScriptError(f"line {line}: time {token} goes back before {prev / SEC:g} s")
    return t


def split_endpoint(text: str, line: int) -> tuple[str, int]:
    addr, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ScriptError(f"line {line}: expected ADDR:PORT, got {text!r}")
    return addr, int(port)


def _parse_options(text: str, inbound: bool, line: int) -> dict[str, object]:
    out: dict[str, object] = {}
    for raw in text.split(","):
        tok = raw.split()
        if not tok:
            continue
        kind = tok[0]
        if kind == "nop" or kind == "eol":
            continue
        if kind == "sackOK":
            out["sack_ok"] = True
        elif kind in ("mss", "wscale") and len(tok) == 2 and tok[1].isdigit():
            out[kind] = int(tok[1])
        elif kind == "TS" and len(tok) >= 3 and tok[1] == "val":
            val = None if tok[2] == "*" else int(tok[2])
            if val is None and inbound:
                raise ScriptError(f"line {line}: an inbound TS val must be a number")
            ecr: int | None = None
            rel = False
            if len(tok) == 5 and tok[3] == "ecr":
                e = tok[4]
                if e == "*":
                    ecr = None
                else:
                    rel = e[0] in "+-" and inbound
                    ecr = int(e)
            elif len(tok) != 3:
                raise ScriptError(f"line {line}: bad TS option {raw.strip()!r}")
            out["ts"] = TsSpec(val=val, ecr=ecr, ecr_rel=rel)
        else:
            raise ScriptError(f"line {line}: unknown option {raw.strip()!r}")
    return out


def parse_segment(words: list[str], inbound: bool, flow: str, line: int) -> SegSpec:
    """`FLAGS START:END(LEN) [ack N] [win N] [<options>]` (after the `<`/`>` and flow tag)."""
    text = " ".join(words)
    opts: dict[str, object] = {}
    given = False
    if "<" in text:
        head, _, tail = text.partition("<")
        if not tail.endswith(">"):
            raise ScriptError(f"line {line}: options must end with '>'")
        opts = _parse_options(tail[:-1], inbound, line)
        given = True
        words = head.split()
    if len(words) < 2:
        raise ScriptError(f"line {line}: a segment needs FLAGS and START:END(LEN)")
    try:
        flags = parse_flags(words[0])
    except ValueError as e:
        raise ScriptError(f"line {line}: {e}") from None
    m = _SEG.match(words[1])
    if not m:
        raise ScriptError(f"line {line}: bad sequence range {words[1]!r} (use 1:11(10))")
    start, end, length = (int(g) for g in m.groups())
    if end - start != length:
        raise ScriptError(f"line {line}: {words[1]} is {end - start} bytes, not {length}")
    ack = win = None
    isn: int | None = 0
    rest = words[2:]
    while rest:
        if len(rest) >= 2 and rest[0] == "isn" and not inbound:
            isn = None if rest[1] == "*" else int(rest[1])
        elif len(rest) < 2 or not rest[1].lstrip("-").isdigit():
            raise ScriptError(f"line {line}: expected `ack N` or `win N`, got {' '.join(rest)!r}")
        elif rest[0] == "ack":
            ack = int(rest[1])
        elif rest[0] == "win":
            win = int(rest[1])
        else:
            raise ScriptError(f"line {line}: unknown field {rest[0]!r}")
        rest = rest[2:]
    ts = opts.get("ts")
    return SegSpec(
        inbound=inbound, flow=flow, flags=flags, seq=start, length=length, ack=ack, win=win,
        mss=opts.get("mss"), sack_ok=bool(opts.get("sack_ok")),  # type: ignore[arg-type]
        wscale=opts.get("wscale"), ts=ts,  # type: ignore[arg-type]
        options_given=given, isn=isn,
    )  # fmt: skip


def parse(text: str, *, name: str = "<script>", path: str = "") -> Script:
    """Parse a script; raises ScriptError naming the line."""
    try:
        return _parse(text, name=name, path=path)
    except ScriptError as e:
        raise ScriptError(f"{path or name}: {e}") from None


def _parse(text: str, *, name: str, path: str) -> Script:
    header: dict[str, str] = {}
    comments: list[str] = []
    steps: list[Step] = []
    t = 0
    flow = DEFAULT_FLOW
    flows = {DEFAULT_FLOW}
    sockets: set[str] = set()
    for n, raw in enumerate(text.splitlines(), start=1):
        body = raw.split("#", 1)[0].strip()
        if not body:
            if raw.strip().startswith("#") and not steps:
                comments.append(raw.strip()[1:].strip())
            continue
        key, colon, value = body.partition(":")
        if colon and key in ("rule", "source", "sysctl", "counters"):
            header[key] = value.strip()
            continue
        if body == "---":
            continue
        words = body.split()
        t = parse_time(words[0], t, n)
        words = words[1:]
        if not words:
            raise ScriptError(f"line {n}: nothing after the time")
        kind = words[0]
        if kind in ("<", ">"):
            inbound = kind == "<"
            words = words[1:]
            if words and words[0].startswith("[") and words[0].endswith("]"):
                flow = words[0][1:-1]
                if flow not in flows:
                    raise ScriptError(f"line {n}: unknown flow {flow!r} (declare it first)")
                words = words[1:]
            seg = parse_segment(words, inbound, flow, n)
            steps.append(Inject(t=t, line=n, seg=seg) if inbound else Expect(t=t, line=n, seg=seg))
        elif kind == "flow":
            # flow NAME ADDR:PORT > PORT
            if len(words) != 5 or words[3] != ">" or not words[4].isdigit():
                raise ScriptError(f"line {n}: use `flow NAME ADDR:PORT > LOCALPORT`")
            raddr, rport = split_endpoint(words[2], n)
            steps.append(
                FlowDecl(t=t, line=n, name=words[1], raddr=raddr, rport=rport, lport=int(words[4]))
            )
            flow = words[1]
            flows.add(flow)
        elif kind in ("state", "end"):
            socks, counts = _parse_state(words[1:], n)
            cls = StateCheck if kind == "state" else End
            steps.append(cls(t=t, line=n, expect=socks, counts=counts))
        elif kind in CALLS:
            call = _parse_call(words, n, t)
            if call.op == "connect":
                flow = call.sock
                flows.add(flow)
            if call.op in ("socket", "listen", "accept"):
                sockets.add(call.sock)
            elif call.sock not in sockets and call.op not in ("bind", "setsockopt", "connect"):
                raise ScriptError(f"line {n}: socket {call.sock!r} was never opened")
            else:
                sockets.add(call.sock)
            steps.append(call)
        else:
            raise ScriptError(f"line {n}: unknown event {kind!r}")
    sysctls = []
    for item in header.get("sysctl", "").split():
        k, eq, v = item.partition("=")
        if not eq:
            raise ScriptError(f"sysctl {item!r}: use name=value")
        sysctls.append((k.removeprefix("net.ipv4."), v.replace(",", " ")))
    if not header.get("rule"):
        raise ScriptError("the header needs a `rule:` line (the rule this case checks)")
    return Script(
        name=name, rule=header.get("rule", ""), source=header.get("source", ""),
        sysctls=tuple(sysctls), counters=tuple(header.get("counters", "").split()),
        steps=tuple(steps), path=path, comments=tuple(comments),
    )  # fmt: skip


def _parse_call(words: list[str], n: int, t: int) -> Call:
    op = words[0]
    result = None
    if "=" in words:
        i = words.index("=")
        if i != len(words) - 2:
            raise ScriptError(f"line {n}: `= RESULT` must end the line")
        result = words[-1]
        words = words[:i]
    if len(words) < 2:
        raise ScriptError(f"line {n}: `{op}` needs a socket name")
    sock, args = words[1], tuple(words[2:])
    lo, hi = CALLS[op]
    if not lo <= len(args) <= hi:
        raise ScriptError(f"line {n}: `{op}` takes {lo}..{hi} arguments after the socket")
    if op == "setsockopt" and args[0] not in SOCKOPTS:
        raise ScriptError(f"line {n}: unknown option {args[0]!r} (one of {', '.join(SOCKOPTS)})")
    if op == "connect":
        split_endpoint(args[0], n)
    if op == "shutdown" and args[0] not in ("wr", "rd", "rdwr"):
        raise ScriptError(f"line {n}: shutdown takes wr, rd or rdwr")
    return Call(t=t, line=n, op=op, sock=sock, args=args, result=result)


def load(path: str | Path) -> Script:
    p = Path(path)
    return parse(p.read_text(), name=p.stem, path=str(p))


def format_time(t: int, prev: int) -> str:
    d = t - prev
    if d == 0:
        return "+0"
    s = f"{Decimal(d) / SEC:f}".rstrip("0").rstrip(".")
    return f"+{s}"


def format_script(script: Script, steps: list[tuple[int, str]] | None = None) -> str:
    """The script as text. `steps` replaces the timeline with (time ns, text) lines (what
    --record and the fuzzer print); each line's time is written relative to the previous."""
    out = [f"# {c}" if c else "#" for c in script.comments]
    out.append(f"rule: {script.rule}")
    if script.source:
        out.append(f"source: {script.source}")
    if script.sysctls:
        out.append("sysctl: " + " ".join(f"{k}={v.replace(' ', ',')}" for k, v in script.sysctls))
    if script.counters:
        out.append("counters: " + " ".join(script.counters))
    lines = steps if steps is not None else [(s.t, step_text(s)) for s in script.steps]
    prev = 0
    for t, text in lines:
        out.append(f"{format_time(t, prev):<8}{text}")
        prev = t
    return "\n".join(out) + "\n"


def step_text(s: Step) -> str:
    if isinstance(s, Inject | Expect):
        return s.seg.text(with_flow=True)
    if isinstance(s, Call):
        return s.text()
    if isinstance(s, FlowDecl):
        return f"flow {s.name} {s.raddr}:{s.rport} > {s.lport}"
    if isinstance(s, StateCheck):
        return s.text()
    return "end"
