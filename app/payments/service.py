"""Payments: checkout for buyers without an account, asynchronous notifications, payments found by asking the
channel, manual confirmation, refunds, order expiry (closing the channel's order too), and the signed lookup link.

A notification is verified, matched (order number, channel, amount, currency), recorded under a unique
(channel, trade_no), moves the order and delivers it, and is committed before the channel hears `success`.
Money goes back through app.payments.refunds, which asks the channel and books the refund once it is done.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from flask import current_app
from flask_babel import gettext
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import bindparam, delete, func, insert, select, text, update

from app import crypto, states
from app.audit import service as audit
from app.catalog.errors import OutOfStock
from app.catalog.facts import product_facts
from app.clock import utcnow
from app.errors import Conflict, KamengError, NotFound, TooManyAttempts, ValidationError
from app.extensions import db
from app.ledger import service as ledger
from app.ledger.service import Line
from app.network import commissions
from app.orders import service as orders
from app.orders.models import Order
from app.payments import coupons, refunds
from app.payments.channels.base import (
    BadNotification,
    ChannelError,
    ChannelUnavailable,
    Notification,
    NotificationAnswer,
    PaymentRequest,
    TradeStatus,
)
from app.payments.gateways import (  # noqa: F401  (the channels' settings, re-exported for callers)
    BUYER_FUNDS,
    CHANNEL_CODES,
    REMOTE_CHANNELS,
    channel_exists,
    channel_row,
    channel_settings,
    clearing_account,
    enabled_channels,
    get_channel,
    is_enabled,
    save_channel,
)
from app.payments.models import (
    CHANNEL_ORDER_STATES,
    ChannelOrder,
    LookupAttempt,
    OrderCheckout,
    Payment,
    PaymentNotification,
    Refund,
)
from app.rows import attach_loaded, commit_keeping, entity_columns, insert_loaded, run

log = logging.getLogger(__name__)
LOOKUP_SALT = "kameng-order-lookup"
# What else is paid through the channels, by its number's first letter ("T": a wallet top-up): (apply a verified
# payment, what its waiting page shows). Registered by its module (app.payments.topups, which builds on this one).
OTHER_PAYMENTS: dict[str, tuple[Callable[..., str], Callable[[str], dict | None]]] = {}


def register_other_payment(prefix: str, apply: Callable[..., str], state: Callable[[str], dict | None]) -> None:
    OTHER_PAYMENTS[prefix] = (apply, state)


def _other_payment(number: object) -> tuple | None:
    return OTHER_PAYMENTS.get(number[:1]) if isinstance(number, str) else None


# --- checkout ----------------------------------------------------------------------------------------------

def checkout(product_id, quantity, contact, query_password, channel: str, base_url: str,
             coupon: object = None, account: object = None, device_id: object = None,
             ip: str | None = None, email: object = None, locale: str = "zh", shop=None) -> tuple[Order, str]:
    """A buyer's order at the public price (less an optional coupon), unpaid, with its payment started. Stock is
    not reserved. A refused coupon writes nothing. `account`: the top-up target, required for direct products.
    `email`: the card secrets are also e-mailed (in `locale`) once the order is delivered (app.notices).
    `shop`: an agent's shop (app.agentshops.service.ShopPricing): its price, snapshotted with the shop."""
    from app.notices import service as notices
    from app.notices.addresses import clean_email

    if not isinstance(query_password, str) or not 6 <= len(query_password) <= 64:
        raise ValidationError(gettext("查询密码须为 6-64 个字符"))
    if not isinstance(channel, str) or channel not in enabled_channels():
        raise ValidationError(gettext("支付方式不可用：%(channel)s", channel=repr(channel)))
    email = clean_email(email)
    gateway = get_channel(channel)
    try:
        order = orders.place_guest_order(product_id, quantity, contact, channel, coupon=coupon, account=account,
                                         device_id=device_id, ip=ip, shop=shop)
    except Exception:
        db.session.rollback()
        raise
    expires_at = utcnow() + timedelta(minutes=int(current_app.config["ORDER_EXPIRE_MINUTES"]))
    db.session.add(OrderCheckout(order_id=order.id, query_password_hash=crypto.hash_order_password(query_password),
                                 expires_at=expires_at))
    notices.register(order.id, email, order.contact, locale, base_url)  # sent once delivered, never before
    subject = product_facts(order.product_id).name  # read in this unit (a read after the commit starts another)
    commit_keeping(order)
    pay_url = start_payment(gateway, order.order_no, order.amount, subject, base_url, expires_at,
                            return_path=f"/shop/paid/{order.order_no}", order_id=order.id, client_ip=ip, keep=order)
    return order, pay_url


