"""Supplier rules: which suppliers can take a direct (直充) order, and whether a direct product can be bought.

Availability is decided here and only here (buying, listing and the recharge job all ask `candidates`): a direct
product can be bought when an active supplier with a protocol has an active mapping for it with upstream stock
unknown (NULL) or positive, and, where we know our balance there, enough of it for the order.
"""
from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from flask_babel import gettext
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import selectinload

from app.catalog.models import Supplier
from app.extensions import db
from app.orders.models import Order
from app.outbox import service as outbox
from app.suppliers.errors import InvalidAccount, NoSupplierAvailable
from app.suppliers.models import UPSTREAM_STATUSES, RechargeAttempt, RechargeEvent, SupplierProduct

MAX_ACCOUNT_LEN = 64
RECHARGE_TOPIC = "recharge"  # its handler, the recharge job, is app.suppliers.recharge


def _usable():
    """Conditions on (SupplierProduct, Supplier) for a mapping that may receive orders now."""
    return and_(SupplierProduct.active.is_(True), Supplier.active.is_(True), Supplier.protocol.is_not(None),
                or_(SupplierProduct.upstream_stock.is_(None), SupplierProduct.upstream_stock > 0))


def candidates(product_id: int, quantity: int, exclude_supplier_ids: Iterable[int] = ()) -> list[SupplierProduct]:
    """Mappings that may take an order of `quantity` units, best first: mapping priority, supplier priority, id.

    A supplier whose balance we know (synced, then lowered by each success) must hold cost × quantity; an unknown
    balance (NULL) is allowed: the upstream refuses what it cannot fund, and we fail over.
    """
    query = (select(SupplierProduct).join(Supplier, Supplier.id == SupplierProduct.supplier_id)
             .where(SupplierProduct.product_id == product_id, _usable(),
                    or_(Supplier.balance.is_(None), Supplier.balance >= SupplierProduct.cost * quantity))
             .order_by(SupplierProduct.priority, Supplier.priority, SupplierProduct.id))
    excluded = [int(i) for i in exclude_supplier_ids]
    if excluded:
        query = query.where(SupplierProduct.supplier_id.not_in(excluded))
    if quantity > 1:  # a stock the last sync reported must cover the order
        query = query.where(or_(SupplierProduct.upstream_stock.is_(None), SupplierProduct.upstream_stock >= quantity))
    return list(db.session.scalars(query))


def check_available(product_id: int, quantity: int) -> None:
    """Raise out_of_stock unless some supplier can take this direct order now."""
    if not candidates(product_id, quantity):
        raise NoSupplierAvailable(gettext("暂无可用货源，请稍后再试"))


def available_direct_products(product_ids: Iterable[int]) -> set[int]:
    """Of these direct products, those some supplier can take one unit of now (for listings: one query)."""
    ids = [int(i) for i in product_ids]
    if not ids:
        return set()
    query = (select(SupplierProduct.product_id).join(Supplier, Supplier.id == SupplierProduct.supplier_id)
             .where(SupplierProduct.product_id.in_(ids), _usable(),
                    or_(Supplier.balance.is_(None), Supplier.balance >= SupplierProduct.cost))
             .distinct())
    return set(db.session.scalars(query))


def supplier_or_none(supplier_id: int) -> Supplier | None:
    return db.session.get(Supplier, supplier_id) if 0 < supplier_id < 2 ** 31 else None


# --- the order timeline (support and admin order page) ------------------------------------------------------

@dataclass(frozen=True)
class Timeline:
    upstream_status: str | None  # Order.upstream_status
    upstream_text: str  # in words: 已提交运营商, 处理中, 充值成功, ...
    attempts: list[RechargeAttempt]  # in submission order (seq), each with its supplier loaded
    events: list[RechargeEvent]  # oldest first


def timeline(order_id: int) -> Timeline:
    """Where a direct order stands upstream, its attempts per supplier and every event, for staff. The caller
    has already checked that the viewer may see the order (the staff order page is the scope)."""
    status = db.session.scalar(select(Order.upstream_status).where(Order.id == order_id))
    attempts = list(db.session.scalars(select(RechargeAttempt).where(RechargeAttempt.order_id == order_id)
                                       .options(selectinload(RechargeAttempt.supplier))
                                       .order_by(RechargeAttempt.seq, RechargeAttempt.id)))
    events = list(db.session.scalars(select(RechargeEvent).where(RechargeEvent.order_id == order_id)
                                     .options(selectinload(RechargeEvent.supplier)).order_by(RechargeEvent.id)))
    return Timeline(status, UPSTREAM_STATUSES.get(status or "", status or "-"), attempts, events)


# --- a direct order: its account, and its recharge asked for ------------------------------------------------

def clean_account(account: object) -> str:
    """The top-up target (phone number, game account, ...): 1-64 printable characters, trimmed."""
    if not isinstance(account, str) or not account.strip():
        raise InvalidAccount(gettext("请填写充值账号"))
    value = account.strip()
    if len(value) > MAX_ACCOUNT_LEN:
        raise InvalidAccount(gettext("充值账号最多 %(max)s 个字符", max=MAX_ACCOUNT_LEN))
    if any(unicodedata.category(ch).startswith("C") for ch in value):
        raise InvalidAccount(gettext("充值账号不能包含控制字符"))
    return value


def start_recharge(order: Order) -> None:
    """In the transaction that marked the order paid: the outbox message that will submit it after commit (the
    recharge job, app.suppliers.recharge.run)."""
    outbox.write(RECHARGE_TOPIC, f"recharge:{order.order_no}", {"order_id": order.id, "order_no": order.order_no})
