"""Upstream suppliers' products (直充 mappings), recharge attempts and their timeline, and supplier alerts.

The supplier itself (connection, credentials, balance) is `app.catalog.models.Supplier`.
"""
from __future__ import annotations

from flask_babel import lazy_gettext
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import relationship

from app.clock import utcnow
from app.extensions import db
from app.money import format_fen
from app.states import Machine

UPSTREAM_STATUSES = {
    "submitting": lazy_gettext("提交中"),
    "submitted": lazy_gettext("已提交运营商"),
    "processing": lazy_gettext("处理中"),
    "success": lazy_gettext("充值成功"),
    "failed": lazy_gettext("充值失败"),
    "unknown": lazy_gettext("结果未知"),
}
FINAL_UPSTREAM_STATUSES = ("success", "failed")


class SupplierProduct(db.Model):
    """One of our products as a supplier sells it: its code there, our cost there, and its stock there."""
    __tablename__ = "supplier_product"
    id = Column(Integer, primary_key=True)
    supplier_id = Column(Integer, ForeignKey("supplier.id"), nullable=False, index=True)
    product_id = Column(Integer, ForeignKey("product.id"), nullable=False, index=True)
    upstream_code = Column(String(64), nullable=False)  # the product's code at the supplier
    cost = Column(BigInteger, nullable=False)  # fen per unit at this supplier
    priority = Column(Integer, nullable=False, default=100)  # lower is tried first (then the supplier's)
    active = Column(Boolean, nullable=False, default=True)
    upstream_stock = Column(Integer)  # as the last stock sync reported; NULL: not reported (unlimited)
    upstream_price = Column(BigInteger)  # fen, as the last stock sync reported
    synced_at = Column(DateTime)

    supplier = relationship("Supplier")
    product = relationship("Product")

    __table_args__ = (
        UniqueConstraint("supplier_id", "product_id", name="uq_supplier_product"),
        CheckConstraint("cost >= 0", name="ck_supplier_product_cost"),
    )

    def cost_display(self) -> str:
        return format_fen(self.cost)


class RechargeAttempt(db.Model):
    """One submission of a direct order to one supplier. An order has at most one attempt per supplier."""
    __tablename__ = "recharge_attempt"
    id = Column(Integer, primary_key=True)
    order_id = Column(Integer, ForeignKey("orders.id"), nullable=False)
    supplier_id = Column(Integer, ForeignKey("supplier.id"), nullable=False)
    seq = Column(Integer, nullable=False)  # 1 for the first supplier tried, 2 after a failover, ...
    upstream_code = Column(String(64), nullable=False)
    cost = Column(BigInteger, nullable=False)  # cost of the whole order at this supplier, fen
    status = Column(String(16), nullable=False, default="submitting")  # see UPSTREAM_STATUSES
    upstream_trade_no = Column(String(64))  # the supplier's own number, once it told us
    polls = Column(Integer, nullable=False, default=0)
    next_poll_at = Column(DateTime)  # when the status poll should ask the supplier next (NULL: final)
    last_error = Column(String(255))
    created_at = Column(DateTime, nullable=False, default=utcnow)
    updated_at = Column(DateTime, nullable=False, default=utcnow)
    finished_at = Column(DateTime)

    order = relationship("Order")
    supplier = relationship("Supplier")

    __table_args__ = (
        UniqueConstraint("order_id", "supplier_id", name="uq_recharge_attempt_order_supplier"),
        Index("ix_recharge_attempt_status_poll", "status", "next_poll_at"),
    )

    def status_display(self) -> str:
        return UPSTREAM_STATUSES.get(self.status, self.status)


# An open attempt takes whatever the upstream answers next (a lost answer is "unknown" until a poll knows better);
# success and failed are final.
_ATTEMPT_OPEN = ("submitting", "submitted", "processing", "unknown")
ATTEMPT_STATES = Machine("supplier_attempt", RechargeAttempt, {
    **{status: {"submitted", "processing", "unknown", "success", "failed"} - {status} for status in _ATTEMPT_OPEN},
    "success": set(),
    "failed": set(),
}, initial=("submitting",), title="supplier attempt (direct top-up)")


class RechargeEvent(db.Model):
    """The timeline of a direct order: submissions, answers, polls, callbacks, failovers, refunds."""
    __tablename__ = "recharge_event"
    id = Column(Integer, primary_key=True)
    order_id = Column(Integer, ForeignKey("orders.id"))  # NULL: a callback naming no order of ours
    attempt_id = Column(Integer, ForeignKey("recharge_attempt.id"))
    supplier_id = Column(Integer, ForeignKey("supplier.id"))
    source = Column(String(16), nullable=False)  # submit, poll, callback, failover, refund, system
    status = Column(String(16))  # the upstream status this event reported, if any
    detail = Column(String(255))
    remote_addr = Column(String(64))
    created_at = Column(DateTime, nullable=False, default=utcnow)

    supplier = relationship("Supplier")

    __table_args__ = (Index("ix_recharge_event_order", "order_id", "id"),)


class SupplierAlert(db.Model):
    """A low-balance alert: our prepaid balance at a supplier fell below its threshold."""
    __tablename__ = "supplier_alert"
    id = Column(Integer, primary_key=True)
    supplier_id = Column(Integer, ForeignKey("supplier.id"), nullable=False, index=True)
    kind = Column(String(16), nullable=False, default="low_balance")
    value = Column(BigInteger, nullable=False)  # the balance seen, fen
    threshold = Column(BigInteger, nullable=False)
    created_at = Column(DateTime, nullable=False, default=utcnow)
    resolved_at = Column(DateTime)

    supplier = relationship("Supplier")
