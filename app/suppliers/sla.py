"""The delivery promise (到账承诺) of direct top-ups: a paid top-up not delivered within DELIVERY_SLA_MINUTES is
withdrawn from its supplier and failed over to the next one, or, when none is left, refunded; support is alerted.

The rules, in one place (the periodic job `delivery-sla` runs `check`; each order is handled by `enforce`):
- An order is overdue when it is a direct product, still paid / delivering, and was paid more than
  DELIVERY_SLA_MINUTES ago. Its first breach is recorded once on its timeline (RechargeEvent source 'sla') and
  announced (`delivery_sla_breached`, below), whatever happens next.
- Nothing at a supplier (the recharge job was lost): `recharge.run` moves it on now (a supplier, or a refund).
- An attempt open at a supplier gets DELIVERY_SLA_MINUTES of its own (a supplier tried after a failover is not
  cut off at once). Past that, the supplier is asked ONCE to withdraw the order (撤单). Only its answer "failed"
  (withdrawn, failed, or barred before it arrived: it will never credit) releases the order to the next supplier
  (DELIVERY_SLA_FAILOVER), or to a refund when none is left (DELIVERY_SLA_REFUND). "success" delivers it late.
  "processing" (the operator already has it), no answer, or a protocol without withdrawal leaves the attempt as
  it is: it is still polled, and support follows it up. A top-up whose state at the supplier is unknown is never
  failed over and never refunded: a second supplier or a refund could pay the buyer twice.
- When neither a failover nor a refund is allowed (settings, or no other supplier and DELIVERY_SLA_REFUND off), the
  supplier is not asked to withdraw at all: support is alerted and the order waits for its supplier.
- Idempotent: the breach and the withdrawal request are each recorded once (an event per order / per attempt), and
  every decision is taken under the order's row lock, which is never held over HTTP (app.suppliers.recharge).

Alerts: `delivery_sla_breached` (a blinker signal) is sent after the commit, with a `Breach`, each time an order is
found in breach the first time and each time the SLA acts on it. The alerts domain subscribes to it (robots, e-mail):
`delivery_sla_breached.connect(handler)`; the order's timeline, the 到账超时 screen and the support workbench show
the same facts without it.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from blinker import Namespace
from flask import current_app
from sqlalchemy import select

from app.catalog.models import Product
from app.clock import utcnow
from app.errors import KamengError
from app.extensions import db
from app.orders.models import Order
from app.suppliers import recharge
from app.suppliers.adapters.base import FAILED, SUCCESS, CancelNotSupported, UpstreamResult, UpstreamUnreachable
from app.suppliers.models import RechargeAttempt, RechargeEvent
from app.suppliers.service import candidates

log = logging.getLogger(__name__)

SOURCE = "sla"
_signals = Namespace()
# The hook for alerts: sent with sender=the Flask app and breach=Breach(...), after the commit that recorded it.
delivery_sla_breached = _signals.signal("delivery-sla-breached")


@dataclass(frozen=True)
class Breach:
    """What an alert about an overdue top-up says."""
    order_no: str
    product: str
    supplier: str | None  # the supplier holding it (the last one tried)
    paid_at: datetime
    minutes: int  # since payment
    action: str  # breached, waiting, failed_over, refunded, delivered, cannot_cancel, unknown, alert_only
    detail: str


@dataclass(frozen=True)
class SlaSettings:
    minutes: int
    failover: bool
    refund: bool


def settings() -> SlaSettings:
    config = current_app.config
    return SlaSettings(max(1, int(config.get("DELIVERY_SLA_MINUTES", 10))),
                       bool(config.get("DELIVERY_SLA_FAILOVER", True)), bool(config.get("DELIVERY_SLA_REFUND", True)))


# --- finding them ---------------------------------------------------------------------------------------------------

def overdue_query(now: datetime | None = None):
    """Direct orders still paid / delivering, paid before the SLA's cutoff (oldest first). A select of Order."""
    cutoff = (now or utcnow()) - timedelta(minutes=settings().minutes)
    return (select(Order).join(Product, Product.id == Order.product_id)
            .where(Product.kind == "direct", Order.status.in_(recharge.ACTIVE_ORDER_STATUSES),
                   Order.paid_at.is_not(None), Order.paid_at <= cutoff)
            .order_by(Order.paid_at, Order.id))


def check(now: datetime | None = None, limit: int = 200) -> dict[str, int]:
    """The periodic job: enforce the promise on every overdue order. Returns how many ended how."""
    db.session.rollback()
    ids = list(db.session.scalars(overdue_query(now).with_only_columns(Order.id).limit(limit)))
    db.session.rollback()
    report: Counter[str] = Counter()
    for order_id in ids:
        try:
            report[enforce(order_id, now)] += 1
        except Exception:  # one order's trouble never stops the others; the next run tries it again
            db.session.rollback()
            log.exception("delivery SLA of order %s", order_id)
            report["error"] += 1
    return dict(report)


# --- one order --------------------------------------------------------------------------------------------------------

