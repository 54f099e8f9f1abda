"""A source-NAT gateway's connection tracker, sans I/O: port selection as nf_nat does it,
conntrack's TCP TIME_WAIT, SYN reopening, and the 6.5+ eviction of closing entries.

Theory of operation
-------------------
One `NatGateway` is the conntrack table of a host that masquerades one translated address
(K net/netfilter/nf_nat_core.c, nf_conntrack_core.c, nf_conntrack_proto_tcp.c, read at
torvalds/linux and checked on 6.18.44 in tests/live/test_nat_kernel.py). Entries are keyed by
their original tuple (client ip, client port, server ip, server port) and indexed by their reply
tuple (server ip, server port, translated port): a reply tuple is unique, so the translated
ports toward one destination are a pool.

A client's SYN (`syn()`):
1. Original tuple already tracked: a SYN on an entry in TIME_WAIT or CLOSE whose connection
   closed is a *reopen*: the old entry is killed and the SYN looked up again (tcp_packet():
   "Attempt to reopen a closed/aborted connection", nf_ct_kill(), NF_REPEAT). On any other
   entry it is that connection's retransmission and keeps its mapping.
2. get_unique_tuple(): without random/random-fully, the client's own port is kept when it lies
   in the NAT range and the reply tuple is free. (find_appropriate_src(), which reuses the
   mapping of the same client ip:port toward another destination, is not modelled: it needs a
   client port reused across destinations inside 120 s.)
3. nf_nat_l4proto_unique_tuple(): from a random offset (get_random_u16(), for every flag
   combination in current kernels: `random` and `random-fully` differ from the default only by
   skipping step 2), probe `attempts = min(range, 128)` consecutive ports; if none is free and
   the range is larger than the round, halve the round and restart at a new random offset, down
   to rounds of 8 (128, 64, 32, 16, 8). Since Linux 6.5 (`nf_nat_used_tuple_harder()`), a probe
   among the last NF_NAT_HARDER_THRESH = 32 of a round may evict the entry holding the port if
   it is TCP TIME_WAIT or CLOSE, source-NATed, and the new SYN's sequence end is after the old
   connection's (`nf_seq_has_advanced()`, a signed 32-bit comparison of td_end).
4. No port: the SYN is dropped at confirmation (`nf_ct_resolve_clash()`: TCP does not allow
   clashes), counting insert_failed and drop.

An accepted connection's entry lives until `close()` (its last packet: the final ACK) plus
nf_conntrack_tcp_timeout_time_wait (120 s), expired lazily like the kernel's
(`nf_ct_is_expired()` at lookup) and by `expire()`. `seed()` puts in an entry a capture found
(open, or closing with the time its timer has left), so a run can start from a real table.

Several translated addresses (`snat to A1-An`): `snat_address_index()` is find_best_ips_proto()
(K nf_nat_core.c): the address is chosen by a hash of the client's address with the destination
address as its seed (`jhash2()`, K include/linux/jhash.h), not per connection, and the port
search then runs on that address only. So one client toward one destination always uses one
address, however many the rule names (measured on 6.18.44 in tests/live/test_nat_plan_kernel.py:
8 clients over 4 addresses, each client's address the one computed here); one `NatGateway` is
one address.

Sequence numbers: a client's ISN is a keyed hash of the four-tuple plus a 64 ns clock
(`secure_tcp_seq()`, ref 1.5), so `isn()` gives the same number the kernel's rule would for a
different key; td_end of the SYN is ISN + 1, of a closed connection ISN + 1 + payload + 1 (FIN).

Time is integer ns; randomness comes from the Random passed in.
"""

from __future__ import annotations

import hashlib
import heapq
import ipaddress
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from timewait.units import SEC

NF_NAT_MAX_ATTEMPTS: Final = 128  # nf_nat_core.c
NF_NAT_HARDER_THRESH: Final = NF_NAT_MAX_ATTEMPTS // 4  # 32: probes that may evict
CT_TIME_WAIT: Final = 120 * SEC  # nf_conntrack_proto_tcp.c tcp_timeouts[TIME_WAIT] = 2 MINS
NAT_DEFAULT_RANGE: Final = (1024, 65535)  # no `to :ports`, source port >= 1024
ISN_CLOCK_SHIFT: Final = 6  # seq_scale(): ns >> 6 (a 64 ns clock, ref 1.5)
MIN_ROUND: Final = 16  # "if (attempts >= range_size || attempts < 16) return"
JHASH_INITVAL: Final = 0xDEADBEEF  # include/linux/jhash.h

OriginalTuple = tuple[str, int, str, int]  # client ip, client port, server ip, server port


