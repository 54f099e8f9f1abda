"""Robustness of the real exporter process (issue 6 item 4), on a namespace holding 100,000
TIME_WAIT sockets (timewait.lab.population.mass_time_wait, all on its loopback):

- 50 concurrent scrapes all succeed with the full numbers;
- memory stays bounded: the exporter's peak RSS stays under a fixed bound, and a third and a
  fourth round of 50 scrapes (fresh collections) do not grow it past the second's;
- a namespace deleted under the running exporter shows up as timewait_collection_error = 1 and
  one log line, the scrape still answers (quickly), the other namespace is still exported, and
  the process stops cleanly afterwards.
The scrapes go to 127.0.0.1 of the test's namespace. The namespaces, the exporter and the
holder processes are removed on success and on failure. TIME_WAIT lasts 60 s, so everything
here must run within a minute of making the sockets (it takes a few seconds).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from ..lab.helpers import need_root
from .helpers import Exporter, exporter, rss_kib, sample, scrape

pytestmark = pytest.mark.root

N_TW = 100_000
N_SCRAPES = 50
# Measured on a 2-core, Linux 6.18 machine: 68 MB peak with 100,000 TIME_WAITs (Python +
# numpy + prometheus_client ~42 MB idle, one 100,000-row dump and its analysis ~26 MB), flat
# over ten rounds of 50 scrapes, 47 MB between scrapes. The bound leaves room for other
# machines without letting a leak (a table kept per scrape: ~10 MB each) through.
RSS_BOUND_MB = 150
# Peak growth from the second to the fourth round of fresh collections. Not from the first:
# from the second round on, a new collection is built while the previous one is still cached,
# so the peak is one table higher once, and that is not a leak (the first-to-third comparison
# failed now and then on a loaded machine for that reason alone).
RSS_GROWTH_MB = 8


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Exporter]]:
    need_root()
    from timewait.lab.namespaces import throwaway_netns
    from timewait.lab.population import mass_time_wait

    log = tmp_path_factory.mktemp("exporter") / "exporter.log"
    with throwaway_netns() as busy, throwaway_netns() as doomed:
        mass_time_wait(busy, N_TW)
        with exporter(["--netns", busy, "--netns", doomed, "--top-k", "5"], log) as exp:
            yield busy, doomed, exp


def scrape_all(url: str, n: int) -> tuple[list[str], float]:
    t0 = time.monotonic()
    with ThreadPoolExecutor(n) as pool:
        bodies = list(pool.map(lambda _: scrape(url), range(n)))
    return bodies, time.monotonic() - t0


def test_50_concurrent_scrapes_succeed_with_bounded_memory(
    stack: tuple[str, str, Exporter],
) -> None:
    busy, _, exp = stack
    peaks = []
    for _round in range(4):
        time.sleep(1.05)  # past the 1 s cache: each round makes a fresh collection
        bodies, took = scrape_all(exp.url, N_SCRAPES)
        assert len(bodies) == N_SCRAPES
        for body in bodies:
            tw = sample(body, "timewait_sockets", netns=busy, state="TIME-WAIT")
            assert tw == N_TW
            assert sample(body, "timewait_collection_error", netns=busy) == 0
        assert took < 10, f"50 scrapes took {took:.1f} s"  # measured: 0.13 s
        peaks.append(rss_kib(exp.proc.pid))
    rss_mb = [r / 1024 for r, _ in peaks]
    hwm_mb = [h / 1024 for _, h in peaks]
    print(f"exporter RSS after each round: {rss_mb} MB, peak {hwm_mb[-1]:.0f} MB")
    assert hwm_mb[-1] < RSS_BOUND_MB
    assert hwm_mb[3] - hwm_mb[1] < RSS_GROWTH_MB


def test_namespace_deleted_under_it_is_an_error_metric_and_a_log_line(
    stack: tuple[str, str, Exporter],
) -> None:
    busy, doomed, exp = stack
    from timewait.lab.namespaces import delete_netns

    time.sleep(1.05)
    assert sample(scrape(exp.url), "timewait_collection_error", netns=doomed) == 0
    delete_netns(doomed)
    time.sleep(1.05)
    t0 = time.monotonic()
    body = scrape(exp.url, timeout=10)
    assert time.monotonic() - t0 < 5  # answered, not hung
    assert sample(body, "timewait_collection_error", netns=doomed) == 1
    errors = sample(body, "timewait_collection_errors_total", netns=doomed)
    assert errors is not None and errors >= 1
    assert sample(body, "timewait_sockets", netns=doomed, state="LISTEN") is None
    assert f'timewait_usable_ports{{netns="{doomed}"}}' not in body  # its families dropped
    assert sample(body, "timewait_sockets", netns=busy, state="TIME-WAIT") == N_TW
    assert sample(body, "timewait_collection_error", netns=busy) == 0
    lines = [ln for ln in exp.log.read_text().splitlines() if doomed in ln and "failed" in ln]
    assert len(lines) == 1, exp.log.read_text()
    assert lines[0].startswith(f"timewait exporter: WARNING: collection of netns {doomed} failed")
    assert "Traceback" not in exp.log.read_text()
    assert exp.proc.poll() is None  # still serving
    assert exp.stop() == 0
