"""The risk log export (风控日志导出) for auditors: every stored decision as one row, CSV or XLSX, streamed.

`rows(since, until)` reads risk_decision in id order in batches (a server-side cursor on PostgreSQL), so a year of
decisions never sits in memory; `write_csv` / `write_xlsx` turn the rows into a file. Only what the decision stored
is shown: identifiers as their masks (app.risk.identity.mask, applied when the decision was made), never a
plaintext value. Every text cell is formula-safe: a value a spreadsheet would run as a formula (starting with
=, +, -, @, tab or CR) is prefixed with an apostrophe.
"""
from __future__ import annotations

import csv
import json
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import IO

from flask_babel import gettext as _
from flask_babel import lazy_gettext
from sqlalchemy import select

from app.cells import safe_cell, safe_row, write_xlsx_row
from app.clock import business_tz
from app.errors import ValidationError
from app.extensions import db
from app.risk.labels import EVENT_TEXT, OUTCOME_TEXT, STAGE_TEXT
from app.risk.models import RiskDecision

FORMATS = ("csv", "xlsx")
BATCH = 2000

# The masked identifiers a decision may carry (app.risk.service._subject), one column each.
SUBJECT_FIELDS = ("ip", "device", "contact", "phone", "id_number", "payment_account", "agent_login", "agent_id")

# (key, header): the header names the business time zone and the units.
COLUMNS = [
    ("id", lazy_gettext("决策编号")), ("time", lazy_gettext("时间（业务时区）")), ("event", lazy_gettext("事件")),
    ("event_label", lazy_gettext("事件名称")), ("outcome", lazy_gettext("结果")),
    ("outcome_label", lazy_gettext("结果名称")), ("stage", lazy_gettext("决定环节")), ("score", lazy_gettext("分数")),
    ("rules", lazy_gettext("命中规则")), ("reasons", lazy_gettext("原因")),
    ("shadow_rules", lazy_gettext("影子规则（仅记录）")),
    *[(f"subject_{name}", lazy_gettext("对象 %(name)s（脱敏）", name=name)) for name in SUBJECT_FIELDS],
    ("order_no", lazy_gettext("订单号")), ("agent_id", lazy_gettext("代理编号")),
    ("amount_fen", lazy_gettext("金额（分）")), ("latency_ms", lazy_gettext("耗时（毫秒）")),
]


def parse_day(value: str | None, what: str) -> date | None:
    """A business day given as YYYY-MM-DD (None when not given); anything else is a ValidationError."""
    if value in (None, ""):
        return None
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise ValidationError(_("%(what)s 须为 YYYY-MM-DD 格式的日期（不是 %(value)s）", what=what,
                                value=repr(value))) from None


def _utc(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=business_tz()).astimezone(UTC).replace(tzinfo=None)


def _local(at: datetime) -> str:
    return at.replace(tzinfo=UTC).astimezone(business_tz()).isoformat(timespec="seconds")


def row_of(decision) -> dict:
    """One decision (a RiskDecision or a row of its columns) as an export row (plain values, not yet
    formula-safe)."""
    hits = json.loads(decision.hits or "[]")
    subject = json.loads(decision.subject or "{}")
    live = [h for h in hits if not h.get("shadow")]
    shadow = [h for h in hits if h.get("shadow")]
    row = {
        "id": decision.id, "time": _local(decision.created_at), "event": decision.event,
        "event_label": _label(EVENT_TEXT, decision.event), "outcome": decision.outcome,
        "outcome_label": _label(OUTCOME_TEXT, decision.outcome),
        "stage": _label(STAGE_TEXT, decision.stage), "score": decision.score,
        "rules": "; ".join(f"{h.get('kind')}:{h.get('name')}" for h in live),
        "reasons": "; ".join(str(h.get("reason") or "") for h in live),
        "shadow_rules": "; ".join(f"{h.get('name')}（{h.get('reason') or ''}）" for h in shadow),
        "order_no": decision.order_no or "", "agent_id": decision.agent_id if decision.agent_id else "",
        "amount_fen": decision.amount if decision.amount is not None else "",
        "latency_ms": round(decision.latency_us / 1000, 3),
    }
    for name in SUBJECT_FIELDS:
        value = subject.get(name)
        row[f"subject_{name}"] = "" if value is None else str(value)
    return row


def rows(since: date | None = None, until: date | None = None) -> Iterator[list]:
    """Every decision from business day `since` to `until` (both inclusive, either open), oldest first, as lists
    of formula-safe cells in COLUMNS order. A bad range is refused here, before anything is written."""
    if since and until and since > until:
        raise ValidationError(_("开始日期 %(since)s 晚于结束日期 %(until)s", since=since, until=until))
    d = RiskDecision  # plain rows, not ORM objects: about twice as fast, and nothing held by the session
    query = (select(d.id, d.created_at, d.event, d.outcome, d.stage, d.score, d.hits, d.subject, d.order_no,
                    d.agent_id, d.amount, d.latency_us)
             .order_by(d.id).execution_options(yield_per=BATCH))
    if since:
        query = query.where(RiskDecision.created_at >= _utc(since))
    if until:
        query = query.where(RiskDecision.created_at < _utc(until + timedelta(days=1)))
    return ([safe_cell(row[key]) for key, _label in COLUMNS] for row in map(row_of, db.session.execute(query)))


def header() -> list[str]:
    return [str(label) for _key, label in COLUMNS]


def write_csv(out: IO[str], data: Iterator[list]) -> int:
    """CSV with a UTF-8 BOM (Excel reads the Chinese headers); returns the number of decisions written."""
    out.write("\ufeff")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(safe_row(header()))
    n = 0
    for row in data:
        writer.writerow(row)
        n += 1
    return n


def write_xlsx(out: IO[bytes], data: Iterator[list]) -> int:
    """XLSX built with XlsxWriter in constant_memory mode (rows flushed to disk as written), then copied to `out`
    (a zip needs its end written last, so it cannot go to a pipe as it grows). Returns the number of decisions."""
    import xlsxwriter

    n = 0
    with tempfile.TemporaryDirectory(prefix="kameng-risk-") as tmp:
        path = f"{tmp}/risk-log.xlsx"
        # Cells go through app.cells.write_xlsx_row (string cells, formula-safe); the options are a second guard.
        book = xlsxwriter.Workbook(path, {"constant_memory": True, "tmpdir": tmp, "strings_to_formulas": False,
                                          "strings_to_numbers": False, "strings_to_urls": False})
        sheet = book.add_worksheet(str(lazy_gettext("风控日志")))
        write_xlsx_row(sheet, 0, header(), book.add_format({"bold": True}))
        for n, row in enumerate(data, start=1):
            write_xlsx_row(sheet, n, row)
        book.close()
        with open(path, "rb") as built:
            shutil.copyfileobj(built, out)
    return n


def _label(words: dict, code: str | None) -> str:
    """Chinese for an auditor's file (no request, so the lazy words give their msgid)."""
    return str(words.get(code, code or ""))