@dataclass(slots=True)
class CtEntry:
    """One tracked connection: its translated port and where it is in its life."""

    key: OriginalTuple
    tport: int
    td_end: int  # the client's highest sequence end seen (u32)
    closed_at: int | None = None  # when it entered TIME_WAIT (the final ACK)
    expires: int | None = None
    dead: bool = False

    def closing(self, now: int) -> bool:
        """TIME_WAIT (or CLOSE): what nf_nat_may_kill() accepts."""
        return self.closed_at is not None and now >= self.closed_at


@dataclass(frozen=True, slots=True)
class SynVerdict:
    """What the gateway did with a SYN: its translated port, or a drop."""

    accepted: bool
    tport: int | None = None
    evicted: int = 0  # closing entries killed to free the port (6.5+)
    reopened: bool = False  # the SYN killed its own tuple's TIME_WAIT entry
    probes: int = 0


@dataclass
class NatCounters:
    """/proc/net/stat/nf_conntrack columns this model moves, and what it saw."""

    insert_failed: int = 0
    drop: int = 0
    evicted: int = 0
    reopened: int = 0
    kept_port: int = 0


@dataclass
class NatGateway:
    """The conntrack/NAT state of one masquerading namespace toward its destinations.

    Args:
        port_range: the rule's `to :lo-hi` (default 1024-65535).
        random_fully: `random` or `random-fully` (skip keeping the client's port).
        time_wait: nf_conntrack_tcp_timeout_time_wait in ns.
        evict: the 6.5+ eviction of closing entries (False: kernels before 6.5).
        rng: the randomness (search offsets, the ISN key).
    """

    rng: random.Random
    port_range: tuple[int, int] = NAT_DEFAULT_RANGE
    random_fully: bool = False
    time_wait: int = CT_TIME_WAIT
    evict: bool = True
    counters: NatCounters = field(default_factory=NatCounters)

    def __post_init__(self) -> None:
        lo, hi = self.port_range
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f"port_range {lo}-{hi}: need 1 <= lo <= hi <= 65535")
        self._secret = self.rng.getrandbits(128).to_bytes(16, "big")
        self.by_key: dict[OriginalTuple, CtEntry] = {}
        self.by_reply: dict[tuple[str, int, int], CtEntry] = {}
        # Closed entries by expiry. A heap, not a queue in close order: seeded entries and a
        # changed timeout make close order and expiry order differ.
        self._expiry: list[tuple[int, int, CtEntry]] = []
        self._pushed = 0
        self._held: Counter[tuple[str, int]] = Counter()  # live entries per (dst, dport)
        self._closing: Counter[tuple[str, int]] = Counter()  # of those, closed ones

    # -- sequence numbers ---------------------------------------------------------------------

    def isn(self, key: OriginalTuple, now: int) -> int:
        """The client's ISN for this four-tuple at `now` (keyed hash + 64 ns clock, u32)."""
        h = hashlib.blake2b(repr(key).encode(), digest_size=4, key=self._secret)
        return (int.from_bytes(h.digest(), "big") + (now >> ISN_CLOCK_SHIFT)) & 0xFFFFFFFF

    # -- the table --------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.port_range[1] - self.port_range[0] + 1

    def _alive(self, e: CtEntry | None, now: int) -> CtEntry | None:
        if e is None or e.dead:
            return None
        if e.expires is not None and e.expires <= now:  # nf_ct_is_expired(): reaped here
            self._kill(e)
            return None
        return e

    def _kill(self, e: CtEntry) -> None:
        if e.dead:
            return
        e.dead = True
        if self.by_key.get(e.key) is e:
            del self.by_key[e.key]
        rk = (e.key[2], e.key[3], e.tport)
        if self.by_reply.get(rk) is e:
            del self.by_reply[rk]
        dest = (e.key[2], e.key[3])
        self._held[dest] -= 1
        if e.closed_at is not None:
            self._closing[dest] -= 1

    def expire(self, now: int) -> None:
        """Drop every entry whose TIME_WAIT ended at or before `now` (the gc worker)."""
        q = self._expiry
        while q and (q[0][2].dead or q[0][0] <= now):
            e = heapq.heappop(q)[2]
            if not e.dead:
                self._kill(e)

    def held(self, dst: str, dport: int) -> int:
        """Translated ports held toward (dst, dport), live entries only (call expire() first)."""
        return self._held[(dst, dport)]

    def entries(self) -> int:
        return len(self.by_key)

    def time_wait_entries(self, now: int) -> int:
        """Entries closed (TIME_WAIT) and not reaped (call expire() first for live ones only)."""
        return sum(self._closing.values())

    def _schedule(self, e: CtEntry) -> None:
        assert e.expires is not None
        self._pushed += 1
        heapq.heappush(self._expiry, (e.expires, self._pushed, e))

    def seed(self, now: int, key: OriginalTuple, tport: int, *, td_end: int,
             left: int | None) -> None:  # fmt: skip
        """An entry a capture found at `now`: open (`left` None: it stays until closed) or
        closed with `left` ns of its conntrack timer to run (conntrack keeps the timer an entry
        got at its last packet: a later change of the timeout sysctl does not move it,
        nf_ct_refresh_acct() in nf_tcp_packet())."""
        lo, hi = self.port_range
        if not lo <= tport <= hi:
            raise ValueError(f"seed: port {tport} outside the range {lo}-{hi}")
        e = CtEntry(key=key, tport=tport, td_end=td_end & 0xFFFFFFFF)
        self.by_key[key] = e
        self.by_reply[(key[2], key[3], tport)] = e
        self._held[(key[2], key[3])] += 1
        if left is not None:
            e.closed_at = now
            e.expires = now + left
            self._closing[(key[2], key[3])] += 1
            self._schedule(e)

    # -- packets ---------------------------------------------------------------------------

    def syn(self, now: int, key: OriginalTuple, seq_end: int) -> SynVerdict:
        """A client's first SYN for `key` with td_end `seq_end` (ISN + 1); see the theory."""
        reopened = False
        old = self._alive(self.by_key.get(key), now)
        if old is not None:
            if not old.closing(now):
                return SynVerdict(accepted=True, tport=old.tport)  # a retransmission
            self._kill(old)  # tcp_packet(): reopen a closed connection, NF_REPEAT
            self.counters.reopened += 1
            reopened = True
        _src, sport, dst, dport = key
        lo, hi = self.port_range
        if not self.random_fully and lo <= sport <= hi and self._free(now, dst, dport, sport):
            self.counters.kept_port += 1
            return self._insert(now, key, sport, seq_end, 0, reopened, 1)
        size = hi - lo + 1
        attempts = min(size, NF_NAT_MAX_ATTEMPTS)
        dest = (dst, dport)
        self.expire(now)  # reaped now or at lookup: the same to the search
        full = self._held[dest] >= size
        if full and not (self.evict and self._closing[dest]):
            return self._full(attempts, size, reopened)
        off = self.rng.getrandbits(16)
        probes = 0
        while True:
            # With every port held, a probe before the eviction window finds nothing: start
            # at the window (the same outcome, a quarter of the probes of a 128-round).
            first = max(attempts - NF_NAT_HARDER_THRESH, 0) if full else 0
            probes += first
            for i in range(first, attempts):
                port = lo + (off + i) % size
                probes += 1
                holder = self._alive(self.by_reply.get((dst, dport, port)), now)
                if holder is None:
                    return self._insert(now, key, port, seq_end, 0, reopened, probes)
                if (
                    self.evict
                    and attempts - i <= NF_NAT_HARDER_THRESH
                    and holder.closing(now)
                    and 0 < (seq_end - holder.td_end) & 0xFFFFFFFF < 0x80000000
                ):  # nf_seq_has_advanced(): (s32)(new - old) > 0
                    self._kill(holder)
                    self.counters.evicted += 1
                    return self._insert(now, key, port, seq_end, 1, reopened, probes)
            if attempts >= size or attempts < MIN_ROUND:
                break
            attempts //= 2
            off = self.rng.getrandbits(16)
        self.counters.insert_failed += 1
        self.counters.drop += 1
        return SynVerdict(accepted=False, reopened=reopened, probes=probes)

    def _full(self, attempts: int, size: int, reopened: bool) -> SynVerdict:
        """Every port held and none evictable: the search below fails whatever its offsets.
        The same outcome without the probes; the same draws from the rng, so a run is the same
        run either way."""
        probes = 0
        while True:
            self.rng.getrandbits(16)
            probes += attempts
            if attempts >= size or attempts < MIN_ROUND:
                break
            attempts //= 2
        self.counters.insert_failed += 1
        self.counters.drop += 1
        return SynVerdict(accepted=False, reopened=reopened, probes=probes)

    def _free(self, now: int, dst: str, dport: int, port: int) -> bool:
        return self._alive(self.by_reply.get((dst, dport, port)), now) is None

    def _insert(self, now: int, key: OriginalTuple, port: int, seq_end: int, evicted: int,
                reopened: bool, probes: int) -> SynVerdict:  # fmt: skip
        e = CtEntry(key=key, tport=port, td_end=seq_end)
        self.by_key[key] = e
        self.by_reply[(key[2], key[3], port)] = e
        self._held[(key[2], key[3])] += 1
        return SynVerdict(accepted=True, tport=port, evicted=evicted, reopened=reopened,
                          probes=probes)  # fmt: skip

    def close(self, now: int, key: OriginalTuple, td_end: int) -> None:
        """The connection's last packet (the final ACK) at `now`: TIME_WAIT for time_wait."""
        e = self._alive(self.by_key.get(key), now)
        if e is None:
            return
        e.td_end = td_end & 0xFFFFFFFF
        if e.closed_at is None:
            self._closing[(key[2], key[3])] += 1
        e.closed_at = now
        e.expires = now + self.time_wait
        self._schedule(e)


