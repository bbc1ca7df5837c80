"""Double-entry ledger: accounts, journals (one per money movement) and their postings."""
from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
)
from sqlalchemy.orm import relationship

from app.clock import utcnow
from app.extensions import db


class Account(db.Model):
    __tablename__ = "ledger_account"
    id = Column(Integer, primary_key=True)
    code = Column(String(64), unique=True, nullable=False)  # agent:42:wallet, platform:revenue ...
    kind = Column(String(32), nullable=False)  # wallet, pending, frozen, receivable, clearing, revenue ...
    agent_id = Column(Integer, ForeignKey("agent.id"), index=True)
    supplier_id = Column(Integer, ForeignKey("supplier.id"), index=True)
    # Only accounts that must never go negative keep a cached balance (updated under a row lock).
    cached = Column(Boolean, nullable=False, default=False)
    balance = Column(BigInteger, nullable=False, default=0)
    created_at = Column(DateTime, nullable=False, default=utcnow)

    agent = relationship("Agent", foreign_keys=[agent_id])
    supplier = relationship("Supplier", foreign_keys=[supplier_id])

    __table_args__ = (
        CheckConstraint("cached = false OR balance >= 0", name="ck_cached_non_negative"),
    )

    def __repr__(self) -> str:
        return self.code


class Journal(db.Model):
    __tablename__ = "ledger_journal"
    id = Column(Integer, primary_key=True)
    idempotency_key = Column(String(128), unique=True, nullable=False)
    kind = Column(String(32), nullable=False, index=True)  # sale, adjustment, ...
    content_hash = Column(String(64), nullable=False)
    memo = Column(String(255))
    order_id = Column(Integer, ForeignKey("orders.id"), index=True)
    actor_id = Column(Integer, ForeignKey("ab_user.id"))
    created_at = Column(DateTime, nullable=False, default=utcnow, index=True)

    postings = relationship("Posting", back_populates="journal", order_by="Posting.id")
    order = relationship("Order", foreign_keys=[order_id])
    actor = relationship("User", foreign_keys=[actor_id])

    def __repr__(self) -> str:
        return self.idempotency_key


class Posting(db.Model):
    __tablename__ = "ledger_posting"
    id = Column(Integer, primary_key=True)
    journal_id = Column(Integer, ForeignKey("ledger_journal.id"), nullable=False, index=True)
    account_id = Column(Integer, ForeignKey("ledger_account.id"), nullable=False)
    amount = Column(BigInteger, nullable=False)  # fen; + credits the account, - debits it
    created_at = Column(DateTime, nullable=False, default=utcnow)

    journal = relationship("Journal", back_populates="postings")
    account = relationship("Account")

    __table_args__ = (Index("ix_ledger_posting_account_id_id", "account_id", "id"),)