def enforce(order_id: int, now: datetime | None = None) -> str:
    """Apply the promise to one order (see the module's rules). Commits. Returns the action taken."""
    now = now or utcnow()
    rules = settings()
    window = timedelta(minutes=rules.minutes)
    db.session.rollback()
    order = recharge._lock_order(order_id)
    if order is None or order.status not in recharge.ACTIVE_ORDER_STATUSES or order.product.kind != "direct" \
            or order.paid_at is None or order.paid_at > now - window:
        db.session.commit()
        return "not_due"
    announce: list[Breach] = []
    if _mark_breach(order, now, rules):
        # i18n-keep: data
        announce.append(_breach(order, None, now, "breached", _t("超过到账承诺 %(m)s 分钟仍未到账", m=rules.minutes)))
    attempts = list(db.session.scalars(select(RechargeAttempt).where(RechargeAttempt.order_id == order.id)
                                       .order_by(RechargeAttempt.seq)))
    open_attempt = next((a for a in attempts if a.status in recharge.OPEN_STATUSES), None)

    if open_attempt is None:  # at no supplier (the recharge job was lost, or an attempt failed just now)
        tried = {a.supplier_id for a in attempts}
        if not rules.refund and not candidates(order.product_id, order.quantity, tried):
            detail = _t("超过到账承诺：没有可用货源且已关闭超时自动退款，请客服处理")  # i18n-keep: data
            _note_once(order, None, detail)
            db.session.commit()
            _send([*announce, _breach(order, None, now, "alert_only", detail)] if announce else [])
            return "alert_only"
        db.session.commit()
        _send(announce)
        outcome = recharge.run(order_id)
        return {"refunded": "refunded", "delivered": "delivered"}.get(outcome, "resubmitted")
    if open_attempt.created_at > now - window or _asked(open_attempt.id):
        db.session.commit()  # this supplier's own window is not over, or it was already asked to withdraw
        _send(announce)
        return "waiting"

    tried = {a.supplier_id for a in attempts}
    has_next = bool(candidates(order.product_id, order.quantity, tried))
    supplier_name = open_attempt.supplier.name
    if not rules.failover or not (has_next or rules.refund):
        # i18n-keep: data
        why = (_t("已关闭超时自动改派") if not rules.failover else _t("没有其他货源且已关闭超时自动退款"))
        # i18n-keep: data
        detail = _t("超过到账承诺：%(why)s，继续等待「%(s)s」的结果，请客服跟进", why=why, s=supplier_name)
        recharge._event(order.id, open_attempt, SOURCE, None, detail)
        db.session.commit()
        _send([*announce, _breach(order, open_attempt, now, "alert_only", detail)])
        return "alert_only"

    recharge._event(order.id, open_attempt, SOURCE, None,
                    _t("超过到账承诺：请求「%(s)s」撤单，撤单成功后%(then)s", s=supplier_name,  # i18n-keep: data
                      then=_t("改由下一个货源充值") if has_next else _t("自动退款")))  # i18n-keep: data
    attempt_id, order_no = open_attempt.id, order.order_no
    db.session.commit()  # the row lock is released: the supplier is asked outside any transaction
    _send(announce)
    return _withdraw(order_id, attempt_id, order_no, now, rules)


