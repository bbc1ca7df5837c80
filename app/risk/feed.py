"""共享名单: list entries shared between platforms as a signed feed.

Each entry's value is HMAC-SHA256 under a key the partners share (a sharing key, with a key id; several may be
active for matching, one is current for export) over the value normalised exactly as app.risk.identity does (phones
in E.164), so two platforms hashing one phone get one value and no feed carries a personal value in plaintext. The
free-text reason staff typed is never exported either (it may name a person): a reason code and an evidence level
stand for it. The feed is signed with this platform's Ed25519 key (publisher identity, the private key encrypted at
rest) over its canonical JSON.

Export (`flask kameng risk feed export FILE`, or a partner pulling GET /open/v1/risk/feed with a partner key) is
refused until a legal basis for sharing is recorded, and every export is audited (who, how many entries, to which
file or partner key). Import verifies the signature against the registered partner's public key and refuses
unknown publishers, tampered or expired feeds and unknown key ids; imported entries only ever put an order on review
(never block), with their source. evaluate() matches them from a cached map (app.cache, invalidated by trigger):
no query on the hot path, a few HMACs per identifier and active key, nothing at all while nothing was imported.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from flask_babel import gettext as _
from sqlalchemy import func, select, update

from app import cache
from app.audit import service as audit
from app.clock import utcnow
from app.errors import Conflict, KamengError, NotFound, ValidationError
from app.extensions import db
from app.risk.feed_models import (
    RiskFeedEntry,
    RiskFeedPartner,
    RiskFeedPublisher,
    RiskLegalBasis,
    RiskListShare,
    RiskSharingKey,
)
from app.risk.identity import digest_normalised, normalise
from app.risk.models import LIST_KINDS, PERSONAL_KINDS, RiskListEntry

FORMAT = "kameng-risk-feed/1"
FEED_VALID_DAYS = 7  # a feed older than this is refused at import (a stale copy replayed)
MAX_FEED_BYTES = 32 * 1024 * 1024
MAX_CLOCK_AHEAD = timedelta(minutes=10)
KEY_ID = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
PUBLISHER_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
HEX64 = re.compile(r"[0-9a-f]{64}")
LEGAL_BASES = ("consent", "contract", "legal_obligation", "legitimate_interest")
REASON_OF_ACTION = {"block": ("fraud_confirmed", "confirmed"), "review": ("fraud_suspected", "suspected")}
# i18n-keep: the words go into the decision's stored hit reason (hits_for); the screens have their own (feed_views)
REASON_TEXT = {"fraud_confirmed": "已确认欺诈", "fraud_suspected": "疑似欺诈"}


class FeedError(KamengError):
    code = "invalid_feed"
    status = 400


class UnknownPublisher(FeedError):
    code = "unknown_publisher"


class BadSignature(FeedError):
    code = "bad_signature"


class ExpiredFeed(FeedError):
    code = "expired_feed"


class UnknownKeyId(FeedError):
    code = "unknown_key_id"


class FeedUnavailable(KamengError):
    """Nothing may be exported yet: no publisher identity, no current sharing key or no legal basis."""
    code = "feed_unavailable"
    status = 409


# --- time --------------------------------------------------------------------------------------------------

def _iso(moment: datetime | None) -> str | None:
    """Full precision: a partner's next `since` is this feed's generated_at, so a change in the same second as the
    feed is neither lost nor carried again."""
    return None if moment is None else moment.isoformat() + "Z"


def parse_time(raw, what: str = "time") -> datetime:
    """An ISO 8601 time (naive = UTC) or unix seconds, as naive UTC; ValidationError otherwise."""
    text = str(raw if raw is not None else "").strip()
    try:
        if re.fullmatch(r"[0-9]{1,12}", text):
            return datetime.fromtimestamp(int(text), tz=UTC).replace(tzinfo=None)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise ValidationError(_("%(what)s 须为 ISO 时间或 Unix 秒：%(value)s", what=what,
                                value=repr(text[:40]))) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


# --- sharing keys ------------------------------------------------------------------------------------------

def _clean_key_id(key_id) -> str:
    key_id = (key_id or "").strip() if isinstance(key_id, str) else ""
    if not KEY_ID.fullmatch(key_id):
        raise ValidationError(_("密钥编号须为 1-32 个字母、数字或 _ . -"))
    return key_id


def add_key(key_id: str, secret: str | None = None, current: bool = False,
            actor_id: int | None = None) -> tuple[RiskSharingKey, str]:
    """Add a sharing key: one received from a partner (`secret`, 64-128 hex characters) or a new one (generated).
    It becomes current when asked or when none is. Returns it with its secret (to hand to partners). Commits."""
    key_id = _clean_key_id(key_id)
    if secret is None:
        secret = secrets.token_hex(32)
    secret = (secret or "").strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64,128}", secret):
        raise ValidationError(_("共享密钥须为 64-128 位十六进制"))
    if db.session.scalar(select(RiskSharingKey.id).where(RiskSharingKey.key_id == key_id)):
        raise Conflict(_("密钥编号已存在：%(key_id)s", key_id=key_id))
    has_current = db.session.scalar(select(RiskSharingKey.id).where(RiskSharingKey.current.is_(True)))
    if current and has_current:
        db.session.execute(update(RiskSharingKey).where(RiskSharingKey.current.is_(True)).values(current=False))
    key = RiskSharingKey(key_id=key_id, secret=secret, secret_hint=secret[-4:], current=current or not has_current,
                         active=True, created_by_id=actor_id)
    db.session.add(key)
    db.session.flush()
    audit.record("risk_feed.key_add", "risk_sharing_key", key.key_id, None,
                 {"key_id": key.key_id, "current": key.current, "secret": f"…{key.secret_hint}"}, actor_id=actor_id)
    db.session.commit()
    return key, secret


def rotate_key(actor_id: int | None = None, key_id: str | None = None) -> tuple[RiskSharingKey, str]:
    """A new generated key, current for export from now on; the old ones stay active for matching. Commits."""
    key_id = key_id or f"k{utcnow():%Y%m%d}{secrets.token_hex(2)}"
    return add_key(key_id, None, current=True, actor_id=actor_id)


def retire_key(key_id: str, actor_id: int | None = None) -> RiskSharingKey:
    """Stop using a key (no export, no matching). Commits."""
    key = db.session.scalar(select(RiskSharingKey).where(RiskSharingKey.key_id == key_id))
    if key is None or not key.active:
        raise NotFound(_("共享密钥 %(key_id)s 不存在或已停用", key_id=key_id))
    key.active, key.current, key.retired_at = False, False, utcnow()
    audit.record("risk_feed.key_retire", "risk_sharing_key", key.key_id, {"active": True}, {"active": False},
                 actor_id=actor_id)
    db.session.commit()
    return key


def current_key() -> RiskSharingKey | None:
    return db.session.scalar(select(RiskSharingKey).where(RiskSharingKey.current.is_(True),
                                                          RiskSharingKey.active.is_(True)))


def _active_key_ids() -> set[str]:
    return set(db.session.scalars(select(RiskSharingKey.key_id).where(RiskSharingKey.active.is_(True))))


# --- publisher identity ------------------------------------------------------------------------------------

def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def publisher() -> RiskFeedPublisher | None:
    return db.session.scalar(select(RiskFeedPublisher).order_by(RiskFeedPublisher.id.desc()))


def create_identity(publisher_id: str, actor_id: int | None = None, replace: bool = False) -> RiskFeedPublisher:
    """Generate this platform's Ed25519 key pair under `publisher_id` (partners register its public key).
    Refused when one exists unless `replace`: partners must then register the new public key. Commits."""
    publisher_id = (publisher_id or "").strip()
    if not PUBLISHER_ID.fullmatch(publisher_id):
        raise ValidationError(_("发布方编号须为 1-64 个字母、数字或 _ . -"))
    existing = publisher()
    if existing is not None and not replace:
        raise Conflict(_("已有发布方身份 %(publisher_id)s；更换须确认", publisher_id=existing.publisher_id))
    private = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    raw_private = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                        serialization.NoEncryption())
    raw_public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    old = None
    if existing is not None:
        old = {"publisher_id": existing.publisher_id, "public_key": existing.public_key}
        db.session.delete(existing)
        db.session.flush()
    identity = RiskFeedPublisher(publisher_id=publisher_id, public_key=_b64(raw_public),
                                 private_key=_b64(raw_private), created_by_id=actor_id)
    db.session.add(identity)
    db.session.flush()
    audit.record("risk_feed.identity", "risk_feed_publisher", identity.publisher_id, old,
                 {"publisher_id": identity.publisher_id, "public_key": identity.public_key}, actor_id=actor_id)
    db.session.commit()
    return identity


def _public_key(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode((text or "").strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise ValidationError(_("公钥须为 Ed25519 公钥（32 字节）的 Base64")) from None


# --- partners ----------------------------------------------------------------------------------------------

def _clean_key_ids(raw) -> str:
    ids = [part.strip() for part in re.split(r"[,\s]+", raw or "") if part.strip()]
    if not ids:
        raise ValidationError(_("请填写对方使用的共享密钥编号"))
    return ",".join(dict.fromkeys(_clean_key_id(k) for k in ids))[:255]


def register_partner(publisher_id: str, name: str, public_key: str, key_ids: str,
                     actor_id: int | None = None) -> RiskFeedPartner:
    """Trust a partner platform's feeds: its publisher id, its Ed25519 public key (base64) and the sharing key ids
    it hashes under. Commits."""
    publisher_id = (publisher_id or "").strip()
    if not PUBLISHER_ID.fullmatch(publisher_id):
        raise ValidationError(_("发布方编号须为 1-64 个字母、数字或 _ . -"))
    name = (name or "").strip()[:64] or publisher_id
    public_key = (public_key or "").strip()
    _public_key(public_key)
    ids = _clean_key_ids(key_ids)
    own = publisher()
    if own is not None and own.publisher_id == publisher_id:
        raise ValidationError(_("不能把本平台登记为合作方（%(publisher_id)s 是本平台的发布方编号）",
                                publisher_id=publisher_id))
    if db.session.scalar(select(RiskFeedPartner.id).where(RiskFeedPartner.publisher_id == publisher_id)):
        raise Conflict(_("合作方已登记：%(publisher_id)s", publisher_id=publisher_id))
    partner = RiskFeedPartner(publisher_id=publisher_id, name=name, public_key=public_key, key_ids=ids, active=True,
                              created_by_id=actor_id)
    db.session.add(partner)
    db.session.flush()
    audit.record("risk_feed.partner_add", "risk_feed_partner", partner.id, None,
                 {"publisher_id": publisher_id, "name": name, "public_key": public_key, "key_ids": ids},
                 actor_id=actor_id)
    db.session.commit()
    return partner


def set_partner_active(partner_id: int, active: bool, actor_id: int | None = None) -> RiskFeedPartner:
    """Suspend (its imported entries stop matching, its keys stop pulling) or resume a partner. Commits."""
    partner = db.session.get(RiskFeedPartner, partner_id)
    if partner is None:
        raise NotFound(_("合作方 %(id)s 不存在", id=partner_id))
    if partner.active != active:
        audit.record("risk_feed.partner_active", "risk_feed_partner", partner.id, {"active": partner.active},
                     {"active": active}, actor_id=actor_id)
        partner.active = active
    db.session.commit()
    return partner


def create_partner_key(partner_id: int, name: str = "", ip_allowlist: str | None = None,
                       actor_id: int | None = None):
    """An Open API key for a partner to pull our feed (scope risk_feed); the secret is shown once. Commits."""
    from app.openapi import keys as openapi

    partner = db.session.get(RiskFeedPartner, partner_id)
    if partner is None or not partner.active:
        raise NotFound(_("合作方 %(id)s 不存在或已停用", id=partner_id))
    key, secret = openapi.create_partner_key(partner.id, name or f"feed:{partner.publisher_id}", ip_allowlist)
    audit.record("risk_feed.partner_key", "api_key", key.app_key, None,
                 {"partner": partner.publisher_id, "app_key": key.app_key}, actor_id=actor_id)
    db.session.commit()
    return key, secret


# --- legal basis -------------------------------------------------------------------------------------------

def record_legal_basis(basis: str, text: str, actor_id: int | None = None) -> RiskLegalBasis:
    """A new version of the legal basis for sharing (the newest is in force). Commits."""
    if basis not in LEGAL_BASES:
        raise ValidationError(_("法律依据须为 %(bases)s 之一", bases=", ".join(LEGAL_BASES)))
    text = (text or "").strip()
    if len(text) < 10 or len(text) > 20000:
        raise ValidationError(_("请填写授权 / 告知文本（10-20000 个字符）"))
    version = (db.session.scalar(select(func.max(RiskLegalBasis.version))) or 0) + 1
    row = RiskLegalBasis(version=version, basis=basis, text=text, created_by_id=actor_id)
    db.session.add(row)
    db.session.flush()
    audit.record("risk_feed.legal_basis", "risk_legal_basis", version, None,
                 {"version": version, "basis": basis, "sha256": hashlib.sha256(text.encode()).hexdigest()},
                 actor_id=actor_id)
    db.session.commit()
    return row


def legal_basis() -> RiskLegalBasis | None:
    return db.session.scalar(select(RiskLegalBasis).order_by(RiskLegalBasis.version.desc()))


# --- what local entries are shared as (called by app.risk.lists, in its transaction) -------------------------

def remember(entry_id: int, normalised: str) -> None:
    """Keep an entry's normalised value (encrypted) so any current sharing key can hash it at export."""
    db.session.add(RiskListShare(entry_id=entry_id, value=normalised, changed_at=utcnow()))


