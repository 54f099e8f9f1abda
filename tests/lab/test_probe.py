"""`timewait lab probe` without root: the codec, the script format, the comparison, the
corpus's coverage of the reference, the model against every recorded script, and the fuzzer's
generator and shrinking (against a deliberately broken model instead of the kernel)."""

from __future__ import annotations

import io
import json
import struct
from dataclasses import replace

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from timewait.lab.command import lab_group
from timewait.lab.probe import fuzz, report, runner
from timewait.lab.probe import script as sc
from timewait.lab.probe.compare import MS, against_script, compare, tolerance
from timewait.lab.probe.modelside import ModelSide
from timewait.lab.probe.packet import Options, Packet, checksum, flag_text, parse_flags
from timewait.lab.probe.trace import Out, Trace, drive

# -- the corpus covers the reference ----------------------------------------------------------

# Every row of the decision tables in linux-timewait.md sections 1.3, 1.4, 3, 5, 6 and 8, with
# the script that checks it on the kernel. A renamed or removed script fails here.
REFERENCE_ROWS: dict[str, tuple[str, ...]] = {
    "1.3 bare ACK at rcv_nxt: nothing sent, timer restarted": ("tw-bare-ack-restarts-timer",),
    "1.3 RST at rcv_nxt, tcp_rfc1337=0: killed": ("tw-rst-kills-rfc1337-off",),
    "1.3 RST at rcv_nxt, tcp_rfc1337=1: ignored": ("tw-rst-ignored-rfc1337-on",),
    "1.3 RST elsewhere or PAWS-rejected: dropped": (
        "tw-rst-other-seq-dropped",
        "tw-rst-paws-rejected",
    ),
    "1.3 retransmitted FIN: ACK, restart": ("tw-fin-retransmit-reacked",),
    "1.3 data, old or new: ACK, restart": ("tw-data-gets-ack-not-rst", "tw-old-data-acked"),
    "1.3 other segments with ACK: rate-limited ACK, restart": ("tw-oow-ack-rate-limited",),
    "1.3 no ACK flag: ACK, no restart": ("tw-no-ack-segment-no-restart",),
    "1.3 PAWS-rejected: ACK, restart, PAWSTimewait": ("tw-paws-reject",),
    "1.3 SYN with higher seq or newer TSval: reopened": (
        "tw-syn-higher-seq-reopens",
        "tw-syn-newer-tsval-reopens",
    ),
    "1.3 SYN failing the test: ACK, no restart": (
        "tw-syn-lower-seq-no-ts-acked",
        "tw-syn-older-tsval-paws",
    ),
    "1.3 TCP_TW_SYN without a listener: ACK": ("tw-syn-no-listener-acked",),
    "1.4 PAWS-rejected or outside the window: rate-limited ACK": (
        "fw2-paws-reject-acked",
        "fw2-out-of-window-acked",
        "fw2-out-of-window-rst-acked",
    ),
    "1.4 in-window RST: killed": ("fw2-rst-in-window-kills",),
    "1.4 SYN at or after rcv_nxt: RST": ("fw2-syn-in-window-resets",),
    "1.4 no ACK, duplicate ACK: dropped": ("fw2-dup-ack-dropped",),
    "1.4 new data or FIN beyond rcv_nxt: RST": (
        "fw2-new-data-resets",
        "fw2-fin-beyond-rcv-nxt-resets",
    ),
    "1.4 FIN at rcv_nxt: TIME_WAIT, 60 s": ("fw2-fin-enters-time-wait",),
    "1.4 timer never extended: dies at tcp_fin_timeout": ("fw2-minisocket-timer-fin-timeout",),
    "3 tcp_tw_reuse=0: EADDRNOTAVAIL": ("reuse-0-eaddrnotavail",),
    "3 tcp_tw_reuse=1 after the delay, ISN tw_snd_nxt+65537": ("reuse-1-takes-over-after-delay",),
    "3 tcp_tw_reuse=2: loopback only": ("reuse-2-not-for-tun",),
    "3 timestamps required": ("reuse-needs-timestamps",),
    "3 tcp_tw_reuse_delay": ("reuse-delay-setting",),
    "3 FIN_WAIT2 minisockets never reused": ("reuse-fin-wait2-never",),
    "3 bound socket: sysctl ignored, timestamps still needed": (
        "reuse-bound-port-ignores-sysctl",
        "reuse-bound-port-no-ts-fails",
    ),
    "5 tcp_max_tw_buckets: overflow skips TIME_WAIT": (
        "buckets-zero-skips-time-wait",
        "buckets-one-keeps-first",
    ),
    "5 FIN_WAIT2 minisockets count too": ("buckets-fin-wait2-counts",),
    "6 tcp_rfc1337 only for TIME_WAIT's RST at rcv_nxt": (
        "tw-rst-kills-rfc1337-off",
        "tw-rst-ignored-rfc1337-on",
        "fw2-rst-in-window-kills",
    ),
    "8 restart over TIME_WAIT children: SO_REUSEADDR matrix": (
        "bind-restart-old0-new0",
        "bind-restart-old0-new1",
        "bind-restart-old1-new0",
        "bind-restart-old1-new1",
    ),
    "8 SO_REUSEPORT: restart, shared listener": (
        "bind-restart-reuseport",
        "bind-reuseport-shares-listener",
    ),
    "8 a live listener blocks SO_REUSEADDR": ("bind-live-listener-blocks-reuseaddr",),
    "8 SO_REUSEADDR for bind-before-connect": ("bind-reuseaddr-shares-client-port",),
    "8 bind to a TIME_WAIT's port without SO_REUSEADDR": ("bind-timewait-port-no-reuseaddr",),
    "8 SO_LINGER {1,0}: RST from every tcp_need_reset() state": (
        "close-linger-zero-rst",
        "close-linger-zero-in-close-wait",
        "linger-zero-before-data",
        "linger-zero-unacked-data",
        "linger-zero-in-fin-wait-1",
        "linger-zero-in-fin-wait-2",
    ),
    "8 close() with unread data: RST": ("close-unread-data-rst",),
}


