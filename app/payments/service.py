"""Payments: channel settings, checkout for buyers without an account, asynchronous notifications, manual
confirmation, refunds, order expiry, and the signed lookup link.

A notification is verified, matched (order number, channel, amount, currency), recorded under a unique
(channel, trade_no), moves the order and delivers it, and is committed before the channel hears `success`.
"""
from __future__ import annotations

import json
from datetime import timedelta

from flask import current_app
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash, generate_password_hash

from app import crypto
from app.audit import service as audit
from app.catalog.errors import OutOfStock
from app.clock import utcnow
from app.errors import Conflict, KamengError, NotFound, ValidationError
from app.extensions import db
from app.ledger import service as ledger
from app.ledger.service import Line
from app.network import commissions
from app.orders import service as orders
from app.orders.models import Order
from app.payments import coupons
from app.payments.channels.alipay import AlipayChannel
from app.payments.channels.base import (
    BadNotification,
    ChannelError,
    Notification,
    NotificationAnswer,
    PaymentRequest,
)
from app.payments.channels.sandbox import SandboxChannel
from app.payments.channels.wechatpay import WechatPayChannel
from app.payments.models import CHANNEL_NAMES, OrderCheckout, Payment, PaymentChannel, PaymentNotification, Refund

CHANNEL_CODES = ("sandbox", "alipay", "wechatpay")
BUYER_FUNDS = "platform:buyer_funds"  # money received for an order and not yet earned or refunded
LOOKUP_SALT = "kameng-order-lookup"


def clearing_account(channel: str) -> str:
    return f"platform:clearing:{channel}"


# --- channels ----------------------------------------------------------------------------------------------

def channel_row(code: str) -> PaymentChannel:
    row = db.session.scalar(select(PaymentChannel).where(PaymentChannel.code == code))
    if row is None:
        if code not in CHANNEL_CODES:
            raise NotFound(f"unknown payment channel {code!r}")
        row = PaymentChannel(code=code, name=CHANNEL_NAMES[code], enabled=False)
        db.session.add(row)
        db.session.flush()
    return row


def channel_settings(code: str) -> dict:
    row = channel_row(code)
    return json.loads(crypto.decrypt(row.settings_enc)) if row.settings_enc else {}


def save_channel(code: str, enabled: bool, settings: dict, actor_id: int | None = None) -> PaymentChannel:
    """Store a channel's keys encrypted; the audit entry names which settings changed, never their values."""
    row = channel_row(code)
    before = channel_settings(code)
    changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
    row.settings_enc = crypto.encrypt(json.dumps(settings))
    audit.record("channel.update", "payment_channel", code, {"enabled": row.enabled},
                 {"enabled": bool(enabled), "changed_settings": changed}, actor_id=actor_id)
    row.enabled = bool(enabled)
    row.updated_at = utcnow()
    db.session.commit()
    return row


def get_channel(code: str):
    if code not in CHANNEL_CODES:
        raise NotFound(f"unknown payment channel {code!r}")
    s = channel_settings(code)
    if code == "sandbox":
        return SandboxChannel(s.get("key", ""))
    if code == "alipay":
        return AlipayChannel(s.get("app_id", ""), s.get("private_key", ""), s.get("alipay_public_key", ""),
                             s.get("gateway", ""))
    return WechatPayChannel(s.get("appid", ""), s.get("mchid", ""), s.get("serial_no", ""), s.get("private_key", ""),
                            s.get("api_v3_key", ""), s.get("platform_keys", {}), s.get("api_base", ""))


def enabled_channels() -> list[str]:
    return list(db.session.scalars(select(PaymentChannel.code).where(PaymentChannel.enabled.is_(True))
                                   .order_by(PaymentChannel.id)))


# --- checkout ----------------------------------------------------------------------------------------------