def touched(entry_id: int) -> None:
    """An entry was removed or its expiry moved: incremental pulls carry it again."""
    db.session.execute(update(RiskListShare).where(RiskListShare.entry_id == entry_id).values(changed_at=utcnow()))


# --- export ------------------------------------------------------------------------------------------------

def canonical(feed: dict) -> bytes:
    """The bytes the signature covers: keys sorted, no spaces, ASCII only."""
    return json.dumps(feed, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _shared_value(kind: str, value: str | None, shared: str | None) -> str | None:
    if shared is not None:
        return shared
    if kind in PERSONAL_KINDS:
        return None  # only its local hash is known: it cannot be shared
    return value


def build(since: datetime | None = None, now: datetime | None = None) -> tuple[bytes, dict]:
    """The signed feed document (bytes) and facts about it (entries, key id, legal basis version, skipped)."""
    now = now or utcnow()
    identity, key, basis = publisher(), current_key(), legal_basis()
    if basis is None:
        raise FeedUnavailable(_("尚未登记共享的法律依据，不能导出"))
    if identity is None:
        raise FeedUnavailable(_("尚未生成发布方身份，请先生成"))
    if key is None:
        raise FeedUnavailable(_("没有当前共享密钥，请先新增或轮换一个"))
    secret = bytes.fromhex(key.secret)
    rows = db.session.execute(
        select(RiskListEntry.id, RiskListEntry.kind, RiskListEntry.value, RiskListEntry.action,
               RiskListEntry.created_at, RiskListEntry.expires_at, RiskListEntry.removed_at, RiskListShare.value,
               RiskListShare.changed_at)
        .outerjoin(RiskListShare, RiskListShare.entry_id == RiskListEntry.id).order_by(RiskListEntry.id))
    entries, skipped = [], 0
    for _entry_id, kind, value, action, created, expires, removed, shared, changed in rows:
        changed = max(filter(None, (created, changed, removed)))
        live = removed is None and (expires is None or expires > now)
        if (since is None and not live) or (since is not None and changed <= since):
            continue
        normalised = _shared_value(kind, value, shared)
        if normalised is None:
            skipped += 1
            continue
        reason, evidence = REASON_OF_ACTION.get(action, REASON_OF_ACTION["review"])
        item = {"key_id": key.key_id, "kind": kind, "value": digest_normalised(secret, kind, normalised),
                "reason": reason, "evidence": evidence, "first_seen": _iso(created), "last_seen": _iso(changed),
                "expires_at": _iso(expires)}
        if kind == "cidr":
            item["prefix"] = ipaddress.ip_network(normalised, strict=False).prefixlen
        if removed is not None:
            item["removed"] = True
        entries.append(item)
    feed = {"format": FORMAT, "publisher": identity.publisher_id, "public_key": identity.public_key,
            "generated_at": _iso(now), "expires_at": _iso(now + timedelta(days=FEED_VALID_DAYS)),
            "since": _iso(since), "legal_basis_version": basis.version, "key_ids": [key.key_id], "entries": entries}
    private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(identity.private_key))
    signature = _b64(private.sign(canonical(feed)))
    document = json.dumps({"feed": feed, "signature": signature}, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True).encode()
    return document, {"entries": len(entries), "key_id": key.key_id, "legal_basis_version": basis.version,
                      "skipped": skipped, "publisher": identity.publisher_id}


