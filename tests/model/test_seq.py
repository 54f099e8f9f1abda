"""Sequence arithmetic modulo 2**32 (RFC 9293 §3.4; K include/net/tcp.h before()/after())."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from timewait.model.seq import (
    MASK,
    seq_add,
    seq_diff,
    seq_ge,
    seq_gt,
    seq_in_window,
    seq_le,
    seq_lt,
)

u32 = st.integers(0, MASK)
step = st.integers(1, 2**31 - 1)


def test_after_wrap_is_after() -> None:
    """2**32 - 1 is before 0: one step across the wrap."""
    assert seq_lt(MASK, 0) and seq_gt(0, MASK)
    assert seq_add(MASK, 1) == 0
    assert seq_diff(5, MASK - 4) == 10


@given(u32, step)
def test_adding_less_than_half_the_space_is_always_after(a: int, n: int) -> None:
    b = seq_add(a, n)
    assert seq_gt(b, a) and seq_lt(a, b) and seq_ge(b, a) and seq_le(a, b)
    assert seq_diff(b, a) == n


@given(u32)
def test_equal_is_neither_before_nor_after(a: int) -> None:
    assert not seq_lt(a, a) and not seq_gt(a, a) and seq_le(a, a) and seq_ge(a, a)


@given(u32, st.integers(1, 2**20), st.integers(0, 2**20))
def test_window_membership_across_wrap(lo: int, size: int, off: int) -> None:
    s = seq_add(lo, off)
    assert seq_in_window(s, lo, size) == (off < size)


def test_half_space_distance_is_both_before_and_after_like_the_kernel() -> None:
    """include/net/tcp.h: before(a,b) = (s32)(a-b) < 0, after(a,b) = before(b,a); at 2**31 both
    hold."""
    a, b = 0, 2**31
    assert seq_lt(a, b) and seq_gt(a, b)
