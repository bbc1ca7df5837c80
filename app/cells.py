"""Spreadsheet cells that stay data: what an export writes never runs as a formula on a reader's computer.

Every CSV and XLSX export writes its cells through here: `safe_row` for a CSV row, `write_xlsx_row` for an XLSX
row (strings as string cells, so even a workbook opened with formula parsing writes no formula).
"""
from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """Text starting with = + - @ tab or CR gets a leading apostrophe (an agent's display name such as
    '=HYPERLINK(...)' stays text); numbers and empty cells pass as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def safe_row(values: Iterable[Any]) -> list[Any]:
    """A CSV row (header rows too) of formula-safe cells."""
    return [safe_cell(v) for v in values]


def write_xlsx_row(sheet, row: int, values: Iterable[Any], cell_format=None) -> None:
    """One XlsxWriter row: numbers as numbers, empty as blank, everything else as a string cell of its
    formula-safe text (write_string never makes a formula, whatever the workbook's strings_to_formulas)."""
    for col, value in enumerate(values):
        if value is None or value == "":
            sheet.write_blank(row, col, None, cell_format)
        elif isinstance(value, bool):
            sheet.write_string(row, col, str(value), cell_format)
        elif isinstance(value, int | float):
            sheet.write_number(row, col, value, cell_format)
        elif isinstance(value, datetime | date):
            sheet.write_string(row, col, value.isoformat(), cell_format)
        else:
            sheet.write_string(row, col, safe_cell(str(value)), cell_format)