def _withdraw(order_id: int, attempt_id: int, order_no: str, now: datetime, rules: SlaSettings) -> str:
    attempt = db.session.get(RechargeAttempt, attempt_id)
    try:
        from app.suppliers.adapters import get_adapter

        result = get_adapter(attempt.supplier).cancel(order_no)
    except (CancelNotSupported, KamengError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        return _leave(order_id, attempt_id, now, "cannot_cancel",
                      # i18n-keep: data
                      _t("该货源无法撤单（%(why)s）：继续等待上游结果，请客服跟进", why=message[:120]))
    except UpstreamUnreachable as exc:
        return _leave(order_id, attempt_id, now, "unknown",
                      # i18n-keep: data
                      _t("撤单请求无应答（%(why)s）：上游结果未知，不改派、不退款，继续查询，请客服跟进",
                        why=str(exc)[:120]))
    if result.status == SUCCESS:
        outcome = recharge._apply(attempt_id, result, SOURCE, in_place=True)
        order = db.session.get(Order, order_id)
        # i18n-keep: data
        _send([_breach(order, attempt, now, "delivered", _t("撤单时上游回报已充值成功，已到账（超时）"))])
        return "delivered" if outcome == "delivered" else outcome
    if result.status != FAILED:
        # i18n-keep: data
        return _leave(order_id, attempt_id, now, "cannot_cancel",
                      _t("上游无法撤单（%(status)s）：继续等待上游结果，请客服跟进", status=result.status))
    # i18n-keep: data
    withdrawn = UpstreamResult(FAILED, result.trade_no, _t("超时撤单成功：%(m)s", m=result.message)[:255])
    if recharge._apply(attempt_id, withdrawn, SOURCE, in_place=True) != "failed_over":
        return "done"  # another answer settled the attempt first: nothing more for the SLA to do
    order = db.session.get(Order, order_id)
    tried = set(db.session.scalars(select(RechargeAttempt.supplier_id).where(RechargeAttempt.order_id == order_id)))
    if candidates(order.product_id, order.quantity, tried):
        outcome = recharge.run(order_id)  # the next supplier (or, when it fails at once and none is left, a refund)
        action = "refunded" if outcome == "refunded" else "failed_over"
        detail = _t("已从「%(s)s」撤单，改由下一个货源充值", s=attempt.supplier.name)  # i18n-keep: data
    elif rules.refund:
        # i18n-keep: data
        recharge.fail_and_refund(order_id, _t("超过到账承诺 %(m)s 分钟，上游已撤单且无其他货源，自动退款",
                                              m=rules.minutes))
        action, detail = "refunded", _t("已撤单，没有其他货源，已自动退款")  # i18n-keep: data
    else:  # the last other supplier went away meanwhile and refunds are off: support decides
        action, detail = "alert_only", _t("已撤单，但已没有其他货源且已关闭超时自动退款，请客服处理")  # i18n-keep: data
        recharge._event(order_id, attempt, SOURCE, None, detail)
        db.session.commit()
    _send([_breach(db.session.get(Order, order_id), attempt, now, action, detail)])
    return action


def _leave(order_id: int, attempt_id: int, now: datetime, action: str, detail: str) -> str:
    """The attempt stays open (polled as before); the timeline says why, and support is alerted."""
    order = recharge._lock_order(order_id)
    attempt = db.session.get(RechargeAttempt, attempt_id)
    recharge._event(order.id, attempt, SOURCE, None, detail)
    db.session.commit()
    _send([_breach(db.session.get(Order, order_id), attempt, now, action, detail)])
    return action


# --- records and alerts -----------------------------------------------------------------------------------------------

def _mark_breach(order: Order, now: datetime, rules: SlaSettings) -> bool:
    """The order's breach on its timeline, once. True when this call recorded it."""
    seen = db.session.scalar(select(RechargeEvent.id).where(RechargeEvent.order_id == order.id,
                                                            RechargeEvent.source == SOURCE,
                                                            RechargeEvent.attempt_id.is_(None)).limit(1))
    if seen is not None:
        return False
    minutes = int((now - order.paid_at).total_seconds() // 60)
    # i18n-keep: data
    recharge._event(order.id, None, SOURCE, None,
                    _t("已超过到账承诺（%(m)s 分钟），支付后 %(n)s 分钟仍未到账", m=rules.minutes, n=minutes))
    return True


def _note_once(order: Order, attempt: RechargeAttempt | None, detail: str) -> None:
    """An SLA note on the timeline, unless the order's latest SLA note already says it (runs repeat each minute)."""
    last = last_action(order.id)
    if last is None or last.detail != detail[:255]:
        recharge._event(order.id, attempt, SOURCE, None, detail)


def _asked(attempt_id: int) -> bool:
    return db.session.scalar(select(RechargeEvent.id).where(RechargeEvent.attempt_id == attempt_id,
                                                            RechargeEvent.source == SOURCE).limit(1)) is not None


def _breach(order: Order, attempt: RechargeAttempt | None, now: datetime, action: str, detail: str) -> Breach:
    supplier = attempt.supplier.name if attempt is not None else (order.supplier.name if order.supplier else None)
    return Breach(order.order_no, order.product.name, supplier, order.paid_at,
                  int((now - order.paid_at).total_seconds() // 60), action, str(detail))


def _send(breaches: list[Breach]) -> None:
    app = current_app._get_current_object()
    for breach in breaches:
        try:
            delivery_sla_breached.send(app, breach=breach)
        except Exception:  # a receiver's failure never undoes what was recorded
            log.exception("delivery SLA alert receiver failed for %s", breach.order_no)


def _t(text: str, **values) -> str:
    """Timeline texts are stored in zh_CN, the operators' language, like every recharge event's (not gettext: a
    stored record does not change language with its reader)."""
    return text % values if values else text


# --- reading (the 到账超时 screen, the workbench) ---------------------------------------------------------------------

def overdue_count(now: datetime | None = None) -> int:
    from sqlalchemy import func

    return db.session.scalar(overdue_query(now).with_only_columns(func.count()).order_by(None))


def recent_breaches(days: int = 7, limit: int = 200) -> list[tuple[Order, RechargeEvent]]:
    """Orders whose breach was recorded in the last `days` days, newest first, with that event."""
    since = utcnow() - timedelta(days=days)
    rows = db.session.execute(
        select(Order, RechargeEvent).join(RechargeEvent, RechargeEvent.order_id == Order.id)
        .where(RechargeEvent.source == SOURCE, RechargeEvent.attempt_id.is_(None), RechargeEvent.created_at >= since)
        .order_by(RechargeEvent.created_at.desc()).limit(limit)).all()
    return [(o, e) for o, e in rows]


def last_action(order_id: int) -> RechargeEvent | None:
    """The latest SLA event of an order (what the SLA did last)."""
    return db.session.scalar(select(RechargeEvent).where(RechargeEvent.order_id == order_id,
                                                         RechargeEvent.source == SOURCE)
                             .order_by(RechargeEvent.id.desc()).limit(1))
