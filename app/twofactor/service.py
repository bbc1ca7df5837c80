"""Staff two-factor sign-in (两步验证): the only place that changes a user's TOTP, recovery codes and sign-in
challenge. Each public call that changes state is one transaction and commits.

- A code is accepted once: verify_and_get_timecode (±1 time step) gives the code's time step, and a guarded
  UPDATE stores it only when it is newer than the last accepted one (pyotp's verify() alone accepts a code
  again and again).
- The secret is stored encrypted (app.crypto); recovery codes only as keyed hashes, each spent by a guarded
  UPDATE on used_at.
- The second sign-in step is a challenge kept on the user's row (id, expiry), not only in the session cookie.
- Wrong second-step codes are counted on the user's row since the last successful second step, across
  challenges: a new challenge (the password typed again) does not reset the count, only a successful second
  step (or enrolling again) does. Every MAX_FAILURES wrong codes end the challenge and lock the second step,
  LOCK_MINUTES the first time and twice as long each time after (up to MAX_LOCK_MINUTES).
- While locked, the right password is answered exactly like a wrong one (the caller shows the same page), so a
  lock never confirms a guessed password; the attempt is audited.
"""
from __future__ import annotations

import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta

import pyotp
import segno
from flask import current_app
from flask_babel import gettext as _
from pyotp.exceptions import OTPVerificationError
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from app.audit import service as audit
from app.clock import utcnow
from app.crypto import decrypt, encrypt, keyed_hash
from app.errors import Conflict, Forbidden, ValidationError
from app.extensions import db
from app.settings import service as settings
from app.twofactor.models import StaffRecoveryCode, StaffTwoFactor

# "Staff" is any user holding one of these roles; agents sign in with a password only.
STAFF_ROLES = frozenset({"Admin", "Manager", "Finance", "Support"})
RECOVERY_CODE_COUNT = 10
CHALLENGE_SECONDS = 300
MAX_FAILURES = 5  # wrong codes since the last successful second step before each lock
LOCK_MINUTES = 15  # the first lock; each further one doubles
MAX_LOCK_MINUTES = 24 * 60
VALID_WINDOW = 1  # one 30-second step either side: phone clocks drift
# Recovery codes: 10 characters without look-alikes (0/o, 1/l/i), about 49 bits each; shown as xxxxx-xxxxx.
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
_RECOVERY_LEN = 10
_TOTP_SHAPE = re.compile(r"^[0-9]{6}$")
_RECOVERY_SHAPE = re.compile(f"^[{_RECOVERY_ALPHABET}]{{{_RECOVERY_LEN}}}$")
_SEPARATORS = re.compile(r"[\s\-]+")


class TwoFactorError(ValidationError):
    code = "two_factor_invalid"
    wrong_answer = False  # a code was given and refused (risk control counts it as a failed login)


class WrongCode(TwoFactorError):
    """The code was wrong, already used or not a code at all; the challenge goes on."""
    code = "two_factor_wrong_code"
    wrong_answer = True


class ChallengeOver(TwoFactorError):
    """No challenge to answer (expired, replaced, out of attempts): sign in with the password again."""
    code = "two_factor_challenge_over"


class TwoFactorLocked(Forbidden):
    """The second step is locked: the sign-in page must answer as it does for a wrong password."""
    code = "two_factor_locked"


@dataclass(frozen=True)
class Enrolment:
    secret: str
    uri: str
    qr_svg: str


@dataclass(frozen=True)
class SecondStep:
    recovery_used: bool
    recovery_left: int


def totp_time() -> float:
    """The time codes are checked at (tests move it)."""
    return time.time()


def is_staff(user) -> bool:
    return any(role.name in STAFF_ROLES for role in (getattr(user, "roles", None) or []))


def is_enabled(user_id: int) -> bool:
    return bool(db.session.scalar(select(StaffTwoFactor.enabled).where(StaffTwoFactor.user_id == user_id)))


def required() -> bool:
    """平台设置 "staff must use two-factor sign-in"."""
    return bool(settings.get("staff_2fa_required"))


