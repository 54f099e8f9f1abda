"""Local ports: connect()'s ephemeral port search and bind()'s conflict rules, as Linux 6.18 does.

Theory of operation
-------------------
One `PortTable` per host (per network namespace) holds *bind buckets*, one per local port in
use, exactly like the kernel's bhash (K net/ipv4/inet_hashtables.c). A bucket lists its owners:
full sockets and minisockets (TIME_WAIT and orphaned FIN_WAIT2 both keep the bucket reference,
ref 1.2). A bucket remembers who created it, in the kernel's own encoding: `fastreuse ==
fastreuseport == -1` for a bucket created by connect(); anything >= 0 once bind()/listen() has
touched it (K inet_connection_sock.c `inet_csk_update_fastreuse()`). That one bit splits the two
worlds:

* connect() (`connect_port`, K `__inet_hash_connect()`, ref 7.2) never shares a port held by a
  bind() user, and shares a connect-created port freely as long as the four-tuple is unique. The
  four-tuple check lives with the caller (it owns the established hash and the TIME_WAIT
  takeover rules of ref 3) and is passed in as a pure `check(port) -> bool`; like the kernel,
  which kills a reusable TIME_WAIT only after the new socket is hashed, the caller takes the
  chosen port's TIME_WAIT over once the search has returned.
* bind() (`bind`, K `inet_csk_get_port()`, ref 8) checks every owner of the port with
  `inet_bind_conflict()` + address overlap (`inet_rcv_saddr_equal()`), whoever created the bucket.

The search order is kernel-exact: RFC 6056 Algorithm 4 ("double hash") with a 2**16-entry
perturbation table, even ports (low's parity) first for connect(), odd first for bind(port 0),
IP_LOCAL_PORT_RANGE clamping, reserved ports skipped, ip_autobind_reuse's relaxed retry. The
only randomness is the `random.Random` passed in; `port_offset` (the keyed hash of the
destination) comes from `HostClocks.port_offset()`, computed by the caller.

Not modelled (say so rather than pretend): SO_BINDTODEVICE / VRF (every owner is on the same
device), IPV6_V6ONLY (IPv6 sockets are dual-stack, the Linux default net.ipv6.bindv6only=0),
reuseport groups (`reuseport_cb_ok` is always true), SK_FORCE_REUSE, the bucket fast paths
(`fastreuse > 0`, `sk_reuseport_match()`; they are shortcuts for the slow path used here), and
the EACCES check for ports below ip_unprivileged_port_start (the caller's business).
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Protocol

from timewait.config import KernelConfig
from timewait.errors import AddressInUse, AddressNotAvailable, InvalidArgument

# K include/net/inet_hashtables.h: fastreuseport values. -1 marks a connect()-created bucket
# (set in __inet_hash_connect()), 0/1/2 are set by inet_csk_update_fastreuse() for bind() users.
FASTREUSE_CONNECT: Final = -1
FASTREUSEPORT_ANY: Final = 1
FASTREUSEPORT_STRICT: Final = 2

# K net/ipv4/inet_hashtables.c: INET_TABLE_PERTURB_SIZE = 1 << CONFIG_INET_TABLE_PERTURB_ORDER,
# default order 16 since the 2022 hardening (commit 4c2c8f0, ref 7.2 History).
INET_TABLE_PERTURB_ORDER: Final = 16
INET_TABLE_PERTURB_SIZE: Final = 1 << INET_TABLE_PERTURB_ORDER
# K __inet_hash_connect(): `get_random_u32_below(8) * step` -- the random part of the increment.
PERTURB_RANDOM_STEPS: Final = 8

_U32: Final = 0xFFFF_FFFF
_U16: Final = 0xFFFF


class PortOwner(Protocol):
    """What the port table needs to know about a socket or minisocket holding a port.

    Full sockets and minisockets both satisfy it. `bind_addr` is the socket's rcv_saddr: the
    bound address, or the local address chosen at connect(); "0.0.0.0"/"::" are wildcards.
    A minisocket reports the flags it copied from its full socket (`tw_reuse`, `tw_reuseport`,
    K inet_timewait_sock.c `inet_twsk_alloc()`) and `is_timewait=True` for both substates.
    """

    @property
    def bind_addr(self) -> str: ...
    @property
    def reuseaddr(self) -> bool: ...
    @property
    def reuseport(self) -> bool: ...
    @property
    def uid(self) -> int: ...
    @property
    def is_listener(self) -> bool: ...
    @property
    def is_timewait(self) -> bool: ...


@dataclass(slots=True, kw_only=True, init=False)
class BindBucket:
    """One local port in use (K `struct inet_bind_bucket`); mutable state owned by PortTable.

    `fastreuse`/`fastreuseport` are the kernel's fields; the table uses them only to tell a
    connect()-created bucket (both -1) from one a bind()/listen() user touched.
    """

    port: int
    owners: list[PortOwner]
    fastreuse: int
    fastreuseport: int

    def __init__(
        self,
        *,
        port: int,
        owners: list[PortOwner] | None = None,
        fastreuse: int = FASTREUSE_CONNECT,
        fastreuseport: int = FASTREUSE_CONNECT,
    ) -> None:
        self.port = port  # written out so that mypyc compiles it (a dataclass __init__ is not)
        self.owners = [] if owners is None else owners
        self.fastreuse = fastreuse
        self.fastreuseport = fastreuseport

    @property
    def bind_held(self) -> bool:
        """True if a bind()/listen() user touched the bucket: connect() then skips the port.

        K `__inet_hash_connect()`: `if (tb->fastreuse >= 0 || tb->fastreuseport >= 0) goto
        next_port;`. The mark stays until the bucket is destroyed (last owner gone), so TIME_WAIT
        children of a listener keep its port out of connect()'s reach.
        """
        return self.fastreuse >= 0 or self.fastreuseport >= 0


# -- address overlap (K inet_connection_sock.c inet_rcv_saddr_equal(), match_wildcard=true) ----


def _parse_addr(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise InvalidArgument(f"bind(): {addr!r} is not an IP address") from None
    # K ipv6_rcv_saddr_equal(): "if both are mapped, treat as IPv4" -- a v4-mapped IPv6 address
    # is the IPv4 address for conflict purposes.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def addresses_overlap(a: str, b: str) -> bool:
    """Whether two bound addresses can receive the same packets (so they conflict on a port).

    K `inet_rcv_saddr_equal(sk, sk2, match_wildcard=true)` via `ipv4_rcv_saddr_equal()` /
    `ipv6_rcv_saddr_equal()`: equal addresses overlap; 0.0.0.0 overlaps every IPv4 address; "::"
    overlaps everything, IPv4 included, because IPv6 sockets are dual-stack by default
    (net.ipv6.bindv6only=0; IPV6_V6ONLY is not modelled); a specific IPv6 address never overlaps
    an IPv4 one, not even 0.0.0.0 (`sk2_rcv_saddr6 == NULL` for an IPv4 sk2).
    """
    x, y = _parse_addr(a), _parse_addr(b)
    if x == y:
        return True
    for p, q in ((x, y), (y, x)):
        if isinstance(p, ipaddress.IPv6Address) and p.is_unspecified:
            return True  # "::" (dual-stack) vs anything
        if (
            isinstance(p, ipaddress.IPv4Address)
            and p.is_unspecified
            and isinstance(q, ipaddress.IPv4Address)
        ):
            return True  # 0.0.0.0 vs any IPv4 (or v4-mapped) address
    return False


def bind_conflict(sk: PortOwner, sk2: PortOwner, *, relax: bool, reuseport_ok: bool) -> bool:
    """K inet_connection_sock.c `inet_bind_conflict()` (6.18), minus the address test.

    Explicit bind: relax=True, reuseport_ok=True. bind(port 0) search: relax=False (True on the
    ip_autobind_reuse retry), reuseport_ok=False. The caller still needs `addresses_overlap`.
    Ref 8: "no conflict if both have SO_REUSEADDR and sk2 is not LISTEN; otherwise no conflict
    only if both have SO_REUSEPORT and (sk2 is TIME_WAIT or has the same uid)".
    """
    if sk is sk2:
        return False
    # reuseport_cb_ok: the new socket is in no reuseport group yet (groups are joined when a
    # listener is hashed, after get_port), so `!reuseport_cb` holds.
    same_uid_or_tw = sk2.is_timewait or sk.uid == sk2.uid
    if sk.reuseaddr and sk2.reuseaddr and not sk2.is_listener:
        # Both SO_REUSEADDR, sk2 not listening: fine for an explicit bind. In the bind(0)
        # search (!relax) it is still a conflict: the kernel keeps autobind ports exclusive.
        # The relaxed retry conflicts only when both also share SO_REUSEPORT (the kernel's
        # odd-looking `!reuseport_ok && reuseport && ...` clause, kept as written).
        return not relax or (not reuseport_ok and sk.reuseport and sk2.reuseport and same_uid_or_tw)
    return not (reuseport_ok and sk.reuseport and sk2.reuseport and same_uid_or_tw)


# -- IP_LOCAL_PORT_RANGE (SOL_IP 51, Linux 6.3, ref 7.4) --------------------------------------


def parse_ip_local_port_range(value: int) -> tuple[int, int] | None:
    """Decode the IP_LOCAL_PORT_RANGE socket option value `hi << 16 | lo`.

    K net/ipv4/ip_sockglue.c `do_ip_setsockopt()`: EINVAL if lo > hi with both non-zero; one
    bound may be 0 ("no bound on that side"); 0 resets the option (returns None). The value is a
    u32, so anything outside 0..2**32-1 is EINVAL here (the kernel checks optlen == 4).
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U32:
        raise InvalidArgument(f"IP_LOCAL_PORT_RANGE: {value!r} is not a u32 (hi << 16 | lo)")
    lo, hi = value & _U16, value >> 16
    if lo and hi and lo > hi:
        raise InvalidArgument(f"IP_LOCAL_PORT_RANGE: low {lo} > high {hi}")
    if value == 0:
        return None
    return (lo, hi)


