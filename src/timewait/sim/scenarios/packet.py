"""Packet-level scenarios: every segment of every connection goes through the model hosts.

Each scenario answers one question of the TIME_WAIT story (DESIGN.md) by running variants side
by side on the same seed: the same workload, the same RNG streams, one setting changed. Numbers
come from the hosts' kernel counters, the link capture and the workload drivers, never from a
formula; closed forms appear only in comments and tests, as the check.

Addresses: 198.18.0.0/15 (RFC 2544 benchmarking range), as everywhere in timewait.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from timewait.config import LINUX, KernelConfig, Profile
from timewait.model import counters as C
from timewait.model.host import Host
from timewait.model.segment import FourTuple, Segment
from timewait.model.states import TcpState
from timewait.sim.link import LinkParams
from timewait.sim.network import Network
from timewait.sim.scenario import (
    Param,
    ParamValue,
    Scenario,
    ScenarioError,
    ScenarioResult,
    Series,
    register,
)
from timewait.sim.workloads import (
    FinalAckLoss,
    RequestClient,
    SerialClient,
    Server,
    restart_bind,
    time_wait_probe,
)
from timewait.units import MS, SEC, US

CLIENT_IP = "198.18.0.1"
SERVER_IP = "198.18.0.2"
PORT = 80
SLOW_PORT = 81  # fin-timeout-myth: a peer that never closes


# -- plumbing -------------------------------------------------------------------------------


@dataclass
class Bench:
    """A client and a server host on one network (same seed -> same RNG streams)."""

    net: Network
    client: Host
    server: Host
    rng: random.Random  # for scenario-level draws (targeted losses)


def _bench(
    seed: int,
    *,
    client_config: KernelConfig | None = None,
    server_config: KernelConfig | None = None,
    profile: Profile = LINUX,
    link: LinkParams | None = None,
    trace: bool = False,
    server_ips: tuple[str, ...] = (SERVER_IP,),
    client_ips: tuple[str, ...] = (CLIENT_IP,),
) -> Bench:
    root = random.Random(seed)
    net = Network(rng=random.Random(root.getrandbits(64)), link=link)
    client = net.add_host(
        Host(
            name="client", addrs=list(client_ips), config=client_config, profile=profile,
            rng=random.Random(root.getrandbits(64)), trace=trace,
        )
    )  # fmt: skip
    server = net.add_host(
        Host(
            name="server", addrs=list(server_ips), config=server_config, profile=profile,
            rng=random.Random(root.getrandbits(64)), trace=trace,
        )
    )  # fmt: skip
    return Bench(net, client, server, random.Random(root.getrandbits(64)))


def _segments(net: Network, pred: Callable[[Segment], bool], *, delivered: bool = True) -> int:
    assert net.capture is not None
    return sum(
        1 for c in net.capture if (c.delivered is not None or not delivered) and pred(c.segment)
    )


def _series_from(sampler_series: dict[str, tuple[list[float], list[float]]]) -> Series:
    return {k: (t, v) for k, (t, v) in sampler_series.items()}


def _closed_by(host: Host, old: TcpState) -> int:
    """State-log transitions old -> CLOSED on `host` (host built with trace=True)."""
    return sum(1 for c in host.state_log or () if c.old is old and c.new is TcpState.CLOSED)


# -- lost-final-ack ---------------------------------------------------------------------------


def _lost_final_ack_variant(
    p: dict[str, ParamValue], seed: int, config: KernelConfig, profile: Profile = LINUX
) -> tuple[dict[str, Any], Bench, FinalAckLoss]:
    n = int(p["connections"])
    b = _bench(
        seed,
        client_config=config,
        profile=profile,
        link=LinkParams(delay=int(p["delay_ms"]) * MS),
        trace=True,
    )
    loss = FinalAckLoss(b.server, float(p["p"]), b.rng)
    b.net.drop = loss
    Server(b.net, b.server, port=PORT)  # closes as soon as the client's FIN arrives
    RequestClient(
        b.net, b.client, dests=[(SERVER_IP, PORT)], interval=int(p["interval_ms"]) * MS, count=n
    )
    b.net.run(n * int(p["interval_ms"]) * MS + 70 * SEC)
    resets = _segments(b.net, lambda s: s.rst and s.src == CLIENT_IP)
    ended = _closed_by(b.server, TcpState.LAST_ACK)
    fins = _segments(b.net, lambda s: s.fin and s.src == SERVER_IP, delivered=False)
    res = {
        "connections": n,
        "final_acks_lost": len(loss.lost),
        "fin_retransmits": fins - n,
        "clean_closes": ended - resets,
        "resets": resets,
        "time_wait_s": profile.time_wait_len / SEC,
        "server_still_open": sum(1 for _ in b.server.connections()),
    }
    return res, b, loss


def _trace_lost_ack(b: Bench, loss: FinalAckLoss) -> list[Any]:
    if not loss.lost:
        return []
    when, ft = loss.lost[0]
    first = min(c.sent for c in b.net.segments_of(ft))
    return b.net.rungs(ft, b.client, b.server, start=first, end=when + 65 * SEC)


def run_lost_final_ack(p: dict[str, ParamValue], seed: int) -> ScenarioResult:
    tw, b_tw, loss_tw = _lost_final_ack_variant(p, seed, KernelConfig())
    # The wait removed and nothing else: TCP_TIMEWAIT_LEN patched to 0. (tcp_max_tw_buckets=0
    # would also skip the orphaned FIN_WAIT2 minisocket that precedes TIME_WAIT when the peer's
    # ACK and FIN come apart, resetting every connection; max-tw-buckets shows that.)
    no, _, _ = _lost_final_ack_variant(p, seed, KernelConfig(), _short_profile(0))
    n = tw["connections"]
    verdict = (
        f"{tw['final_acks_lost']} of {n} final ACKs lost (p={p['p']}): with TIME_WAIT "
        f"{tw['clean_closes']}/{n} clean closes, {tw['resets']} resets (the retransmitted FIN is "
        f"re-ACKed); without it {no['clean_closes']}/{n} clean, {no['resets']} resets "
        f"(the retransmitted FIN meets an RST)"
    )
    return ScenarioResult(
        scenario="lost-final-ack",
        params=dict(p),
        variants={"time-wait": tw, "no-time-wait": no},
        verdict=verdict,
        trace=_trace_lost_ack(b_tw, loss_tw),
        trace_title=("client (active closer)", "server"),
    )


register(
    Scenario(
        name="lost-final-ack",
        question="Does TIME_WAIT let a lost final ACK be re-sent, so the passive closer ends "
        "cleanly?",
        params=(
            Param(
                name="connections",
                default=200,
                help="connections (client closes first)",
                min=1,
                max=20000,
            ),
            Param(
                name="p",
                default=0.25,
                help="probability that a final ACK is lost",
                min=0.0,
                max=1.0,
            ),
            Param(name="delay_ms", default=25, help="one-way link delay (ms)", min=0, max=1000),
            Param(
                name="interval_ms",
                default=100,
                help="time between connections (ms)",
                min=1,
                max=60000,
            ),
        ),
        run_fn=run_lost_final_ack,
    )
)


# -- old-duplicates ---------------------------------------------------------------------------


def _byte_for(i: int) -> int:
    return 65 + i % 26  # incarnation i's payload byte: A, B, C, ...


def _old_duplicates_variant(
    p: dict[str, ParamValue], seed: int, *, config: KernelConfig, profile: Profile
) -> dict[str, Any]:
    n = int(p["incarnations"])
    size = int(p["response_kb"]) * 1024
    port = 40000
    # A one-port range makes every connection the same four-tuple (client 198.18.0.1:40000 ->
    # server :80): each incarnation must wait for the previous one's TIME_WAIT (connect() ->
    # EADDRNOTAVAIL meanwhile, ref 7.2) unless the wait is shortened.
    cfg = config.replace(ip_local_port_range=(port, port))
    b = _bench(seed, client_config=cfg, server_config=config, profile=profile)
    b.net.set_link(
        b.server,
        b.client,
        LinkParams(
            delay=int(p["delay_us"]) * US,
            delayed_duplicate=float(p["dup_fraction"]),
            msl=int(p["dup_delay_ms"]) * MS,
        ),
    )
    b.net.set_link(b.client, b.server, LinkParams(delay=int(p["delay_us"]) * US))
    Server(b.net, b.server, port=PORT, response=lambda i: bytes([_byte_for(i)]) * size)
    client = SerialClient(
        b.net, b.client, dest=(SERVER_IP, PORT), count=n, expect=size, retry=1 * MS,
        # Back off to 1 s against a 60 s wait (few events); retry every 1 ms against a short one.
        retry_max=min(1 * SEC, max(1 * MS, profile.time_wait_len // 64)),
    )  # fmt: skip
    b.net.run(n * (profile.time_wait_len + 5 * SEC) + 10 * SEC)
    corruptions = corrupted = 0
    for i, stream in enumerate(client.streams):
        want = _byte_for(i)
        inside = False
        for byte in stream:
            bad = byte != want
            corrupted += bad
            corruptions += bad and not inside  # one run of foreign bytes = one old segment
            inside = bad
    link = b.net.link(b.server, b.client)
    return {
        "incarnations": len(client.streams),
        "completed": client.stats.successes,
        "corruptions": corruptions,
        "corrupted_bytes": corrupted,
        "duplicates_sent": link.stats["delayed_duplicates"],
        "paws_rejects": b.client.counters[C.PAWS_ESTAB] + b.client.counters[C.PAWS_TIMEWAIT],
        # RFC 5961 5.2 (K tcp_ack()): an old duplicate's ACK belongs to the old incarnation's
        # sequence space, below SND.UNA - (bytes acknowledged so far): challenge ACK, dropped.
        "old_acks_rejected": b.client.counters[C.CHALLENGE_ACK]
        + b.client.counters[C.ACK_SKIPPED_CHALLENGE],
        "connect_eaddrnotavail": client.stats.failures["EADDRNOTAVAIL"],
        "resets": b.client.counters[C.OUT_RSTS] + b.server.counters[C.OUT_RSTS],
        "time_wait_ms": profile.time_wait_len / MS,
        "timestamps": bool(config.tcp_timestamps),
        "tcp_rfc1337": config.tcp_rfc1337,
        "last_connect_s": round(client.started[-1] / SEC, 3) if client.started else None,
    }


def _short_profile(ms: int) -> Profile:
    # A kernel with TCP_TIMEWAIT_LEN patched down (ref 2.1: only a kernel patch can do it), the
    # Linux rule tables otherwise unchanged. Named as an explicit departure (STYLE.md rule 5).
    return Profile(
        name=f"linux-tw{ms}ms",
        description=f"Linux rules with TIME_WAIT shortened to {ms} ms (patched TCP_TIMEWAIT_LEN)",
        time_wait_len=ms * MS,
        rules="linux",
    )


def run_old_duplicates(p: dict[str, ParamValue], seed: int) -> ScenarioResult:
    short = _short_profile(int(p["short_wait_ms"]))
    # Timestamps off except in the PAWS variant, so the wait is the only protection; and
    # tcp_rfc1337=1, because with the default 0 a duplicate hitting the TIME_WAIT draws an ACK,
    # the peer (no socket) answers RST and the RST kills the TIME_WAIT early (RFC 1337 hazard
    # H1, "TIME_WAIT assassination", ref 1.3) -- shown separately as "time-wait,rfc1337=0".
    off = KernelConfig(tcp_timestamps=0, tcp_rfc1337=1)
    variants = {
        "time-wait": _old_duplicates_variant(p, seed, config=off, profile=LINUX),
        "short-wait": _old_duplicates_variant(p, seed, config=off, profile=short),
        "short-wait+paws": _old_duplicates_variant(
            p, seed, config=off.replace(tcp_timestamps=1), profile=short
        ),
        "time-wait,rfc1337=0": _old_duplicates_variant(
            p, seed, config=off.replace(tcp_rfc1337=0), profile=LINUX
        ),
    }
    tw, sw, ps = variants["time-wait"], variants["short-wait"], variants["short-wait+paws"]
    wait = f"a {p['short_wait_ms']} ms wait" if p["short_wait_ms"] else "the wait removed"
    verdict = (
        f"old data accepted into a new incarnation: {tw['corruptions']} with the full 60 s "
        f"TIME_WAIT, {sw['corruptions']} ({sw['corrupted_bytes']} bytes) with "
        f"{wait} -- the new incarnation's RFC 5961 5.2 ACK check rejected "
        f"{sw['old_acks_rejected']} segments whose ACK belonged to the old one --, "
        f"{ps['corruptions']} with the short wait plus timestamps "
        f"(PAWS rejected {ps['paws_rejects']}); with tcp_rfc1337=0 RSTs cut the wait short: "
        f"{variants['time-wait,rfc1337=0']['corruptions']}. connect_eaddrnotavail counts the "
        "client's retries on its one-port range while each incarnation waits out the last "
        f"one's TIME_WAIT ({tw['connect_eaddrnotavail']:,} with the full wait, backing off "
        "from 1 ms to 1 s; one failed try per incarnation when the wait is short or cut)"
    )
    return ScenarioResult(
        scenario="old-duplicates", params=dict(p), variants=variants, verdict=verdict
    )


register(
    Scenario(
        name="old-duplicates",
        question="Does TIME_WAIT keep delayed segments of an old connection out of a new one on "
        "the same four-tuple?",
        params=(
            Param(
                name="incarnations",
                default=40,
                help="successive connections on one four-tuple",
                min=2,
                max=200,
            ),
            Param(
                name="response_kb",
                default=256,
                help="bytes the server sends per connection (KiB)",
                min=1,
                max=4096,
            ),
            Param(
                name="dup_fraction",
                default=0.3,
                help="fraction of server segments re-delivered late",
                min=0.0,
                max=1.0,
            ),
            Param(
                name="dup_delay_ms",
                default=6,
                help="maximum extra delay of a duplicate (the "
                "path's MSL, ms; what matters is MSL < TIME_WAIT)",
                min=0,
                max=59000,
            ),
            Param(
                name="short_wait_ms",
                default=0,
                help="the shortened TIME_WAIT (ms; 0 = removed). Any wait is restarted by the "
                "duplicates it ACKs (ref 1.3), which delays the reconnect until the 64 ns ISN "
                "clock has usually moved the new window past the old data",
                min=0,
                max=60000,
            ),
            Param(
                name="delay_us", default=100, help="one-way link delay (us)", min=1, max=1_000_000
            ),
        ),
        run_fn=run_old_duplicates,
    )
)


# -- who-closes-first -------------------------------------------------------------------------


def _churn(
    p: dict[str, ParamValue], seed: int, *, client_closes: bool, config: KernelConfig | None = None
) -> tuple[Bench, RequestClient, Any]:
    from timewait.sim.workloads import Sampler, ports_in_use_probe

    rate = float(p["rate"])
    duration = int(float(p["duration_s"]) * SEC)
    b = _bench(seed, client_config=config, server_config=config)
    Server(b.net, b.server, port=PORT, close_first=not client_closes)
    client = RequestClient(
        b.net, b.client, dests=[(SERVER_IP, PORT)], interval=int(SEC / rate),
        count=max(1, int(rate * duration / SEC)), client_closes=client_closes,
    )  # fmt: skip
    sampler = Sampler(
        b.net.engine,
        every=1 * SEC,
        until=duration,
        probes={
            "client_time_wait": time_wait_probe(b.client),
            "server_time_wait": time_wait_probe(b.server),
            "client_ports_in_use": ports_in_use_probe(b.client),
        },
        rates={"failures_per_s": lambda: float(client.stats.failed)},
    )
    b.net.run(duration)
    return b, client, sampler


def run_who_closes_first(p: dict[str, ParamValue], seed: int) -> ScenarioResult:
    variants: dict[str, dict[str, Any]] = {}
    series: dict[str, Series] = {}
    for name, client_closes in (("client-closes", True), ("server-closes", False)):
        b, client, sampler = _churn(p, seed, client_closes=client_closes)
        variants[name] = {
            "connections": client.stats.successes,
            "failures": client.stats.failed,
            "client_time_wait": b.client.count_state(TcpState.TIME_WAIT),
            "server_time_wait": b.server.count_state(TcpState.TIME_WAIT),
            "client_ports_in_use": len(b.client.ports.buckets),
            "client_memory_bytes": b.client.memory_bytes()["minisockets"],
            "server_memory_bytes": b.server.memory_bytes()["minisockets"],
        }
        series[name] = _series_from(sampler.series())
    c, s = variants["client-closes"], variants["server-closes"]
    # The client that closes second frees its port at once, and connect() may pick it again:
    # the same four-tuple meets the server's TIME_WAIT, whose newer-timestamp SYN reopens it
    # (TCP_TW_SYN, ref 1.3, 1.6). Within 60 s nothing expires, so the gap is those takeovers.
    taken = s["connections"] - s["server_time_wait"]
    over = (
        f" ({taken:,} of {s['connections']:,} server TIME_WAITs were taken over by a later "
        "connection from the same client port: a SYN with a newer timestamp reopens a "
        "TIME_WAIT)"
        if taken > 0 and float(p["duration_s"]) <= 60
        else ""
    )
    verdict = (
        f"after {p['duration_s']} s at {p['rate']}/s: client closing first leaves "
        f"{c['client_time_wait']} TIME_WAIT on the client holding {c['client_ports_in_use']} "
        f"ports; server closing first leaves {s['server_time_wait']} on the server "
        f"({s['server_memory_bytes'] // 1024} KiB) and the client holds "
        f"{s['client_ports_in_use']} port(s){over}"
    )
    return ScenarioResult(
        scenario="who-closes-first", params=dict(p), variants=variants, verdict=verdict,
        series=series,
    )  # fmt: skip


register(
    Scenario(
        name="who-closes-first",
        question="Where does TIME_WAIT land, and what does it cost, when the server closes first?",
        params=(
            Param(name="rate", default=100.0, help="connections per second", min=0.1, max=5000),
            Param(name="duration_s", default=40.0, help="simulated seconds", min=1, max=600),
        ),
        run_fn=run_who_closes_first,
    )
)


# -- fin-timeout-myth -------------------------------------------------------------------------


def _durations(host: Host, state: TcpState) -> list[int]:
    """How long each four-tuple stayed in `state` (state log of a traced host)."""
    start: dict[FourTuple, int] = {}
    out: list[int] = []
    for c in host.state_log or ():
        if c.new is state:
            start[c.tuple] = c.time
        elif c.old is state and c.tuple in start:
            out.append(c.time - start.pop(c.tuple))
    return out


def fin_timeouts(text: str) -> list[int]:
    """'30,60' -> [30, 60]: tcp_fin_timeout values in seconds, each 1..120."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ScenarioError(f"fin_timeouts={text!r}: expected seconds like 30,60") from None
    if not values or any(not 1 <= v <= 120 for v in values):
        raise ScenarioError(f"fin_timeouts={text!r}: give values between 1 and 120 s, e.g. 30,60")
    return values


