"""Date helpers shared by the agent-growth, profile and money queries: business-day bounds and period buckets.

Rollup rows are keyed by China business day already; only the `agent` table stores instants (naive UTC), so the
agent queries turn a [start, end] day range into UTC bounds (index-friendly) and bucket `created_at` into a local
day in SQL: `AT TIME ZONE` on PostgreSQL, the zone's fixed offset on SQLite (Asia/Shanghai has had no DST since
1991). Week and month buckets are computed in Python over daily grouped rows (at most 366 per series).
"""
from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import Date, Integer, cast, func, literal_column
from sqlalchemy.sql.elements import ColumnElement

from app.clock import business_tz
from app.extensions import db

GRANULARITIES = ("day", "week", "month")


def utc_bounds(start: date, end: date) -> tuple[datetime, datetime]:
    """[start 00:00, end+1 00:00) of business days, as naive UTC instants."""
    tz = business_tz()

    def to_utc(d: date) -> datetime:
        return datetime.combine(d, time(0), tzinfo=tz).astimezone(UTC).replace(tzinfo=None)

    return to_utc(start), to_utc(end + timedelta(days=1))


def _dialect() -> str:
    return db.engine.dialect.name


def _offset_seconds() -> int:
    return int(datetime.now(business_tz()).utcoffset().total_seconds())


def local_day(column) -> ColumnElement:
    """The business day of a naive-UTC timestamp column, in SQL."""
    if _dialect() == "postgresql":
        zone = business_tz().key.replace("'", "")
        return cast(func.timezone(zone, func.timezone("UTC", column)), Date)
    return func.date(column, f"{_offset_seconds():+d} seconds")


def local_month(column) -> ColumnElement:
    """'YYYY-MM' of the business day of a naive-UTC timestamp column."""
    if _dialect() == "postgresql":
        zone = business_tz().key.replace("'", "")
        return func.to_char(func.timezone(zone, func.timezone("UTC", column)), literal_column("'YYYY-MM'"))
    return func.strftime("%Y-%m", column, f"{_offset_seconds():+d} seconds")


def day_month(column) -> ColumnElement:
    """'YYYY-MM' of a DATE column."""
    if _dialect() == "postgresql":
        return func.to_char(column, literal_column("'YYYY-MM'"))
    return func.strftime("%Y-%m", column)


def weekday_of(column) -> ColumnElement:
    """Weekday of a DATE column in SQL, 0 = Monday .. 6 = Sunday (as date.weekday())."""
    if _dialect() == "postgresql":
        return cast(func.extract("isodow", column), Integer) - 1
    return (cast(func.strftime("%w", column), Integer) + 6) % 7


def as_date(value) -> date:
    """SQLite hands DATE expressions back as text."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def check_range(start: date, end: date, granularity: str = "day") -> None:
    from app.errors import ValidationError

    if start > end:
        raise ValidationError("开始日期不能晚于结束日期 (start is after end)")
    if granularity not in GRANULARITIES:
        raise ValidationError(f"未知的粒度 {granularity!r} (granularity must be day, week or month)")


def bucket(day: date, granularity: str) -> date:
    """The first day of the period holding `day`: itself, its Monday, or the 1st of its month."""
    if granularity == "week":
        return day - timedelta(days=day.weekday())
    if granularity == "month":
        return day.replace(day=1)
    return day


def periods(start: date, end: date, granularity: str) -> list[date]:
    """Every period start from the one holding `start` to the one holding `end` (empty periods included)."""
    out: list[date] = []
    current = bucket(start, granularity)
    while current <= end:
        out.append(current)
        if granularity == "day":
            current += timedelta(days=1)
        elif granularity == "week":
            current += timedelta(days=7)
        else:
            current = (current.replace(day=28) + timedelta(days=4)).replace(day=1)
    return out


def months_between(first: str, last: str) -> list[str]:
    """['2026-01', ..., '2026-04'] for first='2026-01', last='2026-04'."""
    year, month = int(first[:4]), int(first[5:7])
    out = []
    while f"{year:04d}-{month:02d}" <= last:
        out.append(f"{year:04d}-{month:02d}")
        month += 1
        if month == 13:
            year, month = year + 1, 1
    return out
