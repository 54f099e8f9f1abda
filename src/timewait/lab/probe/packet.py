"""IPv4/TCP packets as bytes, with the standard library only: build what the probe injects into
the TUN device, parse what the kernel sends back.

A `Packet` is the part of a segment the probe reads or writes: addresses, ports, sequence and
acknowledgement numbers, flags, window, payload and the TCP options the conformance scripts use
(MSS, SACK-permitted, timestamps, window scale). `encode()` fills in both checksums; `decode()`
returns None for anything that is not an IPv4/TCP packet (the IPv6 router solicitations a fresh
TUN emits are filtered by the caller's sysctls, but ICMP and stray frames are possible).

Measured in the reference (simulators-and-tests.md 4.1): a hand-rolled struct codec builds a
segment in ~2.6 us and parses one in ~0.4 us, an order of magnitude under dpkt and two under
scapy; the probe needs neither.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import Final

from timewait.model.segment import Flags, Segment

IPPROTO_TCP: Final = 6
_IP: Final = struct.Struct("!BBHHHBBH4s4s")
_TCP: Final = struct.Struct("!HHIIBBHHH")

# TCP option kinds (RFC 9293 §3.2, RFC 7323, RFC 2018)
OPT_EOL: Final = 0
OPT_NOP: Final = 1
OPT_MSS: Final = 2
OPT_WSCALE: Final = 3
OPT_SACK_OK: Final = 4
OPT_TS: Final = 8

# packetdrill's letters, in the order it prints them; "." is ACK.
FLAG_LETTERS: Final = {"S": 0x02, "F": 0x01, "R": 0x04, "P": 0x08, "U": 0x20, ".": 0x10}


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """The TCP options a probe script writes or checks; None = absent."""

    mss: int | None = None
    sack_ok: bool = False
    wscale: int | None = None
    ts: tuple[int, int] | None = None  # (TSval, TSecr)

    def encode(self) -> bytes:
        """Linux's own layout (tcp_options_write()): MSS, then SACK-permitted folded into the
        timestamp's NOP padding, window scale last; padded to 4 bytes."""
        out = b""
        if self.mss is not None:
            out += struct.pack("!BBH", OPT_MSS, 4, self.mss)
        if self.ts is not None:
            lead = struct.pack("!BB", OPT_SACK_OK, 2) if self.sack_ok else b"\x01\x01"
            out += lead + struct.pack("!BBII", OPT_TS, 10, self.ts[0], self.ts[1])
        elif self.sack_ok:
            out += b"\x01\x01" + struct.pack("!BB", OPT_SACK_OK, 2)
        if self.wscale is not None:
            out += b"\x01" + struct.pack("!BBB", OPT_WSCALE, 3, self.wscale)
        return out + b"\x01" * (-len(out) % 4)

    @classmethod
    def decode(cls, raw: bytes) -> Options:
        mss = wscale = None
        sack_ok = False
        ts = None
        i = 0
        while i < len(raw):
            kind = raw[i]
            if kind == OPT_EOL:
                break
            if kind == OPT_NOP:
                i += 1
                continue
            if i + 1 >= len(raw) or raw[i + 1] < 2:
                break  # malformed: stop, as tcp_parse_options() does
            size = raw[i + 1]
            body = raw[i + 2 : i + size]
            if kind == OPT_MSS and size == 4:
                mss = struct.unpack("!H", body)[0]
            elif kind == OPT_WSCALE and size == 3:
                wscale = body[0]
            elif kind == OPT_SACK_OK and size == 2:
                sack_ok = True
            elif kind == OPT_TS and size == 10:
                ts = struct.unpack("!II", body)
            i += size
        return cls(mss=mss, sack_ok=sack_ok, wscale=wscale, ts=ts)


@dataclass(frozen=True, slots=True, kw_only=True)
class Packet:
    """One IPv4/TCP segment on the TUN device."""

    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int = 0
    flags: int = 0
    window: int = 65535
    payload: bytes = b""
    options: Options = field(default_factory=Options)

    @property
    def seg_len(self) -> int:
        return len(self.payload) + bool(self.flags & 0x02) + bool(self.flags & 0x01)

    def to_segment(self) -> Segment:
        """The model's view: no options but timestamps, window unscaled."""
        ts = self.options.ts
        return Segment(
            src=self.src, sport=self.sport, dst=self.dst, dport=self.dport,
            seq=self.seq, ack=self.ack, flags=Flags(self.flags & 0x1F), window=self.window,
            payload=self.payload, tsval=ts[0] if ts else None, tsecr=ts[1] if ts else None,
        )  # fmt: skip

    @classmethod
    def from_segment(cls, seg: Segment) -> Packet:
        ts = (seg.tsval, seg.tsecr or 0) if seg.tsval is not None else None
        return cls(
            src=seg.src, sport=seg.sport, dst=seg.dst, dport=seg.dport, seq=seg.seq,
            ack=seg.ack, flags=int(seg.flags), window=seg.window, payload=seg.payload,
            options=Options(ts=ts),
        )  # fmt: skip

    def encode(self) -> bytes:
        """IPv4 header (DF, TTL 64) + TCP header + options + payload, checksums filled in."""
        opts = self.options.encode()
        src, dst = socket.inet_aton(self.src), socket.inet_aton(self.dst)
        off = (20 + len(opts)) // 4 << 4
        tcp = _TCP.pack(
            self.sport, self.dport, self.seq & 0xFFFFFFFF, self.ack & 0xFFFFFFFF, off,
            self.flags, self.window, 0, 0,
        )  # fmt: skip
        tcp += opts + self.payload
        pseudo = src + dst + struct.pack("!BBH", 0, IPPROTO_TCP, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
        ip = _IP.pack(0x45, 0, 20 + len(tcp), 0, 0x4000, 64, IPPROTO_TCP, 0, src, dst)
        return ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:] + tcp

    @classmethod
    def decode(cls, data: bytes) -> Packet | None:
        """Parse an IPv4/TCP packet; None for anything else."""
        if len(data) < 40 or data[0] >> 4 != 4 or data[9] != IPPROTO_TCP:
            return None
        ihl = (data[0] & 0x0F) * 4
        total = struct.unpack("!H", data[2:4])[0]
        tcp = data[ihl:total]
        if len(tcp) < 20:
            return None
        sport, dport, seq, ack, off, flags, window, _, _ = _TCP.unpack(tcp[:20])
        doff = (off >> 4) * 4
        return cls(
            src=socket.inet_ntoa(data[12:16]), sport=sport,
            dst=socket.inet_ntoa(data[16:20]), dport=dport, seq=seq, ack=ack, flags=flags,
            window=window, payload=bytes(tcp[doff:]), options=Options.decode(tcp[20:doff]),
        )  # fmt: skip


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def flag_text(flags: int) -> str:
    """packetdrill's spelling: S F R P letters, '.' for ACK (`S.` is a SYN-ACK)."""
    out = "".join(ch for ch, bit in FLAG_LETTERS.items() if ch != "." and flags & bit)
    return out + ("." if flags & 0x10 else "") or "-"


def parse_flags(text: str) -> int:
    """The inverse of flag_text(); raises ValueError for an unknown letter."""
    bits = 0
    if text == "-":
        return 0  # no flag at all (flag_text()'s spelling of it)
    for ch in text:
        if ch not in FLAG_LETTERS:
            raise ValueError(f"unknown TCP flag {ch!r} (use S F R P U and . for ACK)")
        bits |= FLAG_LETTERS[ch]
    return bits