def _record_export(facts: dict, destination: str, since: datetime | None, actor_id: int | None) -> None:
    audit.record("risk_feed.export", "risk_feed", facts["publisher"], None,
                 {"destination": destination, "entries": facts["entries"], "key_id": facts["key_id"],
                  "legal_basis_version": facts["legal_basis_version"], "since": _iso(since)}, actor_id=actor_id)
    db.session.commit()


def export_file(destination: str, since: datetime | None = None, actor_id: int | None = None) -> tuple[bytes, dict]:
    """The feed for a file (the caller writes it), audited as exported to `destination`. Commits."""
    document, facts = build(since)
    _record_export(facts, f"file:{destination}"[:200], since, actor_id)
    return document, facts


def serve(partner_id: int, app_key: str, since_raw: str | None) -> bytes:
    """The feed a partner pulls with its key (GET /open/v1/risk/feed), audited per pull. Commits."""
    since = parse_time(since_raw, "since") if since_raw not in (None, "") else None
    partner = db.session.get(RiskFeedPartner, partner_id)
    if partner is None or not partner.active:
        raise FeedUnavailable(_("合作方已停用"), status=403, code="partner_suspended")
    document, facts = build(since)
    _record_export(facts, f"partner:{partner.publisher_id} key {app_key}", since, None)
    return document


