"""Tiers (等级) and agents (代理) in an upline tree with a materialized path."""
from __future__ import annotations

from flask_babel import gettext
from sqlalchemy import BigInteger, Boolean, CheckConstraint, Column, DateTime, ForeignKey, Integer, String, event
from sqlalchemy.orm import relationship

from app.clock import utcnow
from app.crypto import EncryptedText, mask, pii_hash
from app.extensions import db
from app.money import format_bp, format_fen


class Tier(db.Model):
    __tablename__ = "tier"
    id = Column(Integer, primary_key=True)
    name = Column(String(64), unique=True, nullable=False)
    rank = Column(Integer, nullable=False, default=0)  # higher = more senior (总代 highest)
    discount_bp = Column(Integer, nullable=False, default=10000)  # price as a share of face price
    may_recruit = Column(Boolean, nullable=False, default=False)
    may_withdraw = Column(Boolean, nullable=False, default=False)
    min_withdrawal = Column(BigInteger, nullable=False, default=10000)  # fen
    withdrawal_fee_bp = Column(Integer, nullable=False, default=0)
    direct_commission_bp = Column(Integer, nullable=False, default=0)
    indirect_commission_bp = Column(Integer, nullable=False, default=0)
    daily_limit = Column(BigInteger, nullable=False, default=0)  # fen per business day; 0 = no limit
    # Risk control's hard limits for this tier's agents (fen); empty: RISK_ORDER_LIMIT_FEN / RISK_DAILY_LIMIT_FEN.
    risk_order_limit = Column(BigInteger)
    risk_daily_limit = Column(BigInteger)
    settle_days = Column(Integer, nullable=False, default=7)
    may_open_shop = Column(Boolean, nullable=False, default=False, server_default="0")  # 分站 (app.agentshops)

    __table_args__ = (
        CheckConstraint("discount_bp > 0 AND discount_bp <= 20000", name="ck_tier_discount"),
        CheckConstraint("direct_commission_bp >= 0 AND direct_commission_bp <= 5000", name="ck_tier_direct"),
        CheckConstraint("indirect_commission_bp >= 0 AND indirect_commission_bp <= 5000", name="ck_tier_indirect"),
        CheckConstraint("min_withdrawal >= 0 AND daily_limit >= 0", name="ck_tier_amounts"),
        CheckConstraint("withdrawal_fee_bp >= 0 AND withdrawal_fee_bp <= 10000", name="ck_tier_fee"),
    )

    def __repr__(self) -> str:
        return self.name

    def discount_display(self) -> str:
        return format_bp(self.discount_bp)

    def daily_limit_display(self) -> str:
        return format_fen(self.daily_limit) if self.daily_limit else gettext("不限")


class Agent(db.Model):
    __tablename__ = "agent"
    id = Column(Integer, primary_key=True)
    name = Column(String(64), nullable=False)
    user_id = Column(Integer, ForeignKey("ab_user.id"), unique=True)
    parent_id = Column(Integer, ForeignKey("agent.id"), index=True)
    path = Column(String(512), nullable=False, default="/", index=True)  # /1/7/42/ including itself
    depth = Column(Integer, nullable=False, default=0)
    tier_id = Column(Integer, ForeignKey("tier.id"), nullable=False, index=True)
    active = Column(Boolean, nullable=False, default=True)
    phone = Column(EncryptedText)  # encrypted at rest (app.crypto); phone_hash: its blind index, kept in sync below
    phone_hash = Column(String(64), index=True)
    created_at = Column(DateTime, nullable=False, default=utcnow, index=True)
    # Risk control: held at registration (many agents from one IP or device): no buying or withdrawing until a
    # reviewer approves. topup_unspent: wallet money that came from channel top-ups and was not spent yet (not
    # withdrawable: only earnings are).
    risk_hold = Column(Boolean, nullable=False, default=False, server_default="0")
    topup_unspent = Column(BigInteger, nullable=False, default=0, server_default="0")

    user = relationship("User", foreign_keys=[user_id])
    parent = relationship("Agent", remote_side=[id], foreign_keys=[parent_id])
    tier = relationship("Tier")

    def __repr__(self) -> str:
        return self.name

    def upline_ids(self) -> list[int]:
        """Ancestors nearest first (parent, grandparent, ...), from the path."""
        ids = [int(x) for x in self.path.strip("/").split("/") if x]
        return list(reversed(ids[:-1]))

    def phone_masked(self) -> str:
        return mask(self.phone) if self.phone else ""

    def wallet_display(self) -> str:
        from app.ledger.service import agent_balances
        return format_fen(agent_balances(self.id)["wallet"])


@event.listens_for(Agent.phone, "set")
def _phone_hash(target: Agent, value, _old, _initiator) -> None:
    target.phone_hash = pii_hash(value)