def start_payment(gateway, number: str, amount: int, subject: str, base_url: str, expires_at: datetime,
                  return_path: str, order_id: int | None = None, topup_id: int | None = None,
                  client_ip: str | None = None, keep: object = None) -> str:
    """Create the payment at the channel and remember it (what the buyer is sent to, what a later query, close
    or refund needs). Returns the absolute URL the buyer opens. Commits (keeping `keep`, the order or top-up the
    caller holds, loaded: app.rows.commit_keeping)."""
    start = gateway.create_payment(PaymentRequest(
        order_no=number, amount=amount, subject=subject, notify_url=f"{base_url}/pay/notify/{gateway.code}",
        return_url=f"{base_url}{return_path}", expires_at=expires_at, client_ip=client_ip))
    pay_url = start.pay_url
    if start.form is not None:  # the buyer's browser POSTs a signed form to the gateway: our page carries it
        pay_url = f"/pay/go/{number}"
    db.session.add(ChannelOrder(channel=gateway.code, out_trade_no=number, order_id=order_id, topup_id=topup_id,
                                amount=amount, status="open", pay_url=start.pay_url, code_url=start.code_url,
                                form=json.dumps(start.form) if start.form is not None else None,
                                meta=json.dumps(start.meta) if start.meta else None, expires_at=expires_at))
    commit_keeping(*([keep] if keep is not None else []))
    return pay_url if "://" in pay_url else base_url + pay_url


def channel_order(number: str) -> ChannelOrder | None:
    if not isinstance(number, str) or not number:
        return None
    return db.session.scalar(select(ChannelOrder).where(ChannelOrder.out_trade_no == number[:40])
                             .order_by(ChannelOrder.id.desc()).limit(1))


def payment_state(number: str) -> dict | None:
    """What a waiting payment page shows: paid yet or not, and where the buyer goes next (no secrets)."""
    other = _other_payment(number)
    if other is not None:
        return other[1](number)
    order = db.session.scalar(select(Order).where(Order.order_no == (number or "")[:40], Order.channel != "wallet"))
    if order is None:
        return None
    return {"paid": order.status not in ("pending_payment", "closed"), "closed": order.status == "closed",
            "next": f"/shop/paid/{order.order_no}"}


# --- notifications -----------------------------------------------------------------------------------------

def handle_notification(code: str, headers, form: dict, body: bytes, remote_addr: str | None) -> NotificationAnswer:
    gateway = get_channel(code)
    try:
        if code == "sandbox" and not is_enabled("sandbox"):  # no real money behind it: off means refused
            raise BadNotification("the sandbox channel is switched off")
        note = gateway.verify_notification(headers, form, body)
    except BadNotification as exc:
        _log_rejected(code, form.get("order_no") or form.get("out_trade_no") or form.get("orderId"), exc.message,
                      remote_addr)
        return gateway.failure_answer(exc.message)
    try:
        outcome = apply_payment(code, note, remote_addr)
    except KamengError as exc:
        db.session.rollback()
        _log(code, note.order_no, note.trade_no, note.amount, "rejected", exc.message, remote_addr)
        return gateway.failure_answer(exc.message)
    if outcome in ("amount_mismatch", "unknown_order"):
        return gateway.failure_answer(outcome)
    return gateway.success_answer()


def handle_refund_notification(code: str, headers, form: dict, body: bytes,
                               remote_addr: str | None) -> NotificationAnswer:
    """A channel's refund notification (WeChat Pay REFUND.*, UnionPay): verified, then booked by the refund's
    state machine like an answer to a refund query."""
    gateway = get_channel(code)
    try:
        notice = gateway.verify_refund_notification(headers, form, body)
    except BadNotification as exc:
        _log_rejected(code, None, f"refund: {exc.message}", remote_addr)
        return gateway.failure_answer(exc.message)
    outcome = refunds.apply_notice(code, notice)
    _log(code, None, notice.out_refund_no, notice.amount, f"refund_{outcome}"[:24], notice.status, remote_addr)
    if outcome in ("unknown_refund", "amount_mismatch"):
        return gateway.failure_answer(outcome)
    return gateway.success_answer()


