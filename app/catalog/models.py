"""Catalog: categories, suppliers, products, tier prices, price rules, card stock and its imports."""
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
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import relationship

from app.clock import utcnow
from app.extensions import db
from app.money import format_fen
from app.states import Machine

PRODUCT_KINDS = {"card": lazy_gettext("卡密"), "direct": lazy_gettext("直充"), "manual": lazy_gettext("人工")}
MAX_USES_LIMIT = 100_000  # a reusable secret's uses: far above any shared account's, and a typo is refused


class Category(db.Model):
    __tablename__ = "category"
    id = Column(Integer, primary_key=True)
    name = Column(String(64), unique=True, nullable=False)
    sort_order = Column(Integer, nullable=False, default=0)
    active = Column(Boolean, nullable=False, default=True)

    def __repr__(self) -> str:
        return self.name


class Supplier(db.Model):
    __tablename__ = "supplier"
    id = Column(Integer, primary_key=True)
    name = Column(String(64), unique=True, nullable=False)
    is_platform_own = Column(Boolean, nullable=False, default=False)
    service_fee_bp = Column(Integer, nullable=False, default=0)  # platform's fee on the supplier's cost
    active = Column(Boolean, nullable=False, default=True)
    contact = Column(String(128))
    # Upstream connection (直充 / 对接): how orders reach this supplier. NULL protocol: goods come from our own
    # stock (card secrets), nothing is submitted anywhere.
    protocol = Column(String(16))  # simulator, kameng
    endpoint = Column(String(255))  # base URL of the upstream API
    app_key = Column(String(128))  # our account / app key at the upstream
    secret_enc = Column(Text)  # our secret at the upstream, encrypted (app.crypto); never shown again
    priority = Column(Integer, nullable=False, default=100, server_default="100")  # lower is tried first
    timeout_seconds = Column(Integer, nullable=False, default=10, server_default="10")
    balance = Column(BigInteger)  # our prepaid balance at the upstream, fen, as it last reported (NULL: unknown)
    balance_synced_at = Column(DateTime)
    low_balance_threshold = Column(BigInteger, nullable=False, default=0, server_default="0")  # alert below, fen

    __table_args__ = (
        CheckConstraint("service_fee_bp >= 0 AND service_fee_bp <= 10000", name="ck_supplier_fee"),
        CheckConstraint("protocol IS NULL OR protocol IN ('simulator', 'kameng')", name="ck_supplier_protocol"),
        CheckConstraint("timeout_seconds >= 1 AND timeout_seconds <= 120", name="ck_supplier_timeout"),
    )

    def __repr__(self) -> str:
        return self.name


class Product(db.Model):
    __tablename__ = "product"
    id = Column(Integer, primary_key=True)
    name = Column(String(128), nullable=False)
    category_id = Column(Integer, ForeignKey("category.id"), nullable=False, index=True)
    supplier_id = Column(Integer, ForeignKey("supplier.id"), nullable=False, index=True)
    kind = Column(String(16), nullable=False, default="card")
    face_price = Column(BigInteger, nullable=False)  # fen
    cost = Column(BigInteger, nullable=False, default=0)  # fen per unit, owed to the supplier
    max_per_order = Column(Integer, nullable=False, default=10)
    low_stock_threshold = Column(Integer, nullable=False, default=10)
    active = Column(Boolean, nullable=False, default=True)
    description = Column(Text)
    created_at = Column(DateTime, nullable=False, default=utcnow)
    # Reusable cards (循环卡密): each secret is sold to up to `max_uses` orders (a shared account, a tutorial, a
    # download key). Fixed once the product has stock (app.catalog.service.check_reuse_change); max_uses is copied
    # onto every secret it imports and follows edits (apply_max_uses).
    reusable = Column(Boolean, nullable=False, default=False, server_default="0")
    max_uses = Column(Integer)

    category = relationship("Category")
    supplier = relationship("Supplier")

    __table_args__ = (
        CheckConstraint("kind IN ('card', 'direct', 'manual')", name="ck_product_kind"),
        CheckConstraint("face_price > 0 AND cost >= 0", name="ck_product_prices"),
        CheckConstraint("max_per_order >= 1 AND max_per_order <= 1000", name="ck_product_max_qty"),
        CheckConstraint("low_stock_threshold >= 0", name="ck_product_threshold"),
        CheckConstraint(f"(reusable AND kind = 'card' AND max_uses >= 1 AND max_uses <= {MAX_USES_LIMIT}) "
                        "OR (NOT reusable AND max_uses IS NULL)", name="ck_product_reuse"),
    )

    def __repr__(self) -> str:
        return self.name

    def kind_display(self) -> str:
        return str(PRODUCT_KINDS.get(self.kind, self.kind))

    def face_display(self) -> str:
        return format_fen(self.face_price)

    def cost_display(self) -> str:
        return format_fen(self.cost)


