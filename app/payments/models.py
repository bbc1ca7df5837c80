"""Payments: channel settings, payments received (unique per channel trade_no), notifications seen, refunds,
wallet top-ups (充值)."""
from __future__ import annotations

from flask_babel import lazy_gettext
from sqlalchemy import BigInteger, Boolean, Column, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import relationship

from app.clock import utcnow
from app.crypto import EncryptedText
from app.extensions import db
from app.money import format_fen
from app.states import Machine

CHANNEL_NAMES = {
    "sandbox": lazy_gettext("沙箱支付"),
    "alipay": lazy_gettext("支付宝"),
    "wechatpay": lazy_gettext("微信支付"),
    "unionpay": lazy_gettext("银联"),
    "epay": lazy_gettext("易支付"),
    "wallet": lazy_gettext("钱包余额"),
}


class PaymentChannel(db.Model):
    __tablename__ = "payment_channel"
    id = Column(Integer, primary_key=True)
    code = Column(String(16), unique=True, nullable=False)  # sandbox, alipay, wechatpay
    name = Column(String(32), nullable=False)
    enabled = Column(Boolean, nullable=False, default=False)
    settings_enc = Column(Text)  # encrypted JSON: keys, app ids; an empty key refuses every notification
    updated_at = Column(DateTime, nullable=False, default=utcnow)

    def __repr__(self) -> str:
        return self.name


class Payment(db.Model):
    __tablename__ = "payment"
    id = Column(Integer, primary_key=True)
    channel = Column(String(16), nullable=False)
    trade_no = Column(String(64), nullable=False)
    order_id = Column(Integer, ForeignKey("orders.id"), index=True)
    topup_id = Column(Integer, ForeignKey("wallet_topup.id"), index=True)
    amount = Column(BigInteger, nullable=False)
    currency = Column(String(3), nullable=False, default="CNY")
    status = Column(String(16), nullable=False, default="paid")  # paid, refunding (asked of the channel), refunded
    confirmed_by_id = Column(Integer, ForeignKey("ab_user.id"))  # manual confirmation by an admin
    created_at = Column(DateTime, nullable=False, default=utcnow)

    order = relationship("Order")
    topup = relationship("WalletTopUp")
    confirmed_by = relationship("User", foreign_keys=[confirmed_by_id])

    __table_args__ = (UniqueConstraint("channel", "trade_no", name="uq_payment_channel_trade_no"),)

    def amount_display(self) -> str:
        return format_fen(self.amount)


class PaymentNotification(db.Model):
    """Every notification received, with what was done: support and alerts read this."""
    __tablename__ = "payment_notification"
    id = Column(Integer, primary_key=True)
    channel = Column(String(16), nullable=False)
    order_no = Column(String(40))
    trade_no = Column(String(64))
    amount = Column(BigInteger)
    outcome = Column(String(24), nullable=False, index=True)  # accepted, duplicate, rejected, amount_mismatch ...
    detail = Column(String(255))
    remote_addr = Column(String(64))
    created_at = Column(DateTime, nullable=False, default=utcnow, index=True)


class WalletTopUp(db.Model):
    __tablename__ = "wallet_topup"
    id = Column(Integer, primary_key=True)
    topup_no = Column(String(32), unique=True, nullable=False)
    agent_id = Column(Integer, ForeignKey("agent.id"), nullable=False, index=True)
    amount = Column(BigInteger, nullable=False)
    channel = Column(String(16), nullable=False)
    status = Column(String(16), nullable=False, default="pending_payment")  # pending_payment, paid, closed
    created_at = Column(DateTime, nullable=False, default=utcnow)
    paid_at = Column(DateTime)

    agent = relationship("Agent")


TOPUP_STATES = Machine("wallet_topup", WalletTopUp, {
    "pending_payment": {"paid", "closed"},
    "closed": {"paid"},  # paid after it expired: credited all the same
    "paid": set(),
}, initial=("pending_payment",), title="wallet top-up")


