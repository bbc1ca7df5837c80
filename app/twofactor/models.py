"""Two-factor tables: one row per staff user who started enrolment, and that user's one-time recovery codes."""
from __future__ import annotations

from flask_babel import gettext
from sqlalchemy import BigInteger, Boolean, Column, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import relationship

from app.clock import utcnow
from app.extensions import db


class StaffTwoFactor(db.Model):
    """A staff user's TOTP: the secret (encrypted; pending until confirmed with a code), the last accepted time
    step (a code is accepted only for a newer one, so none can be replayed), and the sign-in challenge in progress
    (server-side, so a replayed session cookie cannot reset its failure count)."""
    __tablename__ = "staff_two_factor"
    user_id = Column(Integer, ForeignKey("ab_user.id", ondelete="CASCADE"), primary_key=True, autoincrement=False)
    secret_enc = Column(Text)  # app.crypto.encrypt(base32 secret); NULL after disable or reset
    enabled = Column(Boolean, nullable=False, default=False)
    enabled_at = Column(DateTime)
    last_timecode = Column(BigInteger)  # the TOTP time step of the last accepted code
    challenge_id = Column(String(64))  # the sign-in waiting for its second step (also held in that session)
    challenge_expires_at = Column(DateTime)
    # wrong second-step codes since the last successful one, across challenges (a new challenge keeps it)
    challenge_failures = Column(Integer, nullable=False, default=0)
    locked_until = Column(DateTime)  # set each time the wrong-code count reaches a multiple of MAX_FAILURES
    updated_at = Column(DateTime, nullable=False, default=utcnow, onupdate=utcnow)

    user = relationship("User", foreign_keys=[user_id])
    recovery_codes = relationship("StaffRecoveryCode", back_populates="owner", cascade="all, delete-orphan",
                                  passive_deletes=True)

    @property
    def recovery_codes_left(self) -> int:
        return sum(1 for c in self.recovery_codes if c.used_at is None)

    def __repr__(self) -> str:
        return gettext("两步验证 #%(id)s", id=self.user_id)


class StaffRecoveryCode(db.Model):
    """A one-time recovery code, stored only as a keyed hash (app.crypto.keyed_hash); used_at marks it spent."""
    __tablename__ = "staff_recovery_code"
    id = Column(Integer, primary_key=True)
    user_id = Column(Integer, ForeignKey("staff_two_factor.user_id", ondelete="CASCADE"), nullable=False,
                     index=True)
    code_hash = Column(String(64), nullable=False, unique=True)
    created_at = Column(DateTime, nullable=False, default=utcnow)
    used_at = Column(DateTime)

    owner = relationship("StaffTwoFactor", back_populates="recovery_codes")
