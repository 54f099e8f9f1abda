"""timewait.model.tcp: the window test both a request socket and a minisocket apply."""

from __future__ import annotations

import pytest

from timewait.model.seq import MASK
from timewait.model.tcp import in_window

# A window [1000, 2000): (seq, end_seq, acceptable?) as tcp_in_window() answers.
CASES = [
    (1000, 1000, True),  # empty at the left edge
    (1000, 1100, True),  # data at the left edge
    (900, 1000, False),  # old data ending at the left edge
    (900, 1001, True),  # old data overlapping the window
    (1999, 2100, True),  # starts inside, runs past the right edge
    (2000, 2000, True),  # empty at the right edge
    (2000, 2001, False),  # data at the right edge: beyond the window
    (2500, 2600, False),  # beyond the window
]


@pytest.mark.parametrize(("seq", "end_seq", "acceptable"), CASES)
def test_tcp_in_window(seq: int, end_seq: int, acceptable: bool) -> None:
    assert in_window(seq, end_seq, 1000, 2000) is acceptable


def test_tcp_in_window_across_the_sequence_wrap() -> None:
    left = MASK - 99  # the window [2**32 - 100, 900) wraps
    assert in_window(MASK - 10, 5, left, 900)
    assert in_window(left, left, left, 900)
    assert not in_window(MASK - 200, MASK - 100, left, 900)