class Refund(db.Model):
    """One refund of money: to an agent's wallet (done at once), or of one channel payment back through its channel
    (a state machine driven by jobs, app.payments.refunds). `order_id` is empty for a top-up's second payment."""
    __tablename__ = "refund"
    id = Column(Integer, primary_key=True)
    order_id = Column(Integer, ForeignKey("orders.id"), index=True)
    payment_id = Column(Integer, ForeignKey("payment.id"), unique=True)  # channel refunds: a payment is refunded once
    amount = Column(BigInteger, nullable=False)
    destination = Column(String(16), nullable=False)  # channel code, or wallet
    reason = Column(String(255), nullable=False)
    # requested -> processing -> succeeded / failed (failed -> requested when staff retry); wallet: succeeded
    status = Column(String(16), nullable=False, default="requested")
    out_refund_no = Column(String(32), unique=True)  # ours, sent to the channel; reused on every retry of an attempt
    channel_refund_no = Column(String(64))
    attempts = Column(Integer, nullable=False, default=0, server_default="0")  # calls to the channel
    next_attempt_at = Column(DateTime)
    last_error = Column(String(255))
    meta = Column(Text)  # JSON the channel needs for a later query (UnionPay's txnTime)
    actor_id = Column(Integer, ForeignKey("ab_user.id"))
    created_at = Column(DateTime, nullable=False, default=utcnow)
    updated_at = Column(DateTime)
    finished_at = Column(DateTime)

    order = relationship("Order")
    payment = relationship("Payment")
    actor = relationship("User", foreign_keys=[actor_id])

    __table_args__ = (Index("ix_refund_created", "created_at"),
                      Index("ix_refund_status_due", "status", "next_attempt_at"))


class ChannelOrder(db.Model):
    """A payment started at a channel for an order or a wallet top-up (渠道订单): what the buyer was sent to, what
    later queries and the close need, and when we last asked the channel about it."""
    __tablename__ = "channel_order"
    id = Column(Integer, primary_key=True)
    channel = Column(String(16), nullable=False)
    out_trade_no = Column(String(40), nullable=False)  # our order or top-up number
    order_id = Column(Integer, ForeignKey("orders.id"), index=True)
    topup_id = Column(Integer, ForeignKey("wallet_topup.id"), index=True)
    amount = Column(BigInteger, nullable=False)
    status = Column(String(16), nullable=False, default="open")  # open, paid, closed
    pay_url = Column(Text, nullable=False)
    code_url = Column(String(255))  # WeChat native: the QR content
    form = Column(Text)  # JSON: fields the buyer's browser POSTs to pay_url (UnionPay)
    meta = Column(Text)  # JSON: what query, close and refund need later
    expires_at = Column(DateTime, nullable=False)
    queries = Column(Integer, nullable=False, default=0)
    last_queried_at = Column(DateTime)
    closed_at = Column(DateTime)
    created_at = Column(DateTime, nullable=False, default=utcnow)

    __table_args__ = (UniqueConstraint("channel", "out_trade_no", name="uq_channel_order_channel_no"),
                      Index("ix_channel_order_status_created", "status", "created_at"))


PAYMENT_STATES = Machine("payment", Payment, {
    "paid": {"refunding"},
    "refunding": {"refunded"},  # a failed refund keeps it refunding until staff retry or confirm
    "refunded": set(),
}, initial=("paid",), title="payment")
CHANNEL_ORDER_STATES = Machine("channel_order", ChannelOrder, {
    "open": {"paid", "closed"},
    "closed": {"paid"},  # paid after it was closed: recorded (then refunded or credited)
    "paid": set(),
}, initial=("open",), title="channel order (payment started at a channel)")


class PaymentAlert(db.Model):
    """Something in payments that needs a person: an abnormal or failed refund, a refund the channel keeps not
    answering, a late payment refunded."""
    __tablename__ = "payment_alert"
    id = Column(Integer, primary_key=True)
    kind = Column(String(24), nullable=False, index=True)  # refund_abnormal, refund_failed, refund_stuck, ...
    channel = Column(String(16))
    refund_id = Column(Integer, ForeignKey("refund.id"), index=True)
    order_no = Column(String(40))
    message = Column(String(500), nullable=False)
    created_at = Column(DateTime, nullable=False, default=utcnow, index=True)
    resolved_at = Column(DateTime)

    refund = relationship("Refund")


class OrderCheckout(db.Model):
    """What a buyer without an account gave at checkout: the order password (hashed) and when it expires unpaid."""
    __tablename__ = "order_checkout"
    order_id = Column(Integer, ForeignKey("orders.id"), primary_key=True)
    query_password_hash = Column(String(255), nullable=False)
    expires_at = Column(DateTime, nullable=False, index=True)

    order = relationship("Order")


class Coupon(db.Model):
    """A coupon usable at checkout (storefront or portal), or issued as compensation when a dispute is resolved."""
    __tablename__ = "coupon"
    id = Column(Integer, primary_key=True)
    code = Column(String(32), unique=True, nullable=False)
    name = Column(String(64), nullable=False)
    kind = Column(String(8), nullable=False)  # fixed (value in fen) or percent (value in basis points off)
    value = Column(BigInteger, nullable=False)
    min_spend = Column(BigInteger, nullable=False, default=0)  # fen, before the discount
    starts_at = Column(DateTime, nullable=False)
    ends_at = Column(DateTime, nullable=False)
    per_user_limit = Column(Integer, nullable=False, default=1)  # per contact (storefront) or agent
    total_limit = Column(Integer)  # NULL: unlimited
    used_count = Column(Integer, nullable=False, default=0)
    active = Column(Boolean, nullable=False, default=True)
    created_at = Column(DateTime, nullable=False, default=utcnow)
    # A compensation coupon's only redeemer (app.payments.coupons: "agent:<id>" or "contact:<blind index>");
    # NULL for a coupon anyone may use (a dispute's coupon is bound through its dispute instead).
    owner = Column(String(160), index=True)

    def __repr__(self) -> str:
        return self.code

    def value_display(self) -> str:
        return format_fen(self.value) if self.kind == "fixed" else f"{(self.value or 0) / 100:.2f}%"


