"""Tamper-evident records (DESIGN.md "Tamper-evident records"): deliveries, money-moving audit entries and risk
decisions are hash-chained; `verify()` names the first record altered or removed; each business day's head hash is
published at /trust/.

What is chained, appended in the transaction that writes the record (each has one place it is written):
- `delivery`: `app.orders.service.transition`, on an order's first move to `delivered` (a wallet purchase, a channel
  payment, a review approval and a direct top-up's success all pass there). Content: order number, amount (fen),
  product id, buyer (the agent's id; a storefront buyer as the keyed hash of the normalised contact, read through
  the ORM attribute `Order.contact`), the sorted keyed hashes of its card secrets (a reusable secret's through its
  use row for the order, kept when a refund gives the use back), the delivery time.
- `audit`: `app.audit.service.record`, for the actions in MONEY_ACTIONS. Content: the entry's stored fields.
- `risk_decision`: `app.risk.service._store` (on PostgreSQL in the decision's own transaction on its own pool).
  Content: the stored fields but `order_no`, which `attach_order` fills in afterwards (the one update a decision
  gets: the order's own delivery record is what is chained about the order).

Appending never waits: it is one INSERT of a `chain_record` row (kind, source key, SHA-256 of the canonical JSON of
the content) without a place in the chain yet. No shared row is locked, so deliveries do not queue behind each
other for the chain (DESIGN.md "Money and the ledger": one hot row would serialize all sales).

Sealing (`seal()`): the periodic job `chain-seal` every CHAIN_SEAL_SECONDS, and `chain verify`, /trust/ and the
buyer's lookup first. Under one advisory lock it gives the committed rows that have no place yet consecutive `seq`
in id order after the last sealed one, with hash = SHA-256(prev_hash \\n content_digest \\n kind \\n key \\n seq)
(the first record's prev_hash is 64 zeros), and records the business day's head (last seq and hash) in
`chain_head`. It picks rows by `seq IS NULL`, never by an id watermark: a row whose transaction commits after rows
with higher ids (ids are taken at insert, commits land in any order) is not skipped, it simply gets the next seq at
the next seal. The chain's order is the order of sealing, not of ids; a record is sealed seconds after it commits.

Backfill: rows that existed before the chain (delivered orders, money-moving audit entries, risk decisions) are
appended by the first seal (when no day has a head yet), in id order per kind; the demo's bulk-inserted history is
appended the same way right after it is generated (`backfill()`). The migration only creates the tables: the
content needs the app (keyed hashes, contacts read through the ORM).

Verification (`verify()`, `flask kameng chain verify`): seal, then walk the chain by seq, recomputing each hash
from the previous one and each content digest from the CURRENT source rows. Reported, first by seq: a seq gap (a
chain row deleted), a hash that does not follow (a chain row altered), a source row deleted or changed; then a day
head that is not the chain's, and a delivered order / money-moving audit entry / risk decision without a chain row.

Changing CARD_SECRET_KEY changes the keyed hashes (secrets, contacts): keep it (it also decrypts the card secrets).
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from flask_babel import gettext
from sqlalchemy import DateTime, String, bindparam, cast, exists, func, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import aliased

from app import crypto, states
from app.audit.models import AuditEntry
from app.catalog.models import CardSecret, CardSecretUse
from app.chain.models import ChainHead, ChainRecord
from app.clock import to_local, utcnow
from app.errors import ValidationError
from app.extensions import db
from app.orders.models import Order
from app.risk.models import RiskDecision
from app.rows import dialect_insert, run

DELIVERY, AUDIT, RISK_DECISION = "delivery", "audit", "risk_decision"
GENESIS = "0" * 64
SEAL_LOCK = (7302, 1)  # pg_advisory_xact_lock keys: only sealers take it (risk control's limits use 7301)
SEAL_BATCH = 5000
VERIFY_BATCH = 2000
MAX_PROBLEMS = 50

# Audit actions that move money, release it or approve its movement: these entries are chained. The one list.
MONEY_ACTIONS = frozenset({
    "wallet.adjust",  # balance adjustment (余额调整)
    "withdrawal.approve", "withdrawal.reject", "withdrawal.retry",  # payouts; a rejection releases the frozen money
    "settlement.run",  # pending commission to wallets
    "payment.confirm",  # a payment confirmed by hand
    "order.refund", "refund.retry", "refund.confirm",  # refunds
    "dispute.open", "dispute.resolve",  # freezes the supplier's payable and commissions; refunds or releases
    "risk.review.approve", "risk.review.reject",  # held money delivered or refunded
    "compensation.issue",  # bulk compensation coupons (批量补偿): value given to buyers
})
AUDIT_FIELDS = ("created_at", "actor_id", "action", "target_type", "target_id", "old_value", "new_value", "reason")
RISK_FIELDS = ("event", "outcome", "stage", "score", "hits", "features", "subject", "rule_versions", "agent_id",
               "amount", "latency_us", "created_at")
_HASH = re.compile(r"[0-9a-f]{64}")


# --- content -----------------------------------------------------------------------------------------------

def _plain(value):
    if isinstance(value, datetime):
        return value.isoformat(timespec="microseconds")
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"cannot chain a {type(value).__name__}")


def content_digest(content: dict) -> str:
    """SHA-256 (hex) of the canonical JSON of a record's content: sorted keys, no spaces, UTF-8, times to the µs."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()


