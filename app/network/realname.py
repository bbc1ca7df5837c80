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
from datetime import date

import phonenumbers
import requests
from flask import current_app
from sqlalchemy import select, text
from stdnum import luhn
from stdnum.cn import ric
from stdnum.exceptions import ValidationError as StdnumError

from app.clock import business_today, to_local, utcnow
from app.crypto import decrypt, encrypt, keyed_hash, mask
from app.errors import Conflict, KamengError, ValidationError
from app.extensions import db
from app.network.models import RealNameVerification

STATUS_TEXT = {"pending": "审核中", "verified": "已认证", "failed": "认证失败"}


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
        raise ValidationError("身份证号格式不正确，应为 18 位 (ID number must be 17 digits and a digit or X)",
                              code="id_format")
    try:
        birth = ric.get_birth_date(number)
    except StdnumError:
        raise ValidationError(f"身份证号中的出生日期 {number[6:14]} 不存在 (impossible birth date in the ID number)",
                              code="id_birth_date") from None
    today = business_today()
    if birth > today or birth.year < 1900:
        raise ValidationError(f"身份证号中的出生日期 {number[6:14]} 不合理 (impossible birth date in the ID number)",
                              code="id_birth_date")
    try:
        place = ric.get_birth_place(number)
    except StdnumError:
        raise ValidationError(f"身份证号中的地区码 {number[:6]} 不存在 (unknown region code in the ID number)",
                              code="id_region") from None
    if ric.calc_check_digit(number) != number[17]:  # stdnum wants the whole number (it drops the last digit)
        raise ValidationError("身份证号校验位错误 (ID number checksum is invalid)", code="id_checksum")
    gender = "M" if int(number[16]) % 2 else "F"
    return number, IdFacts(birth_date=birth, gender=gender, province=place.get("province") or "")


def check_bank_card(raw: str) -> str:
    card = re.sub(r"[\s-]", "", raw or "")
    if not card.isdigit() or not 12 <= len(card) <= 19:
        raise ValidationError("银行卡号应为 12-19 位数字 (bank card number must be 12-19 digits)", code="card_format")
    if not luhn.is_valid(card):
        raise ValidationError("银行卡号校验失败 (bank card number fails the Luhn check)", code="card_checksum")
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
        raise ValidationError("手机号不是有效的中国大陆手机号 (not a valid mainland China mobile number)", code="phone")
    return str(parsed.national_number)


def check_name(raw: str) -> str:
    name = (raw or "").strip()
    if not 2 <= len(name) <= 30 or any(ord(c) < 32 for c in name) or any(c.isdigit() for c in name):
        raise ValidationError("请填写身份证上的姓名 (2-30 个字符) (name as on the ID card)", code="name")
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
    return requests.post(url, data=body, headers=headers, timeout=timeout)


def three_element_check(name: str, id_number: str, card: str) -> ProviderResult:
    """三要素: ask the provider whether name, ID number and bank card belong together."""
    url, key = current_app.config.get("IDV_PROVIDER_URL"), current_app.config.get("IDV_PROVIDER_KEY")
    if not url or not key:
        raise ProviderUnavailable("实名认证服务未配置 (IDV_PROVIDER_URL / IDV_PROVIDER_KEY not set)")
    try:
        resp = signed_post(url.rstrip("/") + "/v1/three-elements", key,
                           {"name": name, "id_number": id_number, "bank_card": card},
                           current_app.config.get("IDV_PROVIDER_TIMEOUT", 10))
        data = resp.json() if resp.status_code == 200 else None
    except (requests.RequestException, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("result") not in ("match", "mismatch"):
        raise ProviderUnavailable("实名认证服务暂不可用，请稍后再试 (verification provider unavailable)")
    return ProviderResult(matched=data["result"] == "match", ref=str(data.get("ref", ""))[:64],
                          reason=data.get("reason"))


# ------------------------------------------------------------------------------------------------ service
def record_of(agent_id: int) -> RealNameVerification | None:
    return db.session.scalar(select(RealNameVerification).where(RealNameVerification.agent_id == agent_id))


def is_verified(agent_id: int) -> bool:
    return db.session.scalar(select(RealNameVerification.id).where(
        RealNameVerification.agent_id == agent_id, RealNameVerification.status == "verified")) is not None


def require_verified(agent_id: int, purpose: str = "提现") -> None:
    if not is_verified(agent_id):
        raise RealNameRequired(f"请先完成实名认证再{purpose} (real-name verification required)")


def check_purchase(agent_id: int, amount: int) -> None:
    """Wallet purchases above REALNAME_REQUIRED_ABOVE fen (0 = off) need a verified real name. One indexed
    lookup, and only above the threshold."""
    from app.settings import service as settings

    threshold = settings.get("realname_required_above") or 0  # 平台设置, else REALNAME_REQUIRED_ABOVE
    if threshold and amount > threshold:
        require_verified(agent_id, "购买超过该金额的商品")


def bank_card_of(agent_id: int) -> tuple[str, str]:
    """(name, bank card) in clear, for the payout adapter only."""
    rec = record_of(agent_id)
    if rec is None or rec.status != "verified":
        raise RealNameRequired("收款人未完成实名认证 (payee is not verified)")
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
        raise Conflict("已完成实名认证，如需更换请联系客服 (already verified)", code="already_verified")
    id_hash = keyed_hash("realname-id", number)
    _refuse_taken(agent_id, id_hash)
    db.session.rollback()  # hold no lock or snapshot while the provider answers

    result = three_element_check(values["name"], number, values["bank_card"])

    if db.engine.dialect.name == "postgresql":  # serialize submissions of one ID number across agents
        db.session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:h))"), {"h": id_hash})
    if result.matched:
        _refuse_taken(agent_id, id_hash)
    rec = record_of(agent_id) or RealNameVerification(agent_id=agent_id)
    now = utcnow()
    rec.name_enc, rec.id_number_enc = encrypt(values["name"]), encrypt(number)
    rec.bank_card_enc, rec.phone_enc = encrypt(values["bank_card"]), encrypt(values["phone"])
    rec.id_number_hash = id_hash
    rec.name_masked, rec.id_number_masked = mask(values["name"]), mask(number)
    rec.bank_card_masked, rec.phone_masked = mask(values["bank_card"]), mask(values["phone"])
    rec.age_band, rec.gender = facts.age_band(to_local(now).date()), facts.gender
    rec.province, rec.birth_year = facts.province[:16], facts.birth_year
    rec.provider_ref = result.ref or None
    rec.status = "verified" if result.matched else "failed"
    rec.failure_reason = None if result.matched else (
        "姓名、身份证号与银行卡不匹配 (name, ID and bank card do not match)")
    rec.verified_at = now if result.matched else None
    rec.updated_at = now
    db.session.add(rec)
    db.session.commit()
    return rec


def _refuse_taken(agent_id: int, id_hash: str) -> None:
    other = db.session.scalar(select(RealNameVerification.agent_id).where(
        RealNameVerification.id_number_hash == id_hash, RealNameVerification.status == "verified",
        RealNameVerification.agent_id != agent_id))
    if other is not None:
        db.session.rollback()
        raise Conflict("该身份证号已被其他账号实名认证 (this ID number is already verified for another account)",
                       code="id_taken")
