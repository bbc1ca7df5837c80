"""Disputes (退款仲裁 / 维权): a buyer's or agent's "not received" complaint on a delivered order.

Filing moves the order delivered → disputed and freezes what the order owes its supplier: journal
`dispute:<order_no>:freeze` moves (cost_total − service_fee) from `supplier:<id>:payable` to
`platform:disputes_held`. Support resolves it:
- reject (with a reason): journal `dispute:<order_no>:release` moves it back, the order returns to delivered;
- refund: the same release, then app.payments.service.refund_order reverses the sale and pays the buyer back.
Either may issue a compensation coupon (fixed amount, 30 days, once, only for that buyer).

One dispute per order: the freeze/release journal keys name the order, and a rejected dispute is final (the buyer
contacts support again rather than re-opening the money freeze).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app, has_app_context
from flask_babel import gettext, lazy_gettext
from sqlalchemy import bindparam, func, select

from app import states
from app.agents.models import Agent
from app.audit import service as audit
from app.clock import utcnow
from app.errors import Conflict, Forbidden, NotFound, ValidationError
from app.extensions import db
from app.ledger import service as ledger
from app.ledger.service import Line, supplier_account_code
from app.money import format_fen
from app.network import commissions
from app.orders import service as orders
from app.orders.models import Order
from app.payments import coupons
from app.payments import service as payments
from app.payments.models import DISPUTE_STATES, Coupon, Dispute
from app.rows import run

HELD = "platform:disputes_held"
DEFAULT_RESPONSE_MINUTES = 30
STATUS_TEXT = {"open": lazy_gettext("待处理"), "refunded": lazy_gettext("已退款"), "rejected": lazy_gettext("已驳回")}
OUTCOMES = ("refund", "reject")


def response_target_minutes() -> int:
    if has_app_context():
        return int(current_app.config.get("DISPUTE_RESPONSE_MINUTES", DEFAULT_RESPONSE_MINUTES))
    return DEFAULT_RESPONSE_MINUTES


def _clean_text(text: object, what: str, limit: int = 500) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValidationError(gettext("请填写%(what)s", what=what))
    text = text.strip()
    if len(text) > limit or any(ord(c) < 32 and c not in "\r\n\t" for c in text):
        raise ValidationError(gettext("%(what)s不能超过 %(limit)s 个字符", what=what, limit=limit))
    return text


def _frozen_amount(order: Order) -> int:
    return order.cost_total - order.service_fee


def _move_payable(order: Order, key_suffix: str, to_held: bool, actor_id: int | None) -> None:
    amount = _frozen_amount(order)
    if amount <= 0:
        return  # nothing owed to the supplier (cost 0): nothing to freeze
    sign = 1 if to_held else -1
    ledger.post_journal(f"dispute:{order.order_no}:{key_suffix}", f"dispute_{key_suffix}",
                        [Line(supplier_account_code(order.supplier_id), -sign * amount), Line(HELD, sign * amount)],
                        # i18n-keep: data
                        memo=f"维权{'冻结' if to_held else '解冻'} {order.order_no}", order_id=order.id,
                        actor_id=actor_id)
    # Commissions accrued on this order are frozen on filing (_open: pending → frozen), released when the dispute
    # is rejected (resolve); a refund reverses them (refund_order).


# --- filing --------------------------------------------------------------------------------------------------

def open_as_buyer(order_no: object, query_password: object, reason: object) -> Dispute:
    """A storefront buyer: order number + query password. A wrong password is a 404, like an unknown order, and
    spends from the same per-order-number budget as the lookup (payments.lookup): 429 once it is spent."""
    reason = _clean_text(reason, gettext("维权原因"))
    order = payments.lookup(order_no, query_password)
    return _open(order.id, reason, opened_by_id=None)


def open_as_agent(agent: Agent, order_no: object, reason: object, user_id: int | None) -> Dispute:
    """An agent, for its own order only. Another branch's order is a 404 (never confirm it exists)."""
    reason = _clean_text(reason, gettext("维权原因"))
    if agent is None or not isinstance(order_no, str):
        raise NotFound(gettext("订单不存在"))
    order = db.session.scalar(select(Order).where(Order.order_no == order_no.strip()[:40]))
    if order is None or order.agent_id is None:
        raise NotFound(gettext("订单不存在"))
    from app.scope import in_scope

    if not in_scope(order.agent_id, agent):
        raise NotFound(gettext("订单不存在"))
    if order.agent_id != agent.id:
        raise Forbidden(gettext("只能为自己的订单发起维权"))
    return _open(order.id, reason, opened_by_id=user_id)


def _open(order_id: int, reason: str, opened_by_id: int | None) -> Dispute:
    try:
        order = db.session.scalar(select(Order).where(Order.id == order_id).with_for_update())
        if db.session.scalar(select(Dispute.id).where(Dispute.order_id == order.id)) is not None:
            raise Conflict(gettext("该订单已有维权记录"), code="dispute_exists")
        if order.status != "delivered":
            raise Conflict(gettext("订单状态为 %(value)s，只有已到账的订单可以维权", value=order.status_display()),
                           code="not_disputable")
        orders.transition(order.id, "disputed", current="delivered")
        dispute = Dispute(order_id=order.id, opened_by_id=opened_by_id, contact=order.contact, reason=reason,
                          status="open", opened_at=utcnow())
        db.session.add(dispute)
        _move_payable(order, "freeze", to_held=True, actor_id=opened_by_id)
        commissions.freeze_for_dispute(order, opened_by_id)
        db.session.flush()
        audit.record("dispute.open", "order", order.order_no, {"status": "delivered"},
                     {"status": "disputed", "dispute_id": dispute.id}, reason=reason[:255], actor_id=opened_by_id)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return dispute