def link_hash(prev_hash: str, digest: str, kind: str, key: str, seq: int) -> str:
    """A sealed record's hash: it covers the previous record's hash, its content and its place."""
    return hashlib.sha256(f"{prev_hash}\n{digest}\n{kind}\n{key}\n{seq}".encode()).hexdigest()


def contact_hash(contact: str | None) -> str | None:
    """A storefront buyer in a delivery record: the keyed hash of the normalised contact (never the contact)."""
    if not contact:
        return None
    return crypto.keyed_hash("chain:contact", crypto.normalize_contact(contact))


def delivery_content(order_no: str, amount: int, product_id: int, agent_id: int | None, contact: str | None,
                     secret_hashes, delivered_at: datetime | None) -> dict:
    buyer = {"agent_id": agent_id} if agent_id is not None else {"contact": contact_hash(contact)}
    return {"order_no": order_no, "amount": int(amount), "product_id": product_id, "buyer": buyer,
            "card_secrets": sorted(secret_hashes), "delivered_at": delivered_at}


def audit_content(entry) -> dict:
    """An AuditEntry (or a row of its columns) as chained."""
    return {name: getattr(entry, name) for name in AUDIT_FIELDS}


def risk_content(row) -> dict:
    """A risk decision (a dict of its stored values, or a row of its columns) as chained."""
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
    return {name: get(name) for name in RISK_FIELDS}


# --- appending (inside the writer's transaction) --------------------------------------------------------------

def _append(kind: str, key, digest: str, conn=None) -> None:
    statement = insert(ChainRecord.__table__).values(kind=kind, source_key=str(key), content_digest=digest,
                                                     created_at=utcnow())
    (conn if conn is not None else db.session).execute(statement)


def append_delivery(order_id: int, order_no: str, amount: int, product_id: int, agent_id: int | None,
                    delivered_at: datetime) -> None:
    """The delivery of an order, from the values its transition to `delivered` just wrote (its card secrets are
    allocated before that transition on every path)."""
    contact = db.session.get(Order, order_id).contact if agent_id is None else None
    _append(DELIVERY, order_no, _delivery_digest(order_id, order_no, amount, product_id, agent_id, contact,
                                                 delivered_at))


def delivery_moved(order: Order, delivered_at: datetime) -> states.Follow:
    """`append_delivery` of a loaded `order` as a data-modifying CTE over its transition's UPDATE (returning
    order_no and delivered_at): the record is written by the statement that delivers the order
    (app.orders.service.transition on PostgreSQL), and only if that move is its first delivery (its delivered_at
    is this move's time)."""
    digest = _delivery_digest(order.id, order.order_no, order.amount, order.product_id, order.agent_id,
                              order.contact if order.agent_id is None else None, delivered_at)
    return states.Follow(("chain_appended",), _delivery_moved_cte, {
        "chain_digest": digest, "chain_at": utcnow(), "chain_delivered_at": delivered_at})


def _delivery_moved_cte(moved) -> list:
    return [insert(ChainRecord.__table__).from_select(
        ["kind", "source_key", "content_digest", "created_at"],
        select(literal(DELIVERY), moved.c.order_no, bindparam("chain_digest", type_=String),
               bindparam("chain_at", type_=DateTime))
        .where(moved.c.delivered_at == bindparam("chain_delivered_at", type_=DateTime))).cte("chain_appended")]


