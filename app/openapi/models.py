"""API keys for the Open API, the nonces seen, and callback attempts."""
from __future__ import annotations

from sqlalchemy import Boolean, CheckConstraint, Column, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import relationship

from app.clock import utcnow
from app.extensions import db


class ApiKey(db.Model):
    __tablename__ = "api_key"
    id = Column(Integer, primary_key=True)
    agent_id = Column(Integer, ForeignKey("agent.id"), index=True)  # an agent's key (scope "agent")
    # What the key may call: "agent" (an agent's own orders, products, balance) or "risk_feed" (a partner platform
    # pulling the shared risk feed, app.risk.feed; partner_id set, no agent).
    scope = Column(String(16), nullable=False, default="agent", server_default="agent")
    partner_id = Column(Integer, ForeignKey("risk_feed_partner.id", name="fk_api_key_partner_id_risk_feed_partner"))
    name = Column(String(64), nullable=False, default="")
    app_key = Column(String(40), unique=True, nullable=False)
    secret_enc = Column(Text, nullable=False)  # encrypted; shown in full once, at creation
    secret_hint = Column(String(16), nullable=False)  # last characters, to tell keys apart
    ip_allowlist = Column(Text)  # comma-separated addresses or networks; empty = any
    active = Column(Boolean, nullable=False, default=True)
    created_at = Column(DateTime, nullable=False, default=utcnow)
    revoked_at = Column(DateTime)
    last_used_at = Column(DateTime)

    agent = relationship("Agent")
    partner = relationship("RiskFeedPartner")

    __table_args__ = (CheckConstraint("(scope = 'agent' AND agent_id IS NOT NULL) OR "
                                      "(scope = 'risk_feed' AND partner_id IS NOT NULL)", name="ck_api_key_owner"),)

    def __repr__(self) -> str:
        return self.app_key


class ApiNonce(db.Model):
    """Replay protection: one row per (key, nonce) inside the skew window; the unique constraint is the authority
    (Redis is not used for nonces, so a Redis outage opens no replay window)."""
    __tablename__ = "api_nonce"
    id = Column(Integer, primary_key=True)
    app_key = Column(String(40), nullable=False)
    nonce = Column(String(64), nullable=False)
    created_at = Column(DateTime, nullable=False, default=utcnow, index=True)

    __table_args__ = (UniqueConstraint("app_key", "nonce", name="uq_api_nonce_key_nonce"),)


class CallbackAttempt(db.Model):
    """One POST of an order's state to the agent's notify_url."""
    __tablename__ = "callback_attempt"
    id = Column(Integer, primary_key=True)
    order_id = Column(Integer, ForeignKey("orders.id"), nullable=False, index=True)
    agent_id = Column(Integer, ForeignKey("agent.id"), nullable=False, index=True)
    outbox_id = Column(Integer, ForeignKey("outbox_message.id"), nullable=False)
    attempt = Column(Integer, nullable=False)
    url = Column(String(512), nullable=False)
    order_status = Column(String(24), nullable=False)
    http_status = Column(Integer)
    error = Column(String(255))
    succeeded = Column(Boolean, nullable=False, default=False)
    duration_ms = Column(Integer)
    created_at = Column(DateTime, nullable=False, default=utcnow)
    next_attempt_at = Column(DateTime)

    order = relationship("Order")
    agent = relationship("Agent")
