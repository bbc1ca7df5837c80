"""Tamper-evident records: the hash chain over deliveries, money-moving audit entries and risk decisions, and the
head of each business day (app.chain.service explains how rows get their place in the chain)."""
from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)

from app.clock import utcnow
from app.extensions import db

KINDS = ("delivery", "audit", "risk_decision")


class ChainRecord(db.Model):
    """One chained record: what it is (kind + the source row's key), the SHA-256 of its content, and, once sealed,
    its place (seq) and hash = SHA-256 over the previous hash, the content digest, kind, key and seq."""
    __tablename__ = "chain_record"
    id = Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind = Column(String(16), nullable=False)
    source_key = Column(String(64), nullable=False)  # delivery: the order number; audit, risk_decision: the row id
    content_digest = Column(String(64), nullable=False)
    created_at = Column(DateTime, nullable=False, default=utcnow)
    seq = Column(BigInteger)  # NULL until sealed; then 1, 2, 3 ... without gaps
    hash = Column(String(64))
    sealed_at = Column(DateTime)

    __table_args__ = (
        UniqueConstraint("kind", "source_key", name="uq_chain_record_source"),
        CheckConstraint("kind IN ('delivery', 'audit', 'risk_decision')", name="ck_chain_record_kind"),
        # The sealer's work list: the rows still waiting for their place.
        Index("ix_chain_record_unsealed", "id", postgresql_where=text("seq IS NULL"),
              sqlite_where=text("seq IS NULL")),
        # seq and hash are unique once sealed; indexed only from then, so the delivering transaction's insert
        # touches no index for them (queries on them say `seq IS NOT NULL`, or a condition implying it).
        Index("uq_chain_record_seq", "seq", unique=True, postgresql_where=text("seq IS NOT NULL"),
              sqlite_where=text("seq IS NOT NULL")),
        Index("uq_chain_record_hash", "hash", unique=True, postgresql_where=text("seq IS NOT NULL"),
              sqlite_where=text("seq IS NOT NULL")),
    )


class ChainHead(db.Model):
    """The chain's head at the end of a business day (or now, for today): what /trust/ publishes."""
    __tablename__ = "chain_head"
    day = Column(Date, primary_key=True)
    last_seq = Column(BigInteger, nullable=False)
    head_hash = Column(String(64), nullable=False)
    records = Column(Integer, nullable=False, default=0)  # sealed on this day
    updated_at = Column(DateTime, nullable=False, default=utcnow)