def test_corpus_is_large_enough_and_every_script_says_its_rule() -> None:
    """Issue 12: at least 80 scripts, each with a one-line rule and its kernel source."""
    scripts = runner.corpus()
    assert len(scripts) >= 80
    assert len({s.name for s in scripts}) == len(scripts)
    for s in scripts:
        assert s.rule and "\n" not in s.rule, s.name
        assert s.source, s.name


def test_corpus_covers_every_row_of_the_reference_tables() -> None:
    names = {s.name for s in runner.corpus()}
    missing = {row: [n for n in want if n not in names] for row, want in REFERENCE_ROWS.items()}
    assert {row: m for row, m in missing.items() if m} == {}


@pytest.mark.parametrize("script", runner.corpus(), ids=lambda s: s.name)
def test_model_alone_reproduces_every_recorded_script(script: sc.Script) -> None:
    """Every script holds the kernel's answers (`--record`); the model run at the script's own
    times must give them too, within the same tolerances -- no root, no kernel needed."""
    trace = drive(script, ModelSide(script), "model")
    assert [str(d) for d in against_script(script, trace)] == []


# -- packets ---------------------------------------------------------------------------------


@given(
    seq=st.integers(0, 2**32 - 1),
    ack=st.integers(0, 2**32 - 1),
    flags=st.integers(0, 0x3F),
    window=st.integers(0, 65535),
    payload=st.binary(max_size=64),
    mss=st.none() | st.integers(0, 65535),
    sack=st.booleans(),
    ts=st.none() | st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    wscale=st.none() | st.integers(0, 14),
)
def test_packet_encode_decode_round_trip(
    seq: int,
    ack: int,
    flags: int,
    window: int,
    payload: bytes,
    mss: int | None,
    sack: bool,
    ts: tuple[int, int] | None,
    wscale: int | None,
) -> None:
    p = Packet(
        src="192.0.2.2", sport=40000, dst="192.0.2.1", dport=8080, seq=seq, ack=ack,
        flags=flags, window=window, payload=payload,
        options=Options(mss=mss, sack_ok=sack, ts=ts, wscale=wscale),
    )  # fmt: skip
    raw = p.encode()
    assert Packet.decode(raw) == p
    assert checksum(raw[:20]) == 0  # the IPv4 header checksum verifies
    tcp = raw[20:]
    pseudo = raw[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
    assert checksum(pseudo + tcp) == 0  # and so does the TCP one


def test_options_use_linux_layout() -> None:
    """MSS, then SACK-permitted folded into the timestamp's padding (tcp_options_write())."""
    raw = Options(mss=1460, sack_ok=True, ts=(1, 2)).encode()
    assert raw[:4] == b"\x02\x04\x05\xb4" and raw[4:6] == b"\x04\x02" and raw[6] == 8
    assert len(raw) % 4 == 0


def test_decode_refuses_what_is_not_ipv4_tcp() -> None:
    assert Packet.decode(b"\x60" + bytes(59)) is None  # IPv6
    udp = bytearray(Packet(src="1.2.3.4", sport=1, dst="5.6.7.8", dport=2, seq=0).encode())
    udp[9] = 17
    assert Packet.decode(bytes(udp)) is None


@given(st.sets(st.sampled_from("SFRPU.")))
def test_flag_text_round_trip(letters: set[str]) -> None:
    bits = parse_flags("".join(letters)) if letters else 0
    assert parse_flags(flag_text(bits)) == bits


# -- the script format -----------------------------------------------------------------------

EXAMPLE = """\
# a comment kept with the header
rule: a retransmitted FIN in TIME_WAIT is re-ACKed and the timer restarts
source: K tcp_minisocks.c tcp_timewait_state_process()
sysctl: tcp_rfc1337=0 ip_local_port_range=40000,40010
counters: TW
0      listen L 8080 = ok
+0     < S 0:0(0) win 65535 <mss 1460,sackOK,TS val 100 ecr 0,wscale 7>
+0     > S. 0:0(0) ack 1 <mss 1460,TS val 0 ecr 100>
+0.01  < . 1:1(0) ack 1 win 65535 <TS val 101>
+0     accept A L
+0     flow B 192.0.2.3:40001 > 8080
+0     < [B] S 7:7(0) win 65535
+0.5   state A=ESTABLISHED@rto:200ms,retrans=1 B=gone TW=0
1.0    end
"""


def test_script_parses_every_kind_of_line() -> None:
    s = sc.parse(EXAMPLE, name="example")
    assert s.rule.startswith("a retransmitted FIN") and s.counters == ("TW",)
    assert dict(s.sysctls) == {"tcp_rfc1337": "0", "ip_local_port_range": "40000 40010"}
    kinds = [type(x).__name__ for x in s.steps]
    assert kinds == ["Call", "Inject", "Expect", "Inject", "Call", "FlowDecl", "Inject",
                     "StateCheck", "End"]  # fmt: skip
    syn = s.steps[1]
    assert isinstance(syn, sc.Inject) and syn.seg.mss == 1460 and syn.seg.wscale == 7
    assert syn.seg.ts == sc.TsSpec(val=100, ecr=0)
    assert s.steps[6].t == 10 * MS and s.steps[7].t == 510 * MS and s.end == 1000 * MS
    state = s.steps[7]
    assert isinstance(state, sc.StateCheck)
    assert state.expect[0] == sc.SockExpect(flow="A", state="ESTABLISHED", timer=1, ms=200,
                                            retrans=1)  # fmt: skip
    assert state.expect[1].state == "gone" and state.counts == (("TW", 0),)
    assert s.flows()["B"] == ("192.0.2.3", 40001, 8080)


def test_format_script_round_trips() -> None:
    s = sc.parse(EXAMPLE, name="example")
    again = sc.parse(sc.format_script(s), name="example")
    assert again.steps == tuple(replace(x, line=y.line) for x, y in zip(s.steps, again.steps,
                                                                         strict=True))  # fmt: skip
    assert (again.rule, again.sysctls, again.counters) == (s.rule, s.sysctls, s.counters)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("0 listen L 8080\n", "needs a `rule:` line"),
        ("rule: r\n0 < S 0:0\n", "line 2: bad sequence range"),
        ("rule: r\n0 < S 0:5(3)\n", "is 5 bytes, not 3"),
        ("rule: r\n0 < X 0:0(0)\n", "unknown TCP flag"),
        ("rule: r\n0 < [Z] S 0:0(0)\n", "unknown flow 'Z'"),
        ("rule: r\n0 write A 10\n", "socket 'A' was never opened"),
        ("rule: r\n0 setsockopt A nodelay 1\n", "unknown option 'nodelay'"),
        ("rule: r\n0 state A=ESTABLISHED@soon\n", "expected FLOW=STATE"),
        ("rule: r\n0 frobnicate A\n", "unknown event 'frobnicate'"),
    ],
)
def test_script_errors_name_the_line(text: str, needle: str) -> None:
    with pytest.raises(sc.ScriptError) as e:
        sc.parse(text, name="bad")
    assert needle in str(e.value)


