"""Serve the collector over HTTP: prometheus_client's WSGI app on a threading WSGI server.

Theory of operation
-------------------
`parse_listen()` turns --listen into (host, port); a bare port, or ":PORT", stays on loopback
(127.0.0.1): exposing socket tables to the network is an explicit choice (`0.0.0.0:PORT`,
`[::]:PORT`). An empty address, and a host written as numbers and dots that is no IPv4 address
(999.1.1.1), are refused there, so they are not mistaken for host names that fail to resolve.
`check_cli_listen()` also refuses port 0 on the command line: the kernel would pick a random
port, and Prometheus cannot be pointed at a port that changes at every start (the library API,
and the tests, still bind port 0). `MetricsServer` binds at construction, so every user error
(port in use, an address this host does not have, a port below 1024 without privilege)
surfaces as a one-line `ListenError` before anything runs. It serves `/metrics` from
`prometheus_client.make_wsgi_app`, a small index page at `/` and 404 everywhere else, on a
ThreadingWSGIServer (one thread per request, daemon threads: client_python exposition.py), so
a slow client never blocks other scrapes; the collector's lock makes concurrent scrapes share
one collection.

`run()` serves until SIGINT (Ctrl-C) or SIGTERM (systemd stop), then shuts the server down:
the scrape in flight finishes, the socket is closed, and run() returns normally (exit 0).
Signals are turned into an Event from the main thread; the server loop runs in a thread,
because `shutdown()` must be called from a thread other than the one serving.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, Final, TextIO
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from timewait.errors import TimewaitError
from timewait.exporter import DEFAULT_PORT
from timewait.exporter.collector import DEFAULT_TTL_S, LOG, TimewaitCollector

LOOPBACK: Final = "127.0.0.1"


class ListenError(TimewaitError):
    """The --listen address cannot be served (in use, not ours, needs privilege)."""


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:19977', '[::1]:19977', 'localhost:19977', ':19977' or '19977' -> (host, port).

    Raises ValueError (one line, with an example) for anything else. Port 0 asks the kernel
    for a free port (the server prints the one it got).
    """
    example = f"e.g. 127.0.0.1:{DEFAULT_PORT}, [::1]:{DEFAULT_PORT} or {DEFAULT_PORT}"
    raw = text.strip()
    if not raw:
        raise ValueError(
            f"the address is empty: give [HOST]:PORT ({example}; leave --listen out for "
            f"127.0.0.1:{DEFAULT_PORT})"
        )
    if raw.isdigit():
        host, port_s = LOOPBACK, raw
    elif raw.startswith("["):
        end = raw.find("]")
        if end < 0 or raw[end + 1 : end + 2] != ":":
            raise ValueError(f"{text!r} is not [IPv6]:PORT ({example})")
        host, port_s = raw[1:end], raw[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address ({example})") from None
    else:
        host, sep, port_s = raw.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r} has no port ({example})")
        if ":" in host:
            raise ValueError(f"write IPv6 addresses in brackets: [{host}]:{port_s} ({example})")
        if host and all(c.isdigit() or c == "." for c in host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(
                    f"{host} is not an IPv4 address: four numbers 0-255 separated by dots "
                    f"({example})"
                ) from None
        host = host or LOOPBACK
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"port {port_s!r} is not a number 0-65535 ({example})")
    return host, int(port_s)


def check_cli_listen(text: str) -> tuple[str, int]:
    """parse_listen() for `--listen`, which also refuses port 0 (ValueError, one line)."""
    host, port = parse_listen(text)
    if port == 0:
        raise ValueError(
            f"port 0 would serve on a random free port, which Prometheus cannot be pointed at: "
            f"give a fixed port (default {DEFAULT_PORT})"
        )
    return host, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