def local_port_range(config: KernelConfig, sock_range: tuple[int, int] | None) -> tuple[int, int]:
    """The range a socket's automatic port choice uses (inclusive bounds).

    K inet_connection_sock.c `inet_sk_get_local_port_range()`: start from the netns
    ip_local_port_range; each per-socket bound replaces the netns one only if it lies inside the
    (already updated) range, tested low first, then high.
    """
    lo, hi = config.ip_local_port_range
    if sock_range is not None:
        sk_lo, sk_hi = sock_range
        if lo <= sk_lo <= hi:
            lo = sk_lo
        if lo <= sk_hi <= hi:
            hi = sk_hi
    return (lo, hi)


def _describe(owner: PortOwner) -> str:
    if owner.is_timewait:
        kind = "a TIME_WAIT entry"
    elif owner.is_listener:
        kind = "a listening socket"
    else:
        kind = "a socket"
    opts = [
        n for n, on in (("SO_REUSEADDR", owner.reuseaddr), ("SO_REUSEPORT", owner.reuseport)) if on
    ]
    flags = "with " + "+".join(opts) if opts else "without SO_REUSEADDR/SO_REUSEPORT"
    return f"{kind} on {owner.bind_addr} {flags} (uid {owner.uid})"


class PortTable:
    """The bind buckets of one host / network namespace. Mutable; not thread-safe.

    Every call either succeeds and records the owner, or raises (AddressInUse,
    AddressNotAvailable, InvalidArgument) and leaves the table unchanged. Owners are compared by
    identity, so two equal frozen values are still two sockets.
    """

    def __init__(self) -> None:
        self._buckets: dict[int, BindBucket] = {}
        self._port_of: dict[int, int] = {}  # id(owner) -> port
        # K get_random_sleepable_once(table_perturb, ...): random-initialised on first use. We
        # draw one key then and derive every initial entry from it, so the table exists in full
        # without 2**16 draws and the RNG stream does not depend on which entries are touched.
        self._perturb_key: bytes | None = None
        self._perturb: dict[int, int] = {}  # entries changed since initialisation

    # -- queries ---------------------------------------------------------------------------

    @property
    def buckets(self) -> Mapping[int, BindBucket]:
        """Read-only view port -> bucket (do not mutate the buckets)."""
        return MappingProxyType(self._buckets)

    def holders(self, port: int) -> tuple[PortOwner, ...]:
        """Owners of `port` in bind order (empty if the port is unused)."""
        bucket = self._buckets.get(port)
        return tuple(bucket.owners) if bucket else ()

    def bound_by_bind(self, port: int) -> bool:
        """True if connect() would skip `port` because a bind()/listen() user holds it."""
        bucket = self._buckets.get(port)
        return bucket is not None and bucket.bind_held

    def ports_held_by_bind(self) -> frozenset[int]:
        """Ports connect() cannot use: the doctor's usable = range - reserved - these (ref 12.1)."""
        return frozenset(p for p, b in self._buckets.items() if b.bind_held)

    def port_of(self, owner: PortOwner) -> int | None:
        """The port `owner` holds, or None."""
        return self._port_of.get(id(owner))

    # -- bind() ----------------------------------------------------------------------------

    def bind(
        self,
        owner: PortOwner,
        addr: str,
        port: int,
        *,
        now: int,
        config: KernelConfig,
        rng: random.Random,
        local_range: tuple[int, int] | None = None,
        address_no_port: bool = False,
    ) -> int:
        """bind(addr, port): K af_inet.c `__inet_bind()` -> inet_connection_sock.c
        `inet_csk_get_port()`. Returns the port (0 if no port was taken, see below).

        `owner.bind_addr` must already be `addr`. Port 0 picks a free port, odd ports first
        (`inet_csk_find_open_port()`); an explicit port is checked against every owner (ref 8).
        With `address_no_port` (IP_BIND_ADDRESS_NO_PORT, ref 7.4) bind(addr, 0) records only
        the address and returns 0 without touching the table: connect() picks the port later.
        Raises AddressInUse (conflict, or no free port for port 0) and InvalidArgument (owner
        already bound, bad port/address). `now` is unused: entry points all take it (STYLE 2).
        """
        del now
        if self.port_of(owner) is not None:
            # K __inet_bind(): `if (sk->sk_state != TCP_CLOSE || inet->inet_num)` -> -EINVAL.
            raise InvalidArgument(f"bind(): socket already bound to port {self.port_of(owner)}")
        if not 0 <= port <= 65535:
            raise InvalidArgument(f"bind(): port {port} is outside 0..65535")
        _parse_addr(addr)  # validates
        if port == 0:
            if address_no_port:
                # K __inet_bind(): get_port is skipped when snum == 0 and the flag is set.
                return 0
            port = self._find_open_port(owner, config=config, rng=rng, local_range=local_range)
        else:
            # IP_BIND_ADDRESS_NO_PORT does nothing for an explicit port; reserved ports and
            # ip_local_port_range do not apply to explicit binds either (ref 7.1).
            self._check_conflict(owner, port)
        self._add_bind_owner(owner, port)
        return port

    def listen(self, owner: PortOwner, port: int) -> None:
        """Re-check the bind rules as `owner` becomes a listener (its is_listener now True).

        K inet_connection_sock.c `inet_csk_listen_start()` sets TCP_LISTEN then calls
        `get_port(sk, inet_num)` again: two SO_REUSEADDR sockets may both bind a port, but the
        second listen() then meets a LISTEN owner and fails with EADDRINUSE (ref 8: "a live
        listener still blocks SO_REUSEADDR binds"). Raises AddressInUse; state unchanged then.
        """
        if self.port_of(owner) != port:
            raise InvalidArgument(f"listen(): socket does not hold port {port}")
        self._check_conflict(owner, port)
        bucket = self._buckets[port]
        # inet_csk_update_fastreuse() with reuse = sk_reuse && state != LISTEN = false.
        bucket.fastreuse = 0
        if not owner.reuseport:
            bucket.fastreuseport = 0
        elif bucket.fastreuseport <= 0:
            bucket.fastreuseport = FASTREUSEPORT_STRICT

    def _check_conflict(self, owner: PortOwner, port: int) -> None:
        """Explicit port: K `inet_csk_bind_conflict(sk, tb, tb2, relax=true, reuseport_ok=true)`."""
        bucket = self._buckets.get(port)
        if bucket is None:
            return
        for sk2 in bucket.owners:
            if bind_conflict(owner, sk2, relax=True, reuseport_ok=True) and addresses_overlap(
                owner.bind_addr, sk2.bind_addr
            ):
                raise AddressInUse(
                    f"{owner.bind_addr}:{port} conflicts with {_describe(sk2)}: set "
                    "SO_REUSEADDR on both sockets (old and new; TIME_WAIT entries keep the old "
                    "socket's flag) and no other listener, or SO_REUSEPORT on both with one uid"
                )

    def _find_open_port(
        self,
        owner: PortOwner,
        *,
        config: KernelConfig,
        rng: random.Random,
        local_range: tuple[int, int] | None,
    ) -> int:
        """K inet_connection_sock.c `inet_csk_find_open_port()` (6.18), step by step."""
        relax = False
        while True:  # label ports_exhausted
            # SO_REUSEADDR sockets try the lower half of the range first, then the upper half
            # (`attempt_half = (sk->sk_reuse == SK_CAN_REUSE) ? 1 : 0`).
            attempt_half = 1 if owner.reuseaddr else 0
            while True:  # label other_half_scan
                low, high = local_port_range(config, local_range)
                high += 1  # [32768, 60999] -> [32768, 61000[
                if high - low < 4:
                    attempt_half = 0
                if attempt_half:
                    half = low + (((high - low) >> 2) << 1)
                    if attempt_half == 1:
                        high = half
                    else:
                        low = half
                remaining = high - low
                if remaining > 1:
                    remaining &= ~1
                # "__inet_hash_connect() favors ports having @low parity. We do the opposite
                # to not pollute connect() users": a random *odd* offset.
                offset = rng.randrange(remaining) | 1
                while True:  # label other_parity_scan
                    port = low + offset
                    for _ in range(0, remaining, 2):
                        if port >= high:
                            port -= remaining
                        if (
                            port not in config.ip_local_reserved_ports
                            and not self._autobind_conflict(owner, port, relax=relax)
                        ):
                            return port
                        port += 2
                    offset = (offset - 1) & _U32
                    if offset & 1:
                        break
                if attempt_half == 1:
                    attempt_half = 2  # "OK we now try the upper half of the range"
                    continue
                break
            if config.ip_autobind_reuse and not relax:
                # "We still have a chance to connect to different destinations" (Linux 5.7).
                relax = True
                continue
            lo, hi = local_port_range(config, local_range)
            raise AddressInUse(
                f"bind({owner.bind_addr}, 0): no free local port in {lo}-{hi} (bind(port 0) "
                "keeps ports exclusive): use IP_BIND_ADDRESS_NO_PORT so connect() picks the "
                "port, or widen net.ipv4.ip_local_port_range"
            )

    def _autobind_conflict(self, owner: PortOwner, port: int, *, relax: bool) -> bool:
        """`inet_csk_bind_conflict(sk, tb, tb2, relax, reuseport_ok=false)` for one candidate."""
        bucket = self._buckets.get(port)
        if bucket is None:
            return False
        return any(
            bind_conflict(owner, sk2, relax=relax, reuseport_ok=False)
            and addresses_overlap(owner.bind_addr, sk2.bind_addr)
            for sk2 in bucket.owners
        )

    def _add_bind_owner(self, owner: PortOwner, port: int) -> None:
        """K `inet_csk_update_fastreuse()` then `inet_bind_hash()`."""
        bucket = self._buckets.get(port)
        reuse = owner.reuseaddr and not owner.is_listener
        if bucket is None or not bucket.owners:
            bucket = BindBucket(
                port=port,
                fastreuse=int(reuse),
                fastreuseport=FASTREUSEPORT_ANY if owner.reuseport else 0,
            )
            self._buckets[port] = bucket
        else:
            if not reuse:
                bucket.fastreuse = 0
            if not owner.reuseport:
                bucket.fastreuseport = 0
            elif bucket.fastreuseport <= 0:
                # !sk_reuseport_match(): a connect-created (-1) or non-reuseport (0) bucket
                # becomes STRICT. Either way the bucket is bind-held from now on.
                bucket.fastreuseport = FASTREUSEPORT_STRICT
        bucket.owners.append(owner)
        self._port_of[id(owner)] = port

    # -- connect() -------------------------------------------------------------------------

    def connect_port(
        self,
        owner: PortOwner,
        laddr: str,
        raddr: str,
        rport: int,
        *,
        now: int,
        config: KernelConfig,
        port_offset: int,
        rng: random.Random,
        check: Callable[[int], bool],
        local_range: tuple[int, int] | None = None,
    ) -> int:
        """Pick the local port for an autobinding connect(): K `__inet_hash_connect()` (ref 7.2).

        Only for a socket without a port (ref 7.2 step 1: a bound socket only needs the
        four-tuple check, which is the caller's). `port_offset` is
        `HostClocks.port_offset(laddr, raddr, rport, now)`. `check(port)` must return True iff
        (laddr, port, raddr, rport) is free in the established hash, or held by a TIME_WAIT that
        `tcp_twsk_unique()` lets connect() take over (`__inet_check_established()`, ref 3), and
        must change nothing; it is called only for ports with no bucket or a connect-created
        one, in scan order, and the first True wins (free ports are not preferred over reusable
        TIME_WAITs). Registers `owner` and returns the port; the caller then takes the
        TIME_WAIT over and releases its port (`release(tw, port)`), as __inet_hash_connect()
        does after hashing. Raises AddressNotAvailable (table unchanged) when no port fits.
        """
        del now
        if self.port_of(owner) is not None:
            raise InvalidArgument(f"connect(): socket already holds port {self.port_of(owner)}")
        # Step 2: range, clamped by IP_LOCAL_PORT_RANGE; with a per-socket range every port is
        # scanned in order (step 1, no parity: Linux 6.8), otherwise parity passes (step 2).
        local_ports = local_range is not None
        low, high = local_port_range(config, local_range)
        step = 1 if local_ports else 2
        high += 1  # [32768, 60999] -> [32768, 61000[
        remaining = high - low
        if not local_ports and remaining > 1:
            remaining &= ~1  # rounded down to even: an odd-sized range misses one port per scan

        # Steps 3-4: RFC 6056 §3.3.4 Algorithm 4 (double hash). u32 arithmetic as in C.
        index = port_offset & (INET_TABLE_PERTURB_SIZE - 1)
        offset = ((self._perturb_get(index, rng) + (port_offset >> 32)) & _U32) % remaining
        # Step 5: "In first pass we try ports of @low parity. inet_csk_get_port() does the
        # opposite choice."
        if not local_ports:
            offset &= ~1
        while True:  # label other_parity_scan
            port = low + offset
            for i in range(0, remaining, step):
                if port >= high:
                    port -= remaining
                if self._connect_candidate_ok(port, config, check):
                    self._connect_success(owner, port, index, i, step, rng)
                    return port
                port += step
            if not local_ports:
                offset += 1
                if offset & 1 and remaining > 1:
                    continue
            break
        # Step 8: -EADDRNOTAVAIL (bind(port 0) would say EADDRINUSE instead).
        lo, hi = low, high - 1
        raise AddressNotAvailable(
            f"connect() from {laddr} to {raddr}:{rport}: every local port in {lo}-{hi} already "
            "has a connection to this destination (or is reserved / held by bind()): reuse "
            "connections, widen net.ipv4.ip_local_port_range, add source addresses, or enable "
            "tcp_tw_reuse (timestamps needed)"
        )

    def _connect_candidate_ok(
        self, port: int, config: KernelConfig, check: Callable[[int], bool]
    ) -> bool:
        """Step 6 for one candidate port."""
        if port in config.ip_local_reserved_ports:
            return False  # inet_is_local_reserved_port()
        bucket = self._buckets.get(port)
        if bucket is not None and bucket.bind_held:
            return False  # "connect never shares" a bind()/listen() user's port
        # No bucket, or a connect-created one: "Does not bother with rcv_saddr checks, because
        # the established check is already unique enough."
        return check(port)

    def _connect_success(
        self, owner: PortOwner, port: int, index: int, i: int, step: int, rng: random.Random
    ) -> None:
        """Step 7: bucket bookkeeping and the perturbation update."""
        bucket = self._buckets.get(port)
        if bucket is None:
            # inet_bind_bucket_create(); tb->fastreuse = tb->fastreuseport = -1.
            bucket = BindBucket(port=port)
            self._buckets[port] = bucket
        # "add a little bit of randomness to the next source port ... on low contention the
        # randomness is maximal and on high contention it may be inexistent."
        i = max(i, rng.randrange(PERTURB_RANDOM_STEPS) * step)
        self._perturb[index] = (self._perturb_get(index, rng) + i + step) & _U32
        # inet_bind_hash(): joins without inet_csk_update_fastreuse(), flags stay -1/-1.
        bucket.owners.append(owner)
        self._port_of[id(owner)] = port

    def _perturb_get(self, index: int, rng: random.Random) -> int:
        if index in self._perturb:
            return self._perturb[index]
        if self._perturb_key is None:
            self._perturb_key = rng.getrandbits(128).to_bytes(16, "little")
        h = hashlib.blake2b(index.to_bytes(4, "little"), digest_size=4, key=self._perturb_key)
        return int.from_bytes(h.digest(), "little")

    # -- release / hand-over ---------------------------------------------------------------

    def release(self, owner: PortOwner, port: int) -> None:
        """Drop `owner` from `port`; the bucket goes when its last owner does.

        K `inet_put_port()` (close) / `inet_twsk_bind_unhash()` (TIME_WAIT expiry or takeover):
        `inet_bind_bucket_destroy()` once the owner list is empty. InvalidArgument if `owner`
        does not hold `port` (a bug in the caller).
        """
        bucket = self._buckets.get(port)
        if bucket is None or self._port_of.get(id(owner)) != port:
            raise InvalidArgument(f"release(): socket does not hold port {port}")
        bucket.owners[:] = [o for o in bucket.owners if o is not owner]
        del self._port_of[id(owner)]
        if not bucket.owners:
            del self._buckets[port]

    def inherit(self, parent: PortOwner, child: PortOwner) -> int:
        """An accepted child joins its listener's bucket, unchecked; returns the port.

        K inet_hashtables.c `__inet_inherit_port()`: `inet_bind_hash(child, tb, tb2, port)`
        without a conflict check or a flag update (a child would otherwise conflict with its
        own LISTEN parent). The child's TIME_WAIT later keeps the port (ref 1.2, `transfer`).
        InvalidArgument if `parent` holds no port or `child` already holds one.
        """
        port = self.port_of(parent)
        if port is None:
            raise InvalidArgument("inherit(): the listener holds no port")
        if self.port_of(child) is not None:
            raise InvalidArgument("inherit(): the child already holds a port")
        self._buckets[port].owners.append(child)
        self._port_of[id(child)] = port
        return port

    def transfer(self, old_owner: PortOwner, new_owner: PortOwner, port: int) -> None:
        """Hand `old_owner`'s place in the bucket to `new_owner`; the bucket flags do not change.

        A closing socket replaced by its minisocket keeps the bind-bucket reference (ref 1.2,
        K tcp_minisocks.c `tcp_time_wait()` -> `inet_twsk_hashdance_schedule()`), so the port
        stays owned and a listener's port stays bind-held. InvalidArgument if `old_owner` does
        not hold `port` or `new_owner` already holds a port.
        """
        bucket = self._buckets.get(port)
        if bucket is None or self._port_of.get(id(old_owner)) != port:
            raise InvalidArgument(f"transfer(): socket does not hold port {port}")
        if self._port_of.get(id(new_owner)) is not None:
            raise InvalidArgument("transfer(): the new owner already holds a port")
        for k, o in enumerate(bucket.owners):
            if o is old_owner:
                bucket.owners[k] = new_owner
                break
        del self._port_of[id(old_owner)]
        self._port_of[id(new_owner)] = port