def apply_payment(code: str, note: Notification, remote_addr: str | None = None,
                  confirmed_by: int | None = None) -> str:
    """Record a verified payment and move its order; commits. Returns the outcome written to the log."""
    detail = "found by query" if note.raw.get("source") == "query" else None
    other = _other_payment(note.order_no)
    if other is not None:  # "T…": a wallet top-up, never an order number
        return other[0](code, note, remote_addr, confirmed_by)
    if not note.succeeded:
        _count_failed_payment(note.order_no)
        return _log(code, note.order_no, note.trade_no, note.amount, "not_paid", "status is not success", remote_addr)
    row = run(_ORDER_TO_PAY, {"order_no": note.order_no}).first()
    order = attach_loaded(Order, row) if row is not None else None
    if order is None:
        return _log(code, note.order_no, note.trade_no, note.amount, "unknown_order", detail, remote_addr)
    if order.channel != code or note.currency != "CNY" or note.amount != order.amount:
        db.session.rollback()
        detail = f"order {order.channel}/{order.amount} CNY, notification {code}/{note.amount} {note.currency}"
        return _log(code, note.order_no, note.trade_no, note.amount, "amount_mismatch", detail, remote_addr)
    payment = record_payment(code, note, confirmed_by, order_id=order.id)
    if payment is None:
        db.session.rollback()
        return _log(code, note.order_no, note.trade_no, note.amount, "duplicate", detail, remote_addr)
    ledger.post_journal(f"pay:{code}:{note.trade_no}", "payment",
                        [Line(clearing_account(code), -note.amount), Line(BUYER_FUNDS, note.amount)],
                        memo=f"{order.order_no} 收款", order_id=order.id, actor_id=confirmed_by)  # i18n-keep: data
    mark_channel_order_paid(code, order.order_no)
    outcome = _settle(order, payment, payment_account_of(code, note.raw))
    # The log row commits with the payment: one transaction, and nothing is answered before it commits.
    return _log(code, note.order_no, note.trade_no, note.amount, outcome, detail, remote_addr)


# Every payment notification locks its order: the whole entity through the driver (app.rows.attach_loaded)
_ORDER_TO_PAY = (select(*entity_columns(Order)).where(Order.__table__.c.order_no == bindparam("order_no"))
                 .with_for_update())


def _count_failed_payment(order_no: str) -> None:
    """A failed payment counts for its buyer (risk control's many_failed_payments rule); _log commits it."""
    from app.risk import counters

    row = db.session.execute(select(Order.buyer_key, Order.device_key)
                             .where(Order.order_no == (order_no or "")[:40])).first()
    if row is not None:
        counters.record("payment_failed", {"contact": row.buyer_key, "device": row.device_key})


def mark_channel_order_paid(code: str, number: str) -> None:
    # Usually open; a closed one (paid after it expired) is looked for only when no open one moved.
    for current in ("open", "closed"):
        if states.move_all(CHANNEL_ORDER_STATES, current, "paid", *_CHANNEL_ORDER_IS, shape="channel_order",
                           params={"co_channel": code, "co_number": number}):
            return


# Every notification's move of its channel order: the statement is built once (states.move_all's shape)
_CHANNEL_ORDER_IS = (ChannelOrder.channel == bindparam("co_channel"),
                     ChannelOrder.out_trade_no == bindparam("co_number"))


def record_payment(code: str, note: Notification, confirmed_by: int | None, *, order_id: int | None = None,
                   topup_id: int | None = None) -> Payment | None:
    """Record a payment under its unique (channel, trade_no). None when this very payment was recorded before
    (a duplicate notification); Conflict when that trade_no belongs to something else."""
    if not note.trade_no or len(note.trade_no) > 64:
        raise ValidationError(gettext("渠道交易号缺失或过长"))
    # One statement: the unique (channel, trade_no) decides; a row already there (committed before, or by a
    # concurrent notification that PostgreSQL waits for) writes nothing, and is then read to tell which it is.
    payment = insert_loaded(Payment(channel=code, trade_no=note.trade_no, order_id=order_id, topup_id=topup_id,
                                    amount=note.amount, currency=note.currency, status="paid",
                                    confirmed_by_id=confirmed_by), on_conflict=("channel", "trade_no"))
    if payment is not None:
        return payment
    existing = db.session.execute(select(Payment.order_id, Payment.topup_id).where(
        Payment.channel == code, Payment.trade_no == note.trade_no)).first()
    if existing is not None and (existing.order_id, existing.topup_id) != (order_id, topup_id):
        raise Conflict("trade_no already belongs to another payment")
    return None


