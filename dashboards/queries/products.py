"""Products and stock dashboard queries: sales ranking, card stock and days of stock, direct products' upstream
availability, open low-stock alerts.

Sales come from rollup_sales_daily (GROUP BY, (scope_id, day) index). Stock left is not a rollup: it is the count
of available card secrets per product (app.catalog.cards.available_counts, indexed). Days of stock use the
platform's sales rate of the last 7 business days (stock is the platform's, whichever branch is being viewed).
Delivery times come from rollup_delivery_daily (days of payment, the whole platform: app/analytics/delivery.py).
"""
from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy import func, select

from app.analytics.models import PLATFORM_SCOPE, SalesDaily
from app.catalog import cards
from app.catalog.models import Category, Product, StockAlert, Supplier
from app.extensions import db
from app.suppliers.models import SupplierProduct
from app.suppliers.service import available_direct_products

RATE_DAYS = 7


def ranking(scope_id: int, start: date, end: date, category_id: int | None = None, tier_id: int | None = None,
            limit: int = 100) -> list[dict]:
    """Products by GMV in the range (then units): rank, product, category, kind, orders, units, GMV, margin."""
    query = (select(SalesDaily.product_id, func.sum(SalesDaily.orders).label("orders"),
                    func.sum(SalesDaily.quantity).label("quantity"), func.sum(SalesDaily.gmv).label("gmv"),
                    func.sum(SalesDaily.margin).label("margin"))
             .where(SalesDaily.scope_id == scope_id, SalesDaily.day >= start, SalesDaily.day <= end)
             .group_by(SalesDaily.product_id)
             .order_by(func.sum(SalesDaily.gmv).desc(), func.sum(SalesDaily.quantity).desc(), SalesDaily.product_id)
             .limit(limit))
    if category_id is not None:
        query = query.where(SalesDaily.category_id == category_id)
    if tier_id is not None:
        query = query.where(SalesDaily.tier_id == tier_id)
    rows = db.session.execute(query).all()
    names = _products([r.product_id for r in rows])
    out = []
    for rank, r in enumerate(rows, start=1):
        product = names.get(r.product_id, {})
        out.append({"rank": rank, "product_id": r.product_id, "product": product.get("name", str(r.product_id)),
                    "category": product.get("category", ""), "kind": product.get("kind", ""),
                    "orders": int(r.orders or 0), "quantity": int(r.quantity or 0), "gmv": int(r.gmv or 0),
                    "margin": int(r.margin or 0)})
    return out


def _products(ids: list[int]) -> dict[int, dict]:
    if not ids:
        return {}
    query = (select(Product.id, Product.name, Product.kind, Category.name.label("category"))
             .join(Category, Category.id == Product.category_id).where(Product.id.in_(ids)))
    return {r.id: {"name": r.name, "kind": r.kind, "category": r.category} for r in db.session.execute(query)}


def units_sold(start: date, end: date, product_ids: list[int], scope_id: int = PLATFORM_SCOPE) -> dict[int, int]:
    """Units sold per product over [start, end] (refunds netted)."""
    if not product_ids:
        return {}
    query = (select(SalesDaily.product_id, func.sum(SalesDaily.quantity))
             .where(SalesDaily.scope_id == scope_id, SalesDaily.day >= start, SalesDaily.day <= end,
                    SalesDaily.product_id.in_(product_ids))
             .group_by(SalesDaily.product_id))
    return {pid: int(n or 0) for pid, n in db.session.execute(query)}


def stock(today: date, category_id: int | None = None) -> list[dict]:
    """Active card products: card secrets left, units sold in the last 7 days (today included), the daily rate,
    and days of stock at that rate (floor(available × 7 / sold_7d); None when nothing sold). Fewest days first."""
    query = (select(Product.id, Product.name, Product.low_stock_threshold, Category.name.label("category"))
             .join(Category, Category.id == Product.category_id)
             .where(Product.kind == "card", Product.active.is_(True)).order_by(Product.id))
    if category_id is not None:
        query = query.where(Product.category_id == category_id)
    products = db.session.execute(query).all()
    ids = [p.id for p in products]
    available = cards.available_counts(ids)
    sold = units_sold(today - timedelta(days=RATE_DAYS - 1), today, ids)
    out = []
    for p in products:
        left, sold_7d = available.get(p.id, 0), sold.get(p.id, 0)
        out.append({"product_id": p.id, "product": p.name, "category": p.category, "available": left,
                    "threshold": p.low_stock_threshold, "sold_7d": sold_7d,
                    "days_left": left * RATE_DAYS // sold_7d if sold_7d > 0 else None,
                    "low": left < p.low_stock_threshold})
    out.sort(key=lambda r: (r["days_left"] is None, r["days_left"] or 0, r["available"], r["product_id"]))
    return out


