"""Stock sync (库存同步): balances, stock and prices pulled from every connected supplier, and the alerts they raise.

Run by the periodic job `supplier-sync` (SUPPLIER_SYNC_SECONDS), `flask kameng supplier-sync`, and the supplier
screen's 同步余额和库存 action. Per supplier, the HTTP calls happen first with no transaction open; the answers are
then written under that supplier's row lock and committed, so one supplier's failure (unreachable, refused,
misconfigured) is noted in the report and the next supplier is synced all the same.

A direct product needs no flag of its own for "out everywhere": whether it can be bought is computed from its
mappings (app.suppliers.service), so a mapping whose upstream stock is synced to 0 stops selling it at once, and
a restock brings it back.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

from flask_babel import gettext
from sqlalchemy import select

from app.catalog.models import Product, StockAlert, Supplier
from app.clock import utcnow
from app.errors import KamengError
from app.extensions import db
from app.suppliers.adapters.base import StockItem, UpstreamUnreachable
from app.suppliers.models import SupplierAlert, SupplierProduct

log = logging.getLogger(__name__)


def sync_all(supplier_ids: Iterable[int] | None = None) -> dict:
    """Sync every active supplier with a protocol (or only these ids), then rescan direct products' stock alerts.

    Returns a report: one entry per supplier (balance, mappings updated, errors), the alert counts, and totals.
    """
    query = select(Supplier.id).where(Supplier.active.is_(True), Supplier.protocol.is_not(None)).order_by(Supplier.id)
    if supplier_ids is not None:
        query = query.where(Supplier.id.in_([int(i) for i in supplier_ids]))
    ids = list(db.session.scalars(query))
    db.session.rollback()  # no transaction stays open across the HTTP calls below
    entries = [sync_supplier(supplier_id) for supplier_id in ids]
    stock_alerts = scan_direct_stock()
    return {
        "suppliers": entries,
        "synced": sum(1 for e in entries if not e["errors"]),
        "failed": sum(1 for e in entries if e["errors"]),
        "balance_alerts": {"raised": sum(e["alert"] == "raised" for e in entries),
                           "resolved": sum(e["alert"] == "resolved" for e in entries)},
        "stock_alerts": stock_alerts,
    }


def sync_supplier(supplier_id: int) -> dict:
    """Pull one supplier's balance and stock list and store them; never raises for an upstream problem."""
    from app.suppliers.adapters import get_adapter

    supplier = db.session.get(Supplier, supplier_id)
    entry = {"supplier_id": supplier_id, "name": supplier.name if supplier else str(supplier_id), "balance": None,
             "mappings": 0, "out_of_stock": 0, "errors": [], "alert": None}
    if supplier is None:
        entry["errors"].append(gettext("供应商不存在"))
        return entry
    try:
        adapter = get_adapter(supplier)
    except KamengError as exc:
        entry["errors"].append(exc.message)
        db.session.rollback()
        return _with_balance_alert(supplier_id, entry, balance=None)
    db.session.rollback()  # the HTTP calls run outside any transaction

    balance: int | None = None
    items: list[StockItem] | None = None
    try:
        balance = adapter.query_balance()
    except UpstreamUnreachable as exc:
        entry["errors"].append(gettext("余额查询失败：%(error)s", error=exc))
    try:
        items = adapter.list_stock()
    except UpstreamUnreachable as exc:
        entry["errors"].append(gettext("库存查询失败：%(error)s", error=exc))
    except Exception as exc:  # an adapter bug must not stop the other suppliers' sync; it is reported and logged
        log.exception("stock sync of supplier %s failed", supplier_id)
        entry["errors"].append(gettext("库存同步出错：%(error)s", error=type(exc).__name__ + ": " + str(exc))[:255])

    if items is not None:
        entry["mappings"], entry["out_of_stock"] = _store_stock(supplier_id, items)
    return _with_balance_alert(supplier_id, entry, balance)


def _store_stock(supplier_id: int, items: list[StockItem]) -> tuple[int, int]:
    """Copy stock and price onto this supplier's mappings by upstream code; a code the list no longer has, or one
    marked unavailable, is out of stock (0). Returns (mappings updated, of which out of stock). Commits."""
    by_code = {item.code: item for item in items}
    now = utcnow()
    updated = out = 0
    mappings = db.session.scalars(select(SupplierProduct).where(SupplierProduct.supplier_id == supplier_id)
                                  .order_by(SupplierProduct.id).with_for_update()).all()
    for mapping in mappings:
        item = by_code.get(mapping.upstream_code)
        if item is None or not item.available:
            mapping.upstream_stock = 0
        else:
            mapping.upstream_stock = max(item.stock, 0) if item.stock is not None else None
            if item.price is not None:
                mapping.upstream_price = item.price
        mapping.synced_at = now
        updated += 1
        out += mapping.upstream_stock == 0
    db.session.commit()
    return updated, out


