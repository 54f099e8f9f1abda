"""sock_diag decoder: recorded dumps decode to the known population; damaged bytes never crash.

Fixtures were recorded by tests/fixtures/record_fixtures.py from a namespace filled with the
lab's default PopulationSpec on Linux 6.18.44 (little-endian): `sockdiag-root.bin` (records carry
INET_DIAG_MARK: minisockets 96 bytes) and `sockdiag-nobody.bin` (uid 65534: 88 bytes).
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timewait.live import sockdiag
from timewait.live.sockdiag import MalformedDump, decode, encode_request
from timewait.snapshot import (
    AF_INET,
    AF_INET6,
    SOCKET_DTYPE,
    TCP_BOUND_INACTIVE,
    TCP_FIN_WAIT2,
    TCP_TIME_WAIT,
    addr_str,
)

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "netns-population"
EXPECTED: dict[str, Any] = json.loads((FIX / "expected.json").read_text())
ROOT = (FIX / "sockdiag-root.bin").read_bytes()
NOBODY = (FIX / "sockdiag-nobody.bin").read_bytes()

pytestmark = pytest.mark.skipif(
    sys.byteorder != EXPECTED["byteorder"], reason="fixtures hold native-endian netlink headers"
)


def quads(arr: np.ndarray, mask: np.ndarray) -> set[tuple[str, int, str, int]]:
    return {
        (addr_str(r["src"]), int(r["sport"]), addr_str(r["dst"]), int(r["dport"]))
        for r in arr[mask]
    }


def messages(data: bytes) -> list[bytes]:
    """Split a stream into whole messages (a slow reference walker)."""
    out, p = [], 0
    while p < len(data):
        (length,) = struct.unpack_from("=I", data, p)
        out.append(data[p : p + ((length + 3) & ~3)])
        p += (length + 3) & ~3
    return out


def reference_decode(data: bytes) -> list[tuple[int, int, int, int, int, bytes, bytes, int]]:
    """One message at a time with struct: the decoder's slow twin."""
    rows = []
    for m in messages(data):
        _, mtype = struct.unpack_from("=IH", m, 0)
        if mtype != sockdiag.SOCK_DIAG_BY_FAMILY:
            continue
        fam, state, timer = m[16], m[17], m[18]
        sport, dport = struct.unpack_from(">HH", m, 20)
        src, dst = m[24:40], m[40:56]
        if fam == AF_INET:
            src = b"\0" * 10 + b"\xff\xff" + src[:4]
            dst = b"\0" * 10 + b"\xff\xff" + dst[:4]
        (expires,) = struct.unpack_from("=I", m, 68)
        rows.append((fam, 13 if state == 7 else state, timer, sport, dport, src, dst, expires))
    return rows


def as_rows(arr: np.ndarray) -> list[tuple[int, int, int, int, int, bytes, bytes, int]]:
    return [
        (
            int(r["family"]), int(r["state"]), int(r["timer"]), int(r["sport"]),
            int(r["dport"]), r["src"].tobytes(), r["dst"].tobytes(), int(r["expires_ms"]),
        )
        for r in arr
    ]  # fmt: skip


DONE = struct.pack("=IHHIIi", 20, sockdiag.NLMSG_DONE, sockdiag.NLM_F_MULTI, 1, 0, 0)


# -- the request ------------------------------------------------------------------------------


def test_request_is_nlmsghdr_plus_inet_diag_req_v2() -> None:
    """72 bytes: nlmsghdr(16) + inet_diag_req_v2(56); TCP, dump flags, state mask (inet_diag.h)."""
    req = encode_request(AF_INET6, sockdiag.ALL_STATES, seq=7)
    assert len(req) == 72
    length, mtype, flags, seq, pid = struct.unpack_from("=IHHII", req)
    assert (length, mtype, flags, seq, pid) == (72, 20, 0x301, 7, 0)
    family, proto, ext, pad, states = struct.unpack_from("=BBBBI", req, 16)
    assert (family, proto, ext, pad) == (AF_INET6, 6, 0, 0)
    assert states == 0x3FFE  # bits 1..13: every state, TCP_BOUND_INACTIVE included


# -- recorded dumps ---------------------------------------------------------------------------


@pytest.mark.parametrize("data", [ROOT, NOBODY], ids=["root", "nobody"])
def test_recorded_dump_decodes_to_the_population(data: bytes) -> None:
    """Counts by state equal the population that was created (and ss reported, see live tests)."""
    a = decode(data)
    c = EXPECTED["counts"]
    states = a["state"]
    assert (states == TCP_TIME_WAIT).sum() == c["time-wait"]
    assert ((states == TCP_FIN_WAIT2) & a["minisock"]).sum() == c["fin-wait-2"]
    assert (states == 8).sum() == c["close-wait"]
    assert (states == 1).sum() == c["established"]
    assert (states == 10).sum() == c["listening"]
    assert (states == TCP_BOUND_INACTIVE).sum() == c["bound-inactive"]
    assert len(a) == sum(c.values())


