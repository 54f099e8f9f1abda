"""Text that is safe to print: no control characters reach the terminal.

A value read from the kernel or from a user (a namespace name may hold a tab or an escape
sequence: `ip netns add` takes any file name) is shown with its control characters escaped
(`\\t`, `\\x1b`), so a line stays one line and the terminal is never driven by data.
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable(text: str) -> str:
    """`text` with every control character (Unicode category C*) escaped."""
    if text.isprintable():
        return text
    return "".join(
        _NAMED.get(ch, f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        if unicodedata.category(ch).startswith("C")
        else ch
        for ch in text
    )
