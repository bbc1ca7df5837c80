"""Spreadsheet cells that stay data: what an export writes never runs as a formula on a reader's computer."""
from __future__ import annotations

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value):
    """Text starting with = + - @ tab or CR gets a leading apostrophe (an agent's display name such as
    '=HYPERLINK(...)' stays text); numbers and empty cells pass as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value
