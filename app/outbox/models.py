"""Outbox: work that must follow a commit, written in the same transaction, dispatched to RQ afterwards."""
from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, String, Text

from app.clock import utcnow
from app.extensions import db
from app.states import Machine


class OutboxMessage(db.Model):
    __tablename__ = "outbox_message"
    id = Column(Integer, primary_key=True)
    topic = Column(String(32), nullable=False)  # order_callback, ...
    key = Column(String(128), unique=True, nullable=False)  # idempotency: one message per event
    payload = Column(Text, nullable=False)  # JSON
    status = Column(String(16), nullable=False, default="pending")  # pending, done, failed
    attempts = Column(Integer, nullable=False, default=0)
    next_attempt_at = Column(DateTime, nullable=False, default=utcnow)
    dispatched_at = Column(DateTime)  # last time it was handed to RQ (or run inline)
    last_error = Column(String(255))
    created_at = Column(DateTime, nullable=False, default=utcnow)
    finished_at = Column(DateTime)

    __table_args__ = (Index("ix_outbox_status_next", "status", "next_attempt_at"),)


OUTBOX_STATES = Machine("outbox_message", OutboxMessage, {
    "pending": {"done", "failed"},  # retries stay pending (next_attempt_at moves)
    "done": set(),
    "failed": set(),
}, initial=("pending",), title="outbox message")