def _delivery_digest(order_id: int, order_no: str, amount: int, product_id: int, agent_id: int | None,
                     contact: str | None, delivered_at: datetime) -> str:
    hashes = db.session.info.get("allocated_hashes", {}).pop(order_id, None)  # allocated in this transaction
    if hashes is None:
        hashes = db.session.scalars(select(CardSecret.secret_hash).where(_delivered_to(order_id))
                                    .order_by(CardSecret.id)).all()
    return content_digest(delivery_content(order_no, amount, product_id, agent_id, contact, hashes, delivered_at))


def _delivered_to(order_id):
    """The condition on CardSecret: delivered to this order, as a normal secret (its order_id) or as a use of a
    reusable one (every use row, also one a refund gave back: the delivery covered it)."""
    return or_(CardSecret.order_id == order_id, CardSecret.id.in_(
        select(CardSecretUse.secret_id).where(CardSecretUse.order_id == order_id)))


def append_audit(entry: AuditEntry) -> None:
    """A money-moving audit entry (others are not chained). Flushes: the entry needs its id and time."""
    if entry.action not in MONEY_ACTIONS:
        return
    db.session.flush()
    _append(AUDIT, entry.id, content_digest(audit_content(entry)))


def append_risk_decision(decision_id: int, row: dict, conn=None) -> None:
    """A risk decision, on the connection that inserted it (its own transaction on PostgreSQL)."""
    _append(RISK_DECISION, decision_id, content_digest(risk_content(row)), conn)


# --- the current content of source rows (verify and backfill) -----------------------------------------------

def _delivery_digests(where) -> dict[str, str]:
    rows = db.session.execute(select(Order.id, Order.order_no, Order.amount, Order.product_id, Order.agent_id,
                                     Order.contact, Order.delivered_at).where(where).order_by(Order.id)).all()
    secrets: dict[int, list[str]] = defaultdict(list)
    ids = [r.id for r in rows]
    for start in range(0, len(ids), 1000):
        chunk = ids[start:start + 1000]
        normal = (select(CardSecret.order_id, CardSecret.product_id, CardSecret.secret_enc)
                  .where(CardSecret.order_id.in_(chunk)))
        reused = (select(CardSecretUse.order_id, CardSecret.product_id, CardSecret.secret_enc)
                  .join(CardSecret, CardSecret.id == CardSecretUse.secret_id).where(CardSecretUse.order_id.in_(chunk)))
        for query in (normal, reused):
            for card in db.session.execute(query):
                secrets[card.order_id].append(_secret_hash_now(card.product_id, card.secret_enc))
    return {r.order_no: content_digest(delivery_content(r.order_no, r.amount, r.product_id, r.agent_id, r.contact,
                                                        secrets[r.id], r.delivered_at)) for r in rows}


def _secret_hash_now(product_id: int, secret_enc: str) -> str:
    """A delivered card secret's keyed hash recomputed from what the buyer is shown (the ciphertext), not read
    from the stored hash column: swapping a delivered secret's ciphertext is an edit verify must see."""
    try:
        return crypto.keyed_hash(product_id, crypto.decrypt(secret_enc))
    except ValueError:
        return "undecryptable"


def _audit_digests(where) -> dict[str, str]:
    columns = [getattr(AuditEntry, name) for name in AUDIT_FIELDS]
    rows = db.session.execute(select(AuditEntry.id, *columns).where(where).order_by(AuditEntry.id)).all()
    return {str(r.id): content_digest(audit_content(r)) for r in rows}


def _risk_digests(where) -> dict[str, str]:
    columns = [getattr(RiskDecision, name) for name in RISK_FIELDS]
    rows = db.session.execute(select(RiskDecision.id, *columns).where(where).order_by(RiskDecision.id)).all()
    return {str(r.id): content_digest(risk_content(r)) for r in rows}


def _current_digests(kind: str, keys: list[str]) -> dict[str, str]:
    """key -> the digest of the source row as it is now (a key whose row is gone is absent)."""
    if kind == DELIVERY:
        return _delivery_digests(Order.order_no.in_(keys))
    ids = [int(k) for k in keys if k.isdecimal()]
    if kind == AUDIT:
        return _audit_digests(AuditEntry.id.in_(ids))
    if kind == RISK_DECISION:
        return _risk_digests(RiskDecision.id.in_(ids))
    return {}