def _fin_timeout_variant(fin_timeout: int, n: int, seed: int) -> dict[str, Any]:
    """n connections to a peer that closes at once and n to one that never closes, the client
    closing first; how long the client's TIME_WAITs and orphaned FIN_WAIT2s last."""
    cfg = KernelConfig(tcp_fin_timeout=fin_timeout)
    b = _bench(seed, client_config=cfg, trace=True)
    Server(b.net, b.server, port=PORT)  # closes when the client's FIN arrives
    Server(b.net, b.server, port=SLOW_PORT, close_delay=None)  # never closes
    client = RequestClient(
        b.net, b.client, dests=[(SERVER_IP, PORT), (SERVER_IP, SLOW_PORT)],
        interval=100 * MS, count=2 * n,
    )  # fmt: skip
    b.net.run(2 * n * 100 * MS + 130 * SEC)  # > 60 s TIME_WAIT, > 2 x (120 s - 60 s) FIN_WAIT2
    tw = _durations(b.client, TcpState.TIME_WAIT)
    fw2 = _durations(b.client, TcpState.FIN_WAIT_2)
    slow = [d for d in fw2 if d > 1 * SEC]  # orphans waiting on the peer that never closes
    return {
        "time_waits": len(tw),
        "time_wait_s": round(max(tw) / SEC, 3) if tw else None,
        "orphaned_fin_wait2": len(slow),
        "fin_wait2_s": round(max(slow) / SEC, 3) if slow else None,
        "failures": client.stats.failed,
    }


