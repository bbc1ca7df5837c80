"""风控审核: paid orders held by risk control (status `reviewing`): no card secret released, no top-up dispatched, no
commission accrued until a reviewer approves (delivered by the normal path) or rejects (refunded to where it was
paid from, with the reason). Holds not decided within RISK_REVIEW_HOURS are rejected and refunded."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import current_app
from flask_babel import gettext as _
from sqlalchemy import func, or_, select

from app.audit import service as audit
from app.clock import utcnow
from app.errors import Conflict, KamengError, NotFound, ValidationError
from app.extensions import db
from app.orders import service as orders
from app.orders.models import Order
from app.risk.learning import label_store

EXPIRED_REASON = "审核超时，自动拒绝并退款 (review not decided in time)"  # i18n-keep: a stored reason


def _locked(order_no: str) -> Order:
    order = db.session.scalar(select(Order).where(Order.order_no == (order_no or "").strip()[:40]).with_for_update())
    if order is None:
        raise NotFound(_("订单不存在：%(order_no)s", order_no=repr(order_no)))
    if order.status != "reviewing":
        raise Conflict(_("订单 %(order_no)s 不在风控审核中（%(status)s）", order_no=order.order_no,
                         status=order.status_display()))
    return order


def approve(order_no: str, actor_id: int | None, note: str | None = None) -> Order:
    """Release a held order: delivered (or its top-up started) exactly as if it had not been held. Commits."""
    from app.payments import service as payments

    try:
        order = _locked(order_no)
        audit.record("risk.review.approve", "order", order.order_no, {"status": "reviewing"}, {"status": "paid"},
                     reason=(note or "")[:255] or None, actor_id=actor_id)
        orders.transition(order.id, "paid", current="reviewing")
        order.risk_hold = False
        label_store.label_order(order, label_store.LEGIT, "review_approve")  # what the model learns from
        payments.deliver_paid_order(order)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return order


def reject(order_no: str, reason: str, actor_id: int | None, add_to_list: list[tuple[str, str]] | None = None,
           blacklist: Sequence[str] = ()) -> Order:
    """Refuse a held order: refunded to where it was paid from (wallet at once; a channel through its refund
    state machine), with the reason; optionally its buyer's identifiers go on the blacklist: `add_to_list` as
    (kind, plaintext value), `blacklist` by name from buyer_identifiers() (device, contact, payment_account).
    Commits."""
    from app.payments import service as payments

    reason = (reason or "").strip()
    if not reason:
        raise ValidationError(_("请填写拒绝原因"))
    unknown = set(blacklist) - set(IDENTIFIER_NAMES)
    if unknown:
        raise ValidationError(_("无法加入黑名单：%(values)s", values=", ".join(sorted(unknown))))
    try:
        order = _locked(order_no)
        audit.record("risk.review.reject", "order", order.order_no, {"status": "reviewing"},
                     {"status": "refunded"}, reason=reason[:255], actor_id=actor_id)
        payments.refund_held_funds(order, f"风控拒绝：{reason}"[:255], actor_id)  # i18n-keep: a stored memo
        orders.transition(order.id, "refunded", current="reviewing")
        if reason != EXPIRED_REASON:  # a hold nobody decided in time says nothing about fraud
            label_store.label_order(order, label_store.FRAUD, "review_reject")
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    from app.risk import lists

    list_reason = f"审核拒绝 {order.order_no}：{reason}"[:255]  # i18n-keep: a stored reason
    for kind, value in add_to_list or []:
        lists.add(kind, value, "block", reason=list_reason, actor_id=actor_id)
    found = buyer_identifiers(order)
    for name in blacklist:
        ident = found.get(name)
        if ident is not None and not _blacklisted(ident.value_hash):
            lists.add_hashed(ident.kind, ident.value_hash, ident.masked, "block", reason=list_reason,
                             actor_id=actor_id, share_value=_share_value(order, ident))
    return order


def _share_value(order: Order, ident) -> str | None:
    """The buyer's contact, normalised, when it is what the identifier hashes (the shared feed re-hashes it under
    the partners' key); a device or paying account is kept only as its hash, so it is not shared."""
    from app.risk.identity import digest, normalise

    if ident.kind == "contact" and order.contact and digest("contact", order.contact) == ident.value_hash:
        return normalise("contact", order.contact)
    return None


def expire_holds(now: datetime | None = None, limit: int = 200) -> int:
    """Scheduled: reject and refund holds older than RISK_REVIEW_HOURS (oldest first)."""
    now = now or utcnow()
    cutoff = now - timedelta(hours=int(current_app.config["RISK_REVIEW_HOURS"]))
    numbers = list(db.session.scalars(select(Order.order_no).where(Order.status == "reviewing",
                                                                    Order.paid_at < cutoff)
                                      .order_by(Order.paid_at).limit(limit)))
    db.session.rollback()
    done = 0
    for number in numbers:
        try:
            reject(number, EXPIRED_REASON, None)
            done += 1
        except KamengError:
            db.session.rollback()
    return done


def queue(limit: int = 200) -> list[Order]:
    return list(db.session.scalars(select(Order).where(Order.status == "reviewing")
                                   .order_by(Order.paid_at).limit(limit)))


# --- what the queue shows: age, reasons, the buyer's identifiers and history ------------------------------------

IDENTIFIER_NAMES = ("device", "contact", "payment_account")


