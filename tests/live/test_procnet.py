"""/proc/net parsers and the sysctl reader against files recorded from the populated namespace."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from timewait.live import procnet, sockdiag
from timewait.live.procnet import MalformedProcFile, parse_snmp_pairs, parse_sockstat, parse_tcp
from timewait.live.sysctl import read_config
from timewait.snapshot import AF_INET, AF_INET6, TCP_FIN_WAIT2, TCP_TIME_WAIT, addr_str

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "netns-population"
EXPECTED = json.loads((FIX / "expected.json").read_text())
BYTEORDER = EXPECTED["byteorder"]


def tables() -> np.ndarray:
    return np.concatenate(
        [
            parse_tcp((FIX / "proc/tcp").read_text(), AF_INET, byteorder=BYTEORDER),
            parse_tcp((FIX / "proc/tcp6").read_text(), AF_INET6, byteorder=BYTEORDER),
        ]
    )


def quads(a: np.ndarray) -> set[tuple[str, int, str, int]]:
    return {(addr_str(r["src"]), int(r["sport"]), addr_str(r["dst"]), int(r["dport"])) for r in a}


def test_proc_tcp_time_wait_rows_equal_the_population() -> None:
    a = tables()
    assert quads(a[a["state"] == TCP_TIME_WAIT]) == {tuple(q) for q in EXPECTED["time_wait"]}


def test_proc_minisocket_rows_have_tr_3_and_substate() -> None:
    """get_timewait4_sock(): st = tw_substate (06 or 05), tr = 3 (ref 9.3)."""
    a = tables()
    fw2 = a[a["state"] == TCP_FIN_WAIT2]
    assert quads(fw2) == {tuple(q) for q in EXPECTED["fin_wait2"]}
    assert fw2["minisock"].all() and (fw2["timer"] == 3).all()
    assert a["minisock"][a["state"] == TCP_TIME_WAIT].all()


def test_proc_timer_is_user_hz_ticks_converted_to_ms() -> None:
    """tm->when counts 1/100 s (jiffies_delta_to_clock_t); we store ms, in 10 ms steps."""
    a = tables()
    tw = a["expires_ms"][a["state"] == TCP_TIME_WAIT]
    assert (tw % 10 == 0).all() and ((tw > 50_000) & (tw <= 60_000)).all()


def test_proc_addresses_are_byte_swapped_be32_words() -> None:
    """'0100007F' on a little-endian host is 127.0.0.1 (%08X of the raw __be32)."""
    line = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode\n"
        "   0: 0100007F:1F90 0A00007F:8AE2 06 00000000:00000000 03:00001770 00000000     0"
        "        0 0 3 0000000000000000\n"
    )
    a = parse_tcp(line, AF_INET, byteorder="little")
    assert (addr_str(a[0]["src"]), int(a[0]["sport"])) == ("127.0.0.1", 8080)
    assert (addr_str(a[0]["dst"]), int(a[0]["dport"])) == ("127.0.0.10", 0x8AE2)
    assert int(a[0]["expires_ms"]) == 0x1770 * 10
    big = parse_tcp(line.replace("0100007F", "7F000001"), AF_INET, byteorder="big")
    assert addr_str(big[0]["src"]) == "127.0.0.1"


def test_proc_ipv6_words_are_byte_swapped_each() -> None:
    line = (
        "  sl  local_address                         remote_address                        st "
        "tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 00000000000000000000000001000000:20FB 00000000000000000000000001000000:EB0A 06 "
        "00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000\n"
    )
    a = parse_tcp(line, AF_INET6, byteorder="little")
    assert addr_str(a[0]["src"]) == "::1" and int(a[0]["sport"]) == 8443


def test_proc_does_not_list_bind_only_sockets() -> None:
    """bind()-only sockets live only in the bind hash; /proc/net/tcp walks listen + ehash."""
    a = tables()
    assert (a["state"] == 13).sum() == 0
    assert len(a) == sum(EXPECTED["counts"].values()) - EXPECTED["counts"]["bound-inactive"]


@pytest.mark.skipif(sys.byteorder != BYTEORDER, reason="fixture dump is native-endian")
def test_proc_and_sock_diag_see_the_same_sockets() -> None:
    a = tables()
    d = sockdiag.decode((FIX / "sockdiag-root.bin").read_bytes())
    d = d[d["state"] != 13]
    assert quads(a) == quads(d)
    assert sorted(a["state"].tolist()) == sorted(d["state"].tolist())


def test_malformed_proc_line_names_the_line() -> None:
    text = (FIX / "proc/tcp").read_text().splitlines()
    text[3] = "   2: garbage"
    with pytest.raises(MalformedProcFile, match="line 4"):
        parse_tcp("\n".join(text), AF_INET)


def test_proc_table_without_header_is_malformed() -> None:
    with pytest.raises(MalformedProcFile, match="header"):
        parse_tcp("", AF_INET)


def test_netstat_counters_use_the_kernels_names() -> None:
    """TcpExt (TW, TWRecycled, TCPTimeWaitOverflow, ...) and Tcp (ActiveOpens, ...)."""
    c = parse_snmp_pairs((FIX / "proc/netstat").read_text())
    c.update(parse_snmp_pairs((FIX / "proc/snmp").read_text()))
    for name in ("TW", "TWRecycled", "TWKilled", "TCPTimeWaitOverflow", "ActiveOpens"):
        assert name in c
    # Each connection of the population was one active open in this fresh namespace.
    pairs = (
        len(EXPECTED["time_wait"]) + len(EXPECTED["fin_wait2"]) + len(EXPECTED["established"]) // 2
    )
    assert c["ActiveOpens"] == pairs
    assert "InOctets" not in c  # IpExt is not kept


def test_counter_lines_out_of_step_are_malformed() -> None:
    with pytest.raises(MalformedProcFile, match="out of step"):
        parse_snmp_pairs("TcpExt: A B\nIpExt: 1 2\n")


def test_sockstat_tw_counts_fin_wait2_minisockets_too() -> None:
    """sockstat "tw" is tw_refcount - 1: TIME_WAIT + FIN_WAIT2 minisockets (ref 9.2)."""
    s = parse_sockstat((FIX / "proc/sockstat").read_text())
    c = EXPECTED["counts"]
    assert s["sockstat.tw"] == c["time-wait"] + c["fin-wait-2"]
    assert {"sockstat.inuse", "sockstat.orphan", "sockstat.alloc"} <= set(s)
    s6 = parse_sockstat((FIX / "proc/sockstat6").read_text(), prefix="sockstat6")
    assert "sockstat6.inuse" in s6


def test_read_counters_reads_a_directory(tmp_path: Path) -> None:
    for name in ("netstat", "snmp", "sockstat"):
        (tmp_path / name).write_text((FIX / "proc" / name).read_text())
    c = procnet.read_counters(str(tmp_path))
    assert "TW" in c and "sockstat.tw" in c and "sockstat6.inuse" not in c


def test_sysctls_become_kernel_config() -> None:
    """The namespace's own settings: range, reserved ports, fin_timeout, tw_reuse."""
    cfg, notes = read_config(str(FIX / "sys"))
    assert cfg.ip_local_port_range == (40000, 49999)
    assert cfg.ip_local_reserved_ports == frozenset(range(40000, 40010)) | {45000}
    assert cfg.tcp_fin_timeout == 20 and cfg.tcp_tw_reuse == 0
    assert cfg.usable_ephemeral_ports == 10000 - 11
    assert notes == ()


def test_missing_sysctl_keeps_default_with_a_note(tmp_path: Path) -> None:
    """tcp_tw_reuse_delay exists only on >= 6.14: an older kernel gets the default and a note."""
    (tmp_path / "tcp_tw_reuse").write_text("1\n")
    cfg, notes = read_config(str(tmp_path))
    assert cfg.tcp_tw_reuse == 1 and cfg.tcp_tw_reuse_delay == 1000
    assert any("tcp_tw_reuse_delay" in n for n in notes)
