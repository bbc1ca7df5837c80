"""The one money module: integer fen (分), CNY; rates in basis points, floored once, here."""
from __future__ import annotations

import re

from flask_babel import gettext

BP_SCALE = 10_000
_AMOUNT_RE = re.compile(r"^\s*(-)?\s*(?:¥|￥)?\s*(\d{1,12})(?:\.(\d{1,2}))?\s*(?:元)?\s*$")  # i18n-keep: input


def apply_rate(amount_fen: int, *rates_bp: int) -> int:
    """amount × rate₁ × rate₂ … in basis points, floored once (never per step)."""
    numerator = int(amount_fen)
    denominator = 1
    for rate in rates_bp:
        numerator *= int(rate)
        denominator *= BP_SCALE
    return numerator // denominator


def parse_yuan(text: str) -> int:
    """'12.5' / '¥12.50' / '12元' -> 1250 fen. Raises ValueError with a readable message."""
    match = _AMOUNT_RE.match(str(text))
    if not match:
        raise ValueError(gettext("金额格式不正确: %(value)s（例如 12.50）", value=repr(text)))
    sign, whole, frac = match.groups()
    fen = int(whole) * 100 + int((frac or "0").ljust(2, "0"))
    return -fen if sign else fen


def format_fen(fen: int | None, symbol: bool = True) -> str:
    """1250 -> '¥12.50'."""
    if fen is None:
        return ""
    sign = "-" if fen < 0 else ""
    whole, frac = divmod(abs(int(fen)), 100)
    return f"{sign}{'¥' if symbol else ''}{whole:,}.{frac:02d}"


def format_bp(bp: int | None) -> str:
    """9500 -> '95.00%'."""
    if bp is None:
        return ""
    return f"{bp / 100:.2f}%"
