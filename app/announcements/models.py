"""公告: a title and a plain-text body (rendered escaped, never as HTML), an audience and a time window."""
from __future__ import annotations

from flask_babel import lazy_gettext
from sqlalchemy import Boolean, Column, DateTime, Index, Integer, String, Text

from app.clock import utcnow
from app.extensions import db

AUDIENCES = {"agents": lazy_gettext("代理"), "staff": lazy_gettext("员工"), "all": lazy_gettext("全部")}


class Announcement(db.Model):
    __tablename__ = "announcement"
    id = Column(Integer, primary_key=True)
    title = Column(String(100), nullable=False)
    body = Column(Text, nullable=False, default="")
    audience = Column(String(8), nullable=False, default="agents")  # agents, staff, all
    pinned = Column(Boolean, nullable=False, default=False)  # shown first
    starts_at = Column(DateTime, nullable=False, default=utcnow)  # naive UTC
    ends_at = Column(DateTime)  # NULL: until switched off
    active = Column(Boolean, nullable=False, default=True)
    created_at = Column(DateTime, nullable=False, default=utcnow)

    __table_args__ = (Index("ix_announcement_active_starts", "active", "starts_at"),)

    def __repr__(self) -> str:
        return self.title

    def audience_display(self) -> str:
        return str(AUDIENCES.get(self.audience, self.audience))