def _settle(order: Order, payment: Payment, payer: str | None = None) -> str:
    """Deliver a freshly paid order; refund at once what cannot be delivered (closed, already paid, no stock); hold
    for review what risk control flagged at checkout or flags now, at payment (the paying account)."""
    if order.status != "pending_payment":
        # i18n-keep: data
        refunds.request_channel_refund(payment, "订单已关闭或已支付，自动退款 (late or second payment)")
        if order.status == "closed":
            orders.transition(order.id, "refunded")
            return "late_refunded"
        return "double_paid_refunded"
    orders.transition(order.id, "paid", current="pending_payment")  # the row is locked (apply_payment)
    held_now = _risk_at_payment(order, payer)
    if order.risk_hold or held_now:
        order.risk_hold = True
        return orders.hold_for_review(order)
    return deliver_paid_order(order)


def _risk_at_payment(order: Order, account: str | None) -> bool:
    """The paying account is known only now: its lists, its daily limit and the payment rules. Money has come in,
    so anything but allow holds the order for review (never a silent refusal)."""
    from app.risk import service as risk

    if not account:
        return False
    event = risk.RiskInput(event="payment", amount=order.amount, payment_account=account, order_no=order.order_no,
                           values={"is_guest": order.agent_id is None}, counts_when_blocked=True)
    decision = risk.evaluate(event, now=order.paid_at)  # the paying account's limit is reserved on the paid day
    keys = risk.keys_of(event)
    order.payment_account_key = keys["payment_account"]
    from app.risk import counters

    counters.record("payment", {"payment_account": keys["payment_account"], "device": order.device_key,
                                "contact": order.buyer_key}, order.amount)
    return decision.outcome != "allow"


def payment_account_of(channel: str, raw: dict) -> str | None:
    """Who paid, as the channel names them: Alipay's buyer_id, WeChat Pay's payer openid, UnionPay's accNo."""
    if channel == "alipay":
        return raw.get("buyer_id") or raw.get("buyer_user_id")
    if channel == "wechatpay":
        return ((raw.get("transaction") or {}).get("payer") or {}).get("openid")
    if channel == "unionpay":
        return raw.get("accNo")
    if channel == "sandbox":
        return raw.get("payer")
    if channel == "epay":
        return raw.get("buyer")  # some providers add the payer's account; V1's field list does not have it
    return None


def deliver_paid_order(order: Order) -> str:
    """A paid order delivered (card) or its top-up started (direct); with no stock left it is refunded where it
    was paid from. In the caller's transaction."""
    if product_facts(order.product_id).kind == "direct":
        from app.suppliers import service as suppliers

        suppliers.start_recharge(order)  # the money stays in buyer_funds until the upstream's outcome
        return "accepted"
    try:
        orders.deliver_paid(order.id, BUYER_FUNDS)  # allocating, its first write, writes nothing when it raises
    except OutOfStock:
        refund_held_funds(order, "库存不足，自动退款 (out of stock)")  # i18n-keep: data
        orders.transition(order.id, "refunded")
        return "out_of_stock_refunded"
    return "accepted"


def refund_held_funds(order: Order, reason: str, actor_id: int | None = None) -> Refund:
    """Give back the money of a paid order that was never delivered (a direct top-up every supplier failed), in
    the caller's transaction: held in buyer_funds, it returns to the wallet, or through the paying channel."""
    if order.channel == "wallet":
        _release_hold_to_wallet(order, reason)
        return refunds.record_wallet_refund(order.id, order.amount, reason, actor_id)
    payment = db.session.scalar(select(Payment).where(Payment.order_id == order.id, Payment.status == "paid"))
    if payment is None:
        raise Conflict(gettext("找不到该订单的支付记录"))
    return refunds.request_channel_refund(payment, reason, actor_id)


