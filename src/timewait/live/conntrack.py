"""ctnetlink dumps: a vectorized decoder into CONNTRACK_DTYPE rows, and the NAT rules of an
`nft -j list ruleset` document (the raw reads live in timewait.live.ctnetlink).

Theory of operation
-------------------
A conntrack entry is one netlink message of nested attributes (`ctnetlink_fill_info()`,
K net/netfilter/nf_conntrack_netlink.c): CTA_TUPLE_ORIG and CTA_TUPLE_REPLY (each CTA_TUPLE_IP
{CTA_IP_V4_SRC, CTA_IP_V4_DST | the V6 pair} and CTA_TUPLE_PROTO {CTA_PROTO_NUM,
CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT}, maybe CTA_TUPLE_ZONE), CTA_STATUS, CTA_TIMEOUT,
CTA_PROTOINFO {CTA_PROTOINFO_TCP {CTA_PROTOINFO_TCP_STATE, ...}}, CTA_MARK, CTA_USE, CTA_ID
and optional ones (zone, counters, timestamps, labels, secctx, NAT sequence adjustments).
Nothing in a message is at a fixed offset, but entries of one kind (TCP over IPv4, say, with the
same optional attributes) have exactly the same layout, and a big table is a few kinds.

So the decoder works by *layout*: it walks the message headers (sockdiag._message_offsets,
which jumps over runs of equal lengths with numpy), groups the entry messages by length, and for
each group parses one message with a scalar walk into a template: the offset of every
attribute header and of every field it needs. One vectorized comparison checks that every
message of the group has the same attribute headers at those offsets (then its fields are at
the same offsets too); the fields are then gathered for the whole group at once. Messages that
differ from the template are handled by the next template, taken from the first of them, so the
cost is a handful of numpy passes per distinct layout, never Python per entry.

Multi-byte values in attributes are big-endian (NLA_U32/NLA_U16 in network order for ctnetlink);
header fields are host order. Layouts: K include/uapi/linux/netfilter/nfnetlink_conntrack.h.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Final

import numpy as np

from timewait.conntrack import CONNTRACK_DTYPE, NAT_RULE_DTYPE, nat_rules_from_rows
from timewait.errors import TimewaitError
from timewait.live.ctnetlink import CT_NEW
from timewait.live.netlink import NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN, NLMSG_NOOP
from timewait.snapshot import AF_INET, AF_INET6

NLA_TYPE_MASK: Final = 0x3FFF  # ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)
NFGEN_LEN: Final = 4

# enum ctattr_type
CTA_TUPLE_ORIG: Final = 1
CTA_TUPLE_REPLY: Final = 2
CTA_STATUS: Final = 3
CTA_PROTOINFO: Final = 4
CTA_TIMEOUT: Final = 7
CTA_MARK: Final = 8
CTA_ZONE: Final = 18
# enum ctattr_tuple / ctattr_ip / ctattr_l4proto / ctattr_protoinfo(_tcp)
CTA_TUPLE_IP: Final = 1
CTA_TUPLE_PROTO: Final = 2
CTA_IP_V4_SRC: Final = 1
CTA_IP_V4_DST: Final = 2
CTA_IP_V6_SRC: Final = 3
CTA_IP_V6_DST: Final = 4
CTA_PROTO_NUM: Final = 1
CTA_PROTO_SRC_PORT: Final = 2
CTA_PROTO_DST_PORT: Final = 3
CTA_PROTOINFO_TCP: Final = 1
CTA_PROTOINFO_TCP_STATE: Final = 1

_NLA: Final = struct.Struct("=HH")
_HDR: Final = struct.Struct("=IHHII")

# field name -> (CONNTRACK_DTYPE column, width in bytes); addresses need the family too.
_PATHS: Final[dict[tuple[int, ...], str]] = {
    (CTA_TUPLE_ORIG, CTA_TUPLE_IP, CTA_IP_V4_SRC): "orig_src4",
    (CTA_TUPLE_ORIG, CTA_TUPLE_IP, CTA_IP_V4_DST): "orig_dst4",
    (CTA_TUPLE_ORIG, CTA_TUPLE_IP, CTA_IP_V6_SRC): "orig_src6",
    (CTA_TUPLE_ORIG, CTA_TUPLE_IP, CTA_IP_V6_DST): "orig_dst6",
    (CTA_TUPLE_ORIG, CTA_TUPLE_PROTO, CTA_PROTO_NUM): "proto",
    (CTA_TUPLE_ORIG, CTA_TUPLE_PROTO, CTA_PROTO_SRC_PORT): "orig_sport",
    (CTA_TUPLE_ORIG, CTA_TUPLE_PROTO, CTA_PROTO_DST_PORT): "orig_dport",
    (CTA_TUPLE_REPLY, CTA_TUPLE_IP, CTA_IP_V4_SRC): "reply_src4",
    (CTA_TUPLE_REPLY, CTA_TUPLE_IP, CTA_IP_V4_DST): "reply_dst4",
    (CTA_TUPLE_REPLY, CTA_TUPLE_IP, CTA_IP_V6_SRC): "reply_src6",
    (CTA_TUPLE_REPLY, CTA_TUPLE_IP, CTA_IP_V6_DST): "reply_dst6",
    (CTA_TUPLE_REPLY, CTA_TUPLE_PROTO, CTA_PROTO_SRC_PORT): "reply_sport",
    (CTA_TUPLE_REPLY, CTA_TUPLE_PROTO, CTA_PROTO_DST_PORT): "reply_dport",
    (CTA_STATUS,): "status",
    (CTA_TIMEOUT,): "timeout_s",
    (CTA_MARK,): "mark",
    (CTA_ZONE,): "zone",
    (CTA_PROTOINFO, CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE): "state",
}
_NESTED: Final = {
    (CTA_TUPLE_ORIG,),
    (CTA_TUPLE_REPLY,),
    (CTA_TUPLE_ORIG, CTA_TUPLE_IP),
    (CTA_TUPLE_ORIG, CTA_TUPLE_PROTO),
    (CTA_TUPLE_REPLY, CTA_TUPLE_IP),
    (CTA_TUPLE_REPLY, CTA_TUPLE_PROTO),
    (CTA_PROTOINFO,),
    (CTA_PROTOINFO, CTA_PROTOINFO_TCP),
}
_WIDTH: Final = {"proto": 1, "state": 1, "orig_sport": 2, "orig_dport": 2, "reply_sport": 2,
                 "reply_dport": 2, "status": 4, "timeout_s": 4, "mark": 4, "zone": 2}  # fmt: skip


class MalformedConntrackDump(TimewaitError):
    """Bytes that are not a well-formed ctnetlink conntrack dump."""


def _fail(msg: str) -> MalformedConntrackDump:
    return MalformedConntrackDump(f"malformed conntrack dump: {msg}")


def _template(buf: bytes, start: int, length: int) -> tuple[list[int], dict[str, int]]:
    """One message's layout: the offsets (from `start`) of every attribute header, and of the
    payload of every field we read. MalformedConntrackDump if an attribute overruns."""
    headers: list[int] = []
    fields: dict[str, int] = {}

    def walk(lo: int, hi: int, path: tuple[int, ...]) -> None:
        p = lo
        while p + 4 <= hi:
            nla_len, nla_type = _NLA.unpack_from(buf, start + p)
            if nla_len < 4 or p + nla_len > hi:
                raise _fail(f"attribute at offset {start + p} has length {nla_len}")
            headers.append(p)
            sub = (*path, nla_type & NLA_TYPE_MASK)
            name = _PATHS.get(sub)
            if name is not None:
                fields[name] = p + 4
            elif sub in _NESTED:
                walk(p + 4, p + nla_len, sub)
            p += (nla_len + 3) & ~3

    walk(NLMSG_HDRLEN + NFGEN_LEN, length, ())
    return headers, fields


def decode(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Decode a ctnetlink dump into CONNTRACK_DTYPE rows, in dump order.

    Pure function of bytes; MalformedConntrackDump for truncated or corrupt input, an error
    reply, or an entry without tuples."""
    from timewait.live.sockdiag import MalformedDump, _message_offsets

    buf = bytes(data)
    try:
        offs = _message_offsets(buf)
    except MalformedDump as e:
        raise _fail(str(e).split(": ", 1)[-1]) from None
    n = len(buf)
    out = np.zeros(0, dtype=CONNTRACK_DTYPE)
    if offs.size == 0:
        return out
    words = np.frombuffer(buf, dtype="=u4", count=(n - n % 4) // 4)
    w = offs >> 2
    lengths = words[w].astype(np.int64)
    types = words[w + 1] & 0xFFFF
    if (types == NLMSG_ERROR).any():
        i = int(np.flatnonzero(types == NLMSG_ERROR)[0])
        code = -int(np.int32(words[w[i] + 4])) if lengths[i] >= 20 else 0
        if code:
            raise _fail(f"it holds a kernel error reply ({code})")
    known = (types == CT_NEW) | (types == NLMSG_DONE) | (types == NLMSG_ERROR)
    known |= types == NLMSG_NOOP
    if not known.all():
        i = int(np.flatnonzero(~known)[0])
        raise _fail(f"message at offset {int(offs[i])} has unknown type {int(types[i])}")
    entry = types == CT_NEW
    e_offs, e_len = offs[entry], lengths[entry]
    k = int(e_offs.shape[0])
    out = np.zeros(k, dtype=CONNTRACK_DTYPE)
    if k == 0:
        return out
    b8 = np.frombuffer(buf, dtype=np.uint8)
    pending = np.arange(k)
    while pending.size:
        first = int(pending[0])
        start, length = int(e_offs[first]), int(e_len[first])
        headers, fields = _template(buf, start, length)
        same = pending[e_len[pending] == length]
        rows = _rows(buf, b8, e_offs[same], length)
        cols = np.asarray([h + j for h in headers for j in range(4)], dtype=np.int64)
        ref = b8[start + cols]
        ok = (rows[:, cols] == ref).all(axis=1) if cols.size else np.ones(same.size, bool)
        if not ok[0]:  # cannot happen (the template is the first row): be safe
            ok[0] = True
        group = same[ok]
        _fill(out, group, rows if ok.all() else rows[ok], fields)
        done = np.zeros(k, dtype=bool)
        done[group] = True
        pending = pending[~done[pending]]
    return out


def _rows(buf: bytes, b8: np.ndarray, offs: np.ndarray, length: int) -> np.ndarray:
    """The messages starting at `offs` as a (n, length) uint8 matrix: a strided view when they
    lie back to back at one stride (a uniform table: no copy), else a gathered copy."""
    n = offs.shape[0]
    if n > 1:
        stride = int(offs[1] - offs[0])
        if stride >= length and (np.diff(offs) == stride).all():
            view: np.ndarray = np.ndarray(shape=(n, length), dtype=np.uint8, buffer=buf,
                                          offset=int(offs[0]), strides=(stride, 1))  # fmt: skip
            return view
    gathered: np.ndarray = b8[offs[:, None] + np.arange(length)]
    return gathered


def _be(rows: np.ndarray, at: int, width: int) -> np.ndarray:
    """Big-endian unsigned integers of `width` bytes at column `at` of every row."""
    if width == 1:
        return rows[:, at]
    cell = np.ascontiguousarray(rows[:, at : at + width])
    out: np.ndarray = cell.view(">u2" if width == 2 else ">u4").ravel()
    return out


def _fill(out: np.ndarray, idx: np.ndarray, rows: np.ndarray, fields: dict[str, int]) -> None:
    """Write the fields of one layout's messages (`rows`, one per message) into out[idx]."""
    if "orig_src4" in fields or "orig_src6" in fields:
        v4 = "orig_src4" in fields
    else:
        raise _fail("an entry without an original tuple")
    out["family"][idx] = AF_INET if v4 else AF_INET6
    o8 = out.view(np.uint8).reshape(out.shape[0], CONNTRACK_DTYPE.itemsize)
    width = 4 if v4 else 16
    for col in ("orig_src", "orig_dst", "reply_src", "reply_dst"):
        at = CONNTRACK_DTYPE.fields[col][1]  # type: ignore[index]
        name = f"{col}{4 if v4 else 6}"
        if name not in fields:
            continue
        src = rows[:, fields[name] : fields[name] + width]
        if v4:
            o8[idx, at : at + 10] = 0
            o8[idx, at + 10 : at + 12] = 0xFF
            o8[idx, at + 12 : at + 16] = src
        else:
            o8[idx, at : at + 16] = src
    for name, w in _WIDTH.items():
        if name in fields:
            out[name][idx] = _be(rows, fields[name], w)


def count_entries(data: bytes) -> int:
    """Entry messages in a dump, by walking headers only (tests, fixtures)."""
    from timewait.live.sockdiag import _message_offsets

    buf = bytes(data)
    offs = _message_offsets(buf)
    if offs.size == 0:
        return 0
    words = np.frombuffer(buf, dtype="=u4", count=(len(buf) - len(buf) % 4) // 4)
    return int(((words[(offs >> 2) + 1] & 0xFFFF) == CT_NEW).sum())


# -- NAT rules from `nft -j list ruleset` ----------------------------------------------------


def _range(value: Any) -> tuple[str, str] | None:
    """An nft JSON address or port expression -> (lo, hi) text, or None."""
    if isinstance(value, str | int):
        return str(value), str(value)
    if isinstance(value, dict) and "range" in value and len(value["range"]) == 2:
        lo, hi = value["range"]
        if isinstance(lo, str | int) and isinstance(hi, str | int):
            return str(lo), str(hi)
    if isinstance(value, dict) and "prefix" in value:
        import ipaddress

        p = value["prefix"]
        net = ipaddress.ip_network(f"{p['addr']}/{p['len']}", strict=False)
        return str(net[0]), str(net[-1])
    return None


def _flags(stmt: dict[str, Any]) -> set[str]:
    flags = stmt.get("flags", [])
    if isinstance(flags, str):
        flags = [flags]
    return {str(f) for f in flags}


def nat_rules(ruleset: str) -> np.ndarray:
    """The source-NAT statements (masquerade, snat) of a `nft -j list ruleset` document as
    NAT_RULE_DTYPE rows; an unreadable document gives no rows."""
    try:
        doc = json.loads(ruleset)
    except ValueError:
        return np.zeros(0, dtype=NAT_RULE_DTYPE)
    families = {"ip": AF_INET, "ip6": AF_INET6, "inet": 0}
    rows: list[dict[str, Any]] = []
    for item in doc.get("nftables", []) if isinstance(doc, dict) else []:
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict):
            continue
        fam = families.get(str(rule.get("family")))
        if fam is None:
            continue
        oif = ""
        for stmt in rule.get("expr", []):
            if not isinstance(stmt, dict):
                continue
            match = stmt.get("match")
            if isinstance(match, dict):
                left = match.get("left", {})
                if isinstance(left, dict) and left.get("meta", {}).get("key") == "oifname":
                    right = match.get("right")
                    oif = right if isinstance(right, str) else oif
            for kind in ("masquerade", "snat"):
                if kind not in stmt:
                    continue
                body = stmt[kind] if isinstance(stmt[kind], dict) else {}
                if kind == "snat" and str(body.get("type", "")) == "prefix":
                    continue
                row: dict[str, Any] = {"family": fam, "masquerade": kind == "masquerade",
                                       "oif": oif}  # fmt: skip
                flags = _flags(body)
                fully = "fully-random" in flags or "random-fully" in flags
                row.update(random="random" in flags, random_fully=fully,
                           persistent="persistent" in flags)  # fmt: skip
                addr = _range(body.get("addr")) if "addr" in body else None
                if addr is not None:
                    row.update(addr_lo=addr[0], addr_hi=addr[1])
                port = _range(body.get("port")) if "port" in body else None
                if port is not None and port[0].isdigit() and port[1].isdigit():
                    row.update(port_lo=int(port[0]), port_hi=int(port[1]))
                rows.append(row)
    try:
        return nat_rules_from_rows(rows)
    except ValueError:  # an address the statement computes (a map): keep what is certain
        return nat_rules_from_rows(
            [{k: v for k, v in r.items() if k not in ("addr_lo", "addr_hi")} for r in rows]
        )