def checkout(product_id, quantity, contact, query_password, channel: str, base_url: str,
             coupon: object = None, account: object = None) -> tuple[Order, str]:
    """A buyer's order at the public price (less an optional coupon), unpaid, with its payment started. Stock is
    not reserved. A refused coupon writes nothing. `account`: the top-up target, required for direct products."""
    if not isinstance(query_password, str) or not 6 <= len(query_password) <= 64:
        raise ValidationError("查询密码须为 6-64 个字符 (query_password must be 6-64 characters)")
    if channel not in enabled_channels():
        raise ValidationError(f"支付方式不可用 (payment channel {channel!r} is not available)")
    gateway = get_channel(channel)
    try:
        order = orders.place_guest_order(product_id, quantity, contact, channel, coupon=coupon, account=account)
    except Exception:
        db.session.rollback()
        raise
    minutes = int(current_app.config["ORDER_EXPIRE_MINUTES"])
    db.session.add(OrderCheckout(order_id=order.id, query_password_hash=generate_password_hash(query_password),
                                 expires_at=utcnow() + timedelta(minutes=minutes)))
    db.session.commit()
    start = gateway.create_payment(PaymentRequest(
        order_no=order.order_no, amount=order.amount, subject=order.product.name,
        notify_url=f"{base_url}/pay/notify/{channel}", return_url=f"{base_url}{lookup_path(order.order_no)}"))
    pay_url = start.pay_url if "://" in start.pay_url else base_url + start.pay_url
    return order, pay_url


# --- notifications -----------------------------------------------------------------------------------------

def handle_notification(code: str, headers, form: dict, body: bytes, remote_addr: str | None) -> NotificationAnswer:
    gateway = get_channel(code)
    try:
        note = gateway.verify_notification(headers, form, body)
    except BadNotification as exc:
        _log(code, form.get("order_no") or form.get("out_trade_no"), None, None, "rejected", exc.message, remote_addr)
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


def apply_payment(code: str, note: Notification, remote_addr: str | None = None,
                  confirmed_by: int | None = None) -> str:
    """Record a verified payment and move its order; commits. Returns the outcome written to the log."""
    from app.payments import topups

    if topups.is_topup_no(note.order_no):  # "T…": a wallet top-up, never an order number
        return topups.apply_topup_payment(code, note, remote_addr, confirmed_by)
    if not note.succeeded:
        return _log(code, note.order_no, note.trade_no, note.amount, "not_paid", "status is not success", remote_addr)
    order = db.session.scalar(select(Order).where(Order.order_no == note.order_no).with_for_update())
    if order is None:
        return _log(code, note.order_no, note.trade_no, note.amount, "unknown_order", None, remote_addr)
    if order.channel != code or note.currency != "CNY" or note.amount != order.amount:
        db.session.rollback()
        detail = f"order {order.channel}/{order.amount} CNY, notification {code}/{note.amount} {note.currency}"
        return _log(code, note.order_no, note.trade_no, note.amount, "amount_mismatch", detail, remote_addr)
    payment = record_payment(code, note, confirmed_by, order_id=order.id)
    if payment is None:
        db.session.rollback()
        return _log(code, note.order_no, note.trade_no, note.amount, "duplicate", None, remote_addr)
    ledger.post_journal(f"pay:{code}:{note.trade_no}", "payment",
                        [Line(clearing_account(code), -note.amount), Line(BUYER_FUNDS, note.amount)],
                        memo=f"{order.order_no} 收款", order_id=order.id, actor_id=confirmed_by)
    outcome = _settle(order, payment)
    db.session.commit()
    return _log(code, note.order_no, note.trade_no, note.amount, outcome, None, remote_addr)


def record_payment(code: str, note: Notification, confirmed_by: int | None, *, order_id: int | None = None,
                   topup_id: int | None = None) -> Payment | None:
    """Record a payment under its unique (channel, trade_no). None when this very payment was recorded before
    (a duplicate notification); Conflict when that trade_no belongs to something else."""
    existing = db.session.scalar(select(Payment).where(Payment.channel == code, Payment.trade_no == note.trade_no))
    if existing is not None:
        if (existing.order_id, existing.topup_id) != (order_id, topup_id):
            raise Conflict("trade_no already belongs to another payment")
        return None
    try:
        with db.session.begin_nested():
            payment = Payment(channel=code, trade_no=note.trade_no, order_id=order_id, topup_id=topup_id,
                              amount=note.amount, currency=note.currency, status="paid", confirmed_by_id=confirmed_by)
            db.session.add(payment)
    except IntegrityError:  # the same notification, recorded concurrently
        return None
    return payment


