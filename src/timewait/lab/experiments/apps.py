"""Application experiments: real HTTP clients and servers, and Debian's nginx.

http-pooling: a ThreadingHTTPServer speaking HTTP/1.1 keep-alive, and three clients sending the
same requests at the same rate: `requests.get` per call (a new Session, so a new connection the
client closes: one client TIME_WAIT per request), one `requests.Session`, and one urllib3
PoolManager (one kept-alive connection each). Connections are counted by the kernel (Tcp
ActiveOpens in the namespace), TIME_WAIT by the live collector.

nginx-keepalive: nginx (our own config, pid file and temp dirs in a temp directory, run inside
the namespace as root, killed on exit) proxies to a backend on 127.0.0.1:9000 (a second server
block of the same nginx). Without upstream keepalive nginx talks HTTP/1.0 to the backend, one
connection per request, and the backend closes first; with `keepalive 16` + HTTP/1.1 the
connections are reused. The client keeps one connection to nginx, so every TIME_WAIT counted
toward port 9000 comes from the proxy hop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import signal
import subprocess
import time
from typing import Any

from timewait.config import KernelConfig
from timewait.lab import compare as cmp
from timewait.lab import owner
from timewait.lab.experiments.base import (
    NGINX,
    Experiment,
    LabResult,
    Progress,
    Sampler,
    count_tw,
    counter_delta,
    counters,
    kernel_hz,
    set_sysctls,
)
from timewait.lab.experiments.registry import register
from timewait.lab.namespaces import (
    LabChildFailed,
    NetnsProcess,
    exec_dies_with_parent,
    run_in_netns,
    throwaway_netns,
)
from timewait.live.capture import capture
from timewait.sim.flow import FlowWorkload, simulate
from timewait.sim.scenario import Param, ParamValue, Series
from timewait.sim.scenario import get as get_scenario
from timewait.sim.scenarios.flow import parse_range
from timewait.units import SEC, from_seconds

HTTP_PORT = 8080
BACKEND_PORT = 9000
TMP_PREFIX = owner.TMP_PREFIX


# -- the HTTP server and clients (run inside the namespace) -------------------------------------


def http_server(port: int) -> tuple[str, Any]:
    """For NetnsProcess: an HTTP/1.1 keep-alive server on 127.0.0.1:port (a thread per client)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without TCP_NODELAY, Nagle plus the client's
        # delayed ACK cost 40 ms per keep-alive request.
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            return

    ThreadingHTTPServer.allow_reuse_address = True
    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}/", httpd


def _is_eaddrnotavail(exc: BaseException) -> bool:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.EADDRNOTAVAIL:
            return True
        if "Cannot assign requested address" in str(e):
            return True
        nxt = e.__cause__ or e.__context__
        if nxt is None and e.args and isinstance(e.args[0], BaseException):
            nxt = e.args[0]
        e = nxt
    return False


def http_clients(kind: str, url: str, rate: float, duration: float) -> dict[str, Any]:
    """Inside the namespace: `rate` GETs per second for `duration` s with one kind of client."""
    import requests
    import urllib3

    session = requests.Session() if kind == "requests.Session" else None
    pool = urllib3.PoolManager(maxsize=1, retries=False) if kind == "urllib3.PoolManager" else None
    ok = eaddrnotavail = other = 0
    first: float | None = None
    period = 1.0 / rate
    t0 = time.monotonic()
    i = 0
    while True:
        due = t0 + i * period
        if due - t0 >= duration:
            break
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        i += 1
        try:
            if session is not None:
                r = session.get(url, timeout=5)
                r.content  # noqa: B018 - read the body so the connection goes back to the pool
            elif pool is not None:
                pool.request("GET", url, timeout=5).data  # noqa: B018
            else:
                requests.get(url, timeout=5).content  # noqa: B018
            ok += 1
        except Exception as e:
            if _is_eaddrnotavail(e):
                eaddrnotavail += 1
            else:
                other += 1
            if first is None:
                first = time.monotonic() - t0
    if session is not None:
        session.close()
    if pool is not None:
        pool.clear()
    return {
        "requests": ok,
        "eaddrnotavail": eaddrnotavail,
        "other_failures": other,
        "first_failure_s": None if first is None else round(first, 3),
    }


# -- http-pooling ----------------------------------------------------------------------------------

CLIENTS = ("requests.get", "requests.Session", "urllib3.PoolManager")


