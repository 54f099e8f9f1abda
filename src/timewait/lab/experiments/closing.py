"""Closing experiments: reuseaddr-restart, lost-final-ack, fin-timeout-myth.

These are about single connections and their timers rather than rates, so the kernel side runs
a short function inside the namespace (run_in_netns / NetnsProcess) and reads the result from
the socket table (live collector), the kernel counters and, for lost-final-ack, nftables
counters. The model side runs the packet simulator (every segment through the model hosts).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import time
from typing import Any

from timewait.lab import compare as cmp
from timewait.lab.experiments.base import (
    Experiment,
    LabResult,
    Progress,
    Sampler,
    count_state,
    count_tw,
    set_sysctls,
)
from timewait.lab.experiments.registry import register
from timewait.lab.namespaces import NetnsProcess, run_in_netns, throwaway_netns
from timewait.lab.nft import final_ack_drop
from timewait.live.capture import capture
from timewait.sim.scenario import Param, ParamValue, ScenarioError
from timewait.sim.scenario import get as get_scenario
from timewait.sim.scenarios.packet import fin_timeouts
from timewait.snapshot import TCP_FIN_WAIT2, TCP_LAST_ACK, TCP_TIME_WAIT

LINGER0 = struct.pack("ii", 1, 0)


def _listener(addr: str, port: int, reuseaddr: bool = False) -> socket.socket:
    ls = socket.socket()
    if reuseaddr:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(1024)
    return ls


# -- reuseaddr-restart ----------------------------------------------------------------------------


def _restart_matrix(n: int, client_ports: int) -> dict[str, dict[str, Any]]:
    """Inside the namespace: the bind matrix of a restarted server, and the client part."""
    out: dict[str, dict[str, Any]] = {}
    port = 6000
    for old in (False, True):
        for new in (False, True):
            port += 1
            ls = _listener("0.0.0.0", port, reuseaddr=old)
            for _ in range(n):  # the server closes first: TIME_WAIT children on `port`
                c = socket.socket()
                c.connect(("127.0.0.1", port))
                a, _ = ls.accept()
                a.close()
                c.recv(1)
                c.close()
            ls.close()  # the old process exits
            s = socket.socket()
            if new:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
                s.listen(16)
                result = "ok"
            except OSError as e:
                result = errno.errorcode.get(e.errno or 0, str(e.errno))
            s.close()
            out[f"old={'on' if old else 'off'},new={'on' if new else 'off'}"] = {
                "bind": result,
                "_port": port,
            }
    # Client part: SO_REUSEADDR on an autobinding client does not add four-tuples (ref 8).
    set_sysctls({"ip_local_port_range": f"40000 {40000 + client_ports - 1}", "tcp_tw_reuse": "0"})
    for i, reuse in enumerate((False, True)):
        dport = 7001 + i  # another destination: a fresh set of four-tuples
        ls = _listener("127.0.0.1", dport)
        ok = fails = 0
        for _ in range(2 * client_ports):
            c = socket.socket()
            if reuse:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                c.connect(("127.0.0.1", dport))
            except OSError as e:
                c.close()
                if e.errno == errno.EADDRNOTAVAIL:
                    fails += 1
                continue
            a, _ = ls.accept()
            c.close()
            a.recv(1)
            a.close()
            ok += 1
        ls.close()
        out[f"client reuseaddr={'on' if reuse else 'off'}"] = {
            "connections": ok,
            "eaddrnotavail": fails,
        }
    return out


def run_reuseaddr_restart(p: dict[str, ParamValue], progress: Progress) -> LabResult:
    n = int(p["connections"])
    client_ports = int(p["client_ports"])
    with throwaway_netns() as ns:
        progress(f"reuseaddr-restart: bind matrix in {ns}")
        kernel = run_in_netns(ns, _restart_matrix, n, client_ports)
        snap = capture(netns=ns)
    for v in kernel.values():
        port = v.pop("_port", None)
        if port is not None:
            v["server_time_wait"] = count_tw(snap, sport=port)
    ms = get_scenario("reuseaddr").run({"connections": n, "client_ports": client_ports})
    model = {k: dict(v) for k, v in ms.variants.items()}
    rows = cmp.compare(kernel, model, ["bind", "server_time_wait", "connections", "eaddrnotavail"])
    ok = [k for k, v in kernel.items() if v.get("bind") == "ok"]
    verdict = (
        f"A restarted server with {n} TIME_WAIT children on its port: bind() succeeded only for "
        f"{', '.join(ok) or 'none'} (EADDRINUSE otherwise: the TIME_WAIT children keep the old "
        f"socket's SO_REUSEADDR); an autobinding client with SO_REUSEADDR still got "
        f"{kernel['client reuseaddr=on']['eaddrnotavail']} EADDRNOTAVAIL from {client_ports} ports."
    )
    return LabResult(
        experiment="reuseaddr-restart",
        params=p,
        kernel=kernel,
        model=model,
        rows=rows,
        verdict=verdict,
    )


register(
    Experiment(
        name="reuseaddr-restart",
        question="When can a restarted server bind its port while its old connections sit in "
        "TIME_WAIT, and does SO_REUSEADDR help clients?",
        params=(
            Param(name="connections", default=5, min=1, max=10000, help="connections served first"),
            Param(name="client_ports", default=50, min=2, max=5000, help="client port range width"),
        ),
        run_fn=run_reuseaddr_restart,
        quick={},
    )
)


# -- lost-final-ack --------------------------------------------------------------------------------

LFA_PORT = 5000
LINGER_PORT = 5001


def _lost_final_ack_traffic(n: int, send: int, wait_s: float) -> dict[str, int]:
    """Inside the namespace: n normal closes (their final ACK is dropped by nft) and n
    SO_LINGER {1,0} closes; waits for the server's FIN retransmissions to be re-ACKed."""
    ls = _listener("127.0.0.1", LFA_PORT)
    for _ in range(n):
        c = socket.socket()
        c.connect(("127.0.0.1", LFA_PORT))
        a, _ = ls.accept()
        c.close()  # client FIN first
        a.recv(1)  # EOF
        a.close()  # server FIN -> the client's final ACK is dropped; the server is in LAST_ACK
    lz = _listener("127.0.0.1", LINGER_PORT)
    resets = 0
    data = b"x" * send
    for _ in range(n):
        c = socket.socket()
        c.connect(("127.0.0.1", LINGER_PORT))
        a, _ = lz.accept()
        c.sendall(data)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        c.close()  # RST, no FIN, no TIME_WAIT (ref 8)
        a.settimeout(2.0)
        try:
            while a.recv(65536):
                pass
        except ConnectionResetError:
            resets += 1
        a.close()
    time.sleep(wait_s)  # RTO >= 200 ms: the server retransmits its FIN, TIME_WAIT re-ACKs it
    return {"peer_resets": resets}


