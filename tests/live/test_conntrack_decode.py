"""The ctnetlink decoder and the NAT-rule reader on recorded fixtures (no root needed).

tests/fixtures/conntrack/masquerade-10-time-wait.bin: a router's dump on 6.18.44 after 25
connections through `masquerade to :40000-40009` (10 entries in TIME_WAIT; `conntrack -L`
listed the same 10); masquerade-ruleset.json: that router's `nft -j list ruleset`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from timewait import conntrack as C
from timewait.config import KernelConfig
from timewait.doctor import diagnose, to_json
from timewait.live import conntrack as ctdecode
from timewait.live.capture import Sources, capture
from timewait.snapshot import Snapshot, addr_str, empty_sockets

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "conntrack"
DUMP = (FIX / "masquerade-10-time-wait.bin").read_bytes()
RULES = (FIX / "masquerade-ruleset.json").read_text()
DONE = bytes.fromhex("14000000030002000100000000000000" + "00000000")


def test_decode_recorded_dump() -> None:
    t = ctdecode.decode(DUMP)
    assert t.dtype == C.CONNTRACK_DTYPE and len(t) == ctdecode.count_entries(DUMP) == 10
    assert (t["state"] == C.TCP_CONNTRACK_TIME_WAIT).all() and (t["proto"] == 6).all()
    assert ((t["status"] & C.IPS_SRC_NAT) != 0).all()
    assert {addr_str(a) for a in t["orig_src"]} == {"198.18.1.2"}
    assert {addr_str(a) for a in t["reply_dst"]} == {"198.18.0.1"}
    assert sorted(t["reply_dport"]) == list(range(40000, 40010))
    assert (t["orig_dport"] == 80).all() and (t["timeout_s"] <= 120).all()


def test_decode_rejects_truncated_and_foreign_bytes() -> None:
    with pytest.raises(ctdecode.MalformedConntrackDump):
        ctdecode.decode(DUMP[:-7])
    bad = bytearray(DUMP)
    bad[4:6] = (0x7777).to_bytes(2, "little")  # an unknown message type
    with pytest.raises(ctdecode.MalformedConntrackDump):
        ctdecode.decode(bytes(bad))


def test_decode_mixed_layouts_match_entry_by_entry() -> None:
    """A message of another layout (a different length) between uniform ones is decoded by its
    own template; every row equals the row decoded alone."""
    t = ctdecode.decode(DUMP)
    one = ctdecode.decode(DUMP[: int.from_bytes(DUMP[:4], "little")])
    assert len(one) == 1 and one[0] == t[0]


def test_nat_rules_from_the_ruleset() -> None:
    r = ctdecode.nat_rules(RULES)
    assert len(r) == 1 and r["masquerade"][0]
    assert (int(r["port_lo"][0]), int(r["port_hi"][0])) == (40000, 40009)
    assert not r["random_fully"][0]
    assert len(ctdecode.nat_rules("not json")) == 0


def test_capture_from_fixtures_and_the_saved_file_round_trip(tmp_path: Path) -> None:
    """Sources carry a recorded conntrack dump, ruleset and settings: `--from` sees the same."""
    nf = tmp_path / "netfilter"
    nf.mkdir()
    (nf / "nf_conntrack_count").write_text("10\n")
    (nf / "nf_conntrack_max").write_text("262144\n")
    (nf / "nf_conntrack_tcp_timeout_time_wait").write_text("120\n")
    s = capture(sources=Sources(dump=DONE, conntrack_dump=DUMP, nft_ruleset=RULES,
                                netfilter_dir=str(nf), proc_net=str(tmp_path)))  # fmt: skip
    assert len(s.tables[C.TABLE]) == 10 and len(s.tables[C.NAT_TABLE]) == 1
    f = tmp_path / "router.npz"
    s.save(f)
    back = Snapshot.load(f)
    assert np.array_equal(back.tables[C.TABLE], s.tables[C.TABLE])
    d = diagnose(back)
    doc = to_json(d)
    pool = doc["nat"]["pools"][0]
    assert pool["label"] == "NAT 198.18.0.1 -> 198.18.0.2:80/tcp"
    assert (pool["size"], pool["held"], pool["headroom"], pool["reclaimable"]) == (10, 10, 0, 10)
    f0 = next(f for f in d.findings if f.id == "nat-port-exhaustion")
    # a pool full of TIME_WAIT on a 6.5+ kernel leans on eviction: a warning, not critical
    assert f0.severity.label == "warning"
    ids = [r.id for r in f0.remedies]
    assert ids[0] == "nat-connection-reuse" and "nat-wide-port-range" in ids
    assert "nat-ct-time-wait" in ids and "nat-random-fully" in ids


def test_old_kernel_full_pool_is_critical() -> None:
    """Before 6.5 every held port blocks: the same table is critical."""
    t = ctdecode.decode(DUMP)
    tables = {C.TABLE: t, C.NAT_TABLE: ctdecode.nat_rules(RULES)}
    s = Snapshot(sockets=empty_sockets(), config=KernelConfig(), kernel="6.1.0",
                 counters={C.PRESENT: 1}, tables=tables)  # fmt: skip
    f = next(f for f in diagnose(s).findings if f.id == "nat-port-exhaustion")
    assert f.severity.label == "critical" and "never evicts" in f.detail


def test_ct_time_wait_remedy_never_goes_below_60_s() -> None:
    """TCP's protection: nf_conntrack_tcp_timeout_time_wait is only advised down to 60 s, and
    never anything from the folklore list."""
    t = ctdecode.decode(DUMP)
    for tw in (30, 60, 120, 240):
        s = Snapshot(sockets=empty_sockets(),
                     config=KernelConfig(), kernel="6.1.0",
                     counters={C.PRESENT: 1, C.key("nf_conntrack_tcp_timeout_time_wait"): tw},
                     tables={C.TABLE: t, C.NAT_TABLE: ctdecode.nat_rules(RULES)})  # fmt: skip
        for f in diagnose(s).findings:
            for r in f.remedies:
                text = " ".join(r.texts()).lower()
                assert "recycle" not in text and "fin_timeout" not in text
                for c in r.commands:
                    if "timeout_time_wait=" in c:
                        assert int(c.rsplit("=", 1)[1]) >= 60 and tw > 60