def run_fin_timeout_myth(p: dict[str, ParamValue], seed: int) -> ScenarioResult:
    n = int(p["connections"])
    values = fin_timeouts(str(p["fin_timeouts"]))
    variants = {f"tcp_fin_timeout={v}": _fin_timeout_variant(v, n, seed) for v in values}
    got = list(variants.values())

    def each(key: str, unit: str = "") -> str:
        return " vs ".join(f"{v[key]}{unit}" for v in got)

    verdict = (
        f"tcp_fin_timeout {' vs '.join(map(str, values))}: TIME_WAIT {each('time_waits')} "
        f"sockets, {each('time_wait_s', ' s')} each (unchanged); only the orphaned FIN_WAIT2 of "
        f"a peer that never closes changes: {each('fin_wait2_s', ' s')}"
    )
    return ScenarioResult(
        scenario="fin-timeout-myth", params=dict(p), variants=variants, verdict=verdict
    )


register(
    Scenario(
        name="fin-timeout-myth",
        question="Does tcp_fin_timeout shorten TIME_WAIT?",
        params=(
            Param(
                name="connections",
                default=50,
                help="connections to each peer (prompt and never-closing)",
                min=1,
                max=5000,
            ),
            Param(
                name="fin_timeouts",
                default="30,60",
                help="net.ipv4.tcp_fin_timeout values to compare (s, comma list, each 1..120)",
            ),
        ),
        run_fn=run_fin_timeout_myth,
    )
)


