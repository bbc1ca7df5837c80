"""Bulk compensation (批量补偿): one batch per incident, one coupon per buyer, each order compensated once."""
from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import relationship

from app.clock import utcnow
from app.extensions import db
from app.money import format_fen


class CompensationBatch(db.Model):
    """One bulk compensation: which orders (the criteria, as JSON), what each buyer got, who issued it."""
    __tablename__ = "compensation_batch"
    id = Column(Integer, primary_key=True)
    key = Column(String(64), unique=True, nullable=False)  # the preview's token: submitting it twice issues once
    reason = Column(String(255), nullable=False)
    amount = Column(BigInteger, nullable=False)  # fen per coupon (per buyer)
    valid_days = Column(Integer, nullable=False)
    criteria = Column(Text, nullable=False)  # JSON: product, supplier, window, statuses
    orders = Column(Integer, nullable=False)  # orders compensated by this batch
    buyers = Column(Integer, nullable=False)  # coupons issued
    total = Column(BigInteger, nullable=False)  # fen: amount × buyers
    created_by_id = Column(Integer, ForeignKey("ab_user.id"))
    created_at = Column(DateTime, nullable=False, default=utcnow)

    created_by = relationship("User", foreign_keys=[created_by_id])

    def __repr__(self) -> str:
        return f"#{self.id} {self.reason}"

    def amount_display(self) -> str:
        return format_fen(self.amount)

    def total_display(self) -> str:
        return format_fen(self.total)


class CompensationOrder(db.Model):
    """An order compensated, and the coupon its buyer got for it. An order is compensated at most once, whichever
    batch did it (a second incident window overlapping the first skips it)."""
    __tablename__ = "compensation_order"
    id = Column(Integer, primary_key=True)
    order_id = Column(Integer, ForeignKey("orders.id"), nullable=False, unique=True)
    batch_id = Column(Integer, ForeignKey("compensation_batch.id"), nullable=False, index=True)
    coupon_id = Column(Integer, ForeignKey("coupon.id"), nullable=False, index=True)

    order = relationship("Order")
    batch = relationship("CompensationBatch")
    coupon = relationship("Coupon")

    def coupon_value(self) -> int:
        return self.coupon.value

    def coupon_used(self) -> bool:
        return bool(self.coupon.used_count)