def run_lost_final_ack(p: dict[str, ParamValue], progress: Progress) -> LabResult:
    n = int(p["connections"])
    send_kb = int(p["send_kb"])
    with (
        throwaway_netns() as ns,
        final_ack_drop(ns, LFA_PORT) as t1,
        final_ack_drop(ns, LINGER_PORT) as t2,
    ):
        progress(f"lost-final-ack: nftables drops {n} final ACKs in {ns}")
        before = capture(netns=ns).counters
        wait_s = float(p["wait_s"])
        got = run_in_netns(ns, _lost_final_ack_traffic, n, send_kb * 1024, wait_s)
        c1, c2 = t1.counters(), t2.counters()
        snap = capture(netns=ns)
    aborts = snap.counters.get("TCPAbortOnData", 0) - before.get("TCPAbortOnData", 0)
    last_ack = count_state(snap, TCP_LAST_ACK, port=LFA_PORT)
    kernel = {
        "time-wait": {
            "connections": n,
            "final_acks_lost": c1["final_ack_dropped"],
            "fin_retransmits": c1["server_fin"] - n,
            "reacks_from_time_wait": c1["reack"],
            "clean_closes": n - last_ack - c1["client_rst"],
            "resets": c1["client_rst"],
            "client_time_wait": count_tw(snap, dport=LFA_PORT),
            "server_still_open": last_ack,
        },
        "linger-zero": {
            "connections": n,
            "client_time_wait": count_tw(snap, dport=LINGER_PORT),
            "aborts": aborts,
            "rsts_sent": c2["client_rst"],
            "peer_resets": got["peer_resets"],
        },
    }
    lfa = get_scenario("lost-final-ack").run(
        {"connections": n, "p": 1.0, "delay_ms": 0, "interval_ms": 100}
    )
    lz = get_scenario("linger-zero").run(
        # On loopback the kernel processes the peer's ACK of the data inside send(), before
        # close(): a 1 ms gap gives the model the same order (one RST per abort, not two).
        {"connections": n, "send_kb": send_kb, "close_delay_ms": 1.0}
    )
    model = {
        "time-wait": dict(lfa.variants["time-wait"]),
        "linger-zero": dict(lz.variants["linger-zero"]),
    }
    model["time-wait"]["reacks_from_time_wait"] = model["time-wait"]["fin_retransmits"]
    rows = cmp.compare(
        kernel,
        model,
        [
            "final_acks_lost",
            "fin_retransmits",
            "reacks_from_time_wait",
            "clean_closes",
            "resets",
            "server_still_open",
            "client_time_wait",
            "aborts",
            "rsts_sent",
            "peer_resets",
        ],
        notes={
            "rsts_sent": "loopback delivers the peer's ACK of the data inside send(), before "
            "close(); the model closes 1 ms after the write for the same order (closing at "
            "once, the ACK would meet a closed port and draw a second RST)",
            "aborts": "kernel: TcpExt TCPAbortOnData (__tcp_close(), SO_LINGER {1,0})",
        },
    )
    k, z = kernel["time-wait"], kernel["linger-zero"]
    verdict = (
        f"nftables dropped {k['final_acks_lost']} of {n} final ACKs: the server retransmitted "
        f"its FIN {k['fin_retransmits']} times, the client's TIME_WAIT re-ACKed "
        f"{k['reacks_from_time_wait']}, and {k['clean_closes']}/{n} servers closed cleanly "
        f"({k['resets']} RSTs). With SO_LINGER {{1,0}} the client sent {z['rsts_sent']} RSTs, "
        f"kept {z['client_time_wait']} TIME_WAIT, and the peer saw {z['peer_resets']} resets."
    )
    return LabResult(
        experiment="lost-final-ack",
        params=p,
        kernel=kernel,
        model=model,
        rows=rows,
        verdict=verdict,
        notes=[
            "the final ACK is dropped by an nftables table inside the namespace (output hook: "
            "the client's first pure ACK after its FIN); counters read with `nft -j`"
        ],
    )


