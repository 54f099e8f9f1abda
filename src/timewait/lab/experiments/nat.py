"""snat-exhaustion: clients behind a masquerading router, on the real kernel, beside the model.

Topology (every namespace throwaway, every address in 198.18.0.0/15, DESIGN.md's network rule):

    client i (198.18.{i+1}.2) --veth-- (198.18.{i+1}.1) router (198.18.0.1) --veth-- server
                                         nft: masquerade to :PORTS        (198.18.0.2:80)

The router forwards and masquerades TCP from the clients with an nftables table (lab/nft.py)
whose port range is small enough to fill in seconds; each client opens connections at an even
share of the rate, far below its own per-destination limit (its range is 50000-59999, 10,000
ports / 60 s), and gives each SYN 0.5 s (below the 1 s initial RTO) before counting it
dropped. The router is sampled with the live collector (conntrack over ctnetlink) and the
doctor is run on its last snapshot, as `timewait doctor --netns ROUTER` would.

Two variants:
* churn: each connection closes at once (the client first), so the router's entries sit in
  conntrack TIME_WAIT for nf_conntrack_tcp_timeout_time_wait. The pool fills at ports / R; on
  Linux >= 6.5 later SYNs evict closing entries (model/nat.py), so connections keep going and
  the pool stays full of TIME_WAIT entries.
* held open: each connection stays open until the run ends: ESTABLISHED entries cannot be
  evicted, so from ports / R every SYN is dropped (insert_failed, drop): the hard limit.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from timewait import conntrack as C
from timewait.lab import compare as cmp
from timewait.lab.experiments.base import Experiment, LabResult, Progress, r3, set_sysctls
from timewait.lab.experiments.registry import register
from timewait.lab.namespaces import (
    LabUnavailable,
    NetnsProcess,
    add_address,
    in_private_netns,
    run_in_netns,
    throwaway_netns,
    veth_pair,
)
from timewait.lab.nft import NftTable
from timewait.live.capture import capture
from timewait.model.nat import NatGateway
from timewait.sim.nat import NatWorkload, simulate_nat
from timewait.sim.scenario import Param, ParamValue, Series
from timewait.sim.scenarios.flow import parse_range
from timewait.snapshot import Snapshot, addr_bytes
from timewait.units import MS, SEC, from_seconds

ROUTER_OUT = "198.18.0.1"
SERVER_IP = "198.18.0.2"
PORT = 80
CLIENT_RANGE = (50000, 59999)
SYN_TIMEOUT_S = 0.5


def write_netfilter(values: dict[str, str]) -> None:
    """For run_in_netns: net.netfilter sysctls of the (private) namespace; refuses the host's."""
    if not in_private_netns():
        raise LabUnavailable("refusing to write net.netfilter sysctls outside a lab namespace")
    for k, v in values.items():
        Path("/proc/sys/net/netfilter", k).write_text(v)


def _route(gateway: str) -> None:
    import subprocess

    subprocess.run(["ip", "route", "add", "default", "via", gateway], check=True,
                   capture_output=True)  # fmt: skip


def hold_server(addr: str, port: int) -> tuple[str, object]:
    """For NetnsProcess: accept everything, close each connection when its client does."""
    import threading

    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(4096)
    ls.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ)

    def loop() -> None:
        while True:
            for k, _ in sel.select():
                s = k.fileobj
                if s is ls:
                    with contextlib.suppress(OSError):
                        c, _ = ls.accept()
                        c.setblocking(False)
                        sel.register(c, selectors.EVENT_READ)
                    continue
                try:
                    data = s.recv(4096)  # type: ignore[union-attr]
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(s)
                    s.close()  # type: ignore[union-attr]

    threading.Thread(target=loop, daemon=True).start()
    return f"holding on {addr}:{port}", ls


