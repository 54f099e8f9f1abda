"""32-bit sequence and timestamp arithmetic (RFC 9293 §3.4, RFC 7323 §5.2).

Sequence numbers and TSvals live modulo 2**32; "a before b" means the signed 32-bit distance
from a to b is positive, as the kernel's `before()`/`after()` (include/net/tcp.h) compute it.
"""

from __future__ import annotations

from typing import Final

MOD: Final = 1 << 32
MASK: Final = MOD - 1
_HALF: Final = 1 << 31


def seq_add(a: int, n: int) -> int:
    """a + n modulo 2**32."""
    return (a + n) & MASK


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b in [-2**31, 2**31): what `(s32)(a - b)` gives in C."""
    d = (a - b) & MASK
    return d - MOD if d >= _HALF else d


def seq_lt(a: int, b: int) -> bool:
    """a is before b (K include/net/tcp.h before(): (s32)(a - b) < 0)."""
    return ((a - b) & MASK) >= _HALF


def seq_gt(a: int, b: int) -> bool:
    """a is after b: the kernel defines after(a, b) as before(b, a), so at a distance of exactly
    2**31 both before() and after() are true; we match that bit for bit."""
    return ((b - a) & MASK) >= _HALF


def seq_le(a: int, b: int) -> bool:
    """!after(a, b)."""
    return ((b - a) & MASK) < _HALF


def seq_ge(a: int, b: int) -> bool:
    """!before(a, b)."""
    return ((a - b) & MASK) < _HALF


def seq_in_window(s: int, lo: int, size: int) -> bool:
    """lo <= s < lo + size in sequence space."""
    return 0 <= ((s - lo) & MASK) < size