# --- import ------------------------------------------------------------------------------------------------

def _verified(raw: bytes) -> tuple[RiskFeedPartner, dict]:
    """The partner and the feed, once the document is well formed and its signature verifies."""
    if not isinstance(raw, bytes | bytearray) or not raw.strip():
        raise FeedError(_("文件为空"))
    if len(raw) > MAX_FEED_BYTES:
        raise FeedError(_("文件过大"))
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FeedError(_("不是有效的共享名单文件：JSON 无法解析")) from None
    if not isinstance(document, dict) or set(document) != {"feed", "signature"} \
            or not isinstance(document["feed"], dict) or not isinstance(document["signature"], str):
        raise FeedError(_("不是有效的共享名单文件：须为只含 feed 与 signature 两项的对象"))
    feed = document["feed"]
    if feed.get("format") != FORMAT:
        raise FeedError(_("不支持的格式：%(format)s", format=repr(str(feed.get("format"))[:40])))
    publisher_id = feed.get("publisher")
    partner = None
    if isinstance(publisher_id, str) and PUBLISHER_ID.fullmatch(publisher_id):
        partner = db.session.scalar(select(RiskFeedPartner).where(RiskFeedPartner.publisher_id == publisher_id))
    if partner is None or not partner.active:
        raise UnknownPublisher(_("未知或已停用的发布方：%(publisher)s", publisher=repr(str(publisher_id)[:64])))
    if feed.get("public_key") != partner.public_key:
        raise BadSignature(_("发布方 %(publisher)s 的公钥与登记的不同", publisher=partner.publisher_id))
    try:
        signature = base64.b64decode(document["signature"], validate=True)
        _public_key(partner.public_key).verify(signature, canonical(feed))
    except (ValueError, InvalidSignature):
        raise BadSignature(_("签名无效：内容被改动或非 %(publisher)s 签发", publisher=partner.publisher_id)) from None
    return partner, feed


