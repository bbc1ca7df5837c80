"""Time: stored as naive UTC; business days are in BUSINESS_TIMEZONE (Asia/Shanghai)."""
from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from flask import current_app, has_app_context


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def business_tz() -> ZoneInfo:
    name = current_app.config["BUSINESS_TIMEZONE"] if has_app_context() else "Asia/Shanghai"
    return ZoneInfo(name)


def business_day_start(at: datetime | None = None) -> datetime:
    """The UTC instant at which the business day containing `at` (UTC) began."""
    at = at or utcnow()
    local = at.replace(tzinfo=UTC).astimezone(business_tz())
    start_local = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return start_local.astimezone(UTC).replace(tzinfo=None)


def to_local(at: datetime | None) -> datetime | None:
    if at is None:
        return None
    return at.replace(tzinfo=UTC).astimezone(business_tz()).replace(tzinfo=None)


def days_ago(days: int) -> datetime:
    return utcnow() - timedelta(days=days)


def business_today() -> date:
    """Today's business day."""
    return to_local(utcnow()).date()


def month_last_day(day: date) -> date:
    """The last day of the month holding `day`."""
    return (day.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