@dataclass
class Identifier:
    """One of a held order's buyer identifiers, as the lists match it (keyed hash) and as staff see it (masked)."""
    kind: str
    value_hash: str
    masked: str


@dataclass
class BuyerHistory:
    """A buyer's other orders: a storefront buyer's by the same contact or device, an agent's own."""
    buyer: str  # "guest" or "agent"
    recent: list[Order] = field(default_factory=list)
    total: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    refunds: int = 0
    disputes: int = 0


def age_minutes(order: Order, now: datetime | None = None) -> int:
    """Minutes since the hold began (the payment that was held)."""
    return max(0, int(((now or utcnow()) - (order.paid_at or order.created_at)).total_seconds() // 60))


def sla_minutes() -> int:
    return int(current_app.config["RISK_REVIEW_SLA_MINUTES"])


def decisions_of(order: Order) -> list:
    """The decisions about this order, oldest first: its checkout's (risk_decision_id) and any naming it."""
    from app.risk.models import RiskDecision

    clauses = [RiskDecision.order_no == order.order_no]
    if order.risk_decision_id:
        clauses.append(RiskDecision.id == order.risk_decision_id)
    return list(db.session.scalars(select(RiskDecision).where(or_(*clauses)).order_by(RiskDecision.id)))


def reasons_of(order: Order, decisions: list | None = None) -> list[str]:
    """Why it is held: the reasons of every deciding (not shadow) hit of its review or block decisions."""
    reasons: list[str] = []
    for decision in decisions if decisions is not None else decisions_of(order):
        if decision.outcome == "allow":
            continue
        for hit in json.loads(decision.hits):
            if not hit.get("shadow") and hit.get("reason") and hit["reason"] not in reasons:
                reasons.append(hit["reason"])
    return reasons


@dataclass
class ModelReason:
    """What the fraud model said about a held order: its version, score, whether it was the active model (its score
    was the `model_score` rules read) or a shadow, and the features that pushed the score up most."""
    version: int
    score: float
    active: bool
    top: list[dict]


def model_reasons_of(order: Order, decisions: list | None = None) -> list[ModelReason]:
    """The models' scores of the order's decisions (each version once, its highest score), active ones first."""
    best: dict[tuple[int, bool], ModelReason] = {}
    for decision in decisions if decisions is not None else decisions_of(order):
        scored = json.loads(decision.model) if decision.model else None
        if not scored:
            continue
        entries = ([(scored["active"], True)] if scored.get("active") else []) + \
            [(entry, False) for entry in scored.get("shadow") or ()]
        for entry, active in entries:
            key = (entry["version"], active)
            if key not in best or entry["score"] > best[key].score:
                best[key] = ModelReason(entry["version"], entry["score"], active, entry.get("top") or [])
    return sorted(best.values(), key=lambda r: (not r.active, -r.version))


def buyer_identifiers(order: Order, decisions: list | None = None) -> dict[str, Identifier]:
    """The buyer's device, contact and paying account as the lists would match them, each masked: from the order's
    keyed hashes (the plaintext device and paying account are not kept) and the decisions' masked subject."""
    from app.risk.identity import mask, normalise

    subject: dict = {}
    for decision in decisions if decisions is not None else decisions_of(order):
        subject.update({k: v for k, v in json.loads(decision.subject).items() if v})
    found: dict[str, Identifier] = {}
    if order.device_key:
        found["device"] = Identifier("device", order.device_key, subject.get("device") or f"#{order.device_key[:8]}")
    if order.buyer_key:
        shown = mask(normalise("contact", order.contact)) if order.contact else subject.get("contact")
        found["contact"] = Identifier("contact", order.buyer_key, shown or f"#{order.buyer_key[:8]}")
    if order.payment_account_key:
        found["payment_account"] = Identifier("payment_account", order.payment_account_key,
                                              subject.get("payment_account") or f"#{order.payment_account_key[:8]}")
    return found


def _blacklisted(value_hash: str) -> bool:
    from app.risk.models import RiskListEntry

    return db.session.scalar(select(RiskListEntry.id).where(
        RiskListEntry.value_hash == value_hash, RiskListEntry.action == "block", RiskListEntry.removed_at.is_(None),
        or_(RiskListEntry.expires_at.is_(None), RiskListEntry.expires_at > utcnow())).limit(1)) is not None


def history(order: Order, recent: int = 10) -> BuyerHistory:
    """The buyer's other orders (newest first), their statuses, refunds and disputes."""
    from app.payments.models import Dispute, Refund

    if order.agent_id:
        out, where = BuyerHistory("agent"), Order.agent_id == order.agent_id
    else:
        out = BuyerHistory("guest")
        same = [column == key for column, key in ((Order.buyer_key, order.buyer_key),
                                                  (Order.device_key, order.device_key)) if key]
        if not same:
            return out
        where = or_(*same)
    mine = (where, Order.id != order.id)
    out.recent = list(db.session.scalars(select(Order).where(*mine).order_by(Order.id.desc()).limit(recent)))
    out.statuses = {status: int(n) for status, n in db.session.execute(
        select(Order.status, func.count()).where(*mine).group_by(Order.status))}
    out.total = sum(out.statuses.values())
    ids = select(Order.id).where(*mine).scalar_subquery()
    out.refunds = int(db.session.scalar(select(func.count()).select_from(Refund).where(Refund.order_id.in_(ids))))
    out.disputes = int(db.session.scalar(select(func.count()).select_from(Dispute).where(Dispute.order_id.in_(ids))))
    return out
