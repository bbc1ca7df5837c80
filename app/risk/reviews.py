"""风控审核: paid orders held by risk control (status `reviewing`): no card secret released, no top-up dispatched, no
commission accrued until a reviewer approves (delivered by the normal path) or rejects (refunded to where it was
paid from, with the reason). Holds not decided within RISK_REVIEW_HOURS are rejected and refunded."""
from __future__ import annotations

from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import select

from app.audit import service as audit
from app.clock import utcnow
from app.errors import Conflict, KamengError, NotFound, ValidationError
from app.extensions import db
from app.orders import service as orders
from app.orders.models import Order

EXPIRED_REASON = "审核超时，自动拒绝并退款 (review not decided in time)"


def hold(order: Order) -> str:
    """A paid order flagged at checkout or at payment goes to review instead of delivery (caller's transaction)."""
    orders.transition(order.id, "reviewing", current="paid")
    return "held_for_review"


def _locked(order_no: str) -> Order:
    order = db.session.scalar(select(Order).where(Order.order_no == (order_no or "").strip()[:40]).with_for_update())
    if order is None:
        raise NotFound(f"订单不存在 (no order {order_no!r})")
    if order.status != "reviewing":
        raise Conflict(f"订单 {order.order_no} 不在风控审核中（{order.status_display()}）(not under review)")
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
        payments.deliver_paid_order(order)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return order


def reject(order_no: str, reason: str, actor_id: int | None, add_to_list: list[tuple[str, str]] | None = None
           ) -> Order:
    """Refuse a held order: refunded to where it was paid from (wallet at once; a channel through its refund
    state machine), with the reason; optionally its buyer's identifiers go on the blacklist. Commits."""
    from app.payments import service as payments

    reason = (reason or "").strip()
    if not reason:
        raise ValidationError("请填写拒绝原因 (a reason is required)")
    try:
        order = _locked(order_no)
        audit.record("risk.review.reject", "order", order.order_no, {"status": "reviewing"},
                     {"status": "refunded"}, reason=reason[:255], actor_id=actor_id)
        payments.refund_held_funds(order, f"风控拒绝：{reason}"[:255], actor_id)
        orders.transition(order.id, "refunded", current="reviewing")
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    for kind, value in add_to_list or []:
        from app.risk import lists

        lists.add(kind, value, "block", reason=f"审核拒绝 {order.order_no}：{reason}"[:255], actor_id=actor_id)
    return order


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
