"""Risk control (风控) tables: lists, rules (with every version kept), decisions (append-only), and the velocity
events that counters are computed from when Redis is not there (and that rebuild Redis when it is)."""
from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import relationship

from app.clock import utcnow
from app.extensions import db

LIST_KINDS = ("ip", "cidr", "device", "contact", "phone", "id_number", "payment_account", "agent")
PERSONAL_KINDS = ("contact", "phone", "id_number", "payment_account")  # stored as a keyed hash + a masked form
LIST_ACTIONS = ("block", "review")
RULE_STATUSES = ("draft", "shadow", "active")
RULE_ACTIONS = ("score", "review", "block")
EVENTS = ("checkout", "shop_checkout", "openapi_order", "portal_purchase", "wallet_topup", "withdrawal",
          "registration", "login", "payment")
OUTCOMES = ("allow", "review", "block")


class RiskListEntry(db.Model):
    """黑名单 (block) / 观察名单 (review). A personal value is kept only as HMAC(key, normalised value) + a mask."""
    __tablename__ = "risk_list_entry"
    id = Column(Integer, primary_key=True)
    kind = Column(String(16), nullable=False)
    value = Column(String(128))  # ip, cidr, device, agent login: normalised; NULL for personal kinds
    value_hash = Column(String(64), nullable=False)  # HMAC-SHA256 hex of the normalised value (every kind)
    masked = Column(String(128), nullable=False)
    action = Column(String(8), nullable=False)
    reason = Column(String(255))
    expires_at = Column(DateTime)
    created_by_id = Column(Integer, ForeignKey("ab_user.id"))
    created_at = Column(DateTime, nullable=False, default=utcnow)
    removed_at = Column(DateTime)
    removed_by_id = Column(Integer, ForeignKey("ab_user.id"))

    created_by = relationship("User", foreign_keys=[created_by_id])
    removed_by = relationship("User", foreign_keys=[removed_by_id])

    __table_args__ = (Index("ix_risk_list_kind_hash", "kind", "value_hash"),)


class RiskRule(db.Model):
    """A scored rule an admin edits: an expression over named features (rule-engine syntax)."""
    __tablename__ = "risk_rule"
    id = Column(Integer, primary_key=True)
    name = Column(String(64), unique=True, nullable=False)
    events = Column(String(255), nullable=False, default="*")  # comma-separated event kinds, or *
    expression = Column(Text, nullable=False)
    action = Column(String(8), nullable=False, default="score")  # score, review, block
    score = Column(Integer, nullable=False, default=0)
    reason = Column(String(255), nullable=False)
    status = Column(String(8), nullable=False, default="draft")  # draft, shadow, active
    version = Column(Integer, nullable=False, default=1)
    updated_by_id = Column(Integer, ForeignKey("ab_user.id"))
    updated_at = Column(DateTime, nullable=False, default=utcnow)

    updated_by = relationship("User", foreign_keys=[updated_by_id])

    def __repr__(self) -> str:
        return self.name


class RiskRuleVersion(db.Model):
    """Every version of every rule, as it was: a stored decision names (rule, version) and replays against this."""
    __tablename__ = "risk_rule_version"
    id = Column(Integer, primary_key=True)
    rule_id = Column(Integer, ForeignKey("risk_rule.id"), nullable=False)
    version = Column(Integer, nullable=False)
    name = Column(String(64), nullable=False)
    events = Column(String(255), nullable=False)
    expression = Column(Text, nullable=False)
    action = Column(String(8), nullable=False)
    score = Column(Integer, nullable=False)
    reason = Column(String(255), nullable=False)
    status = Column(String(8), nullable=False)
    created_at = Column(DateTime, nullable=False, default=utcnow)

    __table_args__ = (UniqueConstraint("rule_id", "version", name="uq_risk_rule_version"),)


class RiskDecision(db.Model):
    """One decision, append-only: the event, the outcome, what fired and why, the feature values it saw (no
    personal value in plaintext), the rule versions, how long it took."""
    __tablename__ = "risk_decision"
    id = Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event = Column(String(24), nullable=False)
    outcome = Column(String(8), nullable=False)
    stage = Column(String(8), nullable=False)  # list, limit, rule, none: what decided it
    score = Column(Integer, nullable=False, default=0)
    hits = Column(Text, nullable=False)  # JSON [{"kind": list|limit|rule, "name", "version", "action", "reason", ...}]
    features = Column(Text, nullable=False)  # JSON: named feature values
    subject = Column(Text, nullable=False)  # JSON: masked identifiers (ip, device, contact ...)
    rule_versions = Column(Text, nullable=False)  # JSON {rule_id: version} of every rule evaluated
    order_no = Column(String(40), index=True)
    agent_id = Column(Integer, index=True)
    amount = Column(BigInteger)
    latency_us = Column(Integer, nullable=False)
    created_at = Column(DateTime, nullable=False, default=utcnow, index=True)

    __table_args__ = (Index("ix_risk_decision_outcome_created", "outcome", "created_at"),)


class RiskEvent(db.Model):
    """A velocity event, the record counters are computed from (and Redis rebuilt from): what happened (metric),
    when, for how much, and who did it, each identifier as its keyed hash."""
    __tablename__ = "risk_event"
    id = Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    metric = Column(String(24), nullable=False)  # order, registration, refund, dispute, payment_failed, topup ...
    amount = Column(BigInteger, nullable=False, default=0)
    ip = Column(String(64))
    device = Column(String(64))
    contact = Column(String(64))
    payment_account = Column(String(64))
    agent = Column(String(64))
    at = Column(DateTime, nullable=False, default=utcnow)

    __table_args__ = tuple(Index(f"ix_risk_event_{d}", d, "metric", "at")
                           for d in ("ip", "device", "contact", "payment_account", "agent"))
