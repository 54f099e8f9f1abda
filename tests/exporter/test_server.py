"""The HTTP side and the `timewait exporter` command: --listen parsing, one-line errors for
everything a user can get wrong (with their exit statuses), serving /metrics, and a clean stop
on SIGTERM and Ctrl-C. Traffic stays on the loopback of a namespace the tests make
(conftest.py), so these tests need root.
"""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from timewait.cli import main
from timewait.env import Environment
from timewait.exporter import DEFAULT_LISTEN, DEFAULT_PORT
from timewait.exporter.collector import TimewaitCollector
from timewait.exporter.server import ListenError, MetricsServer, parse_listen, run, serve
from timewait.status import ExitStatus

from ..doctor.helpers import S1, C, snap, tws
from .helpers import free_port

TIMEWAIT = str(Path(sys.executable).with_name("timewait"))

pytestmark = pytest.mark.root  # the private namespace of conftest.py needs setns()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:19977", ("127.0.0.1", 19977)),
        ("19977", ("127.0.0.1", 19977)),
        (":19977", ("127.0.0.1", 19977)),
        ("[::1]:9", ("::1", 9)),
        ("localhost:0", ("localhost", 0)),
        ("0.0.0.0:19977", ("0.0.0.0", 19977)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nothing", "has no port"),
        ("127.0.0.1:99999", "not a number 0-65535"),
        ("127.0.0.1:http", "not a number"),
        ("::1:19977", "brackets"),
        ("[::1]19977", "is not [IPv6]:PORT"),
        ("[nope]:1", "not an IPv6 address"),
        # Not host names that fail to resolve (999.1.1.1 was "Name or service not known").
        ("999.1.1.1:19977", "999.1.1.1 is not an IPv4 address"),
        ("1.2.3:19977", "1.2.3 is not an IPv4 address"),
        ("", "the address is empty"),
        ("  ", "the address is empty"),
    ],
)
def test_parse_listen_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_listen(text)


def test_default_is_loopback_on_19977() -> None:
    assert DEFAULT_LISTEN == "127.0.0.1:19977" and parse_listen(DEFAULT_LISTEN)[1] == DEFAULT_PORT


def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    s = snap(tws(C, S1, 80, range(40000, 40050)))
    reg.register(TimewaitCollector(source=lambda ns: s))
    return reg


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read().decode()


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    with MetricsServer(registry(), "127.0.0.1", 0) as srv:
        srv.start()
        yield srv


def test_serves_metrics(server: MetricsServer, _private_netns: str) -> None:
    """Served from inside the test's namespace: the series carry its name (conftest.py)."""
    status, body = get(server.url)
    assert status == 200
    assert (
        'timewait_destination_ports_in_use{destination="198.18.0.1 -> 198.18.0.2:80",'
        f'netns="{_private_netns}"}} 50.0' in body
    )


def test_index_page_links_to_metrics(server: MetricsServer) -> None:
    status, body = get(server.url.removesuffix("metrics"))
    assert status == 200 and '<a href="/metrics">/metrics</a>' in body
    assert "timewait_" not in body  # an index, not the metrics