def _entry_of(item, partner_keys: set[str], our_keys: set[str]) -> dict:
    if not isinstance(item, dict):
        raise FeedError(_("条目格式不正确：不是对象"))
    key_id, kind, value = item.get("key_id"), item.get("kind"), item.get("value")
    if not isinstance(key_id, str) or key_id not in partner_keys or key_id not in our_keys:
        raise UnknownKeyId(_("未知的共享密钥编号：%(key_id)s（须为本平台有效、且为该合作方登记的密钥）",
                             key_id=repr(str(key_id)[:32])))
    if kind not in LIST_KINDS or not isinstance(value, str) or not HEX64.fullmatch(value):
        raise FeedError(_("条目格式不正确：类型或值有误"))
    reason = item.get("reason") if item.get("reason") in REASON_TEXT else "fraud_suspected"
    evidence = item.get("evidence") if item.get("evidence") in ("suspected", "confirmed") else "suspected"
    prefix = item.get("prefix")
    if kind == "cidr" and (isinstance(prefix, bool) or not isinstance(prefix, int) or not 0 <= prefix <= 128):
        raise FeedError(_("网段条目缺少前缀长度"))
    return {"key_id": key_id, "kind": kind, "value_hash": value, "reason": reason, "evidence": evidence,
            "prefix": prefix if kind == "cidr" else None,
            "first_seen": parse_time(item.get("first_seen"), "first_seen"),
            "last_seen": parse_time(item.get("last_seen"), "last_seen"),
            "expires_at": parse_time(item["expires_at"], "expires_at") if item.get("expires_at") else None,
            "removed": item.get("removed") is True}