def nb_load(dst: str, port: int, rate: float, duration: float, start_ns: int, hold: bool,
            offset: float) -> dict[str, Any]:  # fmt: skip
    """For run_in_netns in a client: attempt i at start + offset + i / rate, non-blocking; a
    SYN unanswered after SYN_TIMEOUT_S counts as dropped. `hold` keeps connections open until
    the schedule ends. Returns attempts, ok, drop times (s since start), other failures."""
    sel = selectors.DefaultSelector()
    n = int(duration * rate)
    ok = other = 0
    drops: list[float] = []
    pending: dict[socket.socket, tuple[int, float]] = {}
    held: list[socket.socket] = []
    i = 0
    end_ns = start_ns + int(duration * 1e9)
    while True:
        now = time.monotonic_ns()
        while i < n and start_ns + int((offset + i / rate) * 1e9) <= now:
            at = offset + i / rate
            i += 1
            s = socket.socket()
            s.setblocking(False)
            err = s.connect_ex((dst, port))
            if err not in (0, errno.EINPROGRESS):
                other += 1
                s.close()
                continue
            pending[s] = (now + int(SYN_TIMEOUT_S * 1e9), at)
            sel.register(s, selectors.EVENT_WRITE)
        if i >= n and not pending:
            break
        nxt = start_ns + int((offset + i / rate) * 1e9) if i < n else now + 10**9
        due = min([d for d, _ in pending.values()] + [nxt])
        for k, _ in sel.select(max(0.0, min((due - time.monotonic_ns()) / 1e9, 0.05))):
            s = k.fileobj  # type: ignore[assignment]
            e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            sel.unregister(s)
            pending.pop(s)
            if e == 0:
                ok += 1
                if hold:
                    held.append(s)
                    continue
            else:
                other += 1
            s.close()
        now = time.monotonic_ns()
        for s, (d, at) in list(pending.items()):
            if d <= now:
                sel.unregister(s)
                pending.pop(s)
                s.close()
                drops.append(at)
    while hold and time.monotonic_ns() < end_ns:
        time.sleep(0.01)
    for s in held:
        s.close()
    return {"attempts": i, "ok": ok, "drops": drops, "other": other}


@dataclass(frozen=True)
class Topology:
    router: str
    server: str
    clients: tuple[str, ...]


@contextlib.contextmanager
def nat_topology(
    clients: int, ports: tuple[int, int] | None, ct_time_wait_s: int = 120, *,
    server: bool = True, snat_to: tuple[str, str] | None = None,
) -> Iterator[Topology]:  # fmt: skip
    """Client namespaces behind a router that masquerades (to :ports; no NAT rule when
    `ports` is None) toward a server namespace holding connections on SERVER_IP:PORT.
    `snat_to` (first, last address, in the router's /24 toward the server): `snat to
    FIRST-LAST:ports` instead of masquerade, the addresses added to the router's side.
    Everything is removed on exit, error, Ctrl-C and SIGTERM (throwaway_netns)."""
    with contextlib.ExitStack() as stack:
        router = stack.enter_context(throwaway_netns())
        srv = stack.enter_context(throwaway_netns())
        out_dev, _ = veth_pair(router, ROUTER_OUT, srv, SERVER_IP)
        run_in_netns(srv, _route, ROUTER_OUT)  # replies to untranslated clients (no NAT)
        cl: list[str] = []
        for i in range(clients):
            ns = stack.enter_context(throwaway_netns())
            veth_pair(ns, f"198.18.{i + 1}.2", router, f"198.18.{i + 1}.1")
            run_in_netns(ns, _route, f"198.18.{i + 1}.1")
            run_in_netns(
                ns, set_sysctls, {"ip_local_port_range": f"{CLIENT_RANGE[0]} {CLIENT_RANGE[1]}"}
            )
            cl.append(ns)
        run_in_netns(router, set_sysctls, {"ip_forward": "1"})
        if ports is not None:
            lo, hi = ports
            action = f"masquerade to :{lo}-{hi}"
            if snat_to is not None:
                import ipaddress

                first, last = (ipaddress.ip_address(a) for a in snat_to)
                for k in range(int(last) - int(first) + 1):
                    if str(first + k) != ROUTER_OUT:
                        add_address(router, out_dev, str(first + k))
                action = f"snat ip to {first}-{last}:{lo}-{hi}"
            body = (
                "chain post { type nat hook postrouting priority srcnat; policy accept;\n"
                f'  ip saddr 198.18.0.0/15 ip protocol tcp oifname "{out_dev}" {action}\n}}'
            )
            stack.enter_context(NftTable(router, body))
            run_in_netns(
                router, write_netfilter, {"nf_conntrack_tcp_timeout_time_wait": str(ct_time_wait_s)}
            )
        if server:
            stack.enter_context(NetnsProcess(srv, hold_server, SERVER_IP, PORT))
        yield Topology(router=router, server=srv, clients=tuple(cl))