# -- max-tw-buckets ---------------------------------------------------------------------------


def run_max_tw_buckets(p: dict[str, ParamValue], seed: int) -> ScenarioResult:
    small = int(p["small_buckets"])
    variants: dict[str, dict[str, Any]] = {}
    lfa: dict[str, ParamValue] = {
        "connections": p["connections"],
        "p": p["p"],
        "delay_ms": 25,
        "interval_ms": 100,
    }
    dup: dict[str, ParamValue] = {
        "incarnations": 40, "response_kb": 256, "dup_fraction": 0.3, "dup_delay_ms": 6,
        "short_wait_ms": 0, "delay_us": 100,
    }  # fmt: skip
    for buckets in (KernelConfig().tcp_max_tw_buckets, small):
        # Timestamps off, so only TIME_WAIT protects (PAWS would otherwise, ref 4), and
        # tcp_rfc1337=1 so a duplicate's ACK -> RST cannot assassinate the TIME_WAIT (RFC 1337
        # hazard H1, ref 1.3): the variants then differ only in whether TIME_WAIT exists.
        cfg = KernelConfig(tcp_max_tw_buckets=buckets, tcp_timestamps=0, tcp_rfc1337=1)
        res, b, _ = _lost_final_ack_variant(lfa, seed, cfg)
        od = _old_duplicates_variant(dup, seed, config=cfg, profile=LINUX)
        variants[f"tcp_max_tw_buckets={buckets}"] = {
            "time_wait_overflows": b.client.counters[C.TIME_WAIT_OVERFLOW],
            "final_acks_lost": res["final_acks_lost"],
            "clean_closes": res["clean_closes"],
            "resets": res["resets"],
            "corruptions": od["corruptions"],
            "old_acks_rejected": od["old_acks_rejected"],
            "timestamps": False,
            "tcp_rfc1337": 1,
        }
    big = variants[f"tcp_max_tw_buckets={KernelConfig().tcp_max_tw_buckets}"]
    lo = variants[f"tcp_max_tw_buckets={small}"]
    verdict = (
        f"tcp_max_tw_buckets={small}: TCPTimeWaitOverflow {lo['time_wait_overflows']} "
        f"(vs {big['time_wait_overflows']}), resets {lo['resets']} (vs {big['resets']}), old data "
        f"accepted {lo['corruptions']} (vs {big['corruptions']}): overflow skips TIME_WAIT and "
        f"its protection; only the RFC 5961 ACK check was left to reject old duplicates "
        f"({lo['old_acks_rejected']}, vs {big['old_acks_rejected']} with TIME_WAIT)"
    )
    return ScenarioResult(
        scenario="max-tw-buckets", params=dict(p), variants=variants, verdict=verdict
    )