def must_enrol(user) -> bool:
    """A signed-in staff user who may reach nothing but enrolment (and sign-out) until enrolled."""
    return required() and is_staff(user) and not is_enabled(user.id)


def status_of(user_id: int) -> StaffTwoFactor | None:
    return db.session.get(StaffTwoFactor, user_id)


def recovery_codes_left(user_id: int) -> int:
    return db.session.scalar(select(func.count()).select_from(StaffRecoveryCode).where(
        StaffRecoveryCode.user_id == user_id, StaffRecoveryCode.used_at.is_(None))) or 0


def normalize_code(code: str | None) -> str:
    """What the user typed without spaces and hyphens, lower case ("123 456", "ABCDE-FGHJK")."""
    return _SEPARATORS.sub("", code or "").lower()


# ------------------------------------------------------------------------------------------------ enrolment

def start_enrolment(user) -> Enrolment:
    """The pending secret of a staff user not yet enrolled, with its provisioning URI and QR code. Made on first
    call (commits) and kept until activation, so reloading the page does not invalidate a scanned code."""
    if not is_staff(user):
        raise Forbidden(_("仅员工账号可启用两步验证"))
    row = db.session.get(StaffTwoFactor, user.id)
    if row is not None and row.enabled:
        raise Conflict(_("两步验证已启用"))
    if row is None or not row.secret_enc:
        if row is None:
            row = StaffTwoFactor(user_id=user.id, enabled=False, challenge_failures=0)
            db.session.add(row)
        row.secret_enc = encrypt(pyotp.random_base32())
        try:
            db.session.commit()
        except IntegrityError:  # another tab made the row first: use its secret
            db.session.rollback()
            row = db.session.get(StaffTwoFactor, user.id)
    secret = decrypt(row.secret_enc)
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name=issuer())
    return Enrolment(secret=secret, uri=uri, qr_svg=qr_svg(uri))


def issuer() -> str:
    return current_app.config.get("APP_NAME") or "卡盟 Kameng"  # i18n-keep: the brand, both names


def qr_svg(uri: str) -> str:
    return segno.make(uri, error="m").svg_inline(scale=5, dark="#111", light="#fff")


def activate(user, code: str) -> list[str]:
    """Turn two-factor sign-in on with a current code from the pending secret; returns the recovery codes, which
    exist in plain text only in this answer."""
    row = _locked_row(user.id)
    if row is None or not row.secret_enc:
        db.session.rollback()
        raise TwoFactorError(_("请先打开两步验证页面获取密钥"))
    if row.enabled:
        db.session.rollback()
        raise Conflict(_("两步验证已启用"))
    if not _accept_totp(row, code):
        db.session.rollback()
        raise WrongCode(_("验证码不正确或已使用"))
    row.enabled, row.enabled_at, row.locked_until = True, utcnow(), None
    _clear_challenge(row)
    row.challenge_failures = 0
    codes = _replace_recovery_codes(row.user_id)
    audit.record("two_factor.enable", "user", user.id, {"enabled": False},
                 {"enabled": True, "recovery_codes": len(codes)}, actor_id=user.id)
    db.session.commit()
    return codes


def disable(user, code: str) -> None:
    """Turn two-factor sign-in off; needs a current authenticator code (a recovery code is not enough)."""
    row = _enabled_row_with_code(user.id, code)
    _turn_off(row)
    audit.record("two_factor.disable", "user", user.id, {"enabled": True}, {"enabled": False}, actor_id=user.id)
    db.session.commit()


def regenerate_recovery_codes(user, code: str) -> list[str]:
    """Replace all recovery codes (the old ones stop working); needs a current authenticator code."""
    _enabled_row_with_code(user.id, code)
    left = recovery_codes_left(user.id)
    codes = _replace_recovery_codes(user.id)
    audit.record("two_factor.recovery_regenerate", "user", user.id, {"recovery_codes_left": left},
                 {"recovery_codes_left": len(codes)}, actor_id=user.id)
    db.session.commit()
    return codes


