"""The two per-connection clocks Linux derives from a keyed hash: ISN and timestamp offset.

K net/core/secure_seq.c `secure_tcp_seq_and_ts_off()`: one 64-bit siphash of the four-tuple and
a boot secret. 32 bits plus `seq_scale()` (real time in ns >> 6, a 64 ns clock) give the ISN
(RFC 6528 §3 / RFC 9293 §3.4.1); the other 32 bits are the timestamp offset when
tcp_timestamps == 1 (0 otherwise). The offset depends only on the four-tuple, so every
incarnation of a four-tuple shares it: that is what makes PAWS protect a new incarnation
(RFC 7323 §5.8). Measured on 6.18: SYNs from one address pair but different source ports carry
unrelated TSvals (per four-tuple, not the per-address-pair `secure_tcp_ts_off()` of 4.11-6.x
sources). `isn_and_ts_offset()` takes both from one hash, as the kernel does.

We use keyed BLAKE2b in place of siphash (same role: a keyed hash the peer cannot predict); the
secret comes from the host's seeded RNG, so runs are deterministic.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

from timewait.model.segment import FourTuple
from timewait.model.seq import MASK
from timewait.units import MS

# K secure_seq.c seq_scale(): "As close as possible to RFC 793, which suggests using a 250 kHz
# clock ... we use 64 ns (Linux's clock is 16x faster)". ns >> 6.
ISN_CLOCK_SHIFT = 6
# K tcp.h tcp_clock_ts(): the TCP timestamp clock ticks in ms (1 us only on tcp_usec_ts routes).
TS_TICK = MS


def _hash64(secret: bytes, *parts: object) -> int:
    h = _keyed(secret).copy()  # keying is a whole compression round: do it once per secret
    h.update("|".join(map(str, parts)).encode())
    return int.from_bytes(h.digest(), "little")


@functools.lru_cache(maxsize=64)
def _keyed(secret: bytes) -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=8, key=secret)


@functools.lru_cache(maxsize=64)
def _jiffies_phase(secret: bytes) -> int:
    # One per host, asked on every connect(): cached (a hash is ~1 us, 6% of a packet run).
    return _hash64(secret, "jiffies") % _RESALT


@dataclass(frozen=True, slots=True)
class HostClocks:
    """The keyed clocks of one host. Build with `HostClocks.from_rng(rng)`."""

    secret: bytes

    @classmethod
    def from_rng(cls, rng: object) -> HostClocks:
        """Draw the boot secret from a seeded `random.Random`."""
        getrandbits = rng.getrandbits  # type: ignore[attr-defined]
        return cls(secret=int(getrandbits(128)).to_bytes(16, "little"))

    def isn_and_ts_offset(self, ft: FourTuple, now: int, tcp_timestamps: int) -> tuple[int, int]:
        """(ISN at `now`, timestamp offset) of a new connection on `ft`: one keyed hash, as in
        secure_tcp_seq_and_ts_off(). The offset is 0 unless tcp_timestamps == 1."""
        h = _hash64(self.secret, "seq+ts", *ft)
        isn = ((h & MASK) + (now >> ISN_CLOCK_SHIFT)) & MASK
        return isn, (h >> 32) if tcp_timestamps == 1 else 0

    def isn(self, ft: FourTuple, now: int) -> int:
        """Initial sequence number for a new connection on `ft` at time `now` (ns)."""
        return self.isn_and_ts_offset(ft, now, 0)[0]

    def ts_offset(self, ft: FourTuple, tcp_timestamps: int) -> int:
        """Per-four-tuple timestamp offset (0 unless tcp_timestamps == 1, Linux 4.10+)."""
        return self.isn_and_ts_offset(ft, 0, tcp_timestamps)[1]

    def port_offset(self, laddr: str, raddr: str, rport: int, now: int) -> int:
        """64-bit starting point for connect()'s port search (K secure_ipv4_port_ephemeral()).

        The hash covers jiffies / (10 * HZ), so the start for a destination reshuffles every 10 s.
        Jiffies do not start at model time 0: the phase of that 10 s boundary is drawn from the
        host's secret (a booted kernel's jiffies are arbitrary), so whether a short run crosses a
        reshuffle varies with the seed, as it varies between runs on a real machine.
        """
        return _hash64(
            self.secret, "port", laddr, raddr, rport, (now + self.jiffies_phase) // _RESALT
        )

    @property
    def jiffies_phase(self) -> int:
        """Offset (ns, below 10 s) of the model's clock against the 10 s re-salt boundaries."""
        return _jiffies_phase(self.secret)


# K secure_seq.c secure_ipv4_port_ephemeral(): jiffies / (10 * HZ), a 10 s re-salt period.
_RESALT = 10 * 1000 * MS


def tsval(now: int, offset: int) -> int:
    """TSval sent at `now`: ms clock plus the connection's offset, modulo 2**32 (tcp_tw_tsval())."""
    return (now // TS_TICK + offset) & MASK
