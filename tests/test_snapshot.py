"""Snapshot: the shared shape; files round-trip and damaged files give one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from timewait.config import KernelConfig
from timewait.snapshot import (
    SOCKET_DTYPE,
    TCP_LISTEN,
    TCP_TIME_WAIT,
    MalformedSnapshot,
    Snapshot,
    addr_bytes,
    addr_str,
    from_host,
    sockets_from_rows,
)

from .model.host_helpers import listen, make_net, one_request


def sample() -> Snapshot:
    rows = [
        dict(src="198.18.0.1", sport=40000, dst="198.18.0.2", dport=80, state=TCP_TIME_WAIT,
             timer=3, expires_ms=59_000),
        dict(src="2001:db8::1", sport=40001, dst="2001:db8::2", dport=443, state=1, inode=77),
        dict(src="0.0.0.0", sport=8080, dst="0.0.0.0", dport=0, state=TCP_LISTEN, inode=5),
    ]  # fmt: skip
    return Snapshot(
        sockets=sockets_from_rows(rows),
        config=KernelConfig(ip_local_port_range=(40000, 40999)),
        counters={"TW": 12, "sockstat.tw": 1},
        kernel="6.18.44-test",
        namespace="netns:t",
        source="sock_diag",
    )


def test_addresses_round_trip_v4_mapped_and_v6() -> None:
    for a in ("198.18.0.1", "2001:db8::5", "::1", "0.0.0.0"):
        assert addr_str(addr_bytes(a)) == a
    assert len(addr_bytes("198.18.0.1")) == 16


def test_rows_build_columns() -> None:
    s = sample()
    assert s.sockets.dtype == SOCKET_DTYPE and len(s) == 3
    assert list(s.sockets["family"]) == [2, 10, 2]
    assert list(s.sockets["minisock"]) == [True, False, False]
    assert s.kernel_version == (6, 18)


def test_snapshot_is_read_only() -> None:
    s = sample()
    with pytest.raises(ValueError):
        s.sockets["state"][0] = 1


def test_file_round_trip(tmp_path) -> None:
    s = sample()
    p = tmp_path / "cap.npz"
    s.save(p)
    t = Snapshot.load(p)
    assert np.array_equal(t.sockets, s.sockets)
    assert t.config == s.config and t.counters == s.counters
    assert t.kernel == s.kernel and t.namespace == s.namespace
    assert t.source == "file:sock_diag"
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("cut", [0, 10, 100, -20])
def test_truncated_file_is_a_clear_error(tmp_path, cut: int) -> None:
    data = sample().to_bytes()
    p = tmp_path / "cut.npz"
    p.write_bytes(data[:cut])
    with pytest.raises(MalformedSnapshot) as err:
        Snapshot.load(p)
    msg = str(err.value)
    assert "timewait snapshot -o" in msg and "\n" not in msg


def test_missing_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(MalformedSnapshot, match="no snapshot file"):
        Snapshot.load(tmp_path / "nope.npz")


def test_model_host_produces_the_same_shape() -> None:
    """The simulator's host builds a Snapshot like the live collector does."""
    net = make_net()
    lfd = listen(net.server)
    one_request(net, lfd)
    snap = from_host(net.client, net.now)
    assert snap.sockets.dtype == SOCKET_DTYPE
    tw = snap.sockets[snap.sockets["state"] == TCP_TIME_WAIT]
    assert len(tw) == 1 and tw["minisock"][0]
    assert 59_000 <= int(tw["expires_ms"][0]) <= 60_000
    srv = from_host(net.server, net.now)
    assert int((srv.sockets["state"] == TCP_LISTEN).sum()) == 1
    assert snap.counters["TW"] == 1 and snap.counters["sockstat.tw"] == 1
    assert lfd
