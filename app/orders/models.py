"""Orders: prices and the upline chain snapshotted at purchase; status moved only by orders.service.transition."""
from __future__ import annotations

from flask_babel import lazy_gettext
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.orm import relationship

from app.clock import utcnow
from app.crypto import EncryptedText, mask, pii_hash
from app.extensions import db
from app.money import format_fen

# The operators' words for each status, in the viewer's language (resolved when shown).
ORDER_STATUSES = {
    "pending_payment": lazy_gettext("待支付"),
    "paid": lazy_gettext("已支付"),
    "delivering": lazy_gettext("发货中"),
    "delivered": lazy_gettext("已到账"),
    "failed": lazy_gettext("失败"),
    "refunded": lazy_gettext("已退款"),
    "closed": lazy_gettext("已关闭"),
    "disputed": lazy_gettext("维权中"),
    "reviewing": lazy_gettext("风控审核中"),
}


def _partial(name: str, column: str, *more: str) -> Index:
    """An index of the rows where `column` is set (both databases support partial indexes)."""
    where = text(f"{column} IS NOT NULL")
    return Index(name, column, *more, postgresql_where=where, sqlite_where=where)


class Order(db.Model):
    __tablename__ = "orders"
    id = Column(Integer, primary_key=True)
    order_no = Column(String(32), unique=True, nullable=False)
    agent_id = Column(Integer, ForeignKey("agent.id"))  # the buying agent; NULL for storefront guests
    product_id = Column(Integer, ForeignKey("product.id"), nullable=False, index=True)
    supplier_id = Column(Integer, ForeignKey("supplier.id"), nullable=False)
    tier_id = Column(Integer, ForeignKey("tier.id"))
    quantity = Column(Integer, nullable=False)
    face_price = Column(BigInteger, nullable=False)  # unit face price at purchase
    unit_price = Column(BigInteger, nullable=False)  # unit price charged
    amount = Column(BigInteger, nullable=False)  # total charged, fen (after any coupon discount)
    discount = Column(BigInteger, nullable=False, default=0, server_default="0")  # coupon discount, fen
    coupon_id = Column(Integer, ForeignKey("coupon.id", name="fk_orders_coupon_id_coupon"))
    cost_total = Column(BigInteger, nullable=False)  # owed to the supplier before its fee
    service_fee = Column(BigInteger, nullable=False, default=0)
    upline_path = Column(String(512))  # the buyer's path at purchase: commissions follow this, not today's tree
    status = Column(String(24), nullable=False, default="pending_payment")
    # Direct top-ups: where the upstream stands (submitted, processing, success, failed, unknown); set only by
    # app.suppliers.recharge. NULL for card orders.
    upstream_status = Column(String(16))
    channel = Column(String(24), nullable=False, default="wallet")
    out_trade_no = Column(String(64))
    # Personal data, encrypted at rest (app.crypto.EncryptedText: Python reads the plaintext) with a blind index
    # each (app.crypto.pii_hash of the normalised value, kept in sync by the set events below) to find them by.
    account = Column(EncryptedText)  # direct top-up target (a phone number, a game account)
    contact = Column(EncryptedText)  # the storefront buyer's phone / QQ / e-mail
    account_hash = Column(String(64))
    contact_hash = Column(String(64))
    # Risk control: the storefront buyer's keyed hashes (normalised contact, device, paying account) that the
    # daily limits count by, the checkout's decision, and whether a paid order is held for review.
    buyer_key = Column(String(64))
    device_key = Column(String(64))
    payment_account_key = Column(String(64))
    risk_decision_id = Column(BigInteger)
    risk_hold = Column(Boolean, nullable=False, default=False, server_default="0")
    notify_url = Column(String(512))  # Open API: where state changes are POSTed (signed)
    request_hash = Column(String(64))  # Open API: hash of the creating request, for idempotency per out_trade_no
    api_key_id = Column(Integer, ForeignKey("api_key.id", name="fk_orders_api_key_id_api_key"))  # signs callbacks
    # Bought in an agent's shop (app.agentshops): the shop, the agent's own price for the order (what its uplines'
    # commissions are a share of) and the agent's profit (shop price - its price), snapshotted at checkout.
    shop_id = Column(Integer, ForeignKey("agent_shop.id", name="fk_orders_shop_id_agent_shop"))
    shop_base_amount = Column(BigInteger)
    shop_profit = Column(BigInteger)
    created_at = Column(DateTime, nullable=False, default=utcnow)
    paid_at = Column(DateTime)
    delivered_at = Column(DateTime)
    updated_at = Column(DateTime, nullable=False, default=utcnow)

    agent = relationship("Agent", foreign_keys=[agent_id])
    product = relationship("Product")
    supplier = relationship("Supplier")
    tier = relationship("Tier")
    card_secrets = relationship("CardSecret", foreign_keys="CardSecret.order_id", back_populates="order")
    shop = relationship("AgentShop")  # app.agentshops

    __table_args__ = (
        UniqueConstraint("agent_id", "out_trade_no", name="uq_orders_agent_out_trade_no"),
        Index("ix_orders_agent_created", "agent_id", "created_at"),
        Index("ix_orders_status_created", "status", "created_at"),
        Index("ix_orders_created", "created_at"),
        # Identifiers only some orders carry (a storefront buyer's contact and keys, a top-up account, a shop): the
        # indexes hold only the orders that have them, so a wallet order maintains none of them on its insert and
        # its move to delivered (every lookup by one of them is an equality, which implies NOT NULL).
        # A storefront buyer is known by contact: "first order or returning" is looked up on every delivery.
        _partial("ix_orders_contact_hash_delivered", "contact_hash", "delivered_at"),
        _partial("ix_orders_account_hash", "account_hash"),
        _partial("ix_orders_buyer_key_created", "buyer_key", "created_at"),
        _partial("ix_orders_device_key_created", "device_key", "created_at"),
        _partial("ix_orders_payment_account_key_created", "payment_account_key", "created_at"),
        _partial("ix_orders_shop_created", "shop_id", "created_at"),
    )

    def __repr__(self) -> str:
        return self.order_no

    def status_display(self) -> str:
        return str(ORDER_STATUSES.get(self.status, self.status))

    # Masked forms for screens that do not need the whole value (app.crypto.mask).
    def contact_masked(self) -> str:
        return mask(self.contact) if self.contact else ""

    def account_masked(self) -> str:
        return mask(self.account) if self.account else ""

    def amount_display(self) -> str:
        return format_fen(self.amount)

    def unit_price_display(self) -> str:
        return format_fen(self.unit_price)

    def shop_profit_display(self) -> str:
        return format_fen(self.shop_profit) if self.shop_profit is not None else "-"

    def shop_base_display(self) -> str:
        return format_fen(self.shop_base_amount) if self.shop_base_amount is not None else "-"

    def delivery_time_display(self) -> str:
        """Paid → delivered, as app.analytics.delivery measures it ('-' until delivered)."""
        if self.paid_at is None or self.delivered_at is None:
            return "-"
        from app.analytics.delivery import elapsed_ms

        ms = elapsed_ms(self.paid_at, self.delivered_at)
        return f"{ms / 1000:.3f} s" if ms < 60_000 else f"{ms // 60_000} min {ms % 60_000 // 1000} s"


# The blind indexes follow every ORM write of the plaintext (constructor or assignment). Core inserts of orders
# (benches, the demo history) set them themselves with app.crypto.pii_hash.
@event.listens_for(Order.contact, "set")
def _contact_hash(target: Order, value, _old, _initiator) -> None:
    target.contact_hash = pii_hash(value)


@event.listens_for(Order.account, "set")
def _account_hash(target: Order, value, _old, _initiator) -> None:
    target.account_hash = pii_hash(value)
