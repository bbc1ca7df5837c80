"""A product's order facts, cached: what orders, the Open API and the card stock (app.catalog.cards) read of a
product, apart from the catalogue's rules (app.catalog.service, which lists stock through app.catalog.cards)."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from app import cache
from app.catalog.models import PRODUCT_KINDS, Product, Supplier
from app.extensions import db


@dataclass(frozen=True)
class ProductFacts:
    """What an order needs of a product and its supplier, as an immutable value (app.cache keeps it)."""
    id: int
    name: str
    kind: str
    active: bool
    face_price: int
    cost: int
    max_per_order: int
    supplier_id: int
    service_fee_bp: int  # the supplier's fee on cost
    reusable: bool = False  # 循环卡密: each secret sold up to its max_uses times (app.catalog.cards)

    def kind_display(self) -> str:
        return str(PRODUCT_KINDS.get(self.kind, self.kind))


def product_facts(product_id: int) -> ProductFacts | None:
    """The product's order facts (cached until the catalogue changes), or None for an unknown id."""
    return cache.fetch("product", product_id, lambda: _load_product_facts(product_id))


def _load_product_facts(product_id: int) -> ProductFacts | None:
    row = db.session.execute(
        select(Product.id, Product.name, Product.kind, Product.active, Product.face_price, Product.cost,
               Product.max_per_order, Product.supplier_id, Supplier.service_fee_bp, Product.reusable)
        .join(Supplier, Supplier.id == Product.supplier_id).where(Product.id == product_id)).first()
    return ProductFacts(*row[:-1], reusable=bool(row[-1])) if row is not None else None