# -- the comparison --------------------------------------------------------------------------

TWO = sc.parse(
    "rule: r\n0 listen L 8080\n+0 < S 0:0(0) win 65535 <mss 1460>\n+0.05 end\n", name="two"
)


def _trace(side: str, *outs: Out) -> Trace:
    return Trace(side=side, step_times=[0, 1 * MS, 51 * MS], step_spans=[0, 0, 0],
                 results={0: "ok"}, outs=list(outs))  # fmt: skip


def _synack(t: int, **kw: object) -> Out:
    base = Out(t=t, flow="A", flags=0x12, seq=0, ack=1, length=0, ts=None, window=65535)
    return replace(base, **kw)  # type: ignore[arg-type]


def test_tolerance_is_packetdrills_default() -> None:
    """packetdrill --tolerance_usecs=4000 plus --tolerance_percent=12.5 of the interval."""
    assert tolerance(0) == 4 * MS
    assert tolerance(200 * MS) == 29 * MS


def test_same_segments_agree_and_timing_is_within_tolerance() -> None:
    v = compare(TWO, _trace("kernel", _synack(1_100_000)), _trace("model", _synack(4_900_000)))
    assert v.agrees, [str(d) for d in v.diffs]


@pytest.mark.parametrize(
    ("model_out", "needle"),
    [
        (_synack(1_100_000, flags=0x14), "flags"),
        (_synack(1_100_000, seq=5), "seq 0 vs 5"),
        (_synack(1_100_000, ack=2), "ack 1 vs 2"),
        (_synack(1_100_000, length=3), "length 0 vs 3"),
        (_synack(1_100_000, ts=(0, 0)), "timestamp option absent vs present"),
        (_synack(30 * MS), "after its anchor"),
    ],
)
def test_a_different_segment_is_a_disagreement(model_out: Out, needle: str) -> None:
    v = compare(TWO, _trace("kernel", _synack(1_100_000)), _trace("model", model_out))
    assert not v.agrees and needle in str(v.diffs[0])