def import_feed(raw: bytes, source: str, actor_id: int | None = None, now: datetime | None = None) -> dict:
    """Verify and import a partner's feed onto the review list (never block). A full feed also removes what the
    partner no longer lists; an older feed than one already imported changes nothing it had written. Audited.
    Commits; refuses the whole feed (nothing written) on any error."""
    now = now or utcnow()
    partner, feed = _verified(bytes(raw))
    try:
        generated = parse_time(feed.get("generated_at"), "generated_at")
        expires = parse_time(feed.get("expires_at"), "expires_at")
    except ValidationError as exc:
        raise FeedError(exc.message) from None
    if expires <= now:
        raise ExpiredFeed(_("共享名单已过期（%(expires_at)s）", expires_at=_iso(expires)))
    if generated > now + MAX_CLOCK_AHEAD:
        raise FeedError(_("生成时间在未来（%(generated_at)s）", generated_at=_iso(generated)))
    items = feed.get("entries")
    if not isinstance(items, list):
        raise FeedError(_("条目列表缺失"))
    partner_keys, our_keys = set(partner.key_ids.split(",")), _active_key_ids()
    try:
        parsed = [_entry_of(item, partner_keys, our_keys) for item in items]
    except ValidationError as exc:
        raise FeedError(exc.message) from None
    existing = {(e.key_id, e.kind, e.value_hash): e for e in db.session.scalars(
        select(RiskFeedEntry).where(RiskFeedEntry.partner_id == partner.id).with_for_update())}
    added = updated = removed = 0
    listed = set()
    for item in parsed:
        ident = (item["key_id"], item["kind"], item["value_hash"])
        listed.add(ident)
        row = existing.get(ident)
        if row is None:
            if item["removed"]:
                continue
            row = RiskFeedEntry(partner_id=partner.id, key_id=item["key_id"], kind=item["kind"],
                                value_hash=item["value_hash"], first_seen=item["first_seen"], imported_at=now)
            db.session.add(row)
            existing[ident] = row
            added += 1
        elif row.feed_at > generated:
            continue  # an older feed: what a newer one wrote stands
        else:
            updated += 1
            row.first_seen = min(row.first_seen, item["first_seen"])
        row.prefix, row.reason, row.evidence = item["prefix"], item["reason"], item["evidence"]
        row.last_seen = max(row.last_seen or item["last_seen"], item["last_seen"])
        row.expires_at, row.feed_at, row.imported_at = item["expires_at"], generated, now
        if item["removed"] and row.removed_at is None:
            row.removed_at = now
            removed += 1
        elif not item["removed"]:
            row.removed_at = None
    if feed.get("since") is None:  # a full feed: what it no longer lists was removed by the partner
        for ident, row in existing.items():
            if ident not in listed and row.removed_at is None and row.feed_at < generated:
                row.removed_at, row.feed_at = now, generated
                removed += 1
    if partner.last_feed_at is None or generated > partner.last_feed_at:
        partner.last_feed_at = generated
    summary = {"publisher": partner.publisher_id, "entries": len(parsed), "added": added, "updated": updated,
               "removed": removed, "generated_at": _iso(generated), "source": source[:200]}
    audit.record("risk_feed.import", "risk_feed_partner", partner.id, None, summary, actor_id=actor_id)
    db.session.commit()
    return summary


