"""Which notices a reader sees now."""
from __future__ import annotations

from datetime import datetime

from flask_babel import gettext
from sqlalchemy import or_, select

from app.announcements.models import AUDIENCES, Announcement
from app.clock import utcnow
from app.extensions import db

MAX_SHOWN = 10


def current(audience: str, now: datetime | None = None, limit: int = MAX_SHOWN) -> list[Announcement]:
    """Active notices for `audience` ('agents' or 'staff', plus those for 'all') whose window holds `now`: pinned
    first, then newest."""
    if audience not in AUDIENCES or audience == "all":
        raise ValueError(f"unknown audience {audience!r}")
    now = now or utcnow()
    return list(db.session.scalars(
        select(Announcement).where(Announcement.active.is_(True), Announcement.audience.in_((audience, "all")),
                                   Announcement.starts_at <= now,
                                   or_(Announcement.ends_at.is_(None), Announcement.ends_at > now))
        .order_by(Announcement.pinned.desc(), Announcement.starts_at.desc(), Announcement.id.desc()).limit(limit)))


def check(item: Announcement) -> None:
    """Refuse an incomplete or inconsistent notice (the form shows the message)."""
    item.title = (item.title or "").strip()
    if not item.title:
        raise ValueError(gettext("请填写标题"))
    if item.audience not in AUDIENCES:
        raise ValueError(gettext("请选择公告对象"))
    if item.starts_at is None:
        item.starts_at = utcnow()
    if item.ends_at is not None and item.ends_at <= item.starts_at:
        raise ValueError(gettext("结束时间必须晚于开始时间"))
    item.body = item.body or ""
    if len(item.body) > 2000:
        raise ValueError(gettext("正文最多 2000 个字符"))