register(
    Scenario(
        name="max-tw-buckets",
        question="What does lowering tcp_max_tw_buckets cost?",
        params=(
            Param(
                name="small_buckets",
                default=0,
                help="the lowered tcp_max_tw_buckets",
                min=0,
                max=1_000_000,
            ),
            Param(
                name="connections",
                default=200,
                help="connections (lost-final-ack part)",
                min=1,
                max=20000,
            ),
            Param(
                name="p",
                default=0.25,
                help="probability that a final ACK is lost",
                min=0.0,
                max=1.0,
            ),
        ),
        run_fn=run_max_tw_buckets,
    )
)


# -- linger-zero ------------------------------------------------------------------------------


def run_linger_zero(p: dict[str, ParamValue], seed: int) -> ScenarioResult:
    n = int(p["connections"])
    size = int(p["send_kb"]) * 1024
    variants: dict[str, dict[str, Any]] = {}
    trace: list[Any] = []
    # The defaults describe the kernel as measured (lab linger-zero, loopback: one RST per
    # abort, every byte delivered, because the peer's ACK of the data arrives inside send(),
    # which close_delay_ms reproduces). The named departure "close before the ACK" is what a
    # real network gives when close() follows the write at once: unsent data is discarded
    # (tcp_disconnect() purges the write queue, ref 8) and every later segment of the peer meets
    # a closed port and draws its own RST (tcp_v4_send_reset()).
    runs = (
        ("close", False, float(p["close_delay_ms"])),
        ("linger-zero", True, float(p["close_delay_ms"])),
        ("linger-zero, close before the ACK", True, 0.0),
    )
    for name, linger, delay_ms in runs:
        b = _bench(seed, trace=linger and not trace)
        server = Server(b.net, b.server, port=PORT, response=b"")
        client = RequestClient(
            b.net, b.client, dests=[(SERVER_IP, PORT)], interval=100 * MS, count=n,
            linger_zero=linger, request=b"x" * size, close_after_send=True,
            close_delay=int(delay_ms * MS),
        )  # fmt: skip
        b.net.run(n * 100 * MS + 5 * SEC)
        got = sum(len(v) for v in server.received.values())
        variants[name] = {
            "connections": n,
            "client_time_wait": b.client.count_state(TcpState.TIME_WAIT),
            "aborts": b.client.counters[C.ABORT_ON_DATA],  # tcp_disconnect() RSTs (ref 8)
            "rsts_sent": b.client.counters[C.OUT_RSTS],
            "peer_resets": server.stats.failures["ECONNRESET"],
            "bytes_written": n * size,
            "bytes_delivered": got,
            "close_delay_ms": delay_ms,
        }
        if linger and not trace and client.tuples:
            ft = client.tuples[0]
            trace = b.net.rungs(ft, b.client, b.server, end=90 * MS)
    z, early = variants["linger-zero"], variants["linger-zero, close before the ACK"]
    verdict = (
        f"SO_LINGER {{1,0}}: {z['aborts']} aborts by RST, {z['client_time_wait']} TIME_WAIT, the "
        f"peer saw {z['peer_resets']} resets and got {z['bytes_delivered']} of "
        f"{z['bytes_written']} bytes "
        f"(normal close: {variants['close']['client_time_wait']} TIME_WAIT, "
        f"{variants['close']['bytes_delivered']} bytes). Closing before the peer has ACKed "
        f"the data (a real network, close() right after write()): {early['rsts_sent']} RSTs, "
        f"one per segment that meets the closed port, and {early['bytes_delivered']} bytes "
        "delivered: the unsent rest is discarded"
    )
    return ScenarioResult(
        scenario="linger-zero", params=dict(p), variants=variants, verdict=verdict, trace=trace,
        trace_title=("client (SO_LINGER {1,0})", "server"),
    )  # fmt: skip