register(
    Experiment(
        name="lost-final-ack",
        question="When the final ACK is lost, does TIME_WAIT re-ACK the retransmitted FIN? And "
        "what does SO_LINGER {1,0} do instead?",
        params=(
            Param(name="connections", default=20, min=1, max=1000, help="connections per variant"),
            Param(
                name="send_kb", default=1, min=1, max=1024, help="KiB sent before a linger-0 close"
            ),
            Param(
                name="wait_s",
                default=1.5,
                min=0.5,
                max=30,
                help="seconds to wait for FIN retransmissions (RTO >= 200 ms)",
            ),
        ),
        run_fn=run_lost_final_ack,
        quick={"connections": 5},
        needs=("nft",),
    )
)


# -- fin-timeout-myth ------------------------------------------------------------------------------

PROMPT_PORT = 5000
SLOW_PORT = 5001


def _myth_sockets(n: int) -> tuple[float, list[Any]]:
    """Inside the namespace: n client TIME_WAITs (peer closes promptly) and n orphaned
    FIN_WAIT2 (peer never closes); returns (monotonic time, sockets to keep)."""
    keep: list[Any] = []
    lp = _listener("127.0.0.1", PROMPT_PORT)
    ls = _listener("127.0.0.1", SLOW_PORT)
    keep += [lp, ls]
    for _ in range(n):
        c = socket.socket()
        c.connect(("127.0.0.1", PROMPT_PORT))
        a, _ = lp.accept()
        c.close()
        a.recv(1)
        a.close()
    for _ in range(n):
        c = socket.socket()
        c.connect(("127.0.0.1", SLOW_PORT))
        a, _ = ls.accept()
        keep.append(a)  # never closes: CLOSE_WAIT forever
        c.close()  # orphan -> FIN_WAIT2 minisocket for tcp_fin_timeout (ref 2.2)
    return time.monotonic(), keep


def _timer_s(snap: Any, state: int, dport: int, made: float) -> float | None:
    s = snap.sockets
    m = (s["state"] == state) & s["minisock"] & (s["dport"] == dport)
    if not m.any():
        return None
    age = snap.monotonic_ns / 1e9 - made
    return float(round(age + float(s["expires_ms"][m].max()) / 1000, 3))


