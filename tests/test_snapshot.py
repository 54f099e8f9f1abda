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


def _file(meta_changes: dict[str, object], sockets: np.ndarray | None = None) -> bytes:
    """A snapshot file whose header (and table) were edited after the fact."""
    import io
    import json

    snap = sample()
    with np.load(io.BytesIO(snap.to_bytes()), allow_pickle=False) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        arr = z["sockets"] if sockets is None else sockets
    meta.update(meta_changes, rows=len(arr))
    buf = io.BytesIO()
    np.savez_compressed(buf, sockets=arr, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"counters": {"TW": "many"}}, "counters must map names to integers"),
        ({"counters": [1, 2]}, "counters must map names to integers"),
        ({"notes": "oops"}, "notes must be a list of text"),
        ({"notes": [1]}, "notes must be a list of text"),
        ({"time_ns": "yesterday"}, "time_ns must be a non-negative integer"),
        ({"monotonic_ns": -5}, "monotonic_ns must be a non-negative integer"),
        ({"namespace": 7}, "namespace must be text"),
        ({"config": {"tcp_tw_reuse": "9"}}, "config: net.ipv4.tcp_tw_reuse = 9"),
        ({"config": {"tcp_tw_reuse": 1}}, "config must map sysctl names to their text"),
        ({"counters_before": {"TW": 1.5}}, "counters_before must map names to integers"),
    ],
)
def test_damaged_header_is_a_one_line_error(change: dict[str, object], message: str) -> None:
    """issue 17: a non-integer counter or notes of the wrong type were a traceback."""
    with pytest.raises(MalformedSnapshot, match="damaged header") as e:
        Snapshot.from_bytes(_file(change), name="x.npz")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_random_socket_table_is_refused_not_diagnosed() -> None:
    """issue 17: a table of random bytes was reported HEALTHY."""
    rng = np.random.default_rng(3)
    junk = np.frombuffer(rng.bytes(SOCKET_DTYPE.itemsize * 50), dtype=SOCKET_DTYPE).copy()
    with pytest.raises(MalformedSnapshot, match="damaged socket table"):
        Snapshot.from_bytes(_file({}, junk), name="x.npz")


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("family", 7, "a family other than IPv4/IPv6"),
        ("state", 0, "a TCP state outside 1..13"),
        ("state", 42, "a TCP state outside 1..13"),
        ("timer", 9, "a timer kind outside 0..4"),
        ("dst", addr_bytes("2001:db8::9"), "an IPv4 row whose dst is not an IPv4 address"),
        ("dport", 0, "a connected socket with remote port 0"),
    ],
)
def test_each_impossible_column_is_named(column: str, value: object, problem: str) -> None:
    arr = sample().sockets.copy()
    arr[0][column] = value
    with pytest.raises(MalformedSnapshot, match="damaged socket table") as e:
        Snapshot.from_bytes(_file({}, arr), name="x.npz")
    assert problem in str(e.value)


def test_version_1_files_still_load() -> None:
    s = Snapshot.from_bytes(_file({"version": 1}), name="old.npz")
    assert s.counters_before == {} and s.counters_window_ns == 0 and len(s) == 3


def test_rate_window_round_trips(tmp_path) -> None:
    import dataclasses

    snap = dataclasses.replace(sample(), counters_before={"TW": 2}, counters_window_ns=300_000_000)
    snap.save(tmp_path / "r.npz")
    back = Snapshot.load(tmp_path / "r.npz")
    assert back.counters_before == {"TW": 2} and back.counters_window_ns == 300_000_000


def test_tables_and_labels_round_trip(tmp_path) -> None:
    """Format 3: other tables of the namespace and its labels travel with the snapshot."""
    import dataclasses

    ct = np.zeros(3, dtype=[("sport", "u2"), ("state", "u1")])
    ct["sport"] = [1, 2, 3]
    snap = dataclasses.replace(sample(), tables={"conntrack": ct}, labels={"pod": "web-1"})
    assert not snap.tables["conntrack"].flags.writeable
    snap.save(tmp_path / "t.npz")
    back = Snapshot.load(tmp_path / "t.npz")
    assert back.labels == {"pod": "web-1"}
    assert back.tables["conntrack"]["sport"].tolist() == [1, 2, 3]
    with pytest.raises(MalformedSnapshot, match="labels must map text to text"):
        Snapshot.from_bytes(_file({"labels": {"pod": 3}}), name="x.npz")
    with pytest.raises(MalformedSnapshot, match="not a named 1-D structured array"):
        dataclasses.replace(sample(), tables={"bad name": ct})