@pytest.mark.parametrize("path", ["/nope", "/metrics/", "/favicon.ico", "/index.html"])
def test_other_paths_are_404(server: MetricsServer, path: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as e:
        get(server.url.removesuffix("/metrics") + path)
    assert e.value.code == 404
    assert b"/metrics" in e.value.read()


def test_metrics_with_a_query_string(server: MetricsServer) -> None:
    status, body = get(server.url + "?name[]=timewait_sockets")
    assert status == 200 and "timewait_sockets" in body


def test_port_in_use_is_one_line_error(server: MetricsServer) -> None:
    with pytest.raises(ListenError) as e:
        MetricsServer(registry(), "127.0.0.1", server.port)
    msg = str(e.value)
    assert "in use" in msg and "--listen" in msg and "\n" not in msg


def test_address_not_of_this_host() -> None:
    with pytest.raises(ListenError, match="not an address of this host"):
        MetricsServer(registry(), "192.0.2.1", 0)  # TEST-NET-1: never ours


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    with MetricsServer(registry(), "::1", 0) as srv:
        srv.start()
        assert srv.url.startswith("http://[::1]:")
        assert get(srv.url)[0] == 200


def test_run_returns_when_stopped() -> None:
    stop = threading.Event()
    srv = MetricsServer(registry(), "127.0.0.1", 0)
    urls: list[str] = []
    t = threading.Thread(
        target=run, args=(srv,), kwargs={"stop": stop, "ready": lambda s: urls.append(s.url)}
    )
    t.start()
    deadline = time.monotonic() + 5
    while not urls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert get(urls[0])[0] == 200
    stop.set()
    t.join(5)
    assert not t.is_alive()
    with pytest.raises(OSError):
        get(urls[0])  # the socket is closed


def test_serve_logs_url_and_stop(_private_netns: str) -> None:
    stop = threading.Event()
    log = io.StringIO()
    t = threading.Thread(
        target=serve,
        kwargs=dict(listen="127.0.0.1:0", netns=(), top_k=3, log_stream=log, stop=stop),
    )
    t.start()
    deadline = time.monotonic() + 10
    while "serving" not in log.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    line = log.getvalue().splitlines()[0]
    assert line.startswith("timewait exporter: INFO: serving http://127.0.0.1:")
    url = line.split()[4]
    status, body = get(url)
    assert status == 200 and f'netns="{_private_netns}"' in body
    stop.set()
    t.join(5)
    assert log.getvalue().splitlines()[-1] == "timewait exporter: INFO: stopped"


# -- the command ------------------------------------------------------------------------------


def cli(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(["exporter", *args], env=Environment(stdout=out, stderr=err))
    return status, err.getvalue()


@pytest.mark.parametrize(
    ("args", "status", "needle"),
    [
        (("--listen", "nonsense"), ExitStatus.USAGE, "--listen"),
        (("--listen", "127.0.0.1:70000"), ExitStatus.USAGE, "0-65535"),
        (("--top-k", "-3"), ExitStatus.USAGE, "--top-k"),
        (("--top-k", "5000"), ExitStatus.USAGE, "--top-k"),
        (("--netns", "no-such-ns-xyz"), ExitStatus.ERROR, "ip netns list"),
        (("--listen", "192.0.2.1:19977"), ExitStatus.ERROR, "not an address of this host"),
        # Reported as a name-resolution failure before (issue 17).
        (("--listen", "999.1.1.1:19977"), ExitStatus.USAGE, "999.1.1.1 is not an IPv4 address"),
    ],
)
def test_user_errors_are_one_line(args: tuple[str, ...], status: int, needle: str) -> None:
    got, err = cli(*args)
    assert got == status, err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("listen", "needle"),
    [
        ("", "the address is empty"),
        (":0", "port 0 would serve on a random free port, which Prometheus cannot be pointed at"),
        ("0", "port 0 would serve"),
        ("localhost:0", "port 0 would serve"),
    ],
)
def test_listen_that_used_to_serve_somewhere_else_is_refused(listen: str, needle: str) -> None:
    """'' served on the default address and :0 on a random port (issue 17); run as a process
    with a timeout, so a regression fails instead of serving for ever."""
    r = subprocess.run(
        [TIMEWAIT, "exporter", "--listen", listen], capture_output=True, text=True, timeout=20
    )
    assert r.returncode == ExitStatus.USAGE, r.stderr
    assert r.stderr.count("\n") == 1 and needle in r.stderr


def test_port_in_use_via_cli(server: MetricsServer) -> None:
    got, err = cli("--listen", f"127.0.0.1:{server.port}")
    assert got == ExitStatus.ERROR and err.count("\n") == 1 and "in use" in err


def start_exporter(*args: str, prefix: tuple[str, ...] = ()) -> tuple[subprocess.Popen[str], str]:
    p = subprocess.Popen(
        [*prefix, TIMEWAIT, "exporter", "--listen", f"127.0.0.1:{free_port()}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stderr is not None
    line = p.stderr.readline()
    assert "serving http://" in line, line
    return p, line.split()[4]


def test_ip_netns_exec_labels_series_with_the_namespaces_name(_private_netns: str) -> None:
    """`ip netns exec NAME timewait exporter` labelled everything netns="host" (issue 17)."""
    p, url = start_exporter(prefix=("ip", "netns", "exec", _private_netns))
    try:
        status, body = get(url)
        assert status == 200
        assert f'timewait_collection_error{{netns="{_private_netns}"}} 0.0' in body
        assert 'netns="host"' not in body
    finally:
        p.terminate()
        p.communicate(timeout=10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_process_stops_cleanly_on_signal(sig: signal.Signals) -> None:
    p, url = start_exporter("--top-k", "2")
    try:
        status, body = get(url)
        assert status == 200 and "timewait_collection_error" in body
        t0 = time.monotonic()
        p.send_signal(sig)
        _, err = p.communicate(timeout=10)
        assert p.returncode == 0, err
        assert time.monotonic() - t0 < 3
        assert "stopped" in err and "Traceback" not in err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