def _settle(order: Order, payment: Payment) -> str:
    """Deliver a freshly paid order; refund at once what cannot be delivered (closed, already paid, no stock)."""
    if order.status != "pending_payment":
        _refund_payment(payment, "订单已关闭或已支付，自动退款 (late or second payment)")
        if order.status == "closed":
            orders.transition(order.id, "refunded")
            _record_refund(order, payment.channel, "订单已关闭，自动退款 (late payment)", None)
            return "late_refunded"
        return "double_paid_refunded"
    orders.transition(order.id, "paid")
    if order.product.kind == "direct":
        from app.suppliers import recharge

        recharge.start(order)  # the money stays in buyer_funds until the upstream's outcome
        return "accepted"
    try:
        with db.session.begin_nested():
            orders.deliver_paid(order.id, BUYER_FUNDS)
    except OutOfStock:
        _refund_payment(payment, "库存不足，自动退款 (out of stock)")
        orders.transition(order.id, "refunded")
        _record_refund(order, payment.channel, "库存不足，自动退款", None)
        return "out_of_stock_refunded"
    return "accepted"


def _refund_payment(payment: Payment, reason: str) -> None:
    """Money back through the channel it came from (the sandbox refunds at once)."""
    ledger.post_journal(f"refund:{payment.channel}:{payment.trade_no}", "refund",
                        [Line(BUYER_FUNDS, -payment.amount), Line(clearing_account(payment.channel), payment.amount)],
                        memo=reason[:255], order_id=payment.order_id)
    payment.status = "refunded"


def _record_refund(order: Order, destination: str, reason: str, actor_id: int | None) -> Refund:
    refund = Refund(order_id=order.id, amount=order.amount, destination=destination, reason=reason[:255],
                    status="succeeded", actor_id=actor_id)
    db.session.add(refund)
    return refund


def refund_held_funds(order: Order, reason: str, actor_id: int | None = None) -> Refund:
    """Give back the money of a paid order that was never delivered (a direct top-up every supplier failed), in
    the caller's transaction: held in buyer_funds, it returns to the wallet or through the paying channel."""
    if order.channel == "wallet":
        _release_hold_to_wallet(order, reason)
        return _record_refund(order, "wallet", reason, actor_id)
    payment = db.session.scalar(select(Payment).where(Payment.order_id == order.id, Payment.status == "paid"))
    if payment is None:
        raise Conflict("找不到该订单的支付记录 (no payment to refund)")
    _refund_payment(payment, reason)
    return _record_refund(order, order.channel, reason, actor_id)


def _release_hold_to_wallet(order: Order, reason: str) -> None:
    if order.amount:  # a coupon may have made it free: nothing was held
        wallet = ledger.agent_account_code(order.agent_id, "wallet")
        ledger.post_journal(f"order:{order.order_no}:refund", "refund",
                            [Line(BUYER_FUNDS, -order.amount), Line(wallet, order.amount)],
                            memo=reason[:255], order_id=order.id)


def _log(code, order_no, trade_no, amount, outcome, detail, remote_addr) -> str:
    if amount is not None and not -2 ** 63 <= amount < 2 ** 63:  # a signed but absurd amount: not storable
        amount = None
    db.session.add(PaymentNotification(channel=code, order_no=(order_no or "")[:40] or None,
                                       trade_no=(trade_no or "")[:64] or None, amount=amount, outcome=outcome,
                                       detail=(detail or None) and detail[:255], remote_addr=remote_addr))
    db.session.commit()
    return outcome