register(
    Scenario(
        name="linger-zero",
        question="What does SO_LINGER {1,0} do instead of TIME_WAIT?",
        params=(
            Param(name="connections", default=50, help="connections", min=1, max=20000),
            Param(
                name="send_kb",
                default=256,
                help="bytes written just before close() (KiB)",
                min=1,
                max=4096,
            ),
            Param(
                name="close_delay_ms",
                default=1.0,
                help="time from the last write to close() in the close and linger-zero "
                "variants. 1 ms lets the peer's ACK of the data arrive first, as on loopback, "
                "where the kernel handles it inside send() (measured: lab linger-zero); the "
                "variant 'close before the ACK' always uses 0",
                min=0,
                max=10_000,
            ),
        ),
        run_fn=run_linger_zero,
    )
)


# -- reuseaddr --------------------------------------------------------------------------------


def run_reuseaddr(p: dict[str, ParamValue], seed: int) -> ScenarioResult:
    variants: dict[str, dict[str, Any]] = {}
    for old in (False, True):
        for new in (False, True):
            b = _bench(seed)
            server = Server(b.net, b.server, port=PORT, reuseaddr=old, close_first=True)
            RequestClient(
                b.net, b.client, dests=[(SERVER_IP, PORT)], interval=10 * MS,
                count=int(p["connections"]),
            )  # fmt: skip
            b.net.run(1 * SEC)
            server.stop(b.net.now)  # the old process exits; its TIME_WAIT children stay
            b.net.run(2 * SEC)
            result = restart_bind(b.server, port=PORT, reuseaddr=new, now=b.net.now)
            variants[f"old={'on' if old else 'off'},new={'on' if new else 'off'}"] = {
                "bind": result,
                "server_time_wait": b.server.count_state(TcpState.TIME_WAIT),
            }
    # Client side: SO_REUSEADDR does not help connect() find a free four-tuple (ref 8).
    lo = 40000
    ports = int(p["client_ports"])
    for reuse in (False, True):
        cfg = KernelConfig(ip_local_port_range=(lo, lo + ports - 1))
        b = _bench(seed, client_config=cfg)
        Server(b.net, b.server, port=PORT)
        client = RequestClient(
            b.net, b.client, dests=[(SERVER_IP, PORT)], interval=10 * MS, count=2 * ports,
            reuseaddr=reuse,
        )  # fmt: skip
        b.net.run(2 * ports * 10 * MS + 1 * SEC)
        variants[f"client reuseaddr={'on' if reuse else 'off'}"] = {
            "connections": client.stats.successes,
            "eaddrnotavail": client.stats.failures["EADDRNOTAVAIL"],
        }
    ok = [k for k, v in variants.items() if v.get("bind") == "ok"]
    c_on = variants["client reuseaddr=on"]["eaddrnotavail"]
    verdict = (
        f"server restart with TIME_WAIT children: bind succeeds only for {', '.join(ok) or 'none'} "
        f"(EADDRINUSE otherwise); a client with SO_REUSEADDR still got {c_on} EADDRNOTAVAIL "
        f"from {ports} ports"
    )
    return ScenarioResult(scenario="reuseaddr", params=dict(p), variants=variants, verdict=verdict)


