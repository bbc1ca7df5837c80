"""Sharing list entries between platforms (共享名单): the keys partners share to hash values alike, this platform's
signing identity, the partners it trusts, the legal basis recorded for sharing, what each local entry is shared
as, and the entries imported from partners (on the review list only, with their source)."""
from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import relationship

from app.clock import utcnow
from app.crypto import EncryptedText
from app.extensions import db

EVIDENCE_LEVELS = ("suspected", "confirmed")  # a watch-list entry / a blocked one
REASON_CODES = ("fraud_confirmed", "fraud_suspected")


class RiskSharingKey(db.Model):
    """A key the partners share (out of band) to hash values alike: HMAC-SHA256(key, family:normalised value).
    Several may be active for matching (rotation); exactly one is current for export."""
    __tablename__ = "risk_sharing_key"
    id = Column(Integer, primary_key=True)
    key_id = Column(String(32), unique=True, nullable=False)
    secret = Column(EncryptedText, nullable=False)  # hex; encrypted at rest
    secret_hint = Column(String(8), nullable=False)
    current = Column(Boolean, nullable=False, default=False)
    active = Column(Boolean, nullable=False, default=True)
    created_by_id = Column(Integer, ForeignKey("ab_user.id"))
    created_at = Column(DateTime, nullable=False, default=utcnow)
    retired_at = Column(DateTime)

    created_by = relationship("User", foreign_keys=[created_by_id])

    def __repr__(self) -> str:
        return self.key_id


class RiskFeedPublisher(db.Model):
    """This platform's identity as a publisher: its id and Ed25519 key pair (the private key encrypted at rest).
    One row."""
    __tablename__ = "risk_feed_publisher"
    id = Column(Integer, primary_key=True)
    publisher_id = Column(String(64), unique=True, nullable=False)
    public_key = Column(String(64), nullable=False)  # base64 of the 32 raw bytes
    private_key = Column(EncryptedText, nullable=False)  # base64 of the 32 raw bytes; encrypted at rest
    created_by_id = Column(Integer, ForeignKey("ab_user.id"))
    created_at = Column(DateTime, nullable=False, default=utcnow)

    created_by = relationship("User", foreign_keys=[created_by_id])


class RiskFeedPartner(db.Model):
    """A partner platform: a trusted publisher (its feeds are imported) and a subscriber (pulls ours with a partner
    API key)."""
    __tablename__ = "risk_feed_partner"
    id = Column(Integer, primary_key=True)
    publisher_id = Column(String(64), unique=True, nullable=False)
    name = Column(String(64), nullable=False)
    public_key = Column(String(64), nullable=False)  # base64 of its Ed25519 public key
    key_ids = Column(String(255), nullable=False)  # comma-separated sharing key ids it uses
    active = Column(Boolean, nullable=False, default=True)
    last_feed_at = Column(DateTime)  # generated_at of the newest feed imported from it
    created_by_id = Column(Integer, ForeignKey("ab_user.id"))
    created_at = Column(DateTime, nullable=False, default=utcnow)

    created_by = relationship("User", foreign_keys=[created_by_id])

    def __repr__(self) -> str:
        return f"{self.name} ({self.publisher_id})"


class RiskLegalBasis(db.Model):
    """The legal basis for sharing (consent text), versioned: the newest version is in force; export is refused
    while there is none."""
    __tablename__ = "risk_legal_basis"
    id = Column(Integer, primary_key=True)
    version = Column(Integer, unique=True, nullable=False)
    basis = Column(String(32), nullable=False)  # consent, contract, legal_obligation, legitimate_interest
    text = Column(Text, nullable=False)
    created_by_id = Column(Integer, ForeignKey("ab_user.id"))
    created_at = Column(DateTime, nullable=False, default=utcnow)

    created_by = relationship("User", foreign_keys=[created_by_id])


class RiskListShare(db.Model):
    """What a local list entry is shared as: its normalised value, encrypted at rest (re-hashed under whichever
    sharing key is current at export), and when it last changed (for incremental pulls)."""
    __tablename__ = "risk_list_share"
    entry_id = Column(Integer, ForeignKey("risk_list_entry.id"), primary_key=True)
    value = Column(EncryptedText, nullable=False)
    changed_at = Column(DateTime, nullable=False, default=utcnow, index=True)


class RiskFeedEntry(db.Model):
    """An entry imported from a partner's feed: known only by its hash under a shared key; on the review list
    (never block), with its source."""
    __tablename__ = "risk_feed_entry"
    id = Column(Integer, primary_key=True)
    partner_id = Column(Integer, ForeignKey("risk_feed_partner.id"), nullable=False)
    key_id = Column(String(32), nullable=False)
    kind = Column(String(16), nullable=False)
    value_hash = Column(String(64), nullable=False)
    prefix = Column(Integer)  # cidr: the network's prefix length (not personal; matching needs it)
    reason = Column(String(32), nullable=False)
    evidence = Column(String(16), nullable=False)
    first_seen = Column(DateTime, nullable=False)
    last_seen = Column(DateTime, nullable=False)
    expires_at = Column(DateTime)
    removed_at = Column(DateTime)  # the publisher removed it (or staff did here)
    feed_at = Column(DateTime, nullable=False)  # generated_at of the feed that last wrote it
    imported_at = Column(DateTime, nullable=False, default=utcnow)

    partner = relationship("RiskFeedPartner")

    __table_args__ = (UniqueConstraint("partner_id", "key_id", "kind", "value_hash", name="uq_risk_feed_entry"),
                      Index("ix_risk_feed_entry_hash", "value_hash"))