def _pooling_model(p: dict[str, ParamValue], lo: int, hi: int) -> tuple[dict[str, Any], Any]:
    """The model side: the sim's `pooling` scenario on loopback with the kernel's CONFIG_HZ.
    requests.get is its connection per request (2 ms each); a Session or a PoolManager is its
    keep-alive pool of one, closed by the client as the run ends."""
    ms = get_scenario("pooling").run(
        {
            "rate": p["rate"], "duration_s": p["duration_s"], "pool_size": 1,
            "pool_max_lifetime_s": 0, "port_range": f"{lo}-{hi}", "tw_reuse": p["tw_reuse"],
            "loopback": True, "timer_hz": kernel_hz(), "pool_closes_at_end": True,
            "lifetime_ms": 2.0,
        },
        seed=1,
    )  # fmt: skip
    model: dict[str, dict[str, Any]] = {}
    series = {}
    for kind in CLIENTS:
        name = "connection per request" if kind == "requests.get" else "keep-alive pool of 1"
        v = ms.variants[name]
        model[kind] = {
            "requests": v["connections"] if kind == "requests.get" else v["requests"],
            "connections": v["connections"],
            "failures": v["failures"],
            "eaddrnotavail": v["failures"],
            "first_failure_s": v["first_failure_s"],
            "client_time_wait": v["final_time_wait"],
        }
        series[f"model: {kind}"] = {"time_wait": ms.series[name]["time_wait"]}
    return model, series


def run_http_pooling(p: dict[str, ParamValue], progress: Progress) -> LabResult:
    rate = float(p["rate"])
    duration = float(p["duration_s"])
    lo, hi = parse_range(str(p["port_range"]))
    reuse = int(p["tw_reuse"])
    kernel: dict[str, dict[str, Any]] = {}
    series = {}
    for kind in CLIENTS:
        with throwaway_netns() as ns:
            run_in_netns(
                ns, set_sysctls, {"ip_local_port_range": f"{lo} {hi}", "tcp_tw_reuse": str(reuse)}
            )
            with NetnsProcess(ns, http_server, HTTP_PORT) as server:
                progress(f"http-pooling: {kind}, {rate:g} requests/s for {duration:g} s")
                before = counters(ns)
                got = run_in_netns(
                    ns, http_clients, kind, server.report, rate, duration, timeout=duration + 60
                )
                sampler = Sampler({"k": ns}, {"tw": lambda s: count_tw(s, dport=HTTP_PORT)})
                sampler.sample()
                after = sampler.last["k"].counters
            kernel[kind] = {
                "requests": got["requests"],
                "connections": counter_delta(before, after, "ActiveOpens"),
                "failures": got["eaddrnotavail"] + got["other_failures"],
                "eaddrnotavail": got["eaddrnotavail"],
                "first_failure_s": got["first_failure_s"],
                "client_time_wait": int(sampler.values["k"]["tw"][-1]),
            }
    model, model_series = _pooling_model(p, lo, hi)
    series.update(model_series)
    rows = cmp.compare(
        kernel,
        model,
        ["requests", "connections", "failures", "first_failure_s", "client_time_wait"],
        notes={"first_failure_s": "kernel: a requests.get call takes ~2-5 ms of CPU"},
    )
    g = kernel["requests.get"]
    verdict = (
        f"{rate:g} requests/s for {duration:g} s with {hi - lo + 1} ports: requests.get per call "
        f"opened {g['connections']} connections, left {g['client_time_wait']} TIME_WAIT and "
        f"failed {g['failures']} times (EADDRNOTAVAIL); a requests.Session opened "
        f"{kernel['requests.Session']['connections']} and a urllib3 PoolManager "
        f"{kernel['urllib3.PoolManager']['connections']}, with "
        f"{kernel['requests.Session']['failures']} and "
        f"{kernel['urllib3.PoolManager']['failures']} failures."
    )
    return LabResult(
        experiment="http-pooling",
        params=p,
        kernel=kernel,
        model=model,
        rows=rows,
        verdict=verdict,
        series=series,
    )


register(
    Experiment(
        name="http-pooling",
        question="Do requests.Session and a urllib3 pool remove the TIME_WAIT and EADDRNOTAVAIL "
        "that requests.get per call causes at the same request rate?",
        params=(
            Param(name="rate", default=100.0, min=1, max=300, help="requests per second"),
            Param(name="duration_s", default=5.0, min=1, max=120, help="seconds per client"),
            Param(name="port_range", default="40000-40299", help="ip_local_port_range"),
            Param(name="tw_reuse", default=0, min=0, max=2, help="tcp_tw_reuse in the namespace"),
        ),
        run_fn=run_http_pooling,
        quick={"duration_s": 1.5, "port_range": "40000-40099"},
    )
)


