"""Numbers as people read them in tables: thousands separators, '-' for none, yes/no."""

from __future__ import annotations

from typing import Any


def format_value(value: Any) -> str:
    """Human form of one result value."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)
