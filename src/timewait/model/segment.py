"""Segments and four-tuples: the values that cross the wire between model hosts.

A Segment is a value with the header fields the model needs (no checksum, no window
scaling, no options other than timestamps). Build one with keyword arguments and vary it with
`dataclasses.replace`, as the tests do with their templates. The address helpers every layer
shares (loopback, wildcards) live beside FourTuple.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from enum import IntFlag
from typing import Final, NamedTuple

WILDCARD_V4: Final = "0.0.0.0"
WILDCARD_V6: Final = "::"


class Flags(IntFlag):
    """TCP header flags, with the wire bit values (RFC 9293 §3.1)."""

    NONE = 0
    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10

    def __str__(self) -> str:
        order = (Flags.SYN, Flags.FIN, Flags.RST, Flags.PSH, Flags.ACK)
        return "|".join(f.name or "" for f in order if f & self) or "-"


# The combinations the model sends, built once: IntFlag's `|` is interpreted enum code (0.5 us).
SYN_ACK = Flags.SYN | Flags.ACK
FIN_ACK = Flags.FIN | Flags.ACK
RST_ACK = Flags.RST | Flags.ACK


class FourTuple(NamedTuple):
    """A connection as seen from one end: local address/port, remote address/port."""

    laddr: str
    lport: int
    raddr: str
    rport: int

    def reversed(self) -> FourTuple:
        """The same connection as the peer sees it."""
        return _new_tuple(FourTuple, (self.raddr, self.rport, self.laddr, self.lport))

    def __str__(self) -> str:
        return f"{self.laddr}:{self.lport}->{self.raddr}:{self.rport}"


@functools.lru_cache(maxsize=4096)
def is_loopback(addr: str) -> bool:
    """127/8, ::1 and ::ffff:127/104 (the addresses tcp_twsk_unique() treats as loopback, and
    the ones a packet to never leaves its namespace)."""
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def wildcard_for(addr: str) -> str:
    """The wildcard address of `addr`'s family: "::" for IPv6, "0.0.0.0" for IPv4."""
    return WILDCARD_V6 if ":" in addr else WILDCARD_V4


# NamedTuple's own __new__ is interpreted code (210 ns); tuple.__new__ builds the same value in
# half that. Used on every segment (receiver_tuple).
_new_tuple = tuple.__new__


@dataclass(slots=True, kw_only=True, init=False, eq=True, unsafe_hash=True)
class Segment:
    """One TCP segment. `tsval is None` means no timestamp option.

    `payload` carries real bytes so a receiver can tell old data from new (the old-duplicates
    scenario); `seg_len` counts SYN and FIN as one each (RFC 9293 §3.4).

    Treat a Segment as a value: nothing in the model changes one after it is built; vary one
    with `dataclasses.replace`. (It is not `frozen=True`: a frozen dataclass's generated
    __init__ stays interpreted under mypyc and cost 1.4 us per segment, more than the rest of
    building one; the explicit __init__ below compiles.)
    """

    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int
    flags: Flags
    window: int
    payload: bytes
    tsval: int | None
    tsecr: int | None
    # `flags` as a plain int: IntFlag's `&` is interpreted enum code, int's compiles to one
    # machine instruction (mypyc). Derived from `flags`; not part of the value.
    bits: int = field(init=False, repr=False, compare=False, hash=False)
    # receiver_tuple, built on first use: the host and the simulator both ask for it.
    _receiver: FourTuple | None = field(init=False, repr=False, compare=False, hash=False)

    def __init__(
        self,
        *,
        src: str,
        sport: int,
        dst: str,
        dport: int,
        seq: int,
        ack: int = 0,
        flags: Flags = Flags.NONE,
        window: int = 65535,
        payload: bytes = b"",
        tsval: int | None = None,
        tsecr: int | None = None,
    ) -> None:
        self.src = src
        self.sport = sport
        self.dst = dst
        self.dport = dport
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.bits = int(flags)
        self._receiver = None
        self.window = window
        self.payload = payload
        self.tsval = tsval
        self.tsecr = tsecr

    @property
    def seg_len(self) -> int:
        """Sequence space consumed: payload bytes, plus one for SYN and one for FIN."""
        f = self.bits
        return len(self.payload) + ((f & 0x02) >> 1) + (f & 0x01)

    @property
    def syn(self) -> bool:
        return self.bits & 0x02 != 0

    @property
    def fin(self) -> bool:
        return self.bits & 0x01 != 0

    @property
    def rst(self) -> bool:
        return self.bits & 0x04 != 0

    @property
    def has_ack(self) -> bool:
        return self.bits & 0x10 != 0

    @property
    def receiver_tuple(self) -> FourTuple:
        """The four-tuple as the receiving host sees it (local = destination)."""
        ft = self._receiver
        if ft is None:
            ft = _new_tuple(FourTuple, (self.dst, self.dport, self.src, self.sport))
            self._receiver = ft
        return ft

    @property
    def sender_tuple(self) -> FourTuple:
        return _new_tuple(FourTuple, (self.src, self.sport, self.dst, self.dport))

    def __str__(self) -> str:
        ts = f" TS {self.tsval}/{self.tsecr}" if self.tsval is not None else ""
        data = f" len={len(self.payload)}" if self.payload else ""
        return (
            f"{self.src}:{self.sport} > {self.dst}:{self.dport} [{self.flags}] "
            f"seq={self.seq} ack={self.ack}{data}{ts}"
        )


def reset_reply(seg: Segment) -> Segment:
    """The RST that answers `seg` where no socket wants it (K tcp_ipv4.c tcp_v4_send_reset(),
    RFC 9293 §3.10.7.1): ACK set -> <SEQ=SEG.ACK><RST>, else <SEQ=0><ACK=SEG.SEQ+SEG.LEN>
    <RST,ACK>. No timestamp option, window 0. Callers never answer an RST with one."""
    if seg.has_ack:
        return Segment(
            src=seg.dst, sport=seg.dport, dst=seg.src, dport=seg.sport,
            seq=seg.ack, flags=Flags.RST, window=0,
        )  # fmt: skip
    return Segment(
        src=seg.dst, sport=seg.dport, dst=seg.src, dport=seg.sport,
        seq=0, ack=(seg.seq + seg.seg_len) & 0xFFFFFFFF, flags=RST_ACK, window=0,
    )  # fmt: skip