# -- nginx-keepalive -------------------------------------------------------------------------------

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream backend {{
        server 127.0.0.1:{backend};
        {keepalive}
        keepalive_requests 1000000;  # default 1000: then the kept-alive connection is renewed
    }}
    server {{
        listen 127.0.0.1:{backend};
        location / {{ return 200 "ok"; }}
    }}
    server {{
        listen 127.0.0.1:{front};
        location / {{
            proxy_pass http://backend;
            {proxy_http}
        }}
    }}
}}
"""


def nginx_conf(directory: str, keepalive: int) -> str:
    return NGINX_CONF.format(
        d=directory,
        backend=BACKEND_PORT,
        front=HTTP_PORT,
        keepalive=f"keepalive {keepalive};" if keepalive else "",
        proxy_http='proxy_http_version 1.1; proxy_set_header Connection "";' if keepalive else "",
    )


def _wait_port(port: int, timeout: float) -> bool:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            try:
                s.connect(("127.0.0.1", port))
                return True
            except OSError:
                time.sleep(0.05)
    return False


UNSHARE = "unshare"  # util-linux


@contextlib.contextmanager
def running_nginx(ns: str, keepalive: int) -> Any:
    """nginx inside `ns` with its own config and temp dir; killed and removed on exit.

    nginx's master would outlive a SIGKILLed run (and its workers outlive the master), so it
    runs as PID 1 of a PID namespace of its own: `unshare --pid --fork --kill-child` forks it
    with PR_SET_PDEATHSIG, and unshare itself gets PR_SET_PDEATHSIG from us. When we die, by
    any signal, the kernel kills unshare, then the master, and with the namespace's init every
    worker. The temp dir and the process are recorded (lab.owner) for `timewait lab cleanup`.
    """
    d = owner.make_temp_dir()
    proc: subprocess.Popen[bytes] | None = None
    try:
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_conf(d, keepalive))
        proc = subprocess.Popen(
            [UNSHARE, "--pid", "--fork", "--kill-child", "ip", "netns", "exec", ns,
             NGINX, "-c", conf, "-p", d, "-e", f"{d}/error.log"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C on our terminal goes to us; we stop nginx
            preexec_fn=exec_dies_with_parent(),  # only a prctl() call
        )  # fmt: skip
        owner.child_started(proc.pid, "nginx", group=True)
        if not run_in_netns(ns, _wait_port, HTTP_PORT, 10.0):
            err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None and \
                proc.stderr else ""  # fmt: skip
            raise LabChildFailed(f"nginx did not start in {ns}: {err.strip()[:200]}")
        yield proc
    finally:
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            owner.child_gone(proc.pid)
            if proc.stderr:
                proc.stderr.close()
        owner.remove_temp_dir(d)


def _packet_backend_churn(rate: float, duration: float) -> tuple[int, int, int]:
    """nginx -> backend without keepalive on the packet model: a connection per request, the
    backend closing first, so TIME_WAIT lands on the backend. The packet model (not the flow
    engine) is needed because a new SYN from a port whose four-tuple is still in the backend's
    TIME_WAIT takes that TIME_WAIT over (TCP_TW_SYN, ref 1.3/1.6): the kernel showed 934-1000
    TIME_WAITs for 1000 connections, depending on where the port search started."""
    from timewait.model.host import Host
    from timewait.model.states import TcpState
    from timewait.sim.link import LinkParams
    from timewait.sim.network import Network
    from timewait.sim.workloads import RequestClient, Server
    from timewait.units import US

    hz = kernel_hz()
    net = Network(rng=random.Random(1), link=LinkParams(delay=25 * US))
    proxy = net.add_host(
        Host(name="nginx", addrs=["198.18.0.1"], rng=random.Random(2), timer_hz=hz)
    )
    backend = net.add_host(
        Host(name="backend", addrs=["198.18.0.2"], rng=random.Random(3), timer_hz=hz)
    )
    Server(net, backend, port=BACKEND_PORT, close_first=True)
    n = round(rate * duration)
    client = RequestClient(
        net, proxy, dests=[("198.18.0.2", BACKEND_PORT)], interval=round(SEC / rate), count=n,
        client_closes=False,
    )  # fmt: skip
    net.run(from_seconds(duration) + SEC)
    tw = backend.count_state(TcpState.TIME_WAIT) + proxy.count_state(TcpState.TIME_WAIT)
    return proxy.counters["ActiveOpens"], tw, sum(client.stats.failures.values())


def run_nginx_keepalive(p: dict[str, ParamValue], progress: Progress) -> LabResult:
    rate = float(p["rate"])
    duration = float(p["duration_s"])
    ka = int(p["keepalive"])
    kernel: dict[str, dict[str, Any]] = {}
    model: dict[str, dict[str, Any]] = {}
    series: dict[str, Series] = {}
    url = f"http://127.0.0.1:{HTTP_PORT}/"
    for name, keepalive in (("no upstream keepalive", 0), (f"upstream keepalive {ka}", ka)):
        with throwaway_netns() as ns, running_nginx(ns, keepalive):
            progress(f"nginx-keepalive: {name}, {rate:g} requests/s for {duration:g} s")
            base = capture(netns=ns)  # after nginx's readiness probe (one TIME_WAIT)
            before = base.counters
            got = run_in_netns(
                ns, http_clients, "urllib3.PoolManager", url, rate, duration, timeout=duration + 60
            )
            sampler = Sampler(
                {"k": ns},
                {
                    "backend_tw": lambda s: (
                        count_tw(s, sport=BACKEND_PORT) + count_tw(s, dport=BACKEND_PORT)
                    ),
                    "client_tw": lambda s: count_tw(s, dport=HTTP_PORT),
                },
            )
            sampler.sample()
            after = sampler.last["k"].counters
        opens = counter_delta(before, after, "ActiveOpens")
        kernel[name] = {
            "requests": got["requests"],
            "failures": got["eaddrnotavail"] + got["other_failures"],
            "backend_connections": opens - 1,  # minus the client's one connection to nginx
            "time_wait_toward_backend": int(sampler.values["k"]["backend_tw"][-1]),
            "client_time_wait": int(sampler.values["k"]["client_tw"][-1])
            - count_tw(base, dport=HTTP_PORT),
        }
        if keepalive:
            wl = FlowWorkload(
                rate=0.0,
                duration=from_seconds(duration),
                open_at_start=1,
                lifetime=from_seconds(duration) + SEC,
                client_closes_first=False,
                loopback=True,
            )
            m = simulate(KernelConfig(), wl, rng=random.Random(1), timer_hz=kernel_hz())
            backend_conns, backend_tw = m.connections, m.time_wait[-1] + m.server_time_wait[-1]
            failures = m.failures
        else:
            backend_conns, backend_tw, failures = _packet_backend_churn(rate, duration)
        model[name] = {
            "requests": round(rate * duration),
            "failures": failures,
            "backend_connections": backend_conns,
            "time_wait_toward_backend": backend_tw,
            "client_time_wait": 1,  # the client's one pooled connection, closed at the end
        }
    rows = cmp.compare(
        kernel,
        model,
        ["backend_connections", "time_wait_toward_backend", "failures", "client_time_wait"],
        notes={
            f"upstream keepalive {ka}/backend_connections": "nginx may open up to one "
            "connection per worker and concurrent request; the model opens one",
        },
    )
    a = kernel["no upstream keepalive"]
    b = kernel[f"upstream keepalive {ka}"]
    verdict = (
        f"nginx at {rate:g} requests/s for {duration:g} s: without upstream keepalive it opened "
        f"{a['backend_connections']} backend connections and left "
        f"{a['time_wait_toward_backend']} TIME_WAIT toward the backend; with keepalive {ka}: "
        f"{b['backend_connections']} connections, {b['time_wait_toward_backend']} TIME_WAIT."
    )
    return LabResult(
        experiment="nginx-keepalive",
        params=p,
        kernel=kernel,
        model=model,
        rows=rows,
        verdict=verdict,
        series=series,
        notes=["nginx runs inside the namespace with its own config, pid file and temp dir"],
    )


register(
    Experiment(
        name="nginx-keepalive",
        question="Does nginx's upstream keepalive remove the TIME_WAIT toward the backend?",
        params=(
            Param(name="rate", default=200.0, min=1, max=500, help="requests per second"),
            Param(name="duration_s", default=5.0, min=1, max=55, help="seconds per variant"),
            Param(name="keepalive", default=16, min=1, max=1024, help="upstream keepalive"),
        ),
        run_fn=run_nginx_keepalive,
        quick={"duration_s": 2.0},
        needs=("nginx",),
    )
)
