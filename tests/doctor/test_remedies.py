"""Remedies are built for the captured kernel and namespace (ref 10, 12, 13)."""

from __future__ import annotations

from timewait.config import KernelConfig
from timewait.doctor import remedies as R
from timewait.doctor.kernels import KERNEL_FACTS, has


def ctx(kernel: tuple[int, int] = (6, 18), ns: str = "host", **cfg: object) -> R.Context:
    return R.Context(kernel=kernel, config=KernelConfig().replace(**cfg), namespace=ns)


def test_kernel_table_has_the_versions_the_advice_uses() -> None:
    """ref 13: 4.2, 4.12, 6.3 and 6.14 are the confirmed ones."""
    v = {k: f.version for k, f in KERNEL_FACTS.items()}
    assert v["ip_bind_address_no_port"] == (4, 2)
    assert v["tcp_tw_recycle_removed"] == (4, 12)
    assert v["ip_local_port_range_sockopt"] == (6, 3)
    assert v["tcp_tw_reuse_delay"] == (6, 14)
    assert has((0, 0), "tcp_tw_reuse_delay") is None


def test_tw_reuse_delay_mentioned_from_6_14() -> None:
    assert "tcp_tw_reuse_delay" in R.tw_reuse(ctx((6, 14))).changes  # type: ignore[union-attr]
    old = R.tw_reuse(ctx((6, 13)))
    assert old is not None and "tcp_tw_reuse_delay" not in " ".join(old.texts())


def test_tw_reuse_not_offered_without_timestamps_or_when_already_on() -> None:
    assert R.tw_reuse(ctx(tcp_timestamps=0)) is None
    assert R.tw_reuse(ctx(tcp_tw_reuse=1)) is None
    assert R.tw_reuse(ctx(tcp_timestamps=2)) is not None  # 2: on, without offsets


def test_bind_address_no_port_needs_4_2_and_range_option_needs_6_3() -> None:
    assert R.bind_address_no_port(ctx((4, 1))) is None
    r42 = R.bind_address_no_port(ctx((4, 2)))
    assert r42 is not None and "IP_LOCAL_PORT_RANGE" not in r42.code
    assert R.local_port_range(ctx((6, 2))) is None
    r63 = R.local_port_range(ctx((6, 3)))
    assert r63 is not None and "IP_LOCAL_PORT_RANGE" in r63.code
    unknown = R.bind_address_no_port(ctx((0, 0)))
    assert unknown is not None and unknown.requires == "Linux >= 4.2"
    unknown_range = R.local_port_range(ctx((0, 0)))
    assert unknown_range is not None and unknown_range.requires == "Linux >= 6.3"


def test_widen_range_reserves_listeners_and_keeps_existing_reservations() -> None:
    r = R.widen_range(ctx(ip_local_reserved_ports=frozenset({9100})), (22, 8080, 40000), 28_231)
    assert r is not None
    assert r.commands[0] == "sysctl -w net.ipv4.ip_local_reserved_ports=8080,9100,40000"
    assert r.commands[1] == 'sysctl -w net.ipv4.ip_local_port_range="1024 65535"'
    assert R.widen_range(ctx(ip_local_port_range=(1024, 65535)), (), 64_512) is None


def test_commands_run_inside_the_captured_namespace() -> None:
    """Sysctls are per netns (ref 11): the command enters the namespace that was captured."""
    assert R.tw_reuse(ctx(ns="netns:tw-a")).commands[0].startswith("ip netns exec tw-a sysctl")  # type: ignore[union-attr]
    assert R.tw_reuse(ctx(ns="pid:42")).commands[0].startswith("nsenter -t 42 -n sysctl")  # type: ignore[union-attr]
    path = R.tw_reuse(ctx(ns="netns:/run/netns/x")).commands[0]  # type: ignore[union-attr]
    assert path.startswith("nsenter --net=/run/netns/x sysctl")
    host = R.tw_reuse(ctx())
    assert host is not None and "/etc/sysctl.d/" in host.commands[1]


def test_raise_tw_buckets_never_lowers() -> None:
    r = R.raise_tw_buckets(ctx(tcp_max_tw_buckets=500_000), 10)
    assert "tcp_max_tw_buckets=1000000" in r.commands[0]