def _unchained(kind: str):
    """The condition on a source table: its row should be chained and has no chain record."""
    def missing(key_column):
        return ~exists().where(ChainRecord.kind == kind, ChainRecord.source_key == key_column)

    if kind == DELIVERY:
        return Order.delivered_at.is_not(None) & missing(Order.order_no)
    if kind == AUDIT:
        return AuditEntry.action.in_(sorted(MONEY_ACTIONS)) & missing(cast(AuditEntry.id, String))
    return missing(cast(RiskDecision.id, String))


_SOURCE = {DELIVERY: (Order.id, Order.order_no), AUDIT: (AuditEntry.id, AuditEntry.id),
           RISK_DECISION: (RiskDecision.id, RiskDecision.id)}
_DIGESTS = {DELIVERY: _delivery_digests, AUDIT: _audit_digests, RISK_DECISION: _risk_digests}


def backfill(batch: int = SEAL_BATCH) -> int:
    """Append every source row that should be chained and is not (rows from before the chain, bulk-inserted demo
    history), in id order per kind: risk decisions, audit entries, deliveries. Flushes; the caller commits."""
    added = 0
    for kind in (RISK_DECISION, AUDIT, DELIVERY):
        id_column, _ = _SOURCE[kind]
        after = 0
        while True:
            ids = db.session.scalars(select(id_column).where(_unchained(kind), id_column > after)
                                     .order_by(id_column).limit(batch)).all()
            if not ids:
                break
            digests = _DIGESTS[kind](id_column.in_(ids))
            now = utcnow()
            db.session.execute(insert(ChainRecord.__table__), [
                {"kind": kind, "source_key": key, "content_digest": digest, "created_at": now}
                for key, digest in digests.items()])
            added += len(digests)
            after = ids[-1]
    return added


# --- sealing -----------------------------------------------------------------------------------------------

def _postgresql() -> bool:
    return db.session.get_bind().dialect.name == "postgresql"


def _lock(wait: bool) -> bool:
    if not _postgresql():
        return True  # SQLite has one writer at a time; a second sealer fails on the unique seq and rolls back
    fn = func.pg_advisory_xact_lock if wait else func.pg_try_advisory_xact_lock
    got = db.session.scalar(select(fn(*SEAL_LOCK)))
    return True if wait else bool(got)


def _seal_batch(limit: int) -> int:
    # The records waiting for a place and, in the same statement, the last sealed one's seq and hash.
    sealed = aliased(ChainRecord)
    last_seq = select(func.max(sealed.seq)).where(sealed.seq.is_not(None)).scalar_subquery()
    last = aliased(ChainRecord)
    last_hash = select(last.hash).where(last.seq == last_seq).scalar_subquery()
    rows = db.session.execute(select(ChainRecord.id, ChainRecord.kind, ChainRecord.source_key,
                                     ChainRecord.content_digest, last_seq.label("last_seq"),
                                     last_hash.label("last_hash"))
                              .where(ChainRecord.seq.is_(None)).order_by(ChainRecord.id).limit(limit)).all()
    if not rows:
        return 0
    seq, prev = (rows[0].last_seq, rows[0].last_hash) if rows[0].last_seq is not None else (0, GENESIS)
    now = utcnow()
    changes = []
    for row in rows:
        seq += 1
        prev = link_hash(prev, row.content_digest, row.kind, row.source_key, seq)
        changes.append({"id": row.id, "seq": seq, "hash": prev, "sealed_at": now})
    db.session.execute(update(ChainRecord), changes)  # by primary key, one executemany
    head = ChainHead.__table__
    upsert = dialect_insert(head).values(day=to_local(now).date(), last_seq=seq, head_hash=prev, records=len(rows),
                                         updated_at=now)
    db.session.execute(upsert.on_conflict_do_update(index_elements=[head.c.day], set_={
        "last_seq": upsert.excluded.last_seq, "head_hash": upsert.excluded.head_hash,
        "records": head.c.records + upsert.excluded.records, "updated_at": upsert.excluded.updated_at}))
    return len(rows)


