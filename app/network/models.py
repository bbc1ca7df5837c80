"""The agent network: invite codes, real-name verification, commissions and their settlement, withdrawals,
the (off by default) monthly team bonus."""
from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import relationship

from app.clock import utcnow
from app.extensions import db
from app.money import format_fen
from app.states import Machine


class InviteCode(db.Model):
    """邀请码: registering through /r/<code> binds the new account under its agent, at the code's tier."""
    __tablename__ = "invite_code"
    id = Column(Integer, primary_key=True)
    code = Column(String(16), unique=True, nullable=False)
    agent_id = Column(Integer, ForeignKey("agent.id"), nullable=False, index=True)
    tier_id = Column(Integer, ForeignKey("tier.id"), nullable=False)
    max_uses = Column(Integer)  # NULL: unlimited
    uses = Column(Integer, nullable=False, default=0)
    expires_at = Column(DateTime)
    active = Column(Boolean, nullable=False, default=True)
    created_at = Column(DateTime, nullable=False, default=utcnow)

    agent = relationship("Agent")
    tier = relationship("Tier")


class RealNameVerification(db.Model):
    """实名认证: name, resident ID, bank card, phone — stored encrypted, shown masked; derived facts for analytics."""
    __tablename__ = "real_name"
    id = Column(Integer, primary_key=True)
    agent_id = Column(Integer, ForeignKey("agent.id"), nullable=False, unique=True)
    name_enc = Column(Text, nullable=False)
    id_number_enc = Column(Text, nullable=False)
    bank_card_enc = Column(Text, nullable=False)
    phone_enc = Column(Text, nullable=False)
    id_number_hash = Column(String(64), nullable=False, index=True)  # keyed hash: one ID, one agent
    name_masked = Column(String(32), nullable=False)
    id_number_masked = Column(String(32), nullable=False)
    bank_card_masked = Column(String(32), nullable=False)
    phone_masked = Column(String(32), nullable=False)
    age_band = Column(String(8))  # e.g. 18-24
    gender = Column(String(1))  # M / F
    province = Column(String(16))
    birth_year = Column(Integer)
    status = Column(String(16), nullable=False, default="pending")  # pending, verified, failed
    provider_ref = Column(String(64))
    failure_reason = Column(String(255))
    verified_at = Column(DateTime)
    created_at = Column(DateTime, nullable=False, default=utcnow)
    updated_at = Column(DateTime, nullable=False, default=utcnow)

    agent = relationship("Agent")


REALNAME_STATES = Machine("realname", RealNameVerification, {
    "pending": {"verified", "failed"},
    "failed": {"verified"},  # a new submission after a mismatch (another mismatch stays failed)
    "verified": set(),  # changing a verified identity goes through support
}, initial=("pending", "verified", "failed"), title="real-name verification")


class RealNameAttempt(db.Model):
    """One real-name submission that passed the local checks and went (or was about to go) to the provider: what
    the daily limits (per agent, per ID number) and the lockout after failures count, in the database."""
    __tablename__ = "real_name_attempt"
    id = Column(Integer, primary_key=True)
    agent_id = Column(Integer, ForeignKey("agent.id"), nullable=False)
    id_number_hash = Column(String(64), nullable=False)  # keyed hash, as real_name.id_number_hash
    business_day = Column(Date, nullable=False)
    outcome = Column(String(16), nullable=False, default="pending")  # pending, matched, mismatch, taken, unavailable
    created_at = Column(DateTime, nullable=False, default=utcnow)

    __table_args__ = (Index("ix_real_name_attempt_agent_day", "agent_id", "business_day"),
                      Index("ix_real_name_attempt_id_day", "id_number_hash", "business_day"))


class SettlementRun(db.Model):
    """One run of commission settlement (pending → wallet), with its report."""
    __tablename__ = "settlement_run"
    id = Column(Integer, primary_key=True)
    trigger = Column(String(16), nullable=False)  # scheduled, manual, cli
    actor_id = Column(Integer, ForeignKey("ab_user.id"))
    cutoff = Column(DateTime, nullable=False)  # commissions due before this were considered
    settled_count = Column(Integer, nullable=False, default=0)
    settled_amount = Column(BigInteger, nullable=False, default=0)
    recovered_amount = Column(BigInteger, nullable=False, default=0)  # debts (receivable) recovered
    status = Column(String(16), nullable=False, default="running")  # running, done, failed
    error = Column(String(255))
    started_at = Column(DateTime, nullable=False, default=utcnow)
    finished_at = Column(DateTime)

    actor = relationship("User", foreign_keys=[actor_id])


SETTLEMENT_RUN_STATES = Machine("settlement_run", SettlementRun, {
    "running": {"done", "failed"},
    "done": set(),
    "failed": set(),
}, initial=("running",), title="settlement run")


