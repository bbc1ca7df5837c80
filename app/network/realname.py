"""实名认证 (real-name verification): local checks (resident ID, bank card, CN mobile), a three-element check
(name + ID + card) at a provider over signed HTTP, storage encrypted + masked, derived facts for analytics.

One ID number verifies one agent only (keyed hash). Required before any withdrawal; optionally before wallet
purchases above REALNAME_REQUIRED_ABOVE fen.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import phonenumbers
import requests
from flask import current_app
from flask_babel import gettext, lazy_gettext
from sqlalchemy import func, select, text, update
from stdnum import luhn
from stdnum.cn import ric
from stdnum.exceptions import ValidationError as StdnumError

from app import outbound, states
from app.audit import service as audit
from app.clock import business_day_start, business_today, to_local, utcnow
from app.crypto import decrypt, encrypt, keyed_hash, mask
from app.errors import Conflict, KamengError, TooManyAttempts, ValidationError
from app.extensions import db
from app.network.models import REALNAME_STATES, RealNameAttempt, RealNameVerification

STATUS_TEXT = {
    "pending": lazy_gettext("审核中"),
    "verified": lazy_gettext("已认证"),
    "failed": lazy_gettext("认证失败"),
}


class RealNameRequired(KamengError):
    code = "realname_required"
    status = 403


class ProviderUnavailable(KamengError):
    code = "provider_unavailable"
    status = 503


@dataclass(frozen=True)
class IdFacts:
    birth_date: date
    gender: str  # M / F
    province: str

    @property
    def birth_year(self) -> int:
        return self.birth_date.year

    def age_band(self, today: date) -> str:
        age = today.year - self.birth_date.year - ((today.month, today.day) < (self.birth_date.month,
                                                                                  self.birth_date.day))
        for upper, band in ((17, "<18"), (24, "18-24"), (34, "25-34"), (44, "35-44"), (54, "45-54")):
            if age <= upper:
                return band
        return "55+"


# ------------------------------------------------------------------------------------------------ local checks
def check_id_number(raw: str) -> tuple[str, IdFacts]:
    """A resident ID number (居民身份证号): format, birth date, region, checksum, each refused with its own message."""
    number = ric.compact(raw or "").upper()
    if not re.fullmatch(r"\d{17}[\dX]", number):
        raise ValidationError(gettext("身份证号格式不正确，应为 18 位"),
                              code="id_format")
    try:
        birth = ric.get_birth_date(number)
    except StdnumError:
        raise ValidationError(gettext("身份证号中的出生日期 %(number)s 不存在", number=number[6:14]),
                              code="id_birth_date") from None
    today = business_today()
    if birth > today or birth.year < 1900:
        raise ValidationError(gettext("身份证号中的出生日期 %(number)s 不合理", number=number[6:14]),
                              code="id_birth_date")
    try:
        place = ric.get_birth_place(number)
    except StdnumError:
        raise ValidationError(gettext("身份证号中的地区码 %(number)s 不存在", number=number[:6]),
                              code="id_region") from None
    if ric.calc_check_digit(number) != number[17]:  # stdnum wants the whole number (it drops the last digit)
        raise ValidationError(gettext("身份证号校验位错误"), code="id_checksum")
    gender = "M" if int(number[16]) % 2 else "F"
    return number, IdFacts(birth_date=birth, gender=gender, province=place.get("province") or "")


def check_bank_card(raw: str) -> str:
    card = re.sub(r"[\s-]", "", raw or "")
    if not card.isdigit() or not 12 <= len(card) <= 19:
        raise ValidationError(gettext("银行卡号应为 12-19 位数字"), code="card_format")
    if not luhn.is_valid(card):
        raise ValidationError(gettext("银行卡号校验失败"), code="card_checksum")
    return card


def check_phone(raw: str) -> str:
    try:
        parsed = phonenumbers.parse((raw or "").strip(), "CN")
    except phonenumbers.NumberParseException:
        parsed = None
    ok = (parsed is not None and parsed.country_code == 86 and phonenumbers.is_valid_number(parsed)
          and phonenumbers.number_type(parsed) in (phonenumbers.PhoneNumberType.MOBILE,
                                                   phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE))
    if not ok:
        raise ValidationError(gettext("手机号不是有效的中国大陆手机号"), code="phone")
    return str(parsed.national_number)


def check_name(raw: str) -> str:
    name = (raw or "").strip()
    if not 2 <= len(name) <= 30 or any(ord(c) < 32 for c in name) or any(c.isdigit() for c in name):
        raise ValidationError(gettext("请填写身份证上的姓名 (2-30 个字符)"), code="name")
    return name


# ------------------------------------------------------------------------------------------------ provider adapter
@dataclass(frozen=True)
class ProviderResult:
    matched: bool
    ref: str
    reason: str | None = None


def sign(key: str, timestamp: str, nonce: str, body: bytes) -> str:
    """HMAC-SHA256(key, TIMESTAMP\\nNONCE\\nSHA256HEX(BODY)), lowercase hex. Shared by both simulators."""
    message = f"{timestamp}\n{nonce}\n{hashlib.sha256(body).hexdigest()}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def signed_post(url: str, key: str, payload: dict, timeout: float) -> requests.Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    ts, nonce = str(int(time.time())), uuid.uuid4().hex
    headers = {"Content-Type": "application/json", "X-Timestamp": ts, "X-Nonce": nonce,
               "X-Signature": sign(key, ts, nonce, body)}
    return outbound.post(url, data=body, headers=headers, timeout=timeout)  # fenced: see app/outbound.py


def three_element_check(name: str, id_number: str, card: str) -> ProviderResult:
    """三要素: ask the provider whether name, ID number and bank card belong together."""
    url, key = current_app.config.get("IDV_PROVIDER_URL"), current_app.config.get("IDV_PROVIDER_KEY")
    if not url or not key:
        raise ProviderUnavailable(gettext("实名认证服务未配置"))
    try:
        resp = signed_post(url.rstrip("/") + "/v1/three-elements", key,
                           {"name": name, "id_number": id_number, "bank_card": card},
                           current_app.config.get("IDV_PROVIDER_TIMEOUT", 10))
        data = resp.json() if resp.status_code == 200 else None
    except (*outbound.FAILURES, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("result") not in ("match", "mismatch"):
        raise ProviderUnavailable(gettext("实名认证服务暂不可用，请稍后再试"))
    return ProviderResult(matched=data["result"] == "match", ref=str(data.get("ref", ""))[:64],
                          reason=data.get("reason"))


# ------------------------------------------------------------------------------------------------ service
def record_of(agent_id: int) -> RealNameVerification | None:
    return db.session.scalar(select(RealNameVerification).where(RealNameVerification.agent_id == agent_id))


def is_verified(agent_id: int) -> bool:
    return db.session.scalar(select(RealNameVerification.id).where(
        RealNameVerification.agent_id == agent_id, RealNameVerification.status == "verified")) is not None


def require_verified(agent_id: int, purpose: str = "withdrawal") -> None:
    """purpose: withdrawal, or purchase (above the threshold of 平台设置)."""
    if not is_verified(agent_id):
        raise RealNameRequired(gettext("请先完成实名认证再购买超过该金额的商品") if purpose == "purchase"
                               else gettext("请先完成实名认证再提现"))


def check_purchase(agent_id: int, amount: int) -> None:
    """Wallet purchases above REALNAME_REQUIRED_ABOVE fen (0 = off) need a verified real name. One indexed
    lookup, and only above the threshold."""
    from app.settings import service as settings

    threshold = settings.get("realname_required_above") or 0  # 平台设置, else REALNAME_REQUIRED_ABOVE
    if threshold and amount > threshold:
        require_verified(agent_id, "purchase")


def bank_card_of(agent_id: int) -> tuple[str, str]:
    """(name, bank card) in clear, for the payout adapter only."""
    rec = record_of(agent_id)
    if rec is None or rec.status != "verified":
        raise RealNameRequired(gettext("收款人未完成实名认证"))
    return decrypt(rec.name_enc), decrypt(rec.bank_card_enc)


def submit(agent_id: int, name: str, id_number: str, bank_card: str, phone: str) -> RealNameVerification:
    """Check locally (every failing field named), refuse an ID verified for another agent, ask the provider, store.

    Commits the record (verified or failed). Local refusals and provider outages write nothing.
    """
    errors, values = [], {}
    for field, check, raw in (("name", check_name, name), ("id_number", check_id_number, id_number),
                              ("bank_card", check_bank_card, bank_card), ("phone", check_phone, phone)):
        try:
            values[field] = check(raw)
        except ValidationError as exc:
            errors.append(exc)
    if errors:
        raise ValidationError("；".join(e.message for e in errors), code=errors[0].code)
    number, facts = values["id_number"]
    existing = record_of(agent_id)
    if existing is not None and existing.status == "verified":
        raise Conflict(gettext("已完成实名认证，如需更换请联系客服"), code="already_verified")
    id_hash = keyed_hash("realname-id", number)
    # The attempt is counted before the "ID taken" check: that answer tells whether an ID number is verified here,
    # so it spends the same budget as asking the provider.
    attempt_id = _reserve_attempt(agent_id, id_hash)  # commits: hold no lock or snapshot while the provider answers
    _refuse_taken(agent_id, id_hash, attempt_id)

    try:
        result = three_element_check(values["name"], number, values["bank_card"])
    except ProviderUnavailable:
        _finish_attempt(attempt_id, "unavailable")  # not billed, not an answer: it does not count
        db.session.commit()
        raise

    if db.engine.dialect.name == "postgresql":  # serialize submissions of one ID number across agents
        db.session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:h))"), {"h": id_hash})
    if result.matched:
        _refuse_taken(agent_id, id_hash, attempt_id)
    status = "verified" if result.matched else "failed"
    rec = record_of(agent_id)
    if rec is None:
        rec = RealNameVerification(agent_id=agent_id, status=status)
    elif rec.status != status:
        states.move(REALNAME_STATES, rec.id, rec.status, status)
    now = utcnow()
    rec.name_enc, rec.id_number_enc = encrypt(values["name"]), encrypt(number)
    rec.bank_card_enc, rec.phone_enc = encrypt(values["bank_card"]), encrypt(values["phone"])
    rec.id_number_hash = id_hash
    rec.name_masked, rec.id_number_masked = mask(values["name"]), mask(number)
    rec.bank_card_masked, rec.phone_masked = mask(values["bank_card"]), mask(values["phone"])
    rec.age_band, rec.gender = facts.age_band(to_local(now).date()), facts.gender
    rec.province, rec.birth_year = facts.province[:16], facts.birth_year
    rec.provider_ref = result.ref or None
    rec.failure_reason = None if result.matched else (
        "姓名、身份证号与银行卡不匹配 (name, ID and bank card do not match)")  # i18n-keep: data
    rec.verified_at = now if result.matched else None
    rec.updated_at = now
    db.session.add(rec)
    _finish_attempt(attempt_id, "matched" if result.matched else "mismatch")
    if not result.matched:
        locked_until = _locked_until(agent_id)
        if locked_until is not None:
            audit.record("realname.locked", "agent", agent_id, None, {"until": locked_until.isoformat()},
                         reason="实名认证连续失败，暂停提交 (too many failed verifications)")  # i18n-keep: data
    db.session.commit()
    return rec


# ------------------------------------------------------------------------------------------------ abuse limits
def _reserve_attempt(agent_id: int, id_hash: str) -> int:
    """Check the limits BEFORE the provider is asked (each ask is billed and answers "do these three match?"),
    then record the attempt as pending and commit, so parallel submissions count each other.

    Limits (config): REALNAME_DAILY_ATTEMPTS per agent per business day, REALNAME_ID_ATTEMPTS per ID number per
    business day across agents, and a lockout of REALNAME_LOCKOUT_HOURS after REALNAME_LOCKOUT_FAILURES failed
    verifications. A refusal is audited and raises TooManyAttempts saying when the agent can try again."""
    cfg = current_app.config
    if db.engine.dialect.name == "postgresql":  # one agent's (and one ID number's) submissions one at a time
        db.session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"realname-agent:{agent_id}"})
        db.session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": "realname-id:" + id_hash})
    today = business_today()
    tomorrow = _next_business_day_start()
    counted = RealNameAttempt.outcome != "unavailable"
    refusal = None
    locked_until = _locked_until(agent_id)
    if locked_until is not None:
        refusal = ("realname_locked", locked_until,
                   gettext("实名认证失败次数过多，已暂停提交，请于 %(until)s 后再试",
                           until=_local_text(locked_until)))
    elif db.session.scalar(select(func.count()).where(
            RealNameAttempt.agent_id == agent_id, RealNameAttempt.business_day == today, counted)) \
            >= int(cfg["REALNAME_DAILY_ATTEMPTS"]):
        refusal = ("realname_daily_limit", tomorrow,
                   gettext("今日实名认证提交次数已达上限（%(limit)s 次），请于 %(until)s 后再试",
                           limit=cfg["REALNAME_DAILY_ATTEMPTS"], until=_local_text(tomorrow)))
    elif db.session.scalar(select(func.count()).where(
            RealNameAttempt.id_number_hash == id_hash, RealNameAttempt.business_day == today, counted)) \
            >= int(cfg["REALNAME_ID_ATTEMPTS"]):
        refusal = ("realname_id_limit", tomorrow,
                   gettext("该身份证号今日提交次数已达上限，请于 %(until)s 后再试", until=_local_text(tomorrow)))
    if refusal is not None:
        code, until, message = refusal
        db.session.rollback()
        audit.record("realname.refused", "agent", agent_id, None, {"code": code, "until": until.isoformat()},
                     reason=message[:255])
        db.session.commit()
        raise TooManyAttempts(message, code=code)
    attempt = RealNameAttempt(agent_id=agent_id, id_number_hash=id_hash, business_day=today, outcome="pending")
    db.session.add(attempt)
    db.session.commit()  # the attempt itself is the record of the submission (refusals and lockouts are audited)
    return attempt.id


def _finish_attempt(attempt_id: int, outcome: str) -> None:
    db.session.execute(update(RealNameAttempt).where(RealNameAttempt.id == attempt_id).values(outcome=outcome))


def _locked_until(agent_id: int) -> datetime | None:
    """When the agent's lockout ends, if it is locked now. Failures (and attempts still pending, which may turn
    out to be failures) count from the end of the previous lockout: the Nth one locks for REALNAME_LOCKOUT_HOURS."""
    cfg = current_app.config
    threshold, hours = int(cfg["REALNAME_LOCKOUT_FAILURES"]), int(cfg["REALNAME_LOCKOUT_HOURS"])
    failures = db.session.scalars(select(RealNameAttempt.created_at).where(
        RealNameAttempt.agent_id == agent_id, RealNameAttempt.outcome.in_(("mismatch", "taken", "pending")))
        .order_by(RealNameAttempt.created_at, RealNameAttempt.id)).all()
    until, count = None, 0
    for at in failures:
        if until is not None and at < until:
            continue  # in flight when the lock began
        count += 1
        if count >= threshold:
            until, count = at + timedelta(hours=hours), 0
    return until if until is not None and until > utcnow() else None


def _next_business_day_start() -> datetime:
    """The UTC instant at which tomorrow's business day begins (today's start + 25 h is inside tomorrow)."""
    return business_day_start(business_day_start() + timedelta(hours=25))


def _local_text(at: datetime) -> str:
    return to_local(at).strftime("%Y-%m-%d %H:%M")


def _refuse_taken(agent_id: int, id_hash: str, attempt_id: int) -> None:
    """Refuse an ID number verified for another agent; the attempt is finished as `taken` (it counts toward the
    daily limits and the lockout, like a mismatch) and audited."""
    other = db.session.scalar(select(RealNameVerification.agent_id).where(
        RealNameVerification.id_number_hash == id_hash, RealNameVerification.status == "verified",
        RealNameVerification.agent_id != agent_id))
    if other is not None:
        db.session.rollback()
        _finish_attempt(attempt_id, "taken")
        audit.record("realname.id_taken", "agent", agent_id, None, None,
                     reason="身份证号已被其他账号实名认证 (ID number verified for another account)")  # i18n-keep: data
        db.session.commit()
        raise Conflict(gettext("该身份证号已被其他账号实名认证"),
                       code="id_taken")