def seal(wait: bool = True, batch: int = SEAL_BATCH) -> int:
    """Give every committed record without a place its seq and hash; returns how many. Commits (per batch).

    `wait=False`: when another sealer holds the lock, return 0 at once (a page view does not queue behind it).
    The first seal of a database (no day head yet) first appends the rows from before the chain (backfill); a
    seal with `wait=False` leaves that to the periodic job and seals nothing."""
    total = 0
    while True:
        try:
            if not _lock(wait):
                db.session.rollback()
                return total
            if total == 0 and db.session.scalar(select(func.count()).select_from(ChainHead)) == 0:
                if not wait:  # the one-off backfill is the job's (or verify's), not a page view's
                    db.session.rollback()
                    return 0
                backfill()
            count = _seal_batch(batch)
            db.session.commit()
        except (IntegrityError, OperationalError):
            db.session.rollback()
            if _postgresql():
                raise
            return total  # SQLite: another sealer got there first; its seal stands
        except Exception:
            db.session.rollback()
            raise
        total += count
        if count < batch:
            return total


# --- reading -----------------------------------------------------------------------------------------------

def delivery_hash(order_no: str) -> str | None:
    """The record hash of an order's delivery (sealing first when it is still waiting; that commits), or None."""
    row = run(_DELIVERY_RECORD, {"order_no": order_no}).first()
    if row is not None and row.seq is None:
        seal()
        row = run(_DELIVERY_RECORD, {"order_no": order_no}).first()
    return row.hash if row is not None else None


# Every storefront lookup of a delivered order asks: built once (app.rows.run)
_DELIVERY_RECORD = (select(ChainRecord.__table__.c.seq, ChainRecord.__table__.c.hash)
                    .where(ChainRecord.__table__.c.kind == DELIVERY,
                           ChainRecord.__table__.c.source_key == bindparam("order_no")))


def clean_hash(value: object) -> str:
    """A record or head hash as typed: 64 hexadecimal characters (ValidationError otherwise)."""
    text = value.strip().lower() if isinstance(value, str) else ""
    if not _HASH.fullmatch(text):
        raise ValidationError(gettext("记录哈希须为 64 位十六进制字符"))
    return text


def head_view(head: ChainHead | None) -> dict | None:
    if head is None:
        return None
    return {"day": head.day.isoformat(), "last_seq": head.last_seq, "head_hash": head.head_hash,
            "records": head.records}


def find(record_hash: str) -> dict | None:
    """Whether a record hash is in the chain: its seq and the head of the day that sealed it (what /trust/
    publishes). Nothing about the record's content. None when it is not there."""
    h = clean_hash(record_hash)
    row = db.session.execute(select(ChainRecord.seq, ChainRecord.kind).where(ChainRecord.hash == h,
                                                                             ChainRecord.seq.is_not(None))).first()
    if row is None:
        return None
    head = db.session.scalar(select(ChainHead).where(ChainHead.last_seq >= row.seq).order_by(ChainHead.day).limit(1))
    return {"record_hash": h, "in_chain": True, "seq": row.seq, "kind": row.kind, "day_head": head_view(head)}


def heads(days: int = 30) -> list[dict]:
    """The daily heads of the last `days` business days, newest first."""
    today = to_local(utcnow()).date()
    rows = db.session.scalars(select(ChainHead).where(ChainHead.day > today - timedelta(days=days))
                              .order_by(ChainHead.day.desc()))
    return [head_view(h) for h in rows]


def parse_day(value: str | None) -> date | None:
    """A business day typed as YYYY-MM-DD (None stays None)."""
    if value is None:
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError(gettext("日期格式应为 YYYY-MM-DD: %(value)s", value=repr(value))) from None


def head_at(day: date | None = None) -> dict | None:
    """The chain's head at the end of `day` (default today, so far): the last head recorded on or before it."""
    day = day or to_local(utcnow()).date()
    return head_view(db.session.scalar(select(ChainHead).where(ChainHead.day <= day)
                                       .order_by(ChainHead.day.desc()).limit(1)))


# --- verification ------------------------------------------------------------------------------------------

LABELS = {DELIVERY: "delivery of order", AUDIT: "audit entry", RISK_DECISION: "risk decision"}


@dataclass(frozen=True)
class Problem:
    seq: int | None
    kind: str | None
    key: str | None
    message: str


