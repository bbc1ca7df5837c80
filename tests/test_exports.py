"""Formula-safe exports: every CSV / XLSX export entry point writes a value starting with = + - @ tab or CR as
text (a leading apostrophe; XLSX string cells), through the real download callbacks and the CLI."""
from __future__ import annotations

import csv
import io
import json

import pytest

from app.extensions import db
from app.risk.models import RiskDecision
from dashboards import DASHBOARDS
from tests.dashboards_helpers import _dependencies, call_callback, login_as, outputs

NASTY = ["=HYPERLINK(\"http://evil.example/\",\"x\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]


def _csv(content: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(content.lstrip("\ufeff"), newline="")))


def _table_exports(client, slug: str) -> list[str]:
    """Every 导出 CSV of a dashboard: the outputs "<table>-download.data" of its callbacks."""
    found = []
    for dep in _dependencies(client, slug):
        for output in dep["output"].strip(".").split("..."):
            table = output.split("-download.data")[0]
            if output.endswith("-download.data") and any(st["id"] == table for st in dep.get("state", [])):
                found.append(table)
    return found


@pytest.mark.parametrize("slug", [d.slug for d in DASHBOARDS])
def test_every_dashboard_table_export_writes_formulas_as_text(app, f, slug):
    client, _user = login_as(app, f, "Admin")
    tables = _table_exports(client, slug)
    assert tables, f"no table export found on /dashboards/{slug}/"
    rows = [{"c": value, "n": 5} for value in NASTY] + [{"c": "plain", "n": -3}]
    for table in tables:
        columns = [{"id": "c", "name": "=列"}, {"id": "n", "name": "数"}]
        download = outputs(call_callback(client, slug, f"{table}-download.data", {
            f"{table}-export.n_clicks": 1, f"{table}.data": rows, f"{table}.columns": columns},
            changed=[f"{table}-export.n_clicks"]))[f"{table}-download.data"]
        parsed = _csv(download["content"])
        assert parsed[0] == ["'=列", "数"], (slug, table)
        assert [r[0] for r in parsed[1:]] == ["'" + v for v in NASTY] + ["plain"], (slug, table)
        assert [r[1] for r in parsed[1:]] == ["5"] * len(NASTY) + ["-3"]  # numbers stay numbers


def _unescape(value: str) -> str:
    """XLSX stores a CR as the escape _x000D_ (openpyxl hands it back as is)."""
    return value.replace("_x000D_", "\r")


@pytest.fixture
def nasty_decisions(app):
    """Risk decisions whose free-text parts (a rule's reason, an order number, a masked device) read as formulas."""
    for i, value in enumerate(NASTY):
        db.session.add(RiskDecision(
            event="checkout", outcome="block", stage="rule", score=1,
            hits=json.dumps([{"kind": "rule", "name": "r", "reason": value}]), features="{}",
            subject=json.dumps({"device": value}), rule_versions="{}", order_no=value[:40], latency_us=10 + i))
    db.session.commit()


def test_risk_log_downloads_write_formulas_as_text(app, f, nasty_decisions, tmp_path):
    from openpyxl import load_workbook

    client, _user = login_as(app, f, "Manager")
    from app.clock import business_today

    today = business_today().isoformat()
    download = outputs(call_callback(client, "risk", "rk-log-download.data", {
        "rk-log-export.n_clicks": 1, "f-range.start_date": today, "f-range.end_date": today},
        changed=["rk-log-export.n_clicks"]))["rk-log-download.data"]
    cli = app.test_cli_runner().invoke(args=["kameng", "risk", "export", "--format", "csv"])
    assert cli.exit_code == 0, cli.output
    for content in (download["content"], cli.stdout):
        parsed = _csv(content)
        header = parsed[0]
        mine = [r for r in parsed[1:] if r[header.index("事件")] == "checkout"]  # not the manager's login
        for column in ("原因", "订单号", "对象 device（脱敏）"):
            assert [r[header.index(column)] for r in mine] == ["'" + v for v in NASTY], column

    target = tmp_path / "risk.xlsx"
    assert app.test_cli_runner().invoke(
        args=["kameng", "risk", "export", "--format", "xlsx", "--output", str(target)]).exit_code == 0
    sheet = load_workbook(target).worksheets[0]
    header = [c.value for c in sheet[1]]
    reasons = [row[header.index("原因")] for row in sheet.iter_rows(min_row=2)
               if row[header.index("事件")].value == "checkout"]
    assert [_unescape(c.value) for c in reasons] == ["'" + v for v in NASTY]
    assert all(c.data_type == "s" for c in reasons)
    assert all(cell.data_type != "f" for row in sheet.iter_rows() for cell in row)


def test_write_xlsx_row_writes_strings_as_string_cells_even_when_formulas_are_parsed(tmp_path):
    """The XLSX helper does not depend on the workbook's options: with strings_to_formulas on (XlsxWriter's
    default) a '=...' value is still a string cell."""
    import xlsxwriter
    from openpyxl import load_workbook

    from app.cells import write_xlsx_row

    path = tmp_path / "t.xlsx"
    book = xlsxwriter.Workbook(str(path))
    write_xlsx_row(book.add_worksheet(), 0, [*NASTY, 7, None, ""])
    book.close()
    row = next(load_workbook(path).worksheets[0].iter_rows())
    assert [_unescape(c.value) for c in row[:len(NASTY)]] == ["'" + v for v in NASTY]
    assert all(c.data_type == "s" for c in row[:len(NASTY)]) and row[len(NASTY)].value == 7