def _myth_kernel(
    timeouts: list[int], n: int, observe: bool, progress: Progress
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The kernel side: one namespace per tcp_fin_timeout, its timers read at once and, with
    `observe`, the sockets watched until they are gone. Returns (kernel numbers, series)."""
    kernel: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        made: dict[str, tuple[str, float]] = {}
        for ft in timeouts:
            ns = stack.enter_context(throwaway_netns())
            run_in_netns(ns, set_sysctls, {"tcp_fin_timeout": str(ft)})
            holder = stack.enter_context(NetnsProcess(ns, _myth_sockets, n))
            made[f"tcp_fin_timeout={ft}"] = (ns, float(holder.report))
        progress(f"fin-timeout-myth: {n} TIME_WAIT + {n} FIN_WAIT2 per setting {timeouts}")
        sampler = Sampler(
            {k: ns for k, (ns, _) in made.items()},
            {
                "time_wait": lambda s: count_tw(s, dport=PROMPT_PORT),
                "fin_wait2": lambda s: float(
                    ((s.sockets["state"] == TCP_FIN_WAIT2) & s.sockets["minisock"]).sum()
                ),
            },
        )
        sampler.t0 = min(t for _, t in made.values())
        sampler.sample()
        for name, (_, t) in made.items():
            snap = sampler.last[name]
            kernel[name] = {
                "time_waits": count_tw(snap, dport=PROMPT_PORT),
                "time_wait_s": _timer_s(snap, TCP_TIME_WAIT, PROMPT_PORT, t),
                "orphaned_fin_wait2": int(
                    ((snap.sockets["state"] == TCP_FIN_WAIT2) & snap.sockets["minisock"]).sum()
                ),
                "fin_wait2_s": _timer_s(snap, TCP_FIN_WAIT2, SLOW_PORT, t),
            }
        if observe:
            progress("fin-timeout-myth: watching the TIME_WAITs expire (about 62 s)")
            _watch_expiry(sampler, made, kernel)
        return kernel, {f"kernel: {name}": sampler.series(name) for name in made}


def _watch_expiry(
    sampler: Sampler, made: dict[str, tuple[str, float]], kernel: dict[str, dict[str, Any]]
) -> None:
    """Sample until each namespace's TIME_WAITs and FIN_WAIT2s are gone (75 s at most) and
    record how long after their creation that was."""
    gone: dict[str, dict[str, float]] = {k: {} for k in made}
    deadline = time.monotonic() + 75
    while time.monotonic() < deadline and any(len(g) < 2 for g in gone.values()):
        time.sleep(0.1)  # the kernel's timers run on their own: poll the socket table
        sampler.sample()
        for name, (_, t) in made.items():
            vals = sampler.values[name]
            for metric in ("time_wait", "fin_wait2"):
                if vals[metric][-1] == 0 and metric not in gone[name]:
                    gone[name][metric] = round(time.monotonic() - t, 2)
    for name in made:
        kernel[name]["time_wait_observed_s"] = gone[name].get("time_wait")
        kernel[name]["fin_wait2_observed_s"] = gone[name].get("fin_wait2")


def run_fin_timeout_myth(p: dict[str, ParamValue], progress: Progress) -> LabResult:
    n = int(p["connections"])
    observe = bool(p["observe_expiry"])
    timeouts = fin_timeouts(str(p["fin_timeouts"]))
    if any(t > 60 for t in timeouts):
        raise ScenarioError("fin_timeouts: give values between 1 and 60 s, e.g. 5,60")
    kernel, series = _myth_kernel(timeouts, n, observe, progress)
    ms = get_scenario("fin-timeout-myth").run(
        {"connections": n, "fin_timeouts": ",".join(map(str, timeouts))}
    )
    model = {k: dict(v) for k, v in ms.variants.items()}
    if observe:
        for mv in model.values():
            mv["time_wait_observed_s"] = mv["time_wait_s"]
            mv["fin_wait2_observed_s"] = mv["fin_wait2_s"]
    rows = cmp.compare(
        kernel,
        model,
        [
            "time_waits",
            "time_wait_s",
            "orphaned_fin_wait2",
            "fin_wait2_s",
            "time_wait_observed_s",
            "fin_wait2_observed_s",
        ],
        notes={
            "time_wait_s": "the kernel's timer as armed (sock_diag idiag_expires + age)",
            "time_wait_observed_s": "TIME_WAIT really lasts 60.5-62 s (timer wheel at HZ=250, ref "
            "simulators-and-tests 6); this model run ends it at exactly 60 s (no timer_hz)",
            "fin_wait2_observed_s": "the FIN_WAIT2 timer goes through the same timer wheel",
        },
    )
    parts = [
        f"{k}: TIME_WAIT {v['time_wait_s']} s, orphaned FIN_WAIT2 {v['fin_wait2_s']} s"
        + (f" (gone after {v.get('time_wait_observed_s')} s)" if observe else "")
        for k, v in kernel.items()
    ]
    verdict = (
        "tcp_fin_timeout does not shorten TIME_WAIT, only the orphaned FIN_WAIT2 of a peer "
        "that never closes: " + "; ".join(parts) + "."
    )
    return LabResult(
        experiment="fin-timeout-myth",
        params=p,
        kernel=kernel,
        model=model,
        rows=rows,
        verdict=verdict,
        series=series,
    )


register(
    Experiment(
        name="fin-timeout-myth",
        question="Does tcp_fin_timeout shorten TIME_WAIT?",
        params=(
            Param(name="fin_timeouts", default="5,60", help="tcp_fin_timeout values, comma list"),
            Param(name="connections", default=5, min=1, max=1000, help="connections per peer"),
            Param(
                name="observe_expiry",
                default=True,
                help="also watch the sockets expire (about 62 s) instead of reading the timers",
            ),
        ),
        run_fn=run_fin_timeout_myth,
        quick={"observe_expiry": False},
    )
)
