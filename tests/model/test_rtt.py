"""The RTO from measured round trips, one rule per test (K tcp_rtt_estimator(), tcp_set_rto(),
tcp_init_metrics(), tcp_model_timeout(); RFC 6298). The kernel's numbers are quoted from the probe
corpus (src/timewait/lab/probe/scripts) where a script measures them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from timewait.model.rtt import (
    JIFFY,
    TCP_RTO_MAX,
    TCP_RTO_MIN,
    TCP_TIMEOUT_FALLBACK,
    TCP_TIMEOUT_INIT,
    RttEstimator,
    jiffies_ceil,
    model_timeout,
)
from timewait.units import MS, SEC, US


def test_rto_starts_at_one_second() -> None:
    """RFC 6298 2.1 / TCP_TIMEOUT_INIT: before any sample the RTO is 1 s."""
    assert RttEstimator().rto == TCP_TIMEOUT_INIT == 1 * SEC


def test_tcp_rtt_estimator_first_sample_gives_rtt_plus_rto_min() -> None:
    """K tcp_rtt_estimator() first sample: srtt = m, rttvar = max(2m, TCP_RTO_MIN), so a LAN
    round trip of 10 ms gives an RTO of 210 ms, 212 ms in whole jiffies (tcp_set_rto():
    usecs_to_jiffies() rounds up; probe rto-data-rtt-based)."""
    r = RttEstimator()
    r.sample(10 * MS, snd_una=1, snd_nxt=1)
    assert r.srtt == 10 * MS
    assert r.rto == 212 * MS


def test_tcp_rtt_estimator_large_first_sample_gives_three_rtt() -> None:
    """K tcp_rtt_estimator(): "rto = 3 * rtt" when 2 x RTT exceeds TCP_RTO_MIN (300 ms ->
    900 ms)."""
    r = RttEstimator()
    r.sample(300 * MS, snd_una=1, snd_nxt=1)
    assert r.rto == 900 * MS


def test_tcp_rtt_estimator_smooths_by_an_eighth() -> None:
    """K tcp_rtt_estimator(): srtt = 7/8 srtt + 1/8 m (in usec << 3)."""
    r = RttEstimator()
    r.sample(80 * MS, snd_una=1, snd_nxt=1)
    r.sample(160 * MS, snd_una=2, snd_nxt=2)
    assert r.srtt == 90 * MS


def test_tcp_rtt_estimator_rttvar_never_below_rto_min() -> None:
    """K tcp_rtt_estimator(): mdev_max starts each round at TCP_RTO_MIN, so however steady a
    sub-millisecond RTT, the RTO stays above 200 ms: 204 ms, the next whole jiffy at HZ=250."""
    r = RttEstimator()
    for i in range(50):
        r.sample(100 * US, snd_una=i + 1, snd_nxt=i + 2)
    assert r.rto == TCP_RTO_MIN + JIFFY


def test_tcp_set_rto_caps_at_rto_max() -> None:
    """K tcp_set_rto() -> tcp_bound_rto(): at most TCP_RTO_MAX (120 s)."""
    r = RttEstimator()
    r.sample(100 * SEC, snd_una=1, snd_nxt=1)
    assert r.rto == TCP_RTO_MAX


def test_tcp_init_metrics_fallback_is_three_seconds_without_a_sample() -> None:
    """K tcp_init_metrics(): a handshake without an RTT sample (SYN retransmitted) leaves the
    RTO at TCP_TIMEOUT_FALLBACK, 3 s (RFC 6298 5.7); a sample already taken wins."""
    r = RttEstimator()
    r.fallback()
    assert r.rto == TCP_TIMEOUT_FALLBACK == 3 * SEC
    r2 = RttEstimator()
    r2.sample(5 * MS, snd_una=1, snd_nxt=1)
    r2.fallback()
    assert r2.rto == 208 * MS  # 205 ms rounded up to jiffies


def test_tcp_retransmit_timer_doubles_the_rto_and_a_sample_ends_backoff() -> None:
    """K tcp_retransmit_timer(): icsk_rto doubles up to TCP_RTO_MAX; a new sample recomputes
    it (tcp_ack_update_rtt() -> tcp_set_rto())."""
    r = RttEstimator()
    r.sample(10 * MS, snd_una=1, snd_nxt=1)
    r.backoff()
    r.backoff()
    assert r.rto == 4 * 212 * MS and r.backoffs == 2
    for _ in range(20):
        r.backoff()
    assert r.rto == TCP_RTO_MAX
    r.sample(10 * MS, snd_una=2, snd_nxt=2)
    assert r.backoffs == 0 and r.rto < 1 * SEC


def test_tcp_model_timeout_matches_the_retries2_budget() -> None:
    """K tcp_model_timeout(): tcp_retries2 = 15 with a 200 ms base is 924.6 s; 8 retries (the
    orphan default) 102.2 s; with a 1 s base, 6 SYN retries are 127 s."""
    assert model_timeout(15, TCP_RTO_MIN) == 924_600 * MS
    assert model_timeout(8, TCP_RTO_MIN) == 102_200 * MS
    assert model_timeout(6, 1 * SEC) == 127 * SEC


@given(st.lists(st.integers(1 * US, 5 * SEC), min_size=1, max_size=40))
def test_tcp_set_rto_is_bounded_for_any_samples(samples: list[int]) -> None:
    """K tcp_set_rto(): rttvar never falls below TCP_RTO_MIN (mdev_max restarts there every
    round), so the RTO is srtt + at least 200 ms, at most TCP_RTO_MAX; srtt stays within the
    samples' range."""
    r = RttEstimator()
    for i, m in enumerate(samples):
        r.sample(m, snd_una=i + 1, snd_nxt=i + 2)
    assert r.rto <= TCP_RTO_MAX
    assert r.rto >= min(r.srtt + TCP_RTO_MIN, TCP_RTO_MAX)
    assert min(samples) - 1 * MS <= r.srtt <= max(samples)


@given(st.lists(st.integers(1 * US, 5 * SEC), min_size=1, max_size=10))
def test_tcp_set_rto_is_whole_jiffies(samples: list[int]) -> None:
    """K __tcp_set_rto(): usecs_to_jiffies() -- the RTO is a whole number of 4 ms ticks, and
    backoff keeps it one (so a retransmission chain does not drift from the kernel's)."""
    r = RttEstimator()
    for i, m in enumerate(samples):
        r.sample(m, snd_una=i + 1, snd_nxt=i + 2)
    assert r.rto % JIFFY == 0 and r.rto == jiffies_ceil(r.rto)
    r.backoff()
    assert r.rto % JIFFY == 0
