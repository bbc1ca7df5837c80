"""Risk control (风控) tables: lists, rules (with every version kept), decisions (append-only), and the velocity
events that counters are computed from when Redis is not there (and that rebuild Redis when it is)."""
from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import relationship

from app.clock import utcnow
from app.extensions import db
from app.states import Machine

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
    # JSON {"active": {"version", "score", "top": [...]}, "shadow": [...]}: the models that scored it and the
    # features that pushed each score most (LightGBM contributions); NULL when no model scored it.
    model = Column(Text)

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


class RiskDayUsage(db.Model):
    """What one buyer identifier (an agent, a contact, a device, a paying account; as its keyed hash) has reserved
    against the daily limit on one business day: each order's amount is added when risk control lets it through
    (app.risk.usage.reserve). The row is the limit's lock: checkouts of one buyer on one day queue on it."""
    __tablename__ = "risk_day_usage"
    dimension = Column(String(16), primary_key=True)  # agent, contact, device, payment_account
    key = Column(String(64), primary_key=True)
    day = Column(Date, primary_key=True)  # the business day (BUSINESS_TIMEZONE)
    amount = Column(BigInteger, nullable=False, default=0)


class RiskDayRelease(db.Model):
    """An order that stopped counting (closed, failed, refunded) gives its amount back to the day it was reserved
    on. Append-only, so a refund never waits on (or deadlocks with) a purchase holding the usage row."""
    __tablename__ = "risk_day_release"
    id = Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    dimension = Column(String(16), nullable=False)
    key = Column(String(64), nullable=False)
    day = Column(Date, nullable=False)
    amount = Column(BigInteger, nullable=False)
    order_id = Column(Integer, nullable=False)
    created_at = Column(DateTime, nullable=False, default=utcnow)

    __table_args__ = (Index("ix_risk_day_release_key", "dimension", "key", "day"),
                      UniqueConstraint("order_id", "dimension", name="uq_risk_day_release_order_dimension"))


LABEL_SOURCES = ("review_approve", "review_reject", "refund_fraud", "dispute_lost", "list_block", "synthetic")
MODEL_STATUSES = ("shadow", "active", "retired")


class RiskLabel(db.Model):
    """What an outcome taught: fraud (1) or legitimate (0), about one decision's subject (an order, or a decision
    when there is no order), from a review, a refund as fraud, a lost dispute or a blocked list hit. One row per
    subject: a stronger later event (fraud after an approval) replaces a weaker one, a repeat changes nothing."""
    __tablename__ = "risk_label"
    id = Column(Integer, primary_key=True)
    subject = Column(String(80), nullable=False, unique=True)  # order:<order_no> or decision:<id>
    decision_id = Column(BigInteger, index=True)  # the decision whose features are learnt from
    order_no = Column(String(40))
    label = Column(SmallInteger, nullable=False)  # 1 fraud, 0 legitimate
    source = Column(String(16), nullable=False)
    at = Column(DateTime, nullable=False)  # when the outcome became known
    decided_at = Column(DateTime, index=True)  # the decision's time: the time split orders by it
    created_at = Column(DateTime, nullable=False, default=utcnow)


class RiskModel(db.Model):
    """One trained model version: its booster as text (LightGBM model_to_string), the features it reads, its seed,
    its holdout figures and the active rules' figures on the same holdout. shadow: scored and recorded only;
    active: its score is the `model_score` feature rules read; retired: no longer scored."""
    __tablename__ = "risk_model"
    id = Column(Integer, primary_key=True)
    version = Column(Integer, nullable=False, unique=True)
    status = Column(String(8), nullable=False, default="shadow")
    seed = Column(Integer, nullable=False)
    features = Column(Text, nullable=False)  # JSON list, in the booster's column order
    metrics = Column(Text, nullable=False)  # JSON: the model's holdout figures, sizes, the split time
    rules_metrics = Column(Text, nullable=False)  # JSON: the active rules' figures on the same holdout
    holdout = Column(Text, nullable=False)  # JSON list of the holdout's decision ids (promotion re-checks on them)
    params = Column(Text, nullable=False)  # JSON: LightGBM parameters and rounds
    booster = Column(Text, nullable=False)
    digest = Column(String(64), nullable=False)  # SHA-256 of the booster text: processes load each one once
    created_at = Column(DateTime, nullable=False, default=utcnow)
    promoted_at = Column(DateTime)
    promoted_by_id = Column(Integer, ForeignKey("ab_user.id"))
    retired_at = Column(DateTime)

    promoted_by = relationship("User", foreign_keys=[promoted_by_id])

    def __repr__(self) -> str:
        return f"v{self.version}"


MODEL_STATES = Machine("risk_model", RiskModel, {
    "shadow": {"active", "retired"},
    "active": {"retired"},  # when another version is promoted
    "retired": set(),
}, initial=("shadow",), title="risk model")


class RiskAgentAnomaly(db.Model):
    """The latest unsupervised score of one agent (IsolationForest over its recruits, its downline's spend, refunds,
    device and IP sharing), computed in batch; flagged ones wait for a look."""
    __tablename__ = "risk_agent_anomaly"
    id = Column(Integer, primary_key=True)
    agent_id = Column(Integer, ForeignKey("agent.id"), nullable=False, unique=True)
    score = Column(Float, nullable=False)  # higher = more unusual (negated score_samples)
    flagged = Column(Boolean, nullable=False, default=False)
    reasons = Column(Text, nullable=False)  # JSON list of reason codes
    cluster = Column(String(64))  # the linked-accounts cluster it belongs to (shared device / IP), if any
    features = Column(Text, nullable=False)  # JSON: the values scored
    computed_at = Column(DateTime, nullable=False, default=utcnow)

    agent = relationship("Agent")

    __table_args__ = (Index("ix_risk_agent_anomaly_flagged", "flagged", "score"),)