def reset(user_id: int, actor_id: int | None, reason: str | None = None) -> None:
    """An admin turns another user's two-factor sign-in off (a lost phone): secret, recovery codes and any
    challenge are gone; the user signs in with the password and enrols again."""
    row = _locked_row(user_id)
    if row is None or not (row.enabled or row.secret_enc):
        db.session.rollback()
        raise ValidationError(_("该用户未启用两步验证"))
    old = {"enabled": row.enabled, "recovery_codes_left": recovery_codes_left(user_id)}
    _turn_off(row)
    row.locked_until = None
    audit.record("two_factor.reset", "user", user_id, old, {"enabled": False}, reason=reason, actor_id=actor_id)
    db.session.commit()


# ------------------------------------------------------------------------------------------------ sign-in

def begin_challenge(user_id: int, ip: str | None = None) -> str | None:
    """After the right password: None when the user has no two-factor sign-in (log in now); otherwise a new
    challenge id for the second step (replacing any earlier one; the count of wrong codes carries over). While
    the second step is locked: audits the attempt (two_factor.locked_login) and raises TwoFactorLocked, which the
    caller must answer as a wrong password."""
    row = _locked_row(user_id)
    if row is None or not row.enabled:
        db.session.rollback()
        return None
    now = utcnow()
    if row.locked_until is not None and row.locked_until > now:
        audit.record("two_factor.locked_login", "user", user_id, None,
                     {"locked_until": row.locked_until.isoformat(), "failures": row.challenge_failures,
                      "ip": ip})
        db.session.commit()
        raise TwoFactorLocked(_("两步验证已锁定"))
    row.challenge_id = secrets.token_urlsafe(32)
    row.challenge_expires_at = now + timedelta(seconds=CHALLENGE_SECONDS)
    db.session.commit()
    return row.challenge_id


def answer_challenge(user_id: int, challenge_id: str | None, code: str | None, ip: str | None = None) -> SecondStep:
    """The second step: a current authenticator code (never one accepted before) or an unused recovery code.
    Wrong answers are counted on the row (across challenges, until a successful second step) and audited; every
    MAX_FAILURES-th ends the challenge (ChallengeOver) and locks the second step (lock_minutes)."""
    row = _locked_row(user_id)
    now = utcnow()
    if (row is None or not row.enabled or not challenge_id or row.challenge_id is None
            or (row.locked_until is not None and row.locked_until > now)
            or not hmac.compare_digest(row.challenge_id, str(challenge_id))
            or row.challenge_expires_at is None or row.challenge_expires_at <= now):
        db.session.rollback()
        raise ChallengeOver(_("登录已过期，请重新输入密码"))
    clean = normalize_code(code)
    if not clean:
        db.session.rollback()
        raise TwoFactorError(_("请输入验证码或恢复码"))
    is_totp = bool(_TOTP_SHAPE.match(clean))
    accepted = _accept_totp(row, clean) if is_totp else _spend_recovery_code(user_id, clean)
    if not accepted:
        row.challenge_failures = (row.challenge_failures or 0) + 1
        over = row.challenge_failures % MAX_FAILURES == 0
        minutes = lock_minutes(row.challenge_failures) if over else 0
        audit.record("two_factor.failed", "user", user_id, None,
                     {"attempt": row.challenge_failures, "kind": "totp" if is_totp else "recovery", "ip": ip,
                      "locked": over, **({"lock_minutes": minutes} if over else {})})
        if over:
            _clear_challenge(row)
            row.locked_until = now + timedelta(minutes=minutes)
        db.session.commit()
        if over:
            exc = ChallengeOver(_("验证码错误次数过多，请 %(minutes)s 分钟后重新登录", minutes=minutes))
            exc.wrong_answer = True
            raise exc
        left = MAX_FAILURES - row.challenge_failures % MAX_FAILURES
        raise WrongCode(_("验证码不正确或已使用，还可尝试 %(left)s 次", left=left))
    _clear_challenge(row)
    row.challenge_failures, row.locked_until = 0, None
    left = recovery_codes_left(user_id)
    if not is_totp:
        audit.record("two_factor.recovery_used", "user", user_id, None, {"recovery_codes_left": left},
                     actor_id=user_id)
    db.session.commit()
    return SecondStep(recovery_used=not is_totp, recovery_left=left)


