"""KernelConfig: defaults, kernel bounds and sysctl text (bounds measured in a netns on 6.18.44)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timewait.config import (
    LINUX,
    PROFILES,
    RFC9293,
    TCP_TIMEWAIT_LEN,
    KernelConfig,
    format_port_list,
    get_profile,
    parse_port_list,
)
from timewait.errors import ConfigError, ProfileError
from timewait.units import SEC


def test_defaults_are_those_of_a_fresh_netns() -> None:
    """ref 0: defaults read from /proc/sys/net/ipv4 of a new namespace."""
    c = KernelConfig()
    assert c.ip_local_port_range == (32768, 60999)
    assert c.port_range_size == 28232
    assert c.tcp_tw_reuse == 2
    assert c.tcp_tw_reuse_delay == 1000
    assert c.tcp_timestamps == 1
    assert c.tcp_fin_timeout == 60
    assert c.tcp_max_tw_buckets == 131072
    assert c.tcp_rfc1337 == 0
    assert c.ip_autobind_reuse == 0
    assert c.ip_local_reserved_ports == frozenset()


def test_time_wait_length_is_compile_time_60s() -> None:
    """include/net/tcp.h TCP_TIMEWAIT_LEN (60*HZ); no sysctl changes it (ref 2.1)."""
    assert TCP_TIMEWAIT_LEN == 60 * SEC
    assert LINUX.time_wait_len == 60 * SEC


def test_rfc9293_profile_waits_two_msl_240s() -> None:
    """RFC 9293 §3.4.2 MSL = 2 min, §3.6.1 MUST-13 TIME-WAIT = 2*MSL."""
    assert RFC9293.time_wait_len == 240 * SEC
    assert get_profile("rfc9293") is RFC9293
    assert set(PROFILES) == {"linux", "rfc9293"}


def test_unknown_profile_names_the_valid_ones() -> None:
    with pytest.raises(ProfileError, match="linux, rfc9293"):
        get_profile("bsd")


@pytest.mark.parametrize(
    ("setting", "value", "fragment"),
    [
        ("tcp_tw_reuse", 3, "0..2"),
        ("tcp_tw_reuse_delay", 0, "1..60000"),
        ("tcp_tw_reuse_delay", 60001, "1..60000"),
        ("tcp_timestamps", 256, "0..255"),
        ("tcp_rfc1337", 256, "0..255"),
        ("ip_autobind_reuse", 2, "0..1"),
        ("tcp_syn_retries", 0, "1..127"),
        ("tcp_syn_retries", 128, "1..127"),
    ],
)
def test_out_of_range_setting_is_refused_with_its_range(
    setting: str, value: int, fragment: str
) -> None:
    """Each bound is the one the kernel enforced when written in a namespace (6.18.44)."""
    with pytest.raises(ConfigError) as err:
        KernelConfig().replace(**{setting: value})
    msg = str(err.value)
    assert f"net.ipv4.{setting}" in msg and fragment in msg and "\n" not in msg


@pytest.mark.parametrize(
    "rng",
    [(2000, 1999), (1023, 2000), (1024, 65536), (0, 5)],
)
def test_bad_port_range_is_refused(rng: tuple[int, int]) -> None:
    """ipv4_local_port_range(): 1..65535, low <= high, low >= ip_unprivileged_port_start."""
    with pytest.raises(ConfigError, match="ip_local_port_range"):
        KernelConfig(ip_local_port_range=rng)


def test_port_range_accepts_single_port_and_full_span() -> None:
    """Measured: '1024 1024' and '1024 65535' are accepted (64,512 ports at most)."""
    assert KernelConfig(ip_local_port_range=(1024, 1024)).port_range_size == 1
    assert KernelConfig(ip_local_port_range=(1024, 65535)).port_range_size == 64512


def test_port_range_low_may_go_below_1024_when_unprivileged_start_lowered() -> None:
    """Measured: with ip_unprivileged_port_start=0, '1 5' is accepted."""
    c = KernelConfig(ip_unprivileged_port_start=0, ip_local_port_range=(1, 5))
    assert c.port_range_size == 5


def test_negative_fin_timeout_and_max_tw_buckets_are_accepted_like_the_kernel() -> None:
    """Measured: proc_dointvec(_jiffies) takes -5 and -1 without complaint."""
    c = KernelConfig(tcp_fin_timeout=-5, tcp_max_tw_buckets=-1)
    assert c.tcp_fin_timeout == -5 and c.tcp_max_tw_buckets == -1


def test_from_sysctl_parses_proc_text() -> None:
    """The text /proc/sys/net/ipv4/* holds: tab-separated range, reserved list, plain ints."""
    c = KernelConfig.from_sysctl(
        {
            "ip_local_port_range": "40000\t40009\n",
            "net.ipv4.ip_local_reserved_ports": "40002,40004-40005\n",
            "/proc/sys/net/ipv4/tcp_tw_reuse": "1\n",
            "tcp_fin_timeout": "30",
            "tcp_congestion_control": "cubic",  # not modelled: ignored
        }
    )
    assert c.ip_local_port_range == (40000, 40009)
    assert c.ip_local_reserved_ports == {40002, 40004, 40005}
    assert c.tcp_tw_reuse == 1 and c.tcp_fin_timeout == 30
    assert c.usable_ephemeral_ports == 7


def test_from_sysctl_garbage_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"net\.ipv4\.tcp_tw_reuse"):
        KernelConfig.from_sysctl({"tcp_tw_reuse": "yes"})
    with pytest.raises(ConfigError, match="ip_local_port_range"):
        KernelConfig.from_sysctl({"ip_local_port_range": "32768"})
    with pytest.raises(ConfigError, match="ip_local_reserved_ports"):
        KernelConfig.from_sysctl({"ip_local_reserved_ports": "80,x"})
    with pytest.raises(ConfigError, match="ip_local_reserved_ports"):
        KernelConfig.from_sysctl({"ip_local_reserved_ports": "65536"})


def test_to_sysctl_round_trips() -> None:
    c = KernelConfig(
        ip_local_port_range=(40000, 50001),
        ip_local_reserved_ports=frozenset({40001, 40002, 40003, 45000}),
        tcp_tw_reuse=0,
        tcp_max_tw_buckets=5,
    )
    text = c.to_sysctl()
    assert text["ip_local_port_range"] == "40000\t50001"
    assert text["ip_local_reserved_ports"] == "40001-40003,45000"
    assert KernelConfig.from_sysctl(text) == c


@given(st.frozensets(st.integers(0, 65535), max_size=60))
def test_port_list_format_parse_round_trip(ports: frozenset[int]) -> None:
    assert parse_port_list(format_port_list(ports)) == ports


def test_config_is_frozen() -> None:
    c = KernelConfig()
    with pytest.raises(AttributeError):
        c.tcp_tw_reuse = 1  # type: ignore[misc]