class CouponRedemption(db.Model):
    __tablename__ = "coupon_redemption"
    id = Column(Integer, primary_key=True)
    coupon_id = Column(Integer, ForeignKey("coupon.id"), nullable=False)
    order_id = Column(Integer, ForeignKey("orders.id"), nullable=False, unique=True)
    redeemer = Column(String(160), nullable=False)  # "contact:<pii_hash of the contact>" or "agent:<id>"
    device = Column(String(128))  # the storefront buyer's device id, when the page sent one
    discount = Column(BigInteger, nullable=False)
    created_at = Column(DateTime, nullable=False, default=utcnow)

    coupon = relationship("Coupon")
    order = relationship("Order")

    __table_args__ = (Index("ix_coupon_redemption_coupon_redeemer", "coupon_id", "redeemer"),
                      Index("ix_coupon_redemption_coupon_device", "coupon_id", "device"))


class Dispute(db.Model):
    """退款仲裁 / 维权: a buyer's or agent's "not received" complaint, handled by support."""
    __tablename__ = "dispute"
    id = Column(Integer, primary_key=True)
    order_id = Column(Integer, ForeignKey("orders.id"), nullable=False, index=True)
    opened_by_id = Column(Integer, ForeignKey("ab_user.id"))  # an agent's user; NULL for a storefront buyer
    contact = Column(EncryptedText)  # the order's contact, encrypted (app.crypto); found through the order
    reason = Column(String(500), nullable=False)
    status = Column(String(16), nullable=False, default="open")  # open, refunded, rejected
    resolution = Column(String(500))
    resolved_by_id = Column(Integer, ForeignKey("ab_user.id"))
    opened_at = Column(DateTime, nullable=False, default=utcnow, index=True)
    resolved_at = Column(DateTime)
    compensation_coupon_id = Column(Integer, ForeignKey("coupon.id"))

    order = relationship("Order")
    opened_by = relationship("User", foreign_keys=[opened_by_id])
    resolved_by = relationship("User", foreign_keys=[resolved_by_id])
    compensation_coupon = relationship("Coupon", foreign_keys=[compensation_coupon_id])


DISPUTE_STATES = Machine("dispute", Dispute, {
    "open": {"refunded", "rejected"},
    "refunded": set(),
    "rejected": set(),
}, initial=("open",), title="dispute")


class StatementImport(db.Model):
    """对账: one channel statement imported and matched against our payments."""
    __tablename__ = "statement_import"
    id = Column(Integer, primary_key=True)
    channel = Column(String(16), nullable=False)
    filename = Column(String(255))
    source = Column(String(16), nullable=False, default="upload")  # upload, scheduled
    lines = Column(Integer, nullable=False, default=0)
    matched = Column(Integer, nullable=False, default=0)
    differences = Column(Integer, nullable=False, default=0)
    period_start = Column(DateTime)
    period_end = Column(DateTime)
    imported_by_id = Column(Integer, ForeignKey("ab_user.id"))
    created_at = Column(DateTime, nullable=False, default=utcnow)

    imported_by = relationship("User", foreign_keys=[imported_by_id])


class ReconciliationDifference(db.Model):
    __tablename__ = "reconciliation_difference"
    id = Column(Integer, primary_key=True)
    import_id = Column(Integer, ForeignKey("statement_import.id"), nullable=False, index=True)
    kind = Column(String(24), nullable=False)  # missing_here, missing_there, amount_differs
    trade_no = Column(String(64))
    order_no = Column(String(40))
    statement_amount = Column(BigInteger)
    our_amount = Column(BigInteger)

    statement = relationship("StatementImport")


class LookupAttempt(db.Model):
    """One try of an order number's query password (storefront lookup API or page, buyer dispute), kept while it
    counts against that order number's budget. A try that turns out right is deleted: only failures (and tries
    still in flight) count. Keyed by the number as typed, known or not, so the budget tells nothing."""
    __tablename__ = "lookup_attempt"
    id = Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    order_no = Column(String(40), nullable=False)
    created_at = Column(DateTime, nullable=False, default=utcnow)

    __table_args__ = (Index("ix_lookup_attempt_order_no_created_at", "order_no", "created_at"),)