class Commission(db.Model):
    """A commission on one delivered order for one upline (level 1 = direct, 2 = indirect, at most 3), or, at level
    0, the shop profit of the agent whose shop sold it (app.agentshops): pending, frozen, settled and reversed
    exactly like a commission."""
    __tablename__ = "commission"
    id = Column(Integer, primary_key=True)
    order_id = Column(Integer, ForeignKey("orders.id"), nullable=False)
    agent_id = Column(Integer, ForeignKey("agent.id"), nullable=False)  # the beneficiary
    level = Column(Integer, nullable=False)
    rate_bp = Column(Integer, nullable=False)
    base_amount = Column(BigInteger, nullable=False)  # the buyer's paid amount (a shop order: the agent's price)
    amount = Column(BigInteger, nullable=False)
    status = Column(String(16), nullable=False, default="pending")  # pending, settled, reversed
    settle_after = Column(DateTime, nullable=False)
    settlement_run_id = Column(Integer, ForeignKey("settlement_run.id"))
    created_at = Column(DateTime, nullable=False, default=utcnow)
    settled_at = Column(DateTime)
    reversed_at = Column(DateTime)

    order = relationship("Order")
    agent = relationship("Agent")

    __table_args__ = (
        UniqueConstraint("order_id", "agent_id", name="uq_commission_order_agent"),
        CheckConstraint("level BETWEEN 0 AND 3", name="ck_commission_level"),
        CheckConstraint("amount >= 0", name="ck_commission_amount"),
        Index("ix_commission_status_settle_after", "status", "settle_after"),
        Index("ix_commission_agent_status", "agent_id", "status"),
    )

    def amount_display(self) -> str:
        return format_fen(self.amount)


COMMISSION_STATES = Machine("commission", Commission, {
    "pending": {"settled", "frozen", "reversed"},  # T+N settlement; a dispute freezes it; a refund reverses it
    "frozen": {"pending", "reversed"},  # the dispute rejected, or refunded
    "settled": {"reversed"},  # from the wallet, the rest a receivable
    "reversed": set(),
}, initial=("pending",), title="commission")


class Withdrawal(db.Model):
    """提现: requested (amount to frozen), reviewed, paid out by a job through the payout adapter."""
    __tablename__ = "withdrawal"
    id = Column(Integer, primary_key=True)
    withdrawal_no = Column(String(32), unique=True, nullable=False)
    agent_id = Column(Integer, ForeignKey("agent.id"), nullable=False, index=True)
    amount = Column(BigInteger, nullable=False)  # taken from the wallet
    fee = Column(BigInteger, nullable=False, default=0)
    net_amount = Column(BigInteger, nullable=False)  # sent to the bank card
    bank_card_masked = Column(String(32), nullable=False)
    status = Column(String(16), nullable=False, default="pending_review")
    # pending_review, rejected, approved, paying, paid, failed
    review_reason = Column(String(255))
    reviewed_by_id = Column(Integer, ForeignKey("ab_user.id"))
    reviewed_at = Column(DateTime)
    payout_ref = Column(String(64))
    failure_reason = Column(String(255))
    created_at = Column(DateTime, nullable=False, default=utcnow, index=True)
    paid_at = Column(DateTime)

    agent = relationship("Agent")
    reviewed_by = relationship("User", foreign_keys=[reviewed_by_id])

    __table_args__ = (CheckConstraint("amount > 0 AND fee >= 0 AND net_amount > 0", name="ck_withdrawal_amounts"),)

    def amount_display(self) -> str:
        return format_fen(self.amount)


WITHDRAWAL_STATES = Machine("withdrawal", Withdrawal, {
    "pending_review": {"approved", "rejected"},
    "approved": {"paying"},
    "paying": {"paid", "failed"},  # a timeout leaves it paying: asked again (poll_paying), booked once
    "rejected": set(),
    "paid": set(),
    "failed": set(),
}, initial=("pending_review",), title="withdrawal")


class TeamBonusRule(db.Model):
    """团队业绩奖: a monthly bonus on a subtree's GMV. Off by default; an admin switches it on."""
    __tablename__ = "team_bonus_rule"
    id = Column(Integer, primary_key=True)
    name = Column(String(64), nullable=False)
    min_monthly_gmv = Column(BigInteger, nullable=False)  # fen
    rate_bp = Column(Integer, nullable=False)
    active = Column(Boolean, nullable=False, default=False)
    created_at = Column(DateTime, nullable=False, default=utcnow)

    __table_args__ = (CheckConstraint("rate_bp >= 0 AND rate_bp <= 1000", name="ck_team_bonus_rate"),)


class TeamBonusAward(db.Model):
    __tablename__ = "team_bonus_award"
    id = Column(Integer, primary_key=True)
    rule_id = Column(Integer, ForeignKey("team_bonus_rule.id"), nullable=False)
    agent_id = Column(Integer, ForeignKey("agent.id"), nullable=False)
    month = Column(String(7), nullable=False)  # 2026-11
    gmv = Column(BigInteger, nullable=False)
    amount = Column(BigInteger, nullable=False)
    created_at = Column(DateTime, nullable=False, default=utcnow)

    __table_args__ = (UniqueConstraint("rule_id", "agent_id", "month", name="uq_team_bonus_award"),)