def upstream(category_id: int | None = None) -> list[dict]:
    """Active direct products: whether some supplier can take an order now (app.suppliers.service, the one rule),
    active mappings, the upstream stock last synced (None when any mapping reports no limit) and when."""
    query = (select(Product.id, Product.name, Category.name.label("category"))
             .join(Category, Category.id == Product.category_id)
             .where(Product.kind == "direct", Product.active.is_(True)).order_by(Product.id))
    if category_id is not None:
        query = query.where(Product.category_id == category_id)
    products = db.session.execute(query).all()
    ids = [p.id for p in products]
    if not ids:
        return []
    buyable = available_direct_products(ids)
    mappings = {r.product_id: r for r in db.session.execute(
        select(SupplierProduct.product_id, func.count().label("mappings"),
               func.count(SupplierProduct.upstream_stock).label("reported"),
               func.sum(SupplierProduct.upstream_stock).label("stock"),
               func.max(SupplierProduct.synced_at).label("synced_at"))
        .where(SupplierProduct.product_id.in_(ids), SupplierProduct.active.is_(True))
        .group_by(SupplierProduct.product_id))}
    out = []
    for p in products:
        m = mappings.get(p.id)
        count = int(m.mappings) if m else 0
        unlimited = bool(m) and int(m.reported) < count
        out.append({"product_id": p.id, "product": p.name, "category": p.category, "available": p.id in buyable,
                    "mappings": count, "upstream_stock": None if (unlimited or not m) else int(m.stock or 0),
                    "unlimited": unlimited, "synced_at": m.synced_at if m else None})
    return out


def open_alerts(category_id: int | None = None) -> list[dict]:
    """Unresolved low-stock alerts (补货提醒), oldest first."""
    query = (select(StockAlert.id, StockAlert.product_id, Product.name, StockAlert.available, StockAlert.threshold,
                    StockAlert.created_at)
             .join(Product, Product.id == StockAlert.product_id)
             .where(StockAlert.resolved_at.is_(None)).order_by(StockAlert.created_at, StockAlert.id))
    if category_id is not None:
        query = query.where(Product.category_id == category_id)
    return [{"id": r.id, "product_id": r.product_id, "product": r.name, "available": r.available,
             "threshold": r.threshold, "created_at": r.created_at} for r in db.session.execute(query)]


def delivery_times(start: date, end: date, category_id: int | None = None) -> list[dict]:
    """Per product and supplier, the orders paid on days start..end: delivered, failed, success rate, p50 / p95
    (bucket bounds), mean, within the promise, later than the SLA. Slowest p95 first."""
    from app.analytics import delivery

    query = select(Product.id).order_by(Product.id)
    if category_id is not None:
        query = query.where(Product.category_id == category_id)
    stats = delivery.by_product_supplier(start, end, list(db.session.scalars(query)) if category_id else None)
    names = _products(sorted({p for p, _ in stats}))
    suppliers = dict(db.session.execute(select(Supplier.id, Supplier.name).where(
        Supplier.id.in_(sorted({s for _, s in stats}) or [-1]))).all())
    out = []
    for (product_id, supplier_id), st in stats.items():
        product = names.get(product_id, {})
        out.append({"product_id": product_id, "product": product.get("name", str(product_id)),
                    "kind": product.get("kind", ""), "supplier_id": supplier_id,
                    "supplier": suppliers.get(supplier_id, str(supplier_id)), "stats": st})
    out.sort(key=lambda r: (not r["stats"].overflow_p95, -(r["stats"].p95_ms or 0), -r["stats"].failed,
                            r["product"], r["supplier"]))
    return out


def delivery_overall(start: date, end: date) -> object:
    """The platform's delivery stats of the orders paid on days start..end."""
    from app.analytics import delivery

    return delivery.platform_stats(start, end)