def _pool_rows(snap: Snapshot) -> tuple[int, int, int]:
    """(entries, TIME_WAIT entries, translated ports held) toward the server on the router."""
    t = snap.tables.get(C.TABLE)
    if t is None:
        return 0, 0, 0
    m = (t["reply_src"] == np.void(addr_bytes(SERVER_IP))) & (t["reply_sport"] == PORT)
    tw = m & (t["state"] == C.TCP_CONNTRACK_TIME_WAIT)
    return int(m.sum()), int(tw.sum()), len({int(p) for p in t["reply_dport"][m]})


def _variant(p: dict[str, ParamValue], hold: bool, progress: Progress) -> tuple[dict[str, Any],
                                                                              Series]:  # fmt: skip
    lo, hi = parse_range(str(p["nat_ports"]))
    rate = float(p["rate"])
    duration = float(p["duration_s"])
    clients = int(p["clients"])
    tw_s = int(p["ct_time_wait_s"])
    with contextlib.ExitStack() as stack:
        topo = stack.enter_context(nat_topology(clients, (lo, hi), tw_s))
        router, cl = topo.router, topo.clients
        before = capture(netns=router).counters
        progress(f"snat-exhaustion ({'held open' if hold else 'churn'}): {clients} clients, "
                 f"{rate:g} conn/s, {hi - lo + 1} NAT ports, {duration:g} s")  # fmt: skip
        start = time.monotonic_ns() + int(0.3 * 1e9)
        share = rate / clients
        times: list[float] = []
        tw_series: list[float] = []
        entries_series: list[float] = []
        snaps: list[Snapshot] = []
        with ThreadPoolExecutor(clients) as pool:
            futs = [
                pool.submit(
                    run_in_netns,
                    ns,
                    nb_load,
                    SERVER_IP,
                    PORT,
                    share,
                    duration,
                    start,
                    hold,
                    k / rate,
                    timeout=duration + 60,
                )
                for k, ns in enumerate(cl)
            ]
            k = 0
            while not all(f.done() for f in futs):
                due = start + int(k * 0.25e9)
                now = time.monotonic_ns()
                if due > now:
                    time.sleep((due - now) / 1e9)
                if time.monotonic_ns() > start + int((duration - 0.05) * 1e9):
                    break
                snap = capture(netns=router)
                snaps.append(snap)
                e, tw, _ = _pool_rows(snap)
                times.append(round((time.monotonic_ns() - start) / 1e9, 3))
                tw_series.append(float(tw))
                entries_series.append(float(e))
                k += 1
            results = [f.result() for f in futs]
        after = capture(netns=router)
        last = snaps[-1] if snaps else after
        from timewait.doctor import diagnose

        d = diagnose(last, snaps[len(snaps) // 2] if len(snaps) > 2 else None)
        nat_f = [f for f in d.findings if f.id.startswith(("nat-", "conntrack-"))]
    drops = sorted(t for r in results for t in r["drops"])
    ok = sum(r["ok"] for r in results)
    first = drops[0] if drops else None
    e_end, tw_end, held = _pool_rows(last)
    kernel = {
        "connections": ok,
        "drops": len(drops),
        "first_drop_s": r3(first),
        "drops_per_s": round(len(drops) / (duration - first), 1) if first is not None else 0.0,
        "time_wait_entries": tw_end,
        "entries": e_end,
        "ports_held": held,
        "insert_failed": after.counters.get(C.key("insert_failed"), 0)
        - before.get(C.key("insert_failed"), 0),
        "doctor": ", ".join(f"{f.severity.label} {f.id}" for f in nat_f),
        "doctor_pool": (
            d.analysis.nat.pools[0].label if d.analysis.nat and d.analysis.nat.pools else ""
        ),
    }
    series: Series = {"time_wait": (times, tw_series), "entries": (times, entries_series)}
    return kernel, series


def _model(p: dict[str, ParamValue], hold: bool) -> tuple[dict[str, Any], Series]:
    lo, hi = parse_range(str(p["nat_ports"]))
    duration = float(p["duration_s"])
    gw = NatGateway(rng=__import__("random").Random(1), port_range=(lo, hi),
                    time_wait=from_seconds(float(p["ct_time_wait_s"])))  # fmt: skip
    wl = NatWorkload(rate=float(p["rate"]), duration=from_seconds(duration),
                     clients=int(p["clients"]),
                     lifetime=from_seconds(duration + 1) if hold else MS,
                     syn_timeout=from_seconds(SYN_TIMEOUT_S), client_ports=CLIENT_RANGE,
                     sample_every=SEC // 4)  # fmt: skip
    res = simulate_nat(gw, wl, rng=__import__("random").Random(2))
    first = res.first_drop / SEC if res.first_drop is not None else None
    gw.expire(from_seconds(duration))
    model = {
        "connections": res.connections,
        "drops": res.drops,
        "first_drop_s": r3(first),
        "drops_per_s": round(res.drops / (duration - first), 1) if first is not None else 0.0,
        "time_wait_entries": res.time_wait[-1] if res.time_wait else 0,
        "entries": res.entries[-1] if res.entries else 0,
        "ports_held": res.entries[-1] if res.entries else 0,
        "evicted": res.evicted,
    }
    series: Series = {"time_wait": (res.times, [float(x) for x in res.time_wait]),
                      "entries": (res.times, [float(x) for x in res.entries])}  # fmt: skip
    return model, series


def run_snat_exhaustion(p: dict[str, ParamValue], progress: Progress) -> LabResult:
    lo, hi = parse_range(str(p["nat_ports"]))
    ports = hi - lo + 1
    rate = float(p["rate"])
    kernel: dict[str, dict[str, Any]] = {}
    model: dict[str, dict[str, Any]] = {}
    series: dict[str, Series] = {}
    for name, hold in (("churn (TIME_WAIT)", False), ("held open (ESTABLISHED)", True)):
        kernel[name], series[f"kernel: {name}"] = _variant(p, hold, progress)
        model[name], series[f"model: {name}"] = _model(p, hold)
    rows = cmp.compare(
        {"churn (TIME_WAIT)": kernel["churn (TIME_WAIT)"]},
        {"churn (TIME_WAIT)": model["churn (TIME_WAIT)"]},
        ["connections", "time_wait_entries", "ports_held", "drops_per_s"],
        notes={"drops_per_s": "6.5+: a SYN evicts a TIME_WAIT entry whose sequence it is ahead "
               "of (nf_nat_used_tuple_harder()), so a full pool of TIME_WAITs drops little"},
    )  # fmt: skip
    rows += cmp.compare(
        {"held open (ESTABLISHED)": kernel["held open (ESTABLISHED)"]},
        {"held open (ESTABLISHED)": model["held open (ESTABLISHED)"]},
        ["first_drop_s", "drops_per_s", "entries", "connections"],
    )
    c, h = kernel["churn (TIME_WAIT)"], kernel["held open (ESTABLISHED)"]
    verdict = (
        f"{ports} NAT ports, {rate:g} conn/s from {p['clients']} clients to one server: with "
        f"connections that close at once the router's pool filled (ports / R = "
        f"{ports / rate:.2f} s) and stayed full of {c['time_wait_entries']} conntrack TIME_WAIT "
        f"entries, yet {c['connections']:,} connections got through and {c['drops']} SYNs "
        f"were dropped: this kernel evicts closing entries. Held open, the same pool refused "
        f"every SYN from {h['first_drop_s']} s on ({h['drops_per_s']}/s, insert_failed "
        f"+{h['insert_failed']}); the doctor on the router said: {h['doctor']} "
        f"({h['doctor_pool']})."
    )
    return LabResult(experiment="snat-exhaustion", params=p, kernel=kernel, model=model,
                     rows=rows, verdict=verdict, series=series,
                     notes=["clients give each SYN 0.5 s (no retransmission) before counting "
                            "it dropped"])  # fmt: skip


register(
    Experiment(
        name="snat-exhaustion",
        question="Clients behind a masquerading router churn connections to one server: when "
        "does the NAT run out of translated ports, and what does conntrack's TIME_WAIT do?",
        params=(
            Param(name="rate", default=100.0, min=1, max=2000, help="conn/s over all clients"),
            Param(name="duration_s", default=8.0, min=1, max=100, help="seconds of load"),
            Param(name="nat_ports", default="40000-40199", help="masquerade to :LOW-HIGH"),
            Param(name="clients", default=3, min=1, max=20, help="client namespaces"),
            Param(
                name="ct_time_wait_s",
                default=120,
                min=1,
                max=600,
                help="nf_conntrack_tcp_timeout_time_wait in the router",
            ),
        ),
        run_fn=run_snat_exhaustion,
        quick={"rate": 100.0, "duration_s": 3.0, "nat_ports": "40000-40099"},
        needs=("nft",),
    )
)