def test_recorded_time_wait_four_tuples_are_exact() -> None:
    """Every TIME_WAIT four-tuple, IPv4 and IPv6, matches what the population made."""
    a = decode(ROOT)
    want = {tuple(q) for q in EXPECTED["time_wait"]}
    assert quads(a, a["state"] == TCP_TIME_WAIT) == want


def test_fin_wait2_minisockets_are_kept_apart_from_time_wait() -> None:
    """Minisockets report tw_substate: 5 for FIN_WAIT2, 6 for TIME_WAIT, both timer 3 (ref 9.4)."""
    a = decode(ROOT)
    fw2 = a["state"] == TCP_FIN_WAIT2
    assert quads(a, fw2) == {tuple(q) for q in EXPECTED["fin_wait2"]}
    assert a["minisock"][fw2].all() and (a["timer"][fw2] == 3).all()
    tw = a["state"] == TCP_TIME_WAIT
    assert a["minisock"][tw].all()


def test_minisocket_expiry_is_remaining_milliseconds() -> None:
    """idiag_expires is ms left: <= 60 s for TIME_WAIT, <= tcp_fin_timeout (20 s) for FIN_WAIT2."""
    a = decode(ROOT)
    tw = a["expires_ms"][a["state"] == TCP_TIME_WAIT]
    fw2 = a["expires_ms"][a["state"] == TCP_FIN_WAIT2]
    assert ((tw > 50_000) & (tw <= 60_000)).all()
    assert ((fw2 > 10_000) & (fw2 <= 20_000)).all()


def test_full_sockets_are_not_minisockets() -> None:
    """Full sockets have an inode and a timer other than 3; minisockets have inode 0 (ref 1.2)."""
    a = decode(ROOT)
    full = ~a["minisock"]
    assert (a["timer"][full] != 3).all()
    assert (a["inode"][full & (a["state"] != TCP_BOUND_INACTIVE)] > 0).all()
    assert (a["inode"][a["minisock"]] == 0).all()


def test_ipv4_addresses_are_stored_ipv4_mapped() -> None:
    """IPv4 sits in idiag_src[0]; Snapshot wants ::ffff:a.b.c.d (SOCKET_DTYPE)."""
    a = decode(ROOT)
    v4 = a[a["family"] == AF_INET]
    raw = np.frombuffer(v4["src"].tobytes(), dtype=np.uint8).reshape(-1, 16)
    assert (raw[:, 10:12] == 0xFF).all() and (raw[:, :10] == 0).all()
    assert {addr_str(x) for x in v4["dst"]} >= {"127.0.0.10", "127.0.0.11"}
    assert "127.0.0.20" in {addr_str(x) for x in v4["src"]}  # server-side TIME_WAIT


def test_ipv6_sockets_keep_their_addresses() -> None:
    a = decode(ROOT)
    v6 = a[a["family"] == AF_INET6]
    assert {addr_str(x) for x in v6["src"]} == {"::1"}
    assert ((v6["state"] == TCP_TIME_WAIT) & (v6["dport"] == 8443)).sum() == 10


def test_bound_only_sockets_reported_as_close_become_bound_inactive() -> None:
    """The kernel dumps bind()-only sockets with sk_state TCP_CLOSE; Snapshot names them 13."""
    a = decode(NOBODY)
    b = a[a["state"] == TCP_BOUND_INACTIVE]
    assert {(addr_str(x["src"]), int(x["sport"])) for x in b} == {
        tuple(x) for x in EXPECTED["bound_only"]
    }
    assert (a["state"] != 7).all()


def test_root_and_unprivileged_dumps_agree() -> None:
    """INET_DIAG_MARK (root only) changes record sizes (96 vs 88 bytes), not the sockets."""
    r, n = decode(ROOT), decode(NOBODY)
    assert len(ROOT) != len(NOBODY)
    key = ["family", "state", "sport", "dport", "src", "dst"]
    assert np.array_equal(np.sort(r[key]), np.sort(n[key]))


@pytest.mark.parametrize("data", [ROOT, NOBODY], ids=["root", "nobody"])
def test_vectorized_decoder_equals_message_by_message_decoder(data: bytes) -> None:
    assert as_rows(decode(data)) == reference_decode(data)


def test_decoder_returns_socket_dtype() -> None:
    assert decode(ROOT).dtype == SOCKET_DTYPE
    assert decode(DONE).dtype == SOCKET_DTYPE and len(decode(DONE)) == 0


# -- damaged input ----------------------------------------------------------------------------


def test_dump_without_done_is_malformed() -> None:
    """A dump cut at a message boundary (no NLMSG_DONE at the end) is refused by default."""
    msgs = messages(ROOT)
    with pytest.raises(MalformedDump, match="NLMSG_DONE"):
        decode(b"".join(msgs[:10]))
    assert len(decode(b"".join(msgs[:10]), require_done=False)) == 10