def confirm_manually(order_no: str, trade_no: str, actor_id: int) -> str:
    """An admin confirms a payment seen in the channel's back office: the same path as a notification, audited."""
    order = db.session.scalar(select(Order).where(Order.order_no == (order_no or "").strip()))
    if order is None or order.channel == "wallet":
        raise NotFound("订单不存在或不是渠道支付订单 (no such channel order)")
    trade_no = (trade_no or "").strip()
    if not trade_no or len(trade_no) > 64:
        raise ValidationError("请填写渠道交易号 (trade_no is required, at most 64 characters)")
    audit.record("payment.confirm", "order", order.order_no, {"status": order.status},
                 {"trade_no": trade_no, "channel": order.channel}, actor_id=actor_id)
    note = Notification(order_no=order.order_no, trade_no=trade_no, amount=order.amount, currency="CNY",
                        succeeded=True, raw={"manual": True})
    return apply_payment(order.channel, note, None, confirmed_by=actor_id)


# --- refunds -----------------------------------------------------------------------------------------------

def refund_order(order_id: int, reason: str, actor_id: int | None) -> Refund:
    """Support refunds an order in full: the sale is reversed and the money goes back where it came from."""
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError("请填写退款原因 (a reason is required)")
    order = db.session.scalar(select(Order).where(Order.id == order_id).with_for_update())
    if order is None:
        raise NotFound("订单不存在 (order not found)")
    if order.status not in ("paid", "delivering", "delivered", "disputed", "failed"):
        raise Conflict(f"订单状态为 {order.status_display()}，不能退款")
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
            destination = "wallet"
        else:
            payment = db.session.scalar(select(Payment).where(Payment.order_id == order.id,
                                                               Payment.status == "paid"))
            if payment is None:
                raise Conflict("找不到该订单的支付记录 (no payment to refund)")
            orders.reverse_sale(order.id, refund_to=BUYER_FUNDS)
            _refund_payment(payment, reason)
            destination = order.channel
        orders.transition(order.id, "refunded")
        refund = Refund(order_id=order.id, amount=order.amount, destination=destination, reason=reason[:255],
                        status="succeeded", actor_id=actor_id)
        db.session.add(refund)
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
        raise Conflict("上游正在处理该直充订单，请等待结果后再退款 (the supplier is still processing this top-up)")


# --- expiry and lookup -------------------------------------------------------------------------------------

def expire_unpaid(limit: int = 1000) -> int:
    """Scheduled: close unpaid orders past their expiry (nothing was reserved, so nothing to release)."""
    ids = list(db.session.scalars(
        select(Order.id).join(OrderCheckout, OrderCheckout.order_id == Order.id)
        .where(Order.status == "pending_payment", OrderCheckout.expires_at < utcnow()).limit(limit)))
    closed = 0
    for order_id in ids:
        try:
            orders.transition(order_id, "closed")
            coupons.release_for_order(order_id)  # closed unpaid: the coupon's use is given back
            db.session.commit()
            closed += 1
        except KamengError:  # paid meanwhile: the guarded update refused, which is right
            db.session.rollback()
    return closed


def lookup(order_no, query_password) -> Order:
    """Order number + order password. A wrong password is answered exactly like an unknown order."""
    if not isinstance(order_no, str) or not isinstance(query_password, str):
        raise NotFound("订单不存在或密码错误 (order not found)")
    row = db.session.execute(select(Order, OrderCheckout.query_password_hash)
                             .join(OrderCheckout, OrderCheckout.order_id == Order.id)
                             .where(Order.order_no == order_no.strip()[:40])).first()
    # Hash even when the order is unknown, so timing does not tell the two apart.
    stored = row[1] if row else _DUMMY_HASH
    if not check_password_hash(stored, query_password) or row is None:
        raise NotFound("订单不存在或密码错误 (order not found)")
    return row[0]


_DUMMY_HASH = generate_password_hash("not-a-real-password-for-timing")


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
        raise NotFound("链接无效或已过期 (link invalid or expired)") from None
    order = db.session.scalar(select(Order).where(Order.order_no == order_no))
    if order is None:
        raise NotFound("链接无效或已过期 (link invalid or expired)")
    return order


__all__ = ["ChannelError", "handle_notification", "checkout", "refund_order", "lookup"]