@dataclass
class Report:
    checked: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    unsealed: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(published: dict[date, str] | None = None) -> Report:
    """Seal, then check the whole chain against itself, its day heads and the current source rows; and, with
    `published` (day -> head hash as /trust/ showed it, kept outside this database), that those days' heads are
    still the ones published (an edit followed by a recomputed chain changes every later head)."""
    seal()
    report = Report()
    problems: list[Problem] = []
    prev, expected, last = GENESIS, 1, 0
    while True:
        rows = db.session.execute(select(ChainRecord.seq, ChainRecord.kind, ChainRecord.source_key,
                                         ChainRecord.content_digest, ChainRecord.hash)
                                  .where(ChainRecord.seq > last).order_by(ChainRecord.seq).limit(VERIFY_BATCH)).all()
        if not rows:
            break
        for r in rows:
            if r.seq != expected:
                gap = f"{expected}" if r.seq == expected + 1 else f"{expected}..{r.seq - 1}"
                problems.append(Problem(expected, None, None,
                                        f"missing: chain record seq {gap} deleted (the chain jumps to seq {r.seq})"))
            elif link_hash(prev, r.content_digest, r.kind, r.source_key, r.seq) != r.hash:
                problems.append(Problem(r.seq, r.kind, r.source_key,
                                        f"altered: chain record seq {r.seq} ({r.kind} {r.source_key}): its hash "
                                        "does not follow from the previous record"))
            prev, expected = r.hash, r.seq + 1
        by_kind: dict[str, list] = defaultdict(list)
        for r in rows:
            by_kind[r.kind].append(r)
        for kind, group in by_kind.items():
            current = _current_digests(kind, [r.source_key for r in group])
            for r in group:
                now = current.get(r.source_key)
                if now is None:
                    problems.append(Problem(r.seq, kind, r.source_key,
                                            f"missing: {LABELS.get(kind, kind)} {r.source_key} (seq {r.seq}) "
                                            "was deleted"))
                elif now != r.content_digest:
                    problems.append(Problem(r.seq, kind, r.source_key,
                                            f"altered: {LABELS.get(kind, kind)} {r.source_key} (seq {r.seq}) "
                                            "differs from what was chained"))
        report.checked += len(rows)
        report.head_seq, report.head_hash, last = rows[-1].seq, rows[-1].hash, rows[-1].seq
        if len(problems) >= MAX_PROBLEMS:
            break
    problems.sort(key=lambda p: p.seq)
    problems += _head_problems() + _published_problems(published or {}) + _unchained_problems()
    report.problems = problems
    report.unsealed = db.session.scalar(select(func.count()).select_from(ChainRecord)
                                        .where(ChainRecord.seq.is_(None))) or 0
    return report


def _head_problems() -> list[Problem]:
    found = []
    for head in db.session.scalars(select(ChainHead).order_by(ChainHead.day)):
        at = db.session.scalar(select(ChainRecord.hash).where(ChainRecord.seq == head.last_seq))
        if at is None:
            found.append(Problem(head.last_seq, None, None, f"missing: the head of {head.day} names seq "
                                                            f"{head.last_seq}, which is not in the chain"))
        elif at != head.head_hash:
            found.append(Problem(head.last_seq, None, None, f"altered: the head of {head.day} (seq {head.last_seq}) "
                                                            "is not the chain's hash at that seq"))
    return found


def _published_problems(published: dict[date, str]) -> list[Problem]:
    found = []
    for day, expected in sorted(published.items()):
        head = db.session.scalar(select(ChainHead).where(ChainHead.day == day))
        if head is None:
            found.append(Problem(None, None, None, f"missing: no head for {day}, which published {expected}"))
        elif head.head_hash != expected:
            found.append(Problem(head.last_seq, None, None,
                                 f"altered: the head of {day} is {head.head_hash}, not {expected} as published: "
                                 "the chain was rewritten since"))
    return found


def _unchained_problems(limit: int = 10) -> list[Problem]:
    found = []
    for kind in (DELIVERY, AUDIT, RISK_DECISION):
        id_column, key_column = _SOURCE[kind]
        for key in db.session.scalars(select(key_column).where(_unchained(kind)).order_by(id_column).limit(limit)):
            found.append(Problem(None, kind, str(key), f"missing: {LABELS[kind]} {key} has no chain record "
                                                       "(its record was removed before it was sealed, or it was "
                                                       "written around the application)"))
    return found
