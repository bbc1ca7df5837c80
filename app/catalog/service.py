"""Catalog rules: suppliers with their payable account, and the one pricing function."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from flask_babel import gettext as _
from sqlalchemy import or_, select

from app import cache
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
        supplier = create_supplier("平台自营", 0, is_platform_own=True)  # i18n-keep: a stored name
    return supplier


# --- reusable cards (循环卡密) ------------------------------------------------------------------------------

def check_reuse_change(product: Product) -> None:
    """A product's reusable mode as an admin sets it (form values on the row, not yet written): only card products,
    with a limit per secret; and fixed once the product has stock, since its secrets were imported as one kind or
    the other (a normal secret has no counter, a reusable one no single order). ValueError names the problem."""
    from app.catalog.models import MAX_USES_LIMIT, CardSecret

    if not product.reusable:
        product.max_uses = None
    elif product.kind != "card":
        raise ValueError(_("只有卡密类商品可以设为循环卡密"))
    elif product.max_uses is None or not 1 <= product.max_uses <= MAX_USES_LIMIT:
        raise ValueError(_("循环卡密的每卡可售次数须在 1 到 %(limit)s 之间", limit=MAX_USES_LIMIT))
    if product.id is None:
        return
    with db.session.no_autoflush:
        was = db.session.execute(select(Product.reusable).where(Product.id == product.id)).scalar()
        if was is not None and bool(was) != bool(product.reusable) and db.session.scalar(
                select(CardSecret.id).where(CardSecret.product_id == product.id).limit(1)) is not None:
            raise ValueError(_("该商品已有卡密库存，不能切换循环卡密模式；请新建商品"))


def apply_max_uses(product_id: int, max_uses: int) -> int:
    """A reusable product's new limit per secret, applied to its stock in the caller's transaction: each secret gets
    the new limit (never below the uses it already sold) and is available again while it has uses left. Each row
    is updated under its row lock, so a purchase running meanwhile re-checks the new values. Returns rows changed."""
    from sqlalchemy import case, update

    from app.catalog.models import CardSecret

    limit = case((CardSecret.uses > max_uses, CardSecret.uses), else_=max_uses)
    result = db.session.execute(
        update(CardSecret).where(CardSecret.product_id == product_id, CardSecret.max_uses.is_not(None),
                                 CardSecret.max_uses != limit)
        .values(max_uses=limit, status=case((CardSecret.status == "void", "void"),
                                            (CardSecret.uses < limit, "available"), else_="sold"))
        .execution_options(synchronize_session=False))
    return result.rowcount or 0


@dataclass(frozen=True)
class PriceTerms:
    """A product's pricing inputs for one tier (or the public, tier None): the tier's fixed price if set, and the
    active time-bounded rules that can apply to it as (starts_at, ends_at, rate_bp)."""
    override: int | None
    rules: tuple[tuple[datetime, datetime, int], ...]


def price_terms(product_id: int, tier_id: int | None) -> PriceTerms:
    return cache.fetch("price", (product_id, tier_id), lambda: _load_price_terms(product_id, tier_id))


def _load_price_terms(product_id: int, tier_id: int | None) -> PriceTerms:
    tiers = PriceRule.tier_id.is_(None) if tier_id is None else or_(PriceRule.tier_id.is_(None),
                                                                      PriceRule.tier_id == tier_id)
    rules = select(PriceRule.starts_at, PriceRule.ends_at, PriceRule.rate_bp).where(
        PriceRule.product_id == product_id, PriceRule.active.is_(True), tiers)
    if tier_id is None:
        return PriceTerms(None, tuple(tuple(r) for r in db.session.execute(rules)))
    override = db.session.scalar(select(TierPrice.price).where(TierPrice.product_id == product_id,
                                                                TierPrice.tier_id == tier_id))
    return PriceTerms(override, tuple(tuple(r) for r in db.session.execute(rules)))


def price_for(tier: Tier | None, product, at: datetime | None = None) -> int:
    """An agent's unit price for a product now, in fen. With no tier: the public (face) price.

    Base: the tier's fixed price for the product if set, else face price × tier discount.
    Then the lowest active time-bounded rule for this tier (or for all tiers) applies. Floored once.
    `tier` and `product`: the rows or their cached facts (anything with id, discount_bp / face_price).
    """
    at = at or utcnow()
    terms = price_terms(product.id, tier.id if tier is not None else None)
    rates = [rate for starts, ends, rate in terms.rules if starts <= at < ends]
    rule_rate = min(rates) if rates else 10000
    if tier is None:
        return apply_rate(product.face_price, rule_rate)
    if terms.override is not None:
        return apply_rate(terms.override, rule_rate)
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
