"""Agent shops (分站): an agent's own storefront at /s/<code>/ (or an approved custom domain), its prices and the
marketing materials drawn for it. The platform delivers; the agent holds no stock.

An order bought in a shop is a storefront (guest) order (`orders.agent_id` NULL: the buyer is a consumer) that
snapshots the shop (`orders.shop_id`), the agent's own price for it (`shop_base_amount`) and the profit the agent
earns on delivery (`shop_profit`), with the agent's path in `upline_path` (the uplines' commissions follow it).
"""
from __future__ import annotations

from flask_babel import lazy_gettext
from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import relationship

from app.clock import utcnow
from app.extensions import db
from app.money import format_bp
from app.states import Machine

THEMES = {"general": lazy_gettext("综合"), "game": lazy_gettext("游戏"), "campus": lazy_gettext("校园")}
SHOP_STATUSES = {"active": lazy_gettext("营业中"), "suspended": lazy_gettext("已暂停")}
DOMAIN_STATUSES = {"requested": lazy_gettext("待审核"), "approved": lazy_gettext("已通过"),
                   "rejected": lazy_gettext("已拒绝")}


class AgentShop(db.Model):
    """One shop per agent. Its prices: the agent's own (tier) price raised by `markup_bp` (or a product's own
    markup, AgentShopProduct), within the admin's bounds (平台设置)."""
    __tablename__ = "agent_shop"
    id = Column(Integer, primary_key=True)
    agent_id = Column(Integer, ForeignKey("agent.id"), nullable=False, unique=True)
    code = Column(String(16), nullable=False, unique=True)  # /s/<code>/: random, lower-case letters and digits
    name = Column(String(64), nullable=False)
    notice = Column(Text)  # 店铺公告, shown on every page of the shop (plain text)
    theme = Column(String(16), nullable=False, default="general")
    contact = Column(String(128))  # how buyers reach the agent (QQ, WeChat, phone): public on the shop's pages
    markup_bp = Column(Integer, nullable=False, default=0)
    status = Column(String(16), nullable=False, default="active")
    suspended_at = Column(DateTime)
    logo_png = Column(LargeBinary)  # re-encoded by Pillow (never the bytes uploaded), at most 256 × 256
    logo_version = Column(Integer, nullable=False, default=0, server_default="0")  # cache-busting in logo URLs
    created_at = Column(DateTime, nullable=False, default=utcnow)
    updated_at = Column(DateTime, nullable=False, default=utcnow)

    agent = relationship("Agent")

    __table_args__ = (
        CheckConstraint("theme IN ('general', 'game', 'campus')", name="ck_agent_shop_theme"),
        CheckConstraint("status IN ('active', 'suspended')", name="ck_agent_shop_status"),
        CheckConstraint("markup_bp >= 0", name="ck_agent_shop_markup"),
    )

    def __repr__(self) -> str:
        return self.name

    def theme_display(self) -> str:
        return str(THEMES.get(self.theme, self.theme))

    def status_display(self) -> str:
        return str(SHOP_STATUSES.get(self.status, self.status))

    def markup_display(self) -> str:
        return format_bp(self.markup_bp)

    def path(self) -> str:
        return f"/s/{self.code}/"


class AgentShopProduct(db.Model):
    """A product's settings in one shop: its own markup (NULL: the shop's), hidden, featured on the price list."""
    __tablename__ = "agent_shop_product"
    id = Column(Integer, primary_key=True)
    shop_id = Column(Integer, ForeignKey("agent_shop.id"), nullable=False)
    product_id = Column(Integer, ForeignKey("product.id"), nullable=False)
    markup_bp = Column(Integer)
    hidden = Column(Boolean, nullable=False, default=False)
    featured = Column(Boolean, nullable=False, default=False)
    updated_at = Column(DateTime, nullable=False, default=utcnow)

    __table_args__ = (
        UniqueConstraint("shop_id", "product_id", name="uq_agent_shop_product"),
        CheckConstraint("markup_bp IS NULL OR markup_bp >= 0", name="ck_agent_shop_product_markup"),
    )


class AgentShopDomain(db.Model):
    """A custom domain a shop asked for (one per shop); served as the shop only once an admin approved it."""
    __tablename__ = "agent_shop_domain"
    id = Column(Integer, primary_key=True)
    shop_id = Column(Integer, ForeignKey("agent_shop.id"), nullable=False, unique=True)
    domain = Column(String(253), nullable=False, unique=True)  # lower-case, IDNA (punycode), no port
    status = Column(String(16), nullable=False, default="requested")
    requested_at = Column(DateTime, nullable=False, default=utcnow)
    decided_at = Column(DateTime)
    decided_by_id = Column(Integer, ForeignKey("ab_user.id"))

    shop = relationship("AgentShop")
    decided_by = relationship("User", foreign_keys=[decided_by_id])

    __table_args__ = (
        CheckConstraint("status IN ('requested', 'approved', 'rejected')", name="ck_agent_shop_domain_status"),
    )

    def __repr__(self) -> str:
        return self.domain

    def status_display(self) -> str:
        return str(DOMAIN_STATUSES.get(self.status, self.status))


SHOP_STATES = Machine("agent_shop", AgentShop, {
    "active": {"suspended"},
    "suspended": {"active"},
}, initial=("active",), title="agent shop")
DOMAIN_STATES = Machine("agent_shop_domain", AgentShopDomain, {
    "requested": {"approved", "rejected"},
    "approved": {"rejected", "requested"},  # revoked; or the agent asks for another domain
    "rejected": {"approved", "requested"},
}, initial=("requested",), title="agent shop domain")


class AgentShopMaterial(db.Model):
    """A drawn marketing image (product poster, price list), cached under the fingerprint of everything drawn on
    it: a changed price, name or link makes a new fingerprint, so a stale image is never served."""
    __tablename__ = "agent_shop_material"
    id = Column(Integer, primary_key=True)
    shop_id = Column(Integer, ForeignKey("agent_shop.id"), nullable=False)
    kind = Column(String(16), nullable=False)  # poster, pricelist
    product_id = Column(Integer)  # the poster's product; NULL for the price list
    fingerprint = Column(String(64), nullable=False)
    png = Column(LargeBinary, nullable=False)
    created_at = Column(DateTime, nullable=False, default=utcnow)

    __table_args__ = (
        UniqueConstraint("shop_id", "kind", "fingerprint", name="uq_agent_shop_material"),
        Index("ix_agent_shop_material_shop_kind", "shop_id", "kind", "product_id"),
    )