def _with_balance_alert(supplier_id: int, entry: dict, balance: int | None) -> dict:
    """Store a fresh balance and raise or resolve the supplier's one open low-balance alert, under its row lock
    (two syncs at once must not open two alerts). An unknown balance keeps the old value and open alerts."""
    supplier = db.session.scalars(select(Supplier).where(Supplier.id == supplier_id).with_for_update()
                                  .execution_options(populate_existing=True)).one()
    if balance is not None:
        supplier.balance = balance
        supplier.balance_synced_at = utcnow()
    entry["balance"] = supplier.balance
    open_alert = db.session.scalar(select(SupplierAlert).where(SupplierAlert.supplier_id == supplier_id,
                                                               SupplierAlert.kind == "low_balance",
                                                               SupplierAlert.resolved_at.is_(None))
                                   .order_by(SupplierAlert.id))
    threshold = supplier.low_balance_threshold or 0
    if supplier.balance is not None:
        low = supplier.balance < threshold
        if low and open_alert is None:
            db.session.add(SupplierAlert(supplier_id=supplier_id, kind="low_balance", value=supplier.balance,
                                         threshold=threshold))
            entry["alert"] = "raised"
        elif low:
            open_alert.value = supplier.balance  # still low: the alert shows the latest balance
        elif open_alert is not None:
            open_alert.resolved_at = utcnow()
            open_alert.value = supplier.balance
            entry["alert"] = "resolved"
    db.session.commit()
    return entry


def direct_stock_totals(product_ids: list[int]) -> dict[int, int | None]:
    """Upstream units of each direct product across its active mappings at active connected suppliers:
    None when some mapping's stock is unknown (unlimited), 0 when nobody has it."""
    totals: dict[int, int | None] = {pid: 0 for pid in product_ids}
    if not product_ids:
        return totals
    rows = db.session.execute(
        select(SupplierProduct.product_id, SupplierProduct.upstream_stock)
        .join(Supplier, Supplier.id == SupplierProduct.supplier_id)
        .where(SupplierProduct.product_id.in_(product_ids), SupplierProduct.active.is_(True),
               Supplier.active.is_(True), Supplier.protocol.is_not(None))).all()
    for product_id, stock in rows:
        if stock is None or totals[product_id] is None:
            totals[product_id] = None
        else:
            totals[product_id] += max(stock, 0)
    return totals


def scan_direct_stock() -> dict:
    """Restock alerts (补货提醒) for active direct products whose total upstream stock is below the product's
    threshold; resolved once back. The card products' scan is app.catalog.cards.scan_low_stock."""
    products = db.session.scalars(select(Product).where(Product.kind == "direct", Product.active.is_(True))
                                  .order_by(Product.id)).all()
    totals = direct_stock_totals([p.id for p in products])
    open_alerts = {a.product_id: a for a in db.session.scalars(
        select(StockAlert).join(Product, Product.id == StockAlert.product_id)
        .where(StockAlert.resolved_at.is_(None), Product.kind == "direct").with_for_update(of=StockAlert))}
    raised = resolved = 0
    for product in products:
        total = totals[product.id]
        low = total is not None and total < product.low_stock_threshold
        alert = open_alerts.get(product.id)
        if low and alert is None:
            db.session.add(StockAlert(product_id=product.id, available=total, threshold=product.low_stock_threshold))
            raised += 1
        elif low:
            alert.available = total
        elif alert is not None:
            alert.resolved_at = utcnow()
            resolved += 1
    db.session.commit()
    return {"raised": raised, "resolved": resolved, "open": len(open_alerts) + raised - resolved}


def report_lines(report: dict) -> list[str]:
    """The report as text lines (CLI, flash messages)."""
    from app.money import format_fen

    lines = []
    for e in report["suppliers"]:
        balance = format_fen(e["balance"]) if e["balance"] is not None else "-"
        state = "FAILED " + "; ".join(e["errors"]) if e["errors"] else "ok"
        alert = f" low-balance alert {e['alert']}" if e["alert"] else ""
        lines.append(f"{e['name']} (#{e['supplier_id']}): balance {balance}, {e['mappings']} mappings "
                     f"({e['out_of_stock']} out of stock), {state}{alert}")
    stock = report["stock_alerts"]
    lines.append(f"suppliers synced: {report['synced']}, failed: {report['failed']}; restock alerts raised "
                 f"{stock['raised']}, resolved {stock['resolved']}, open {stock['open']}")
    return lines
