"""Audit log: who changed what in settings, prices, tiers, balances and reviews."""
from __future__ import annotations

from sqlalchemy import Column, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import relationship

from app.clock import utcnow
from app.extensions import db


class AuditEntry(db.Model):
    __tablename__ = "audit_entry"
    id = Column(Integer, primary_key=True)
    created_at = Column(DateTime, nullable=False, default=utcnow, index=True)
    actor_id = Column(Integer, ForeignKey("ab_user.id"))
    action = Column(String(64), nullable=False, index=True)  # tier.update, wallet.adjust, price.create ...
    target_type = Column(String(64), nullable=False)
    target_id = Column(String(64))
    old_value = Column(Text)  # JSON
    new_value = Column(Text)  # JSON
    reason = Column(String(255))

    actor = relationship("User", foreign_keys=[actor_id])