class TierPrice(db.Model):
    """A fixed price for one tier on one product, overriding the tier's discount."""
    __tablename__ = "tier_price"
    id = Column(Integer, primary_key=True)
    product_id = Column(Integer, ForeignKey("product.id"), nullable=False)
    tier_id = Column(Integer, ForeignKey("tier.id"), nullable=False)
    price = Column(BigInteger, nullable=False)

    product = relationship("Product")
    tier = relationship("Tier")

    __table_args__ = (
        UniqueConstraint("product_id", "tier_id", name="uq_tier_price_product_tier"),
        CheckConstraint("price > 0", name="ck_tier_price_positive"),
    )

    def price_display(self) -> str:
        return format_fen(self.price)


class PriceRule(db.Model):
    """A time-bounded rate (e.g. a holiday discount) on a product, for one tier or for all."""
    __tablename__ = "price_rule"
    id = Column(Integer, primary_key=True)
    name = Column(String(64), nullable=False)
    product_id = Column(Integer, ForeignKey("product.id"), nullable=False, index=True)
    tier_id = Column(Integer, ForeignKey("tier.id"))  # NULL: every tier
    rate_bp = Column(Integer, nullable=False)  # applied on top of the tier price: 9000 = a further 10% off
    starts_at = Column(DateTime, nullable=False)
    ends_at = Column(DateTime, nullable=False)
    active = Column(Boolean, nullable=False, default=True)

    product = relationship("Product")
    tier = relationship("Tier")

    __table_args__ = (
        CheckConstraint("rate_bp > 0 AND rate_bp <= 10000", name="ck_price_rule_rate"),
        CheckConstraint("ends_at > starts_at", name="ck_price_rule_window"),
    )


class CardImport(db.Model):
    """One import batch of card secrets, with its report and progress."""
    __tablename__ = "card_import"
    id = Column(Integer, primary_key=True)
    product_id = Column(Integer, ForeignKey("product.id"), nullable=False, index=True)
    source = Column(String(16), nullable=False, default="paste")  # paste, file, cli
    filename = Column(String(255))
    status = Column(String(16), nullable=False, default="queued")  # queued, running, done, failed
    total_lines = Column(Integer, nullable=False, default=0)
    processed = Column(Integer, nullable=False, default=0)
    added = Column(Integer, nullable=False, default=0)
    duplicates = Column(Integer, nullable=False, default=0)
    rejected = Column(Integer, nullable=False, default=0)
    report = Column(Text)  # JSON: duplicate and rejected line numbers with reasons
    error = Column(String(255))
    payload_enc = Column(Text)  # the uploaded lines, encrypted, until the import has run
    job_id = Column(String(64))
    created_by_id = Column(Integer, ForeignKey("ab_user.id"))
    created_at = Column(DateTime, nullable=False, default=utcnow)
    finished_at = Column(DateTime)

    product = relationship("Product")
    created_by = relationship("User", foreign_keys=[created_by_id])

    def __repr__(self) -> str:  # list screens show the batch by this (card stock's 导入批次 column)
        return f"#{self.id} {self.filename or self.source} ({self.created_at:%Y-%m-%d})" if self.created_at \
            else f"#{self.id} {self.filename or self.source}"

    def progress_display(self) -> str:
        if not self.total_lines:
            return "-"
        return f"{self.processed}/{self.total_lines} ({100 * self.processed // self.total_lines}%)"


IMPORT_STATES = Machine("card_import", CardImport, {
    "queued": {"running"},
    "running": {"done", "failed"},  # a run cut off stays running and is run again (workers.jobs.resume_imports)
    "failed": {"running"},  # run again: the chunks already in count once
    "done": set(),
}, initial=("queued",), title="card import batch")