def _release_hold_to_wallet(order: Order, reason: str) -> None:
    if order.amount:  # a coupon may have made it free: nothing was held
        wallet = ledger.agent_account_code(order.agent_id, "wallet")
        ledger.post_journal(f"order:{order.order_no}:refund", "refund",
                            [Line(BUYER_FUNDS, -order.amount), Line(wallet, order.amount)],
                            memo=reason[:255], order_id=order.id)


def _log(code, order_no, trade_no, amount, outcome, detail, remote_addr) -> str:
    if amount is not None and not -2 ** 63 <= amount < 2 ** 63:  # a signed but absurd amount: not storable
        amount = None
    order_no, trade_no, detail = (_printable(v) for v in (order_no, trade_no, detail))
    # A row nobody reads back in this request: one built statement, no entity in the session.
    run(_LOG_NOTIFICATION, {"channel": code, "order_no": (order_no or "")[:40] or None,
                            "trade_no": (trade_no or "")[:64] or None, "amount": amount, "outcome": outcome,
                            "detail": (detail or None) and detail[:255], "remote_addr": remote_addr,
                            "created_at": utcnow()})
    db.session.commit()
    return outcome


_LOG_NOTIFICATION = insert(PaymentNotification.__table__).values(
    {c.key: bindparam(c.key, type_=c.type) for c in PaymentNotification.__table__.c if not c.primary_key}
).inline()  # no RETURNING of the new id: nobody reads it


def _printable(value):
    """What a forged notification sent, storable (PostgreSQL refuses NUL characters in text)."""
    return value.replace("\x00", "") if isinstance(value, str) else value


def _log_rejected(code: str, order_no, detail: str, remote_addr: str | None) -> None:
    """A refused notification is logged (support sees forgeries), but at most NOTIFY_REJECTED_LOG_PER_HOUR per
    address: a flood of forged notifications cannot grow the table without bound (the route is rate-limited too)."""
    cap = int(current_app.config.get("NOTIFY_REJECTED_LOG_PER_HOUR", 100))
    since = utcnow() - timedelta(hours=1)
    from sqlalchemy import func

    seen = db.session.scalar(select(func.count()).select_from(PaymentNotification).where(
        PaymentNotification.outcome == "rejected", PaymentNotification.remote_addr == remote_addr,
        PaymentNotification.created_at >= since))
    if seen >= cap:
        db.session.rollback()
        log.warning("rejected %s notification from %s not logged (over %s/hour): %s", code, remote_addr, cap, detail)
        return
    _log(code, str(order_no)[:40] if order_no else None, None, None, "rejected", detail, remote_addr)


def confirm_manually(order_no: str, trade_no: str, actor_id: int) -> str:
    """An admin confirms a payment seen in the channel's back office: the same path as a notification, audited."""
    order = db.session.scalar(select(Order).where(Order.order_no == (order_no or "").strip()))
    if order is None or order.channel == "wallet":
        raise NotFound(gettext("订单不存在或不是渠道支付订单"))
    trade_no = (trade_no or "").strip()
    if not trade_no or len(trade_no) > 64:
        raise ValidationError(gettext("请填写渠道交易号"))
    audit.record("payment.confirm", "order", order.order_no, {"status": order.status},
                 {"trade_no": trade_no, "channel": order.channel}, actor_id=actor_id)
    note = Notification(order_no=order.order_no, trade_no=trade_no, amount=order.amount, currency="CNY",
                        succeeded=True, raw={"manual": True})
    return apply_payment(order.channel, note, None, confirmed_by=actor_id)


# --- refunds -----------------------------------------------------------------------------------------------

