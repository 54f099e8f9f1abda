"""The connection tracker's table and NAT rules as Snapshot tables (the shapes, no I/O).

Theory of operation
-------------------
A host that masquerades (a Kubernetes node, a Docker host, a NAT gateway) keeps one conntrack
entry per connection it forwards, in the entry's *original* direction (client ip:port ->
server ip:port) and its *reply* direction (server ip:port -> translated ip:port). The NAT maps
a connection by choosing the reply tuple, and a reply tuple must be unique in the table
(`nf_nat_used_tuple()` -> `nf_conntrack_tuple_taken()`, K net/netfilter/nf_nat_core.c,
nf_conntrack_core.c). So the translated ports toward one destination (server ip, server port)
from one translated address form a pool, and a closed TCP connection keeps its port in it until
its entry leaves conntrack's own TIME_WAIT, `nf_conntrack_tcp_timeout_time_wait` (120 s by
default) after the last packet: twice the endpoints' 60 s.

`CONNTRACK_DTYPE` is one row per entry, as ctnetlink dumps it (live/conntrack.py decodes the
dump into it) and as a saved snapshot stores it (Snapshot.tables["conntrack"]). `NAT_RULE_DTYPE`
is one row per source-NAT statement of the ruleset (masquerade / snat), from `nft -j list
ruleset` (Snapshot.tables["nat_rules"]). Conntrack counters and settings travel in
Snapshot.counters under "conntrack.*" keys (COUNTER_KEYS, SETTING_KEYS).

Addresses are 16 bytes, IPv4 stored IPv4-mapped (::ffff:a.b.c.d), as in SOCKET_DTYPE.
Layouts: K include/uapi/linux/netfilter/nfnetlink_conntrack.h, nf_conntrack_common.h,
nf_conntrack_tcp.h.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import numpy as np

from timewait.snapshot import AF_INET, AF_INET6, addr_bytes

TABLE: Final = "conntrack"
NAT_TABLE: Final = "nat_rules"

CONNTRACK_DTYPE: Final = np.dtype(
    [
        ("family", "u1"),  # AF_INET (2) / AF_INET6 (10)
        ("proto", "u1"),  # IPPROTO_TCP 6, UDP 17, ICMP 1, ...
        ("state", "u1"),  # TCP conntrack state (TCP_CONNTRACK_*, below); 0 for other protocols
        ("status", "u4"),  # IPS_* bits (nf_conntrack_common.h)
        ("timeout_s", "u4"),  # seconds until the entry expires (CTA_TIMEOUT)
        ("orig_src", "V16"),
        ("orig_dst", "V16"),
        ("orig_sport", "u2"),
        ("orig_dport", "u2"),
        ("reply_src", "V16"),  # the real destination (after DNAT)
        ("reply_dst", "V16"),  # the translated source (after SNAT/masquerade)
        ("reply_sport", "u2"),  # the real destination port
        ("reply_dport", "u2"),  # the translated source port
        ("mark", "u4"),
        ("zone", "u2"),
    ]
)

# enum tcp_conntrack (include/uapi/linux/netfilter/nf_conntrack_tcp.h)
TCP_CONNTRACK_NONE: Final = 0
TCP_CONNTRACK_SYN_SENT: Final = 1
TCP_CONNTRACK_SYN_RECV: Final = 2
TCP_CONNTRACK_ESTABLISHED: Final = 3
TCP_CONNTRACK_FIN_WAIT: Final = 4
TCP_CONNTRACK_CLOSE_WAIT: Final = 5
TCP_CONNTRACK_LAST_ACK: Final = 6
TCP_CONNTRACK_TIME_WAIT: Final = 7
TCP_CONNTRACK_CLOSE: Final = 8
TCP_CONNTRACK_SYN_SENT2: Final = 9
CT_STATE_NAMES: Final = {
    0: "NONE",
    1: "SYN_SENT",
    2: "SYN_RECV",
    3: "ESTABLISHED",
    4: "FIN_WAIT",
    5: "CLOSE_WAIT",
    6: "LAST_ACK",
    7: "TIME_WAIT",
    8: "CLOSE",
    9: "SYN_SENT2",
}
# The columns the NAT pools report per state (the rest go to "other").
POOL_STATES: Final = ("time_wait", "established", "syn_sent", "closing", "other")

# enum ip_conntrack_status bits (include/uapi/linux/netfilter/nf_conntrack_common.h)
IPS_SEEN_REPLY: Final = 1 << 1
IPS_ASSURED: Final = 1 << 2
IPS_CONFIRMED: Final = 1 << 3
IPS_SRC_NAT: Final = 1 << 4
IPS_DST_NAT: Final = 1 << 5

IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17

# nf_nat_l4proto_unique_tuple() (K net/netfilter/nf_nat_core.c): without a port range in the
# rule, a TCP/UDP source port >= 1024 is mapped into 1024..65535.
NAT_DEFAULT_PORTS: Final = (1024, 65535)
# nf_conntrack_tcp_timeout_time_wait default: 2 MINS (K nf_conntrack_proto_tcp.c tcp_timeouts[]).
CT_TIME_WAIT_S: Final = 120
# Measured on 6.18.44: /sys/kernel/slab/nf_conntrack object_size 248, slab_size 256; the
# extension area (NAT, ...) is a separate small allocation on top, and each hash bucket 8 B.
CT_ENTRY_BYTES: Final = 256
CT_BUCKET_BYTES: Final = 8

# Snapshot.counters keys. Settings: /proc/sys/net/netfilter/<name> (per netns, except
# nf_conntrack_max and nf_conntrack_buckets, which other namespaces can only read).
SETTING_KEYS: Final = (
    "nf_conntrack_count",
    "nf_conntrack_max",
    "nf_conntrack_buckets",
    "nf_conntrack_tcp_timeout_time_wait",
    "nf_conntrack_tcp_timeout_established",
    "nf_conntrack_tcp_timeout_syn_sent",
    "nf_conntrack_tcp_timeout_fin_wait",
    "nf_conntrack_tcp_timeout_close_wait",
    "nf_conntrack_tcp_timeout_last_ack",
    "nf_conntrack_tcp_timeout_close",
    "nf_conntrack_tcp_loose",
    "nf_conntrack_tcp_be_liberal",
)
# /proc/net/stat/nf_conntrack, summed over CPUs (per netns).
COUNTER_KEYS: Final = ("insert", "insert_failed", "drop", "early_drop", "invalid", "clashres")
PREFIX: Final = "conntrack."
PRESENT: Final = "conntrack.present"  # 1 when the namespace has a connection tracker

NAT_RULE_DTYPE: Final = np.dtype(
    [
        ("family", "u1"),  # 2, 10, or 0 for an inet table (both)
        ("masquerade", "?"),  # masquerade (the outgoing interface's address) vs snat
        ("addr_lo", "V16"),  # snat to these addresses (zeros for masquerade)
        ("addr_hi", "V16"),
        ("port_lo", "u2"),  # 0/0: no port range given (NAT_DEFAULT_PORTS applies)
        ("port_hi", "u2"),
        ("random", "?"),
        ("random_fully", "?"),
        ("persistent", "?"),
        ("oif", "S16"),  # oifname the rule matches, "" if none
    ]
)


def key(name: str) -> str:
    """'insert_failed' -> 'conntrack.insert_failed' (Snapshot.counters)."""
    return PREFIX + name


def empty_table(n: int = 0) -> np.ndarray:
    return np.zeros(n, dtype=CONNTRACK_DTYPE)


def table_from_rows(rows: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """Conntrack rows from dicts with text addresses (tests, the model). Keys: src, sport, dst,
    dport (original direction), and optionally nat_src/nat_sport (the translated source: the
    reply direction's destination; default = no translation), proto (6), state (number),
    timeout_s, status (SRC_NAT is set when nat_src/nat_sport differ), mark, zone."""
    rows = list(rows)
    arr = empty_table(len(rows))
    for i, r in enumerate(rows):
        v6 = ":" in r["src"]
        nat_src = r.get("nat_src", r["src"])
        nat_sport = r.get("nat_sport", r["sport"])
        status = r.get("status", IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_ASSURED)
        if (nat_src, nat_sport) != (r["src"], r["sport"]):
            status |= IPS_SRC_NAT
        arr[i]["family"] = AF_INET6 if v6 else AF_INET
        arr[i]["proto"] = r.get("proto", IPPROTO_TCP)
        arr[i]["state"] = r.get("state", TCP_CONNTRACK_ESTABLISHED)
        arr[i]["status"] = status
        arr[i]["timeout_s"] = r.get("timeout_s", 0)
        arr[i]["orig_src"] = addr_bytes(r["src"])
        arr[i]["orig_dst"] = addr_bytes(r["dst"])
        arr[i]["orig_sport"] = r["sport"]
        arr[i]["orig_dport"] = r["dport"]
        arr[i]["reply_src"] = addr_bytes(r["dst"])
        arr[i]["reply_dst"] = addr_bytes(nat_src)
        arr[i]["reply_sport"] = r["dport"]
        arr[i]["reply_dport"] = nat_sport
        arr[i]["mark"] = r.get("mark", 0)
        arr[i]["zone"] = r.get("zone", 0)
    return arr


def nat_rules_from_rows(rows: Iterable[Mapping[str, Any]]) -> np.ndarray:
    """NAT rule rows from dicts: masquerade (bool), addr_lo/addr_hi (text), port_lo/port_hi,
    random, random_fully, persistent, family, oif."""
    rows = list(rows)
    arr = np.zeros(len(rows), dtype=NAT_RULE_DTYPE)
    for i, r in enumerate(rows):
        arr[i]["family"] = r.get("family", 0)
        arr[i]["masquerade"] = r.get("masquerade", True)
        if r.get("addr_lo"):
            arr[i]["addr_lo"] = addr_bytes(r["addr_lo"])
            arr[i]["addr_hi"] = addr_bytes(r.get("addr_hi") or r["addr_lo"])
        arr[i]["port_lo"] = r.get("port_lo", 0)
        arr[i]["port_hi"] = r.get("port_hi", 0)
        arr[i]["random"] = r.get("random", False)
        arr[i]["random_fully"] = r.get("random_fully", False)
        arr[i]["persistent"] = r.get("persistent", False)
        arr[i]["oif"] = str(r.get("oif", "")).encode()[:16]
    return arr


def check_table(arr: np.ndarray) -> str:
    """What is impossible in a conntrack table, or "" (a saved file is checked with it)."""
    if arr.dtype != CONNTRACK_DTYPE:
        return f"dtype {arr.dtype} is not CONNTRACK_DTYPE"
    if not np.isin(arr["family"], (AF_INET, AF_INET6)).all():
        return "a family other than IPv4/IPv6"
    if (arr["state"] > TCP_CONNTRACK_SYN_SENT2).any():
        return "a TCP conntrack state outside 0..9"
    return ""


__all__ = [
    "CONNTRACK_DTYPE",
    "CT_STATE_NAMES",
    "NAT_RULE_DTYPE",
    "check_table",
    "empty_table",
    "key",
    "nat_rules_from_rows",
    "table_from_rows",
]