def lock_minutes(failures: int) -> int:
    """How long the second step locks when the wrong-code count reaches `failures` (a multiple of MAX_FAILURES):
    LOCK_MINUTES the first time, doubling each time after, at most MAX_LOCK_MINUTES."""
    rounds = max(1, failures // MAX_FAILURES)
    return min(MAX_LOCK_MINUTES, LOCK_MINUTES * 2 ** min(rounds - 1, 16))


# ------------------------------------------------------------------------------------------------ internals


def _locked_row(user_id: int) -> StaffTwoFactor | None:
    """The user's row, locked for this transaction (PostgreSQL; SQLite serializes writers) and freshly read."""
    return db.session.execute(select(StaffTwoFactor).where(StaffTwoFactor.user_id == user_id).with_for_update()
                              .execution_options(populate_existing=True)).scalar_one_or_none()


def _enabled_row_with_code(user_id: int, code: str) -> StaffTwoFactor:
    row = _locked_row(user_id)
    if row is None or not row.enabled:
        db.session.rollback()
        raise TwoFactorError(_("两步验证未启用"))
    if not _accept_totp(row, code):
        db.session.rollback()
        raise WrongCode(_("验证码不正确或已使用"))
    return row


def _accept_totp(row: StaffTwoFactor, code: str | None) -> bool:
    """True when `code` is the authenticator's code for now (±VALID_WINDOW steps) and its time step is newer than
    the last one accepted, which it then becomes (a guarded UPDATE: two requests cannot both use one code)."""
    clean = normalize_code(code)
    if not _TOTP_SHAPE.match(clean) or not row.secret_enc:
        return False
    try:
        timecode = pyotp.TOTP(decrypt(row.secret_enc)).verify_and_get_timecode(
            clean, for_time=totp_time(), valid_window=VALID_WINDOW)
    except OTPVerificationError:
        return False
    result = db.session.execute(
        update(StaffTwoFactor)
        .where(StaffTwoFactor.user_id == row.user_id,
               or_(StaffTwoFactor.last_timecode.is_(None), StaffTwoFactor.last_timecode < timecode))
        .values(last_timecode=timecode)
        .execution_options(synchronize_session=False))
    if result.rowcount == 1:
        row.last_timecode = timecode
        return True
    return False


def _recovery_hash(user_id: int, clean: str) -> str:
    return keyed_hash("two-factor-recovery", user_id, clean)


def _spend_recovery_code(user_id: int, clean: str) -> bool:
    if not _RECOVERY_SHAPE.match(clean):
        return False
    result = db.session.execute(
        update(StaffRecoveryCode)
        .where(StaffRecoveryCode.user_id == user_id, StaffRecoveryCode.code_hash == _recovery_hash(user_id, clean),
               StaffRecoveryCode.used_at.is_(None))
        .values(used_at=utcnow())
        .execution_options(synchronize_session=False))
    return result.rowcount == 1


def _replace_recovery_codes(user_id: int) -> list[str]:
    db.session.execute(delete(StaffRecoveryCode).where(StaffRecoveryCode.user_id == user_id)
                       .execution_options(synchronize_session=False))
    codes = ["".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(_RECOVERY_LEN))
             for _ in range(RECOVERY_CODE_COUNT)]
    db.session.add_all(StaffRecoveryCode(user_id=user_id, code_hash=_recovery_hash(user_id, c)) for c in codes)
    return [f"{c[:5]}-{c[5:]}" for c in codes]


def _clear_challenge(row: StaffTwoFactor) -> None:
    """The challenge in progress ends; the wrong-code count stays (only a successful second step clears it)."""
    row.challenge_id, row.challenge_expires_at = None, None


def _turn_off(row: StaffTwoFactor) -> None:
    """Secret and recovery codes gone; last_timecode stays (time steps only grow, so it still refuses replays)."""
    row.enabled, row.enabled_at, row.secret_enc = False, None, None
    _clear_challenge(row)
    row.challenge_failures = 0
    db.session.execute(delete(StaffRecoveryCode).where(StaffRecoveryCode.user_id == row.user_id)
                       .execution_options(synchronize_session=False))
