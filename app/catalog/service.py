"""Catalog rules: suppliers with their payable account, and the one pricing function."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select

from app.agents.models import Tier
from app.catalog.models import PriceRule, Product, Supplier, TierPrice
from app.clock import utcnow
from app.extensions import db
from app.ledger import service as ledger
from app.money import apply_rate


def create_supplier(name: str, service_fee_bp: int = 0, is_platform_own: bool = False) -> Supplier:
    supplier = Supplier(name=name, service_fee_bp=service_fee_bp, is_platform_own=is_platform_own)
    db.session.add(supplier)
    db.session.flush()
    ledger.open_supplier_account(supplier.id)
    db.session.flush()
    return supplier


def platform_supplier() -> Supplier:
    supplier = db.session.scalar(select(Supplier).where(Supplier.is_platform_own.is_(True)).order_by(Supplier.id))
    if supplier is None:
        supplier = create_supplier("平台自营", 0, is_platform_own=True)
    return supplier


def price_for(tier: Tier | None, product: Product, at: datetime | None = None) -> int:
    """An agent's unit price for a product now, in fen. With no tier: the public (face) price.

    Base: the tier's fixed price for the product if set, else face price × tier discount.
    Then the lowest active time-bounded rule for this tier (or for all tiers) applies. Floored once.
    """
    at = at or utcnow()
    rate_filters = [PriceRule.product_id == product.id, PriceRule.active.is_(True),
                    PriceRule.starts_at <= at, PriceRule.ends_at > at]
    if tier is None:
        rate_filters.append(PriceRule.tier_id.is_(None))
    else:
        rate_filters.append(or_(PriceRule.tier_id.is_(None), PriceRule.tier_id == tier.id))
    lowest_rule = select(func.min(PriceRule.rate_bp)).where(*rate_filters).scalar_subquery()
    if tier is None:
        rule_rate = db.session.scalar(select(lowest_rule))
        return apply_rate(product.face_price, 10000 if rule_rate is None else rule_rate)
    # the rule and the tier's fixed price in one round trip
    override_price = select(TierPrice.price).where(TierPrice.product_id == product.id,
                                                   TierPrice.tier_id == tier.id).scalar_subquery()
    rule_rate, override = db.session.execute(select(lowest_rule, override_price)).one()
    rule_rate = 10000 if rule_rate is None else rule_rate
    if override is not None:
        return apply_rate(override, rule_rate)
    return apply_rate(product.face_price, tier.discount_bp, rule_rate)


@dataclass(frozen=True)
class StockLevel:
    in_stock: bool  # can be bought now
    available: int | None  # card products: secrets in stock; None where we do not count units (direct, manual)


def stock_levels(products: Iterable[Product]) -> dict[int, StockLevel]:
    """Whether each product can be bought now, for every listing (portal, Open API, storefront, admin): card
    products by their available secrets, direct products by their supplier mappings (app.suppliers.service, the
    same rule the order path checks), manual products always. Two queries for any number of products."""
    from app.catalog import cards
    from app.suppliers.service import available_direct_products

    products = list(products)
    counts = cards.available_counts([p.id for p in products if p.kind == "card"])
    direct = available_direct_products([p.id for p in products if p.kind == "direct"])
    levels = {}
    for product in products:
        if product.kind == "card":
            count = counts.get(product.id, 0)
            levels[product.id] = StockLevel(count > 0, count)
        elif product.kind == "direct":
            levels[product.id] = StockLevel(product.id in direct, None)
        else:
            levels[product.id] = StockLevel(True, None)
    return levels