def move(dispute_id: int, current: str, new: str, **values: object) -> None:
    """The one place a dispute's status changes (DISPUTE_STATES), guarded on `current`. Does not commit."""
    states.move(DISPUTE_STATES, dispute_id, current, new, **values)

# --- resolving -----------------------------------------------------------------------------------------------

def resolve(dispute_id: int, outcome: str, resolution: object, actor_id: int | None,
            compensation_fen: int | None = None) -> Dispute:
    """Support resolves an open dispute: `refund` or `reject`, with a reason; optionally a compensation coupon."""
    if outcome not in OUTCOMES:
        raise ValidationError(gettext("请选择处理结果：退款或驳回"))
    resolution = _clean_text(resolution, gettext("处理说明"))
    if compensation_fen is not None and (not isinstance(compensation_fen, int) or isinstance(compensation_fen, bool)
                                         or compensation_fen < 0):
        raise ValidationError(gettext("补偿金额无效"))
    try:
        dispute = db.session.scalar(select(Dispute).where(Dispute.id == dispute_id).with_for_update())
        if dispute is None:
            raise NotFound(gettext("维权记录不存在"))
        if dispute.status != "open":
            raise Conflict(gettext("该维权已处理"), code="dispute_resolved")
        order = db.session.scalar(select(Order).where(Order.id == dispute.order_id).with_for_update())
        if compensation_fen and compensation_fen > order.amount:
            raise ValidationError(gettext("补偿金额不能超过订单金额 %(amount)s", amount=format_fen(order.amount)))
        _move_payable(order, "release", to_held=False, actor_id=actor_id)
        move(dispute.id, "open", "refunded" if outcome == "refund" else "rejected", resolution=resolution,
             resolved_by_id=actor_id, resolved_at=utcnow())
        coupon = None
        if compensation_fen:
            # i18n-keep: data
            coupon = coupons.create_coupon(None, f"维权补偿 {order.order_no}", "fixed", compensation_fen,
                                           per_user_limit=1, total_limit=1)
            dispute.compensation_coupon_id = coupon.id
        audit.record("dispute.resolve", "dispute", dispute.id, {"status": "open"},
                     {"status": dispute.status, "order_no": order.order_no,
                      "compensation": compensation_fen or 0, "coupon": coupon.code if coupon else None},
                     reason=resolution[:255], actor_id=actor_id)
        if outcome == "reject":
            commissions.release_after_dispute(order, actor_id)
            orders.transition(order.id, "delivered", current="disputed")
            db.session.commit()
        else:
            # refund_order locks the order, reverses the sale, pays back, audits and commits this whole transaction
            # (the release journal and the dispute's resolution with it), or rolls it all back.
            payments.refund_order(order.id, f"维权退款：{resolution}", actor_id)  # i18n-keep: data
    except Exception:
        db.session.rollback()
        raise
    return db.session.get(Dispute, dispute_id)


# --- reading -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class QueueRow:
    dispute: Dispute
    age_minutes: int
    overdue: bool


def age_minutes(dispute: Dispute, now: datetime | None = None) -> int:
    end = dispute.resolved_at or now or utcnow()
    return max(0, int((end - dispute.opened_at).total_seconds() // 60))


def is_overdue(dispute: Dispute, now: datetime | None = None) -> bool:
    """Open for longer than the response target (or resolved after it)."""
    end = dispute.resolved_at or now or utcnow()
    return end - dispute.opened_at > timedelta(minutes=response_target_minutes())


def open_queue(now: datetime | None = None, limit: int = 500) -> list[QueueRow]:
    """Open disputes, oldest first, with their age and whether they are past the response target."""
    now = now or utcnow()
    rows = db.session.scalars(select(Dispute).where(Dispute.status == "open")
                              .order_by(Dispute.opened_at, Dispute.id).limit(limit))
    return [QueueRow(d, age_minutes(d, now), is_overdue(d, now)) for d in rows]


def for_order(order_id: int) -> Dispute | None:
    """The order's latest dispute, or None. Every storefront lookup asks and nearly every order has none: a plain
    probe by the driver (app.rows.run) first, the entity only when there is one."""
    dispute_id = run(_LATEST_DISPUTE, {"order_id": order_id}).scalar()
    return db.session.get(Dispute, dispute_id) if dispute_id is not None else None


_LATEST_DISPUTE = (select(func.max(Dispute.__table__.c.id))
                   .where(Dispute.__table__.c.order_id == bindparam("order_id")))


def public_view(dispute: Dispute | None) -> dict | None:
    """What a buyer sees of its dispute (storefront lookup, portal)."""
    if dispute is None:
        return None
    coupon: Coupon | None = dispute.compensation_coupon
    return {"status": dispute.status, "status_text": str(STATUS_TEXT.get(dispute.status, dispute.status)),
            "reason": dispute.reason, "resolution": dispute.resolution,
            "opened_at": dispute.opened_at.replace(microsecond=0).isoformat() + "Z",
            "compensation_coupon": None if coupon is None else {
                "code": coupon.code, "amount": coupon.value,
                "ends_at": coupon.ends_at.replace(microsecond=0).isoformat() + "Z"}}