def test_empty_input_is_malformed() -> None:
    with pytest.raises(MalformedDump, match="empty"):
        decode(b"")


def test_kernel_error_reply_is_malformed() -> None:
    err = struct.pack("=IHHIIi", 36, sockdiag.NLMSG_ERROR, 0, 1, 0, -13) + b"\0" * 16
    with pytest.raises(MalformedDump, match="kernel error reply"):
        decode(err + DONE)


def test_done_with_error_status_is_malformed() -> None:
    bad = struct.pack("=IHHIIi", 20, sockdiag.NLMSG_DONE, 2, 1, 0, -105)
    with pytest.raises(MalformedDump, match="ended the dump with an error"):
        decode(bad)


def test_unknown_state_is_malformed() -> None:
    m = bytearray(messages(NOBODY)[0])
    m[17] = 14
    with pytest.raises(MalformedDump, match="unknown TCP state 14"):
        decode(bytes(m) + DONE)


def test_length_past_the_end_is_malformed() -> None:
    with pytest.raises(MalformedDump, match="claims"):
        decode(ROOT[:-21])


def test_malformed_message_is_one_line() -> None:
    with pytest.raises(MalformedDump) as e:
        decode(b"\x05\x00\x00\x00" + b"\0" * 12)
    assert "\n" not in str(e.value) and "re-record" in str(e.value)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(cut=st.integers(min_value=0, max_value=len(ROOT)))
def test_any_truncation_is_malformed_or_exact(cut: int) -> None:
    """Cut anywhere: MalformedDump, or (at a boundary) exactly the sockets of the prefix."""
    prefix = ROOT[:cut]
    boundaries = np.cumsum([0] + [len(m) for m in messages(ROOT)])
    want = len(reference_decode(prefix)) if cut in boundaries else None
    try:
        got = decode(prefix, require_done=False)
    except MalformedDump:
        assert want is None or cut % 4 != 0
        return
    assert want is not None and len(got) == want
    try:
        strict = decode(prefix)
    except MalformedDump:
        return
    assert len(strict) == want


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes_never_crash(data: bytes) -> None:
    """Random bytes give MalformedDump or a SOCKET_DTYPE array, never another exception."""
    try:
        a = decode(data, require_done=False)
    except MalformedDump:
        return
    assert a.dtype == SOCKET_DTYPE


@FUZZ
@given(
    flips=st.lists(
        st.tuples(st.integers(0, len(NOBODY) - 1), st.integers(1, 255)), min_size=1, max_size=8
    )
)
def test_corrupted_bytes_never_crash_and_never_miscount(flips: list[tuple[int, int]]) -> None:
    """Corruption gives MalformedDump or a result; if no header byte was hit, the count holds."""
    buf = bytearray(NOBODY)
    for pos, x in flips:
        buf[pos] ^= x
    starts = np.cumsum([0] + [len(m) for m in messages(NOBODY)])[:-1]
    hit_header = any(0 <= pos - s < sockdiag.NLMSG_HDRLEN for pos, _ in flips for s in starts)
    try:
        a = decode(bytes(buf))
    except MalformedDump:
        return
    assert a.dtype == SOCKET_DTYPE
    if not hit_header:
        assert len(a) == len(decode(NOBODY))


_MSGS = [m for m in messages(ROOT) if struct.unpack_from("=H", m, 4)[0] == 20]


@FUZZ
@given(
    picks=st.lists(
        st.tuples(st.integers(0, len(_MSGS) - 1), st.integers(1, 40)), min_size=1, max_size=30
    )
)
def test_mixed_lengths_and_long_runs_decode_exactly(picks: list[tuple[int, int]]) -> None:
    """Runs of equal lengths (the vectorized jump) mixed with other lengths (the scalar walk)
    decode exactly like the message-by-message reference."""
    data = b"".join(_MSGS[i] * n for i, n in picks) + DONE
    assert as_rows(decode(data)) == reference_decode(data)


def test_long_uniform_run_takes_the_vectorized_path() -> None:
    """10,000 identical TIME_WAIT records then one other: the count is exact."""
    tw = next(m for m in _MSGS if m[17] == TCP_TIME_WAIT)
    other = next(m for m in _MSGS if len(m) != len(tw))
    data = tw * 10_000 + other + tw * 3 + DONE
    a = decode(data)
    assert len(a) == 10_004
    assert (a["state"] == TCP_TIME_WAIT).sum() == 10_003


def test_stride_change_inside_a_run_is_not_skipped() -> None:
    """A record of another length inside a run breaks the jump exactly where it is."""
    tw = next(m for m in _MSGS if m[17] == TCP_TIME_WAIT)
    other = next(m for m in _MSGS if len(m) != len(tw))
    for at in (0, 1, 8, 9, 63, 64, 65, 200, 1000):
        data = tw * at + other + tw * (1200 - at) + DONE
        assert as_rows(decode(data)) == reference_decode(data)