def remove_imported(entry_ids: list[int], actor_id: int | None = None) -> int:
    """Staff take imported entries off the review list (a later feed listing them again restores them). Commits."""
    rows = db.session.scalars(select(RiskFeedEntry).where(RiskFeedEntry.id.in_(entry_ids),
                                                          RiskFeedEntry.removed_at.is_(None))).all()
    for row in rows:
        row.removed_at = utcnow()
        audit.record("risk_feed.entry_remove", "risk_feed_entry", row.id, None,
                     {"kind": row.kind, "partner_id": row.partner_id}, actor_id=actor_id)
    db.session.commit()
    return len(rows)


# --- matching (evaluate's list stage) ----------------------------------------------------------------------

@dataclass(frozen=True)
class _Imported:
    id: int
    kind: str
    publisher: str
    reason: str
    evidence: str
    expires_at: datetime | None


@dataclass(frozen=True)
class _Shared:
    keys: tuple  # (key_id, secret bytes) of the active sharing keys
    by_hash: dict  # (key_id, value hash) -> tuple of _Imported
    prefixes: tuple  # prefix lengths of imported cidr entries


def _load_shared() -> _Shared:
    keys = tuple((key_id, bytes.fromhex(secret)) for key_id, secret in db.session.execute(
        select(RiskSharingKey.key_id, RiskSharingKey.secret).where(RiskSharingKey.active.is_(True))
        .order_by(RiskSharingKey.id)))
    by_hash: dict[tuple[str, str], tuple[_Imported, ...]] = {}
    prefixes = set()
    rows = db.session.execute(
        select(RiskFeedEntry.id, RiskFeedEntry.kind, RiskFeedPartner.publisher_id, RiskFeedEntry.reason,
               RiskFeedEntry.evidence, RiskFeedEntry.expires_at, RiskFeedEntry.key_id, RiskFeedEntry.value_hash,
               RiskFeedEntry.prefix)
        .join(RiskFeedPartner, RiskFeedPartner.id == RiskFeedEntry.partner_id)
        .where(RiskFeedEntry.removed_at.is_(None), RiskFeedPartner.active.is_(True)).order_by(RiskFeedEntry.id))
    for row in rows:
        ident = (row.key_id, row.value_hash)
        by_hash[ident] = by_hash.get(ident, ()) + (_Imported(*row[:6]),)
        if row.kind == "cidr" and row.prefix is not None:
            prefixes.add(row.prefix)
    return _Shared(keys, by_hash, tuple(sorted(prefixes)))


def _identifiers(event, prefixes: tuple) -> set[tuple[str, str]]:
    """(kind, normalised value) of what the event carries, as identity.normalise spells them."""
    raw = [("ip", event.ip), ("device", event.device), ("contact", event.contact), ("contact", event.phone),
           ("id_number", event.id_number), ("payment_account", event.payment_account), ("agent", event.agent_login)]
    found = set()
    for kind, value in raw:
        if not value:
            continue
        try:
            found.add((kind, normalise(kind, str(value))))
        except ValueError:
            continue  # not an address: nothing to match
    address = next((v for k, v in found if k == "ip"), None)
    if address and prefixes:
        ip = ipaddress.ip_address(address)
        for prefix in prefixes:
            if prefix <= ip.max_prefixlen:
                found.add(("cidr", str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))))
    return found


def hits_for(event, now: datetime | None = None) -> list[dict]:
    """List hits (action review, with their source) of the event's identifiers among imported entries."""
    shared = cache.fetch("risk_feed", None, _load_shared)
    if not shared.by_hash:
        return []
    now = now or utcnow()
    identifiers = _identifiers(event, shared.prefixes)
    hits, seen = [], set()
    for key_id, secret in shared.keys:
        for kind, normalised in identifiers:
            value_hash = digest_normalised(secret, kind, normalised)
            for entry in shared.by_hash.get((key_id, value_hash), ()):
                if entry.id in seen or (entry.expires_at is not None and entry.expires_at <= now):
                    continue
                seen.add(entry.id)
                reason = REASON_TEXT.get(entry.reason, entry.reason)
                hits.append({"kind": "list", "name": f"feed:{entry.publisher}:{entry.kind}",
                             "feed_entry_id": entry.id, "source": entry.publisher, "action": "review",
                             # i18n-keep: the reason is stored in the decision's hits
                             "reason": f"共享名单（来源 {entry.publisher}，{reason}）{entry.kind}"})
    return hits