register(
    Scenario(
        name="reuseaddr",
        question="When does SO_REUSEADDR let a restarted server bind, and does it help clients?",
        params=(
            Param(
                name="connections",
                default=5,
                help="connections served before the restart",
                min=1,
                max=10000,
            ),
            Param(
                name="client_ports",
                default=50,
                help="client port range width (client part)",
                min=1,
                max=20000,
            ),
        ),
        run_fn=run_reuseaddr,
    )
)


# -- bind-before-connect ----------------------------------------------------------------------


def run_bind_before_connect(p: dict[str, ParamValue], seed: int) -> ScenarioResult:
    ports = int(p["ports"])
    ndest = int(p["destinations"])
    lo = 40000
    cfg = KernelConfig(ip_local_port_range=(lo, lo + ports - 1))
    dests = tuple(f"198.18.1.{i + 1}" for i in range(ndest))
    variants: dict[str, dict[str, Any]] = {}
    for mode in ("bind", "bind-no-port"):
        b = _bench(seed, client_config=cfg, server_ips=dests)
        Server(b.net, b.server, port=PORT)
        client = RequestClient(
            b.net, b.client, dests=[(d, PORT) for d in dests], interval=1 * MS,
            count=2 * ports * ndest, sources=[CLIENT_IP], bind=mode,
        )  # fmt: skip
        # Everything happens well inside one TIME_WAIT (60 s): capacity = connections before
        # the first failure. Closed forms: bind -> ports; bind-no-port -> ports * destinations.
        b.net.run(2 * ports * ndest * MS + 1 * SEC)
        first = min(client.stats.first_failure.values(), default=None)
        variants[mode] = {
            "capacity": client.stats.successes,
            "failures": dict(sorted(client.stats.failures.items())),
            "first_failure_s": None if first is None else round(first / SEC, 4),
            "expected_capacity": ports if mode == "bind" else ports * ndest,
        }
    verdict = (
        f"{ndest} destinations, {ports} ports: bind(ip, 0) capacity "
        f"{variants['bind']['capacity']} (one port per connection, whatever the destination); "
        f"IP_BIND_ADDRESS_NO_PORT {variants['bind-no-port']['capacity']} (ports shared across "
        f"destinations)"
    )
    return ScenarioResult(
        scenario="bind-before-connect", params=dict(p), variants=variants, verdict=verdict
    )


