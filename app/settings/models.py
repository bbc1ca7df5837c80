"""Platform settings that admins change in a form (audited), overriding the environment's defaults."""
from __future__ import annotations

from sqlalchemy import Column, DateTime, ForeignKey, Integer, String, Text

from app.clock import utcnow
from app.extensions import db


class PlatformSetting(db.Model):
    __tablename__ = "platform_setting"
    key = Column(String(64), primary_key=True)
    value = Column(Text, nullable=False)  # JSON
    updated_at = Column(DateTime, nullable=False, default=utcnow)
    updated_by_id = Column(Integer, ForeignKey("ab_user.id"))