# -- several translated addresses: find_best_ips_proto() ------------------------------------------


def _rol32(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF


# include/linux/jhash.h as data: __jhash_mix() steps "x -= z; x ^= rol32(z, r); z += y" and
# __jhash_final() steps "z ^= y; z -= rol32(y, r)", over the state v = [a, b, c].
_A, _B, _C = 0, 1, 2
_MIX: Final = ((_A, _C, _B, 4), (_B, _A, _C, 6), (_C, _B, _A, 8),
               (_A, _C, _B, 16), (_B, _A, _C, 19), (_C, _B, _A, 4))  # fmt: skip
_FINAL: Final = ((_C, _B, 14), (_A, _C, 11), (_B, _A, 25), (_C, _B, 16), (_A, _C, 4),
                 (_B, _A, 14), (_C, _B, 24))  # fmt: skip


def jhash2(words: tuple[int, ...], initval: int) -> int:
    """jhash2() of include/linux/jhash.h: Bob Jenkins' lookup3 over u32 words."""
    m = 0xFFFFFFFF
    v = [(JHASH_INITVAL + (len(words) << 2) + initval) & m] * 3
    k = list(words)
    while len(k) > 3:
        for i in range(3):
            v[i] = (v[i] + k[i]) & m
        for x, z, y, r in _MIX:
            v[x] = ((v[x] - v[z]) & m) ^ _rol32(v[z], r)
            v[z] = (v[z] + v[y]) & m
        k = k[3:]
    if not k:
        return v[_C]
    for i, w in enumerate(k):  # "case 3: c += k[2]; case 2: b += k[1]; case 1: a += k[0]"
        v[i] = (v[i] + w) & m
    for z, y, r in _FINAL:
        v[z] = ((v[z] ^ v[y]) - _rol32(v[y], r)) & m
    return v[_C]


def _words(addr: str) -> tuple[int, int, int, int]:
    """union nf_inet_addr as four u32 in a little-endian CPU's order (x86, arm64): an IPv4
    address is all[0], the rest zero (nf_ct_invert_tuple() clears the tuple first)."""
    ip = ipaddress.ip_address(addr)
    raw = ip.packed if ip.version == 6 else ip.packed + bytes(12)
    return tuple(int.from_bytes(raw[i : i + 4], "little") for i in range(0, 16, 4))  # type: ignore[return-value]


def snat_address_index(client: str, dst: str, n: int, *, persistent: bool = False,
                       zone: int = 0) -> int:  # fmt: skip
    """Which of `n` consecutive translated addresses (`snat to A-B`, the range differing only
    in its last 32 bits) the kernel gives connections from `client` to `dst`: 0..n-1.

    find_best_ips_proto(): j = jhash2(client address, 4 words, persistent ? 0 : dst word
    [max] ^ zone); then per address word i, min_i + reciprocal_scale(j, dist_i), and j ^=
    dst word i after each (not with `persistent`). Every word but the last has dist 1, so the
    choice is reciprocal_scale() of j at the last word: (j * n) >> 32."""
    if n < 1:
        raise ValueError(f"n={n}: need at least one address")
    if n == 1:
        return 0  # "Fast path: only one choice."
    src, dw = _words(client), _words(dst)
    last = 0 if ipaddress.ip_address(client).version == 4 else 3
    j = jhash2(src, 0 if persistent else (dw[last] ^ zone) & 0xFFFFFFFF)
    if not persistent:
        for i in range(last):
            j ^= dw[i]
    return (j * n) >> 32


__all__ = ["CT_TIME_WAIT", "NF_NAT_HARDER_THRESH", "NF_NAT_MAX_ATTEMPTS", "NatGateway",
           "SynVerdict", "jhash2", "snat_address_index"]  # fmt: skip