def refund_order(order_id: int, reason: str, actor_id: int | None) -> Refund:
    """Finance (or Support resolving a dispute) refunds an order in full: the sale is reversed and the money goes
    back where it came from."""
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError(gettext("请填写退款原因"))
    order = db.session.scalar(select(Order).where(Order.id == order_id).with_for_update())
    if order is None:
        raise NotFound(gettext("订单不存在"))
    if order.status not in ("paid", "delivering", "delivered", "disputed", "failed"):
        raise Conflict(gettext("订单状态为 %(value)s，不能退款", value=order.status_display()))
    try:
        # Commissions first: their rows, then the beneficiaries' accounts with the buyer's wallet in one lock.
        commissions.reverse_for_order(
            order, extra_lock=[ledger.agent_account_code(order.agent_id, "wallet")] if order.agent_id else None,
            actor_id=actor_id)
        if order.product.kind == "direct" and order.status in ("paid", "delivering"):
            _refuse_while_upstream_busy(order)
        if order.channel == "wallet":
            if _has_sale(order.id):
                orders.reverse_sale(order.id, refund_to=ledger.agent_account_code(order.agent_id, "wallet"))
            else:  # a direct top-up not delivered: its money is still held in buyer_funds
                _release_hold_to_wallet(order, reason)
            refund = refunds.record_wallet_refund(order.id, order.amount, reason, actor_id)
        else:
            payment = db.session.scalar(select(Payment).where(Payment.order_id == order.id,
                                                               Payment.status == "paid"))
            if payment is None:
                raise Conflict(gettext("找不到该订单的支付记录"))
            orders.reverse_sale(order.id, refund_to=BUYER_FUNDS)
            # The money waits in buyer_funds; the channel is asked after commit and the ledger follows its answer.
            refund = refunds.request_channel_refund(payment, reason, actor_id)
        destination = refund.destination
        orders.transition(order.id, "refunded")
        audit.record("order.refund", "order", order.order_no, {"status": order.status},
                     {"status": "refunded", "amount": order.amount, "destination": destination}, reason=reason[:255],
                     actor_id=actor_id)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return refund


def _has_sale(order_id: int) -> bool:
    from app.ledger.models import Journal

    return db.session.scalar(select(Journal.id).where(Journal.order_id == order_id, Journal.kind == "sale")
                             .limit(1)) is not None


def _refuse_while_upstream_busy(order: Order) -> None:
    """A top-up the supplier is still working on may yet be credited: no refund until it answers. An attempt
    whose outcome is unknown may be refunded by support after checking with the supplier."""
    from app.suppliers.models import RechargeAttempt

    busy = db.session.scalar(select(RechargeAttempt.id).where(
        RechargeAttempt.order_id == order.id,
        RechargeAttempt.status.in_(("submitting", "submitted", "processing"))).limit(1))
    if busy is not None:
        raise Conflict(gettext("上游正在处理该直充订单，请等待结果后再退款"))


# --- asking the channel: lost notifications and expiry ------------------------------------------------------

def ask_channel(co_id: int) -> str:
    """Ask the channel about one of its open orders and book a payment it reports (as its notification would
    have been). Returns the state the channel gave, or "unknown" when it could not be asked. Commits.

    A trade the channel reports as paid and since refunded (refunded in its back office before we heard of it) is
    never delivered: our record of it is closed and staff get an alert; our order expires as unpaid."""
    co = db.session.get(ChannelOrder, co_id)
    if co is None or co.status != "open":
        db.session.rollback()
        return co.status if co else "not_found"
    channel, number, meta = co.channel, co.out_trade_no, json.loads(co.meta) if co.meta else {}
    db.session.execute(update(ChannelOrder).where(ChannelOrder.id == co_id)
                       .values(queries=ChannelOrder.queries + 1, last_queried_at=utcnow()))
    db.session.commit()
    try:
        status: TradeStatus = get_channel(channel).query_payment(number, meta)
    except KamengError as exc:
        db.session.rollback()
        log.info("could not ask %s about %s: %s", channel, number, exc.message)
        return "unknown"
    if status.state == "paid" and status.trade_no:
        try:
            apply_payment(channel, status.as_notification(number), remote_addr=None)
        except KamengError as exc:  # e.g. that trade_no belongs to another payment: for staff, not for this job
            db.session.rollback()
            _log(channel, number, status.trade_no, status.amount, "rejected", f"query: {exc.message}", None)
    elif status.state == "refunded":
        _close_channel_order(co_id)
        from app.payments.models import PaymentAlert

        # i18n-keep: data
        db.session.add(PaymentAlert(kind="paid_then_refunded", channel=channel, order_no=number[:40],
                                    message=f"渠道显示该单已支付又已退款（{status.trade_no}），未发货，请核实"[:500]))
        db.session.commit()
    elif status.state in ("closed", "not_found") and co.expires_at < utcnow():
        _close_channel_order(co_id)
        db.session.commit()
    return status.state


def _close_channel_order(co_id: int) -> None:
    states.move_all(CHANNEL_ORDER_STATES, "open", "closed", ChannelOrder.id == co_id, closed_at=utcnow())