INDEX: Final = b"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>timewait exporter</title></head>
<body><h1>timewait exporter</h1>
<p>TIME_WAIT sockets and ephemeral-port headroom per destination, for Prometheus:
<a href="/metrics">/metrics</a></p></body></html>
"""
NOT_FOUND: Final = b"404 Not Found: the metrics are at /metrics\n"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def routes(metrics: WsgiApp) -> WsgiApp:
    """/metrics -> the Prometheus app, / -> a small index page, anything else -> 404."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return metrics(environ, start_response)
        status, body, kind = (
            ("200 OK", INDEX, "text/html; charset=utf-8")
            if path == "/"
            else ("404 Not Found", NOT_FOUND, "text/plain; charset=utf-8")
        )
        start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body)))])
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    return app


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr (client_python's _SilentHandler does the same)."""

    def log_message(self, format: str, *args: object) -> None:
        pass


class MetricsServer:
    """An HTTP server for `registry`, bound at construction, serving after `start()`.

    Raises ListenError (one line, says what to do) when the address cannot be bound.
    Use as a context manager: the socket is closed on exit whatever happens.
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        listen = format_address(host, port)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as e:
            raise ListenError(
                f"cannot listen on {listen}: {e.strerror}: give an IP address of this host"
            ) from None
        family, _, _, _, sockaddr = infos[0]

        class Server(ThreadingWSGIServer):
            address_family = family
            # socketserver's default listen() backlog is 5: 50 scrapes arriving at once then
            # overflow the accept queue and wait for SYN retransmits (1 s, 3 s, ...).
            request_queue_size = 128

        try:
            self.httpd: WSGIServer = make_server(
                str(sockaddr[0]),
                port,
                routes(make_wsgi_app(registry)),
                Server,
                handler_class=_QuietHandler,
            )
        except OSError as e:
            raise ListenError(_bind_error(listen, port, e)) from None
        self.host = str(sockaddr[0])
        self.port = int(self.httpd.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{format_address(self.host, self.port)}/metrics"

    def start(self) -> None:
        """Serve in a background thread (returns at once)."""
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="timewait-exporter", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving (the request in flight finishes) and close the socket."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bind_error(listen: str, port: int, e: OSError) -> str:
    if e.errno == _errno.EADDRINUSE:
        return (
            f"cannot listen on {listen}: the port is in use (`ss -ltnp 'sport = :{port}'` shows "
            f"by whom): pick another with --listen"
        )
    if e.errno == _errno.EADDRNOTAVAIL:
        return f"cannot listen on {listen}: not an address of this host: check --listen"
    if e.errno == _errno.EACCES:
        return (
            f"cannot listen on {listen}: ports below 1024 need root or CAP_NET_BIND_SERVICE: "
            f"use a higher port (default {DEFAULT_PORT})"
        )
    return f"cannot listen on {listen}: {e.strerror}"


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stop` (main thread only); the old handlers come back on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run(
    server: MetricsServer,
    *,
    stop: threading.Event | None = None,
    ready: Callable[[MetricsServer], None] | None = None,
) -> None:
    """Serve until `stop` is set, SIGINT or SIGTERM; then shut down cleanly and return."""
    stop = stop or threading.Event()
    with stop_on_signals(stop), server:
        server.start()
        if ready is not None:
            ready(server)
        while not stop.wait(0.5):
            pass


def check_targets(netns: tuple[str, ...]) -> None:
    """Fail fast, before serving, on a namespace that does not exist or needs root we lack.

    Raises NamespaceNotFound / NeedRoot (one line each). Later failures (a namespace deleted
    while we serve) are not fatal: they show up as timewait_collection_error.
    """
    from timewait.live import netns as _netns

    for name in netns:
        with _netns.entered(_netns.resolve(netns=name)):
            pass


def check_all_netns() -> None:
    """--all-netns: fail fast when we cannot enter the node's other namespaces.

    Tries the first namespace that is not ours; raises NeedRoot (one line) if setns() is
    refused. A machine with no other namespace yet passes: pods may come later.
    """
    import os

    from timewait.live import netns as _netns
    from timewait.live.discover import discover
    from timewait.live.scan import open_verified, target_of

    for found in discover().namespaces:
        fd = open_verified(found)
        if fd is None:
            continue
        try:
            with _netns.entered(target_of(found, fd)) as switched:
                if switched:
                    return
        except _netns.NamespaceNotFound:
            continue
        finally:
            os.close(fd)


def serve(
    *,
    listen: str,
    netns: tuple[str, ...],
    top_k: int,
    log_stream: TextIO,
    stop: threading.Event | None = None,
    ttl_s: float = DEFAULT_TTL_S,
    all_netns: bool = False,
    max_netns: int = 20,
    pods_dir: str | None = None,
    trace: bool = False,
) -> None:
    """`timewait exporter`: check the targets, bind, log the URL, serve until stopped.

    Raises ValueError for a bad `listen`, ListenError when it cannot be bound,
    NamespaceNotFound / NeedRoot for a bad --netns (or, with all_netns, no privilege).
    """
    host, port = parse_listen(listen)
    if all_netns:
        check_all_netns()
    else:
        check_targets(netns)
    handler = logging.StreamHandler(log_stream)
    handler.setFormatter(logging.Formatter("timewait exporter: %(levelname)s: %(message)s"))
    LOG.addHandler(handler)
    old_level, old_propagate = LOG.level, LOG.propagate
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    feed = None
    try:
        if trace:  # --trace (issue 13): started here, on the main thread (PR_SET_PDEATHSIG)
            from timewait.exporter.trace import start_feed

            feed = start_feed(netns, top_k)
        collector = TimewaitCollector(
            netns, top_k=top_k, ttl_s=ttl_s, all_netns=all_netns, max_netns=max_netns,
            pods_dir=pods_dir, trace=feed,
        )  # fmt: skip
        registry = CollectorRegistry(auto_describe=True)
        registry.register(collector)
        server = MetricsServer(registry, host, port)
        names = (
            f"every namespace of the node, the host and {max_netns} more one by one"
            if all_netns
            else ", ".join(t.label for t in collector.targets)
        )
        run(
            server,
            stop=stop,
            ready=lambda s: LOG.info(
                "serving %s (netns: %s; top %d destinations + other)", s.url, names, top_k
            ),
        )
        LOG.info("stopped")
    finally:
        if feed is not None:
            feed.stop()
        LOG.removeHandler(handler)
        LOG.setLevel(old_level)
        LOG.propagate = old_propagate