def test_a_segment_only_one_side_sent_is_a_disagreement_unless_at_the_end() -> None:
    v = compare(TWO, _trace("kernel", _synack(1_100_000)), _trace("model"))
    assert not v.agrees and "only the kernel sent" in str(v.diffs[0])
    late = compare(TWO, _trace("kernel", _synack(50 * MS)), _trace("model"))
    assert late.agrees  # the model may not have got there yet


# -- the CLI without root --------------------------------------------------------------------


def test_cli_lists_the_corpus() -> None:
    res = CliRunner().invoke(lab_group, ["probe", "--list", "--json"])
    assert res.exit_code == 0
    listed = json.loads(res.output)
    assert {e["name"] for e in listed} == {s.name for s in runner.corpus()}
    res = CliRunner().invoke(lab_group, ["probe", "--list"])
    assert "tw-paws-reject" in res.output and f"{len(listed)} scripts" in res.output


def test_cli_unknown_name_is_one_line() -> None:
    res = CliRunner().invoke(lab_group, ["probe", "tw-paws"])
    assert res.exit_code != 0 and "no probe script named 'tw-paws'" in res.output
    assert "did you mean tw-paws-reject" in res.output


# -- the fuzzer ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(fuzz.sequences())
def test_fuzzed_sequences_are_valid_scripts(text: str) -> None:
    s = sc.parse(text, name="fuzz")
    assert isinstance(s.steps[-1], sc.End) and s.counters == fuzz.COUNTERS
    drive(s, ModelSide(s), "model")  # and the model can run it


class _ForgetfulSide(ModelSide):
    """A model with a bug planted: every read finds nothing."""

    def _call(self, step: sc.Call) -> str:
        if step.op == "read":
            self.host.recv(self.fds[step.sock], self.now)
            return "EAGAIN"
        return super()._call(step)


def _broken_kernel(script: sc.Script) -> Trace:
    return drive(script, _ForgetfulSide(script), "kernel")


def test_fuzzer_shrinks_a_disagreement_to_a_ready_to_add_script() -> None:
    """A planted bug (reads lose data) stands in for the kernel: the fuzzer must find it, shrink
    it to the few steps that show it and print a script that parses, with the differences as
    comments and the reference side's answers written in."""
    res = fuzz.fuzz_one_worker(300, seed_value=1, run_kernel=_broken_kernel)
    assert res.errors == [] and len(res.failures) == 1
    text = res.failures[0]
    shrunk = sc.parse(text, name="shrunk")
    assert "read A" in text or "read c" in text
    assert "= EAGAIN" in text and "kernel vs model" in shrunk.comments[0]
    timeline = [s for s in shrunk.steps if not isinstance(s, sc.Expect)]
    assert len(timeline) <= 8, text


@pytest.mark.parametrize(("hz", "noted"), [(250, False), (0, False), (1000, True), (100, True)])
def test_a_kernel_with_another_config_hz_is_named_in_the_report(hz: int, noted: bool) -> None:
    """The model's jiffy timers are the reference kernel's HZ=250: on a kernel built with
    another CONFIG_HZ the report says so (0: the config is not exposed, nothing to say)."""
    run = report.ProbeRun(scripts=[], kernel_hz=hz)
    out = io.StringIO()
    report.render(run, out)
    assert ("CONFIG_HZ=" in out.getvalue()) is noted
    data = run.to_json()
    assert data["model_hz"] == 250 and data["kernel_hz"] == (hz or None)