def query_open_payments(now: datetime | None = None, limit: int = 200) -> dict:
    """Scheduled (PAYMENT_QUERY_SECONDS): a payment started at a channel more than PAYMENT_QUERY_AFTER_SECONDS ago
    with no notification yet is asked about (then at a growing interval, at most every 10 minutes), until it is
    paid or closed: a lost notification costs the buyer minutes, not the order."""
    now = now or utcnow()
    after = timedelta(seconds=int(current_app.config.get("PAYMENT_QUERY_AFTER_SECONDS", 180)))
    rows = db.session.execute(
        select(ChannelOrder.id, ChannelOrder.queries, ChannelOrder.last_queried_at)
        .where(ChannelOrder.status == "open", ChannelOrder.channel.in_(REMOTE_CHANNELS),
               ChannelOrder.created_at <= now - after)
        .order_by(ChannelOrder.last_queried_at.is_not(None), ChannelOrder.last_queried_at, ChannelOrder.id)
        .limit(limit)).all()
    db.session.rollback()
    report = {"asked": 0, "paid": 0, "unknown": 0}
    for co_id, queries, last in rows:
        gap = timedelta(seconds=min(60 * 2 ** min(queries, 4), 600))
        if last is not None and last > now - gap:
            continue
        state = ask_channel(co_id)
        report["asked"] += 1
        if state in ("paid", "refunded"):
            report["paid"] += 1
        elif state == "unknown":
            report["unknown"] += 1
    return report


def close_at_channel(number: str) -> bool:
    """Before we close an expired order or top-up: ask the channel once more (a payment it has is booked), then
    close its order there so it can no longer be paid. True when ours may be closed. A channel that cannot be
    reached keeps ours open for the next scan, for at most CHANNEL_CLOSE_GRACE_MINUTES past expiry."""
    co = channel_order(number)
    if co is None or co.channel not in REMOTE_CHANNELS or co.status != "open":
        db.session.rollback()
        return True
    co_id, channel, meta, expires_at = co.id, co.channel, json.loads(co.meta) if co.meta else {}, co.expires_at
    grace = timedelta(minutes=int(current_app.config.get("CHANNEL_CLOSE_GRACE_MINUTES", 60)))
    state = ask_channel(co_id)
    if state == "paid":
        return False  # booked: the order is paid now (the guarded close of ours refuses)
    if state == "refunded":
        return True  # paid and refunded at the channel: nothing to deliver, ours closes unpaid
    try:
        closed = get_channel(channel).close_payment(number, meta)
    except KamengError as exc:
        db.session.rollback()
        log.info("could not close %s order %s: %s", channel, number, exc.message)
        if utcnow() > expires_at + grace:  # given up: ours closes; a payment still arriving is refunded
            _close_channel_order(co_id)
            db.session.commit()
            return True
        return False
    if not closed:  # paid in the meantime: book it
        ask_channel(co_id)
        return False
    _close_channel_order(co_id)
    db.session.commit()
    return True


def expire_unpaid(limit: int = 1000) -> int:
    """Scheduled: close unpaid orders past their expiry, after closing their payment at the channel (nothing was
    reserved, so nothing to release)."""
    rows = db.session.execute(
        select(Order.id, Order.order_no).join(OrderCheckout, OrderCheckout.order_id == Order.id)
        .where(Order.status == "pending_payment", OrderCheckout.expires_at < utcnow())
        .order_by(OrderCheckout.expires_at).limit(limit)).all()
    db.session.rollback()
    closed = 0
    for order_id, order_no in rows:
        if not close_at_channel(order_no):
            continue
        try:
            orders.transition(order_id, "closed")
            coupons.release_for_order(order_id)  # closed unpaid: the coupon's use is given back
            db.session.commit()
            closed += 1
        except KamengError:  # paid meanwhile: the guarded update refused, which is right
            db.session.rollback()
    return closed


