"""黑名单 / 观察名单: entries added, expired and removed by staff (screen or CLI), every change audited. A personal
value (contact, phone, ID number, payment account) is kept only as its keyed hash and a masked form."""
from __future__ import annotations

from datetime import timedelta

from flask_babel import gettext as _
from flask_babel import lazy_gettext
from sqlalchemy import select

from app.audit import service as audit
from app.clock import utcnow
from app.errors import NotFound, ValidationError
from app.extensions import db
from app.risk import feed
from app.risk.identity import digest, mask, normalise
from app.risk.models import LIST_ACTIONS, LIST_KINDS, PERSONAL_KINDS, RiskListEntry

KIND_TEXT = {"ip": "IP", "cidr": lazy_gettext("网段"), "device": lazy_gettext("设备"),
             "contact": lazy_gettext("联系方式"), "phone": lazy_gettext("手机号"),
             "id_number": lazy_gettext("身份证号"),
             "payment_account": lazy_gettext("支付账号"), "agent": lazy_gettext("代理登录名")}
ACTION_TEXT = {"block": lazy_gettext("黑名单（拦截）"), "review": lazy_gettext("观察名单（人工审核）")}


def _clean(kind: str, value) -> str:
    if kind not in LIST_KINDS:
        raise ValidationError(_("类型须为 %(kinds)s 之一（不是 %(kind)s）", kinds=", ".join(LIST_KINDS),
                                kind=repr(kind)))
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > 128 or not value.isprintable():
        raise ValidationError(_("请填写值（不超过 128 个字符）"))
    value = value.strip()
    try:
        if kind in ("ip", "cidr"):
            normalise(kind, value)
    except ValueError:
        raise ValidationError(_("不是有效的%(kind)s：%(value)s", kind=KIND_TEXT[kind], value=value)) from None
    if kind == "phone":
        import phonenumbers

        try:
            ok = phonenumbers.is_valid_number(phonenumbers.parse(value, "CN"))
        except phonenumbers.NumberParseException:
            ok = False
        if not ok:
            raise ValidationError(_("不是有效的手机号：%(value)s", value=mask(value)))
    return value


def add(kind: str, value, action: str, reason: str | None = None, days: int | None = None,
        actor_id: int | None = None) -> RiskListEntry:
    """Add an entry (commits). `days`: it expires after that many days; none: until removed."""
    value = _clean(kind, value)
    normalised = normalise(kind, value)
    masked = normalised if kind == "cidr" else mask(normalised)  # a network is not personal data: staff read it
    return add_hashed(kind, digest(kind, value), masked, action, reason, days, actor_id,
                      value=None if kind in PERSONAL_KINDS or len(normalised) > 64 else normalised,
                      share_value=normalised)


def add_hashed(kind: str, value_hash: str, masked: str, action: str, reason: str | None = None,
               days: int | None = None, actor_id: int | None = None, value: str | None = None,
               share_value: str | None = None) -> RiskListEntry:
    """Add an entry known only by its keyed hash (commits): a held order keeps its buyer's device and contact only
    as the hashes the lists match on (Order.device_key, Order.buyer_key), so the reviewer lists those.
    `share_value`: the normalised value where it is known, kept encrypted so the shared feed (app.risk.feed) can
    hash it under the partners' key; an entry without it is not shared."""
    if kind not in LIST_KINDS:
        raise ValidationError(_("类型须为 %(kinds)s 之一（不是 %(kind)s）", kinds=", ".join(LIST_KINDS),
                                kind=repr(kind)))
    if action not in LIST_ACTIONS:
        raise ValidationError(_("动作须为 block 或 review"))
    if days is not None and (not isinstance(days, int) or days <= 0 or days > 3650):
        raise ValidationError(_("有效天数须为 1-3650"))
    entry = RiskListEntry(kind=kind, value=value, value_hash=value_hash, masked=masked[:64], action=action,
                          reason=(reason or "").strip()[:255] or None, created_by_id=actor_id,
                          expires_at=utcnow() + timedelta(days=days) if days else None)
    db.session.add(entry)
    db.session.flush()
    audit.record("risk_list.add", "risk_list_entry", entry.id, None,
                 {"kind": kind, "value": entry.masked, "action": action, "expires_at": str(entry.expires_at or "")},
                 reason=entry.reason, actor_id=actor_id)
    if share_value is not None:
        feed.remember(entry.id, share_value)
    db.session.commit()
    return entry


def remove(entry_id: int, actor_id: int | None = None) -> RiskListEntry:
    entry = db.session.scalar(select(RiskListEntry).where(RiskListEntry.id == entry_id).with_for_update())
    if entry is None or entry.removed_at is not None:
        db.session.rollback()
        raise NotFound(_("名单条目 %(id)s 不存在或已移除", id=entry_id))
    entry.removed_at, entry.removed_by_id = utcnow(), actor_id
    audit.record("risk_list.remove", "risk_list_entry", entry.id, {"kind": entry.kind, "value": entry.masked,
                                                                   "action": entry.action}, None, actor_id=actor_id)
    feed.touched(entry.id)
    db.session.commit()
    return entry


def expire(entry_id: int, days: int, actor_id: int | None = None) -> RiskListEntry:
    """Set (or move) when an entry stops applying."""
    if not isinstance(days, int) or days <= 0 or days > 3650:
        raise ValidationError(_("有效天数须为 1-3650"))
    entry = db.session.get(RiskListEntry, entry_id)
    if entry is None or entry.removed_at is not None:
        raise NotFound(_("名单条目 %(id)s 不存在或已移除", id=entry_id))
    before = str(entry.expires_at or "")
    entry.expires_at = utcnow() + timedelta(days=days)
    audit.record("risk_list.expire", "risk_list_entry", entry.id, {"expires_at": before},
                 {"expires_at": str(entry.expires_at)}, actor_id=actor_id)
    feed.touched(entry.id)
    db.session.commit()
    return entry


def as_json(entry: RiskListEntry) -> dict:
    return {"id": entry.id, "kind": entry.kind, "value": entry.masked, "action": entry.action,
            "reason": entry.reason, "expires_at": entry.expires_at.isoformat() + "Z" if entry.expires_at else None,
            "created_at": entry.created_at.isoformat() + "Z"}