class CardSecret(db.Model):
    """One card secret. A normal secret belongs to at most one order (`order_id`, set when sold). A reusable one
    (`max_uses` set) belongs to no single order: each sale is a CardSecretUse row, `uses` counts those not given
    back, and it stays `available` while uses < max_uses, `sold` once they are equal (the database checks both)."""
    __tablename__ = "card_secret"
    id = Column(Integer, primary_key=True)
    product_id = Column(Integer, ForeignKey("product.id"), nullable=False)
    secret_enc = Column(Text, nullable=False)  # Fernet token; never the plain secret
    secret_hash = Column(String(64), nullable=False)  # keyed hash, for dedupe
    masked = Column(String(64), nullable=False)
    status = Column(String(16), nullable=False, default="available")  # available, sold, void
    order_id = Column(Integer, ForeignKey("orders.id"), index=True)
    batch_id = Column(Integer, ForeignKey("card_import.id"), index=True)
    created_at = Column(DateTime, nullable=False, default=utcnow)
    sold_at = Column(DateTime)  # a reusable secret: its latest sale
    max_uses = Column(Integer)  # NULL: a normal secret (sold once)
    uses = Column(Integer, nullable=False, default=0, server_default="0")

    product = relationship("Product")
    order = relationship("Order", foreign_keys=[order_id], back_populates="card_secrets")
    batch = relationship("CardImport")

    __table_args__ = (
        # The hash first: the (product_id, status, id) index below is then the only one that reads a product's
        # secrets in order, which the claim of free secrets relies on (app.catalog.cards._free_secrets).
        UniqueConstraint("secret_hash", "product_id", name="uq_card_secret_product_hash"),
        CheckConstraint("status IN ('available', 'sold', 'void')", name="ck_card_secret_status"),
        # The guarded counter's backstop: a reusable secret never passes max_uses, never belongs to one order, and
        # is available exactly while it has uses left; a normal secret has no counter.
        CheckConstraint("(max_uses IS NULL AND uses = 0) OR (max_uses >= 1 AND uses >= 0 AND uses <= max_uses "
                        "AND order_id IS NULL AND (status = 'void' OR (status = 'available' AND uses < max_uses) "
                        "OR (status = 'sold' AND uses = max_uses)))", name="ck_card_secret_uses"),
        Index("ix_card_secret_product_status", "product_id", "status", "id"),
    )

    def uses_display(self) -> str:
        return f"{self.uses}/{self.max_uses}" if self.max_uses is not None else "-"


# A reusable secret (max_uses) goes sold -> available when a use is given back or its limit is raised: those moves
# are computed per row by a CASE in app/catalog/cards.py and catalog/service.py (tests/test_architecture.py names
# them), inside the one statement that also counts its uses.
CARD_SECRET_STATES = Machine("card_secret", CardSecret, {
    "available": {"sold"},
    "sold": {"void", "available"},  # a refund voids it; a reusable one's use given back
    "void": set(),
}, initial=("available",), title="card secret")


class CardSecretUse(db.Model):
    """One sale of a reusable secret to one order (an order never gets the same secret twice). `revealed_at`: when
    the buyer was first shown it (storefront lookup, Open API, portal, e-mail, a download); a refund gives the use
    back (`returned_at`, the secret's counter down by one) only when it was never revealed."""
    __tablename__ = "card_secret_use"
    id = Column(Integer, primary_key=True)
    secret_id = Column(Integer, ForeignKey("card_secret.id"), nullable=False)
    order_id = Column(Integer, ForeignKey("orders.id"), nullable=False)
    sold_at = Column(DateTime, nullable=False)
    revealed_at = Column(DateTime)
    returned_at = Column(DateTime)

    secret = relationship("CardSecret")
    order = relationship("Order")

    __table_args__ = (
        UniqueConstraint("secret_id", "order_id", name="uq_card_secret_use_secret_order"),
        CheckConstraint("returned_at IS NULL OR revealed_at IS NULL", name="ck_card_secret_use_return"),
        Index("ix_card_secret_use_order", "order_id"),
    )


class SecretDownload(db.Model):
    """How often an order's card secrets were downloaded (批量提卡: the portal's files and the Open API's), one row
    per order, counted in the download's transaction; who downloaded what is in the audit log (card.extract)."""
    __tablename__ = "order_secret_download"
    order_id = Column(Integer, ForeignKey("orders.id"), primary_key=True, autoincrement=False)
    downloads = Column(Integer, nullable=False)
    last_downloaded_at = Column(DateTime, nullable=False)


class StockAlert(db.Model):
    """A restock alert (补货提醒) raised by the low-stock scan."""
    __tablename__ = "stock_alert"
    id = Column(Integer, primary_key=True)
    product_id = Column(Integer, ForeignKey("product.id"), nullable=False, index=True)
    available = Column(Integer, nullable=False)
    threshold = Column(Integer, nullable=False)
    created_at = Column(DateTime, nullable=False, default=utcnow)
    resolved_at = Column(DateTime)

    product = relationship("Product")