def lookup(order_no, query_password) -> Order:
    """Order number + order password. A wrong password is answered exactly like an unknown order (404).

    Every wrong try spends from the order number's budget (SHOP_LOOKUP_ORDER_FAILURES per
    SHOP_LOOKUP_ORDER_WINDOW_SECONDS), shared by every address and entry point (the lookup API and page, buyer
    disputes). Once the budget is spent the number answers 429, right password or not, known order or not, until
    the oldest wrong try ages out."""
    if not isinstance(order_no, str) or not isinstance(query_password, str):
        raise NotFound(gettext("订单不存在或密码错误"))
    order_no = order_no.strip()[:40]
    limit, window = _lookup_budget()
    row = run(_LOOKUP, {"order_no": order_no, "since": utcnow() - window}).first()
    if row is not None and row.recent_wrong >= limit:
        # Spent: 429 before any password is checked, the way a wrong try of an unknown number finds it (below).
        with db.engine.begin() as conn:
            _check_lookup_budget(conn, order_no)
    # Hash even when the order is unknown, so timing does not tell the two apart.
    stored = row.query_password_hash if row else crypto.hash_order_password("not-a-real-password-for-timing")
    if row is not None and crypto.check_order_password(stored, query_password):
        # A right password writes nothing, so it takes no lock (the budget was judged above).
        return attach_loaded(Order, row)
    # A wrong try is counted and recorded under one lock per order number, on a connection of its own (the record
    # stays whatever the caller's transaction does), taken after the session's (never the other way round):
    # parallel guesses wait for each other and cannot all slip under the limit.
    with db.engine.begin() as conn:
        now = _check_lookup_budget(conn, order_no)
        conn.execute(insert(LookupAttempt).values(order_no=order_no, created_at=now))
    raise NotFound(gettext("订单不存在或密码错误"))


# Every storefront lookup: the order (a whole entity, app.rows.attach_loaded), its password's hash and, in the same
# statement, its wrong tries inside the window. Built once (app.rows.run).
_LOOKUP = (select(*entity_columns(Order), OrderCheckout.query_password_hash,
                  select(func.count()).select_from(LookupAttempt)
                  .where(LookupAttempt.order_no == bindparam("order_no"), LookupAttempt.created_at > bindparam("since"))
                  .scalar_subquery().label("recent_wrong"))
           .join(OrderCheckout, OrderCheckout.order_id == Order.id)
           .where(Order.order_no == bindparam("order_no")))


def _lookup_budget() -> tuple[int, timedelta]:
    """(wrong tries allowed per order number inside the window, the window)."""
    return (int(current_app.config["SHOP_LOOKUP_ORDER_FAILURES"]),
            timedelta(seconds=int(current_app.config["SHOP_LOOKUP_ORDER_WINDOW_SECONDS"])))


def _check_lookup_budget(conn, order_no: str) -> datetime:
    """Lock the order number (PostgreSQL: until `conn` commits) and count its wrong tries inside the window.
    Raises TooManyAttempts once the budget is spent; returns the time the tries are counted at."""
    limit, window = _lookup_budget()
    now = utcnow()
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": "lookup:" + order_no})
    recent = conn.execute(select(LookupAttempt.created_at).where(
        LookupAttempt.order_no == order_no, LookupAttempt.created_at > now - window)
        .order_by(LookupAttempt.created_at)).scalars().all()
    if len(recent) >= limit:
        retry_at = recent[len(recent) - limit] + window
        minutes = max(1, -(-int((retry_at - now).total_seconds()) // 60))
        raise TooManyAttempts(gettext("该订单号密码错误次数过多，请 %(minutes)s 分钟后再试", minutes=minutes),
                              code="lookup_limited")
    return now


def purge_lookup_attempts() -> int:
    """Scheduled: tries older than the window no longer count."""
    cutoff = utcnow() - timedelta(seconds=int(current_app.config["SHOP_LOOKUP_ORDER_WINDOW_SECONDS"]))
    with db.engine.begin() as conn:
        return conn.execute(delete(LookupAttempt).where(LookupAttempt.created_at < cutoff)).rowcount or 0


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=LOOKUP_SALT)


def lookup_token(order_no: str) -> str:
    return _serializer().dumps(order_no)


def lookup_path(order_no: str) -> str:
    return f"/shop/order/{lookup_token(order_no)}"


def order_from_token(token: str) -> Order:
    max_age = int(current_app.config["LOOKUP_LINK_SECONDS"])
    try:
        order_no = _serializer().loads(token, max_age=max_age)
    except (BadSignature, SignatureExpired):
        raise NotFound(gettext("链接无效或已过期")) from None
    order = db.session.scalar(select(Order).where(Order.order_no == order_no))
    if order is None:
        raise NotFound(gettext("链接无效或已过期"))
    return order


__all__ = ["ChannelError", "ChannelUnavailable", "handle_notification", "checkout", "refund_order", "lookup"]
