"""The audit log export (审计日志导出) for compliance: every entry of a range of business days as CSV, streamed.

`rows(since, until)` reads audit_entry in id order in batches (a server-side cursor on PostgreSQL), so a year of
entries never sits in memory; `csv_chunks` turns them into text pieces that the page streams and the CLI writes.
Days are business days (BUSINESS_TIMEZONE) and both ends are inclusive; times are written in that zone. Every cell
goes through app.cells.safe_cell: a value a spreadsheet would run as a formula stays text. Each export is itself
recorded in the audit log (`record_export`).
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta

from flask_appbuilder.security.sqla.models import User
from flask_babel import gettext
from sqlalchemy import select

from app.audit import service as audit
from app.audit.models import AuditEntry
from app.cells import safe_cell
from app.clock import business_tz
from app.errors import ValidationError
from app.extensions import db

BATCH = 2000
MAX_DAYS = 3660  # ten years: a typo such as 0024-01-01 is refused rather than read as a range

# (key, header): the header names the business time zone.
# i18n-keep: data
COLUMNS = [
    ("id", "编号"), ("time", "时间（业务时区）"), ("actor", "操作人"), ("actor_id", "操作人编号"), ("action", "操作"),
    ("target_type", "对象类型"), ("target_id", "对象"), ("old_value", "原值"), ("new_value", "新值"),  # i18n-keep: data
    ("reason", "原因"),  # i18n-keep: data
]


def parse_day(value: str | None, what: str) -> date:
    """A business day given as YYYY-MM-DD; missing or anything else is a ValidationError naming `what`."""
    if value in (None, ""):
        raise ValidationError(gettext("请填写%(what)s（YYYY-MM-DD）", what=what))
    try:
        day = date.fromisoformat(str(value).strip())
    except ValueError:
        raise ValidationError(gettext("%(what)s 须为 YYYY-MM-DD 格式的日期", what=what)) from None
    if not 2000 <= day.year <= 9998:  # also keeps the time zone arithmetic away from year 1 and 9999
        raise ValidationError(gettext("%(what)s 超出范围：%(day)s", what=what, day=day))
    return day


def parse_range(since: str | None, until: str | None, since_name: str | None = None,
                until_name: str | None = None) -> tuple[date, date]:
    """Both days parsed and checked: since <= until, at most MAX_DAYS apart."""
    first = parse_day(since, since_name or gettext("开始日期"))
    last = parse_day(until, until_name or gettext("结束日期"))
    if first > last:
        raise ValidationError(gettext("开始日期 %(first)s 晚于结束日期 %(last)s", first=first, last=last))
    if (last - first).days > MAX_DAYS:
        raise ValidationError(gettext("日期范围过长：最多 %(max_days)s 天", max_days=MAX_DAYS))
    return first, last


def _utc(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=business_tz()).astimezone(UTC).replace(tzinfo=None)


def _local(at: datetime) -> str:
    return at.replace(tzinfo=UTC).astimezone(business_tz()).isoformat(timespec="seconds")


def rows(since: date, until: date) -> Iterator[list]:
    """Every entry made on business days `since` .. `until` (inclusive), oldest first, as lists of formula-safe
    cells in COLUMNS order."""
    user, e = User, AuditEntry
    query = (select(e.id, e.created_at, user.username, e.actor_id, e.action, e.target_type, e.target_id,
                    e.old_value, e.new_value, e.reason)
             .outerjoin(user, user.id == e.actor_id)
             .where(e.created_at >= _utc(since), e.created_at < _utc(until + timedelta(days=1)))
             .order_by(e.id).execution_options(yield_per=BATCH))
    for row in db.session.execute(query):
        values = {"id": row.id, "time": _local(row.created_at), "actor": row.username or "",
                  "actor_id": row.actor_id if row.actor_id is not None else "", "action": row.action,
                  "target_type": row.target_type, "target_id": row.target_id or "",
                  "old_value": row.old_value or "", "new_value": row.new_value or "", "reason": row.reason or ""}
        yield [safe_cell(values[key]) for key, _ in COLUMNS]


def csv_chunks(data: Iterator[list], rows_per_chunk: int = 500) -> Iterator[str]:
    """CSV text in pieces: a UTF-8 BOM (Excel reads the Chinese headers) and the header first, then
    `rows_per_chunk` rows at a time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    buffer.write("\ufeff")
    writer.writerow([label for _, label in COLUMNS])
    for n, row in enumerate(data, start=1):
        writer.writerow(row)
        if n % rows_per_chunk == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def filename(since: date, until: date) -> str:
    return f"audit-log-{since:%Y%m%d}-{until:%Y%m%d}.csv"


def record_export(since: date, until: date, via: str, actor_id: int | None = None) -> None:
    """The export itself goes into the audit log (who took which range, from the page or the CLI), committed
    before the first row is written."""
    audit.record("audit.export", "audit_log", None, None, {"since": since.isoformat(), "until": until.isoformat(),
                                                           "via": via}, actor_id=actor_id)
    db.session.commit()