register(
    Scenario(
        name="bind-before-connect",
        question="Does bind(ip, 0) before connect() waste ports, and does "
        "IP_BIND_ADDRESS_NO_PORT fix it?",
        params=(
            Param(name="ports", default=200, help="ephemeral port range width", min=1, max=20000),
            Param(name="destinations", default=4, help="destination addresses", min=1, max=250),
        ),
        run_fn=run_bind_before_connect,
    )
)


# -- memory -----------------------------------------------------------------------------------


def run_memory(p: dict[str, ParamValue], seed: int) -> ScenarioResult:
    n = int(p["connections"])
    variants: dict[str, dict[str, Any]] = {}
    for name, closes in (("time-wait", True), ("established", False)):
        b = _bench(seed)
        Server(b.net, b.server, port=PORT, close_delay=0 if closes else None)
        RequestClient(
            b.net, b.client, dests=[(SERVER_IP, PORT)], interval=1 * MS, count=n,
            client_closes=closes,
        )  # fmt: skip
        b.net.run(n * MS + 1 * SEC)
        mem = b.client.memory_bytes()
        variants[name] = {
            "sockets": n,
            "time_wait": b.client.count_state(TcpState.TIME_WAIT),
            "established": b.client.count_state(TcpState.ESTABLISHED),
            "memory_bytes": mem["total"],
            "bytes_per_socket": round(mem["total"] / n, 1),
        }
    tw, est = variants["time-wait"], variants["established"]
    verdict = (
        f"{n} TIME_WAIT minisockets cost {tw['memory_bytes'] / 1024:.0f} KiB "
        f"({tw['bytes_per_socket']:.0f} B each); {n} open connections cost "
        f"{est['memory_bytes'] / 1024:.0f} KiB ({est['bytes_per_socket']:.0f} B each, "
        f"{est['memory_bytes'] / max(1, tw['memory_bytes']):.1f}x)"
    )
    return ScenarioResult(scenario="memory", params=dict(p), variants=variants, verdict=verdict)


register(
    Scenario(
        name="memory",
        question="How much memory do N TIME_WAIT sockets cost next to N open connections?",
        params=(Param(name="connections", default=1000, help="sockets", min=1, max=100000),),
        run_fn=run_memory,
    )
)
