"""Bulk compensation (批量补偿): after an incident, support selects the orders it hit (product, supplier, time window,
statuses), previews who gets what, and issues one compensation coupon per buyer in one audited transaction.

Rules:
- A buyer is who coupons count (app.payments.coupons.redeemer_for_order): an agent, or a storefront buyer by the
  blind index of its contact. Each buyer gets ONE fixed-amount coupon per batch, whatever number of its orders the
  incident hit; the coupon is bound to that buyer (Coupon.owner), usable once, for `valid_days` days.
- An order is compensated at most once, by whichever batch took it first (compensation_order.order_id is unique):
  a second window overlapping the first leaves those orders out, and the preview says how many.
- `issue` recomputes the selection inside its transaction and refuses when it differs from what the preview showed
  (orders placed or compensated meanwhile): support previews again. The preview's token is the batch's unique key,
  so a double submit issues once. Everything is written in one transaction with its audit entry (chained).
- A supplier matches an order it delivered (orders.supplier_id) or any order that was submitted to it (a top-up
  that failed over elsewhere was still hit by that supplier's incident).
"""
from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from flask_babel import gettext as _
from sqlalchemy import bindparam, exists, or_, select
from sqlalchemy.exc import IntegrityError

from app.audit import service as audit
from app.catalog.models import Product, Supplier
from app.clock import business_tz, to_local, utcnow
from app.crypto import mask
from app.errors import Conflict, ValidationError
from app.extensions import db
from app.money import format_fen
from app.orders.models import ORDER_STATUSES, Order
from app.payments import coupons
from app.payments.models import Coupon
from app.rows import run
from app.suppliers.models import RechargeAttempt
from app.support.models import CompensationBatch, CompensationOrder

MAX_WINDOW_DAYS = 31
MAX_ORDERS = 20_000
MAX_AMOUNT = 100_000  # fen (¥1,000) per coupon
DEFAULT_STATUSES = ("delivered", "disputed", "failed", "refunded")
SAMPLE = 20


@dataclass(frozen=True)
class Criteria:
    start: datetime  # naive UTC, inclusive (orders.created_at)
    end: datetime  # naive UTC, exclusive
    statuses: tuple[str, ...]
    product_id: int | None = None
    supplier_id: int | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data.update(start=self.start.isoformat(), end=self.end.isoformat(), statuses=list(self.statuses))
        return json.dumps(data, sort_keys=True)


@dataclass
class BuyerLine:
    redeemer: str
    who: str  # masked: agent name, or the storefront buyer's masked contact
    order_nos: list[str]


@dataclass
class Preview:
    criteria: Criteria
    matched: int  # orders matching the criteria
    already: int  # of those, already compensated (left out)
    unidentified: int  # of those, with no buyer to bind a coupon to (a guest without a contact)
    buyers: list[BuyerLine] = field(default_factory=list)
    order_ids: list[int] = field(default_factory=list)  # the orders a batch would compensate

    @property
    def orders(self) -> int:
        return len(self.order_ids)

    def total(self, amount: int) -> int:
        return amount * len(self.buyers)


# --- input ------------------------------------------------------------------------------------------------------------

def parse_criteria(form) -> Criteria:
    """The selection from the form: 开始/结束 as China local 'YYYY-MM-DDTHH:MM', optional product and supplier ids,
    the statuses ticked (at least one)."""
    start, end = _local_time(form.get("start"), _("开始时间")), _local_time(form.get("end"), _("结束时间"))
    if end <= start:
        raise ValidationError(_("结束时间必须晚于开始时间"))
    if end - start > timedelta(days=MAX_WINDOW_DAYS):
        raise ValidationError(_("时间范围最多 %(days)s 天", days=MAX_WINDOW_DAYS))
    statuses = tuple(s for s in ORDER_STATUSES if s in set(form.getlist("status")))
    if not statuses:
        raise ValidationError(_("请至少选择一种订单状态"))
    product_id = _optional_id(form.get("product_id"), Product, _("商品"))
    supplier_id = _optional_id(form.get("supplier_id"), Supplier, _("供应商"))
    return Criteria(start, end, statuses, product_id, supplier_id)


def parse_issue(form) -> tuple[int, str, int]:
    """(amount in fen, reason, valid days) from the issue form."""
    from app.money import parse_yuan

    try:
        amount = parse_yuan(form.get("amount") or "")
    except (ValueError, TypeError):
        raise ValidationError(_("补偿金额格式不正确，例如 5 或 5.00")) from None
    if not 1 <= amount <= MAX_AMOUNT:
        raise ValidationError(_("每张补偿券金额须在 0.01 至 %(max)s 之间", max=format_fen(MAX_AMOUNT)))
    reason = (form.get("reason") or "").strip()
    if not reason or len(reason) > 255 or any(ord(c) < 32 for c in reason):
        raise ValidationError(_("请填写补偿原因（一行，最多 255 个字符）"))
    try:
        days = int(form.get("valid_days") or coupons.COMPENSATION_DAYS)
    except ValueError:
        raise ValidationError(_("有效天数须为整数")) from None
    if not 1 <= days <= 365:
        raise ValidationError(_("有效天数须在 1 至 365 之间"))
    return amount, reason, days


def _local_time(value: object, what: str) -> datetime:
    text = value.strip() if isinstance(value, str) else ""
    try:
        local = datetime.fromisoformat(text.replace(" ", "T"))
    except ValueError:
        raise ValidationError(_("%(what)s格式应为 YYYY-MM-DD HH:MM", what=what)) from None
    if local.tzinfo is not None:
        raise ValidationError(_("%(what)s请填写北京时间，不带时区", what=what))
    from datetime import UTC

    return local.replace(tzinfo=business_tz()).astimezone(UTC).replace(tzinfo=None)


def _optional_id(value: object, model, what: str) -> int | None:
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        return None
    if not text.isdigit() or not 0 < int(text) < 2 ** 31 or db.session.get(model, int(text)) is None:
        raise ValidationError(_("%(what)s不存在", what=what))
    return int(text)


def new_token() -> str:
    return secrets.token_hex(16)


# --- selection --------------------------------------------------------------------------------------------------------

def _selection(c: Criteria):
    query = (select(Order.id, Order.order_no, Order.agent_id, Order.contact_hash, Order.contact,
                    CompensationOrder.id.label("compensated"))
             .outerjoin(CompensationOrder, CompensationOrder.order_id == Order.id)
             .where(Order.created_at >= c.start, Order.created_at < c.end, Order.status.in_(c.statuses))
             .order_by(Order.created_at, Order.id))
    if c.product_id is not None:
        query = query.where(Order.product_id == c.product_id)
    if c.supplier_id is not None:
        submitted = exists().where(RechargeAttempt.order_id == Order.id, RechargeAttempt.supplier_id == c.supplier_id)
        query = query.where(or_(Order.supplier_id == c.supplier_id, submitted))
    return query


def preview(c: Criteria) -> Preview:
    """Who would get a coupon, without writing anything."""
    rows = db.session.execute(_selection(c).limit(MAX_ORDERS + 1)).all()
    if len(rows) > MAX_ORDERS:
        raise ValidationError(_("选中的订单超过 %(count)s 笔，请缩小范围", count=MAX_ORDERS))
    result = Preview(criteria=c, matched=len(rows), already=0, unidentified=0)
    buyers: dict[str, BuyerLine] = {}
    agent_names = _agent_names({r.agent_id for r in rows if r.agent_id})
    for r in rows:
        if r.compensated is not None:
            result.already += 1
            continue
        if r.agent_id is None and not r.contact_hash:
            result.unidentified += 1
            continue
        redeemer = coupons.redeemer_for_agent(r.agent_id) if r.agent_id else f"contact:{r.contact_hash}"
        line = buyers.get(redeemer)
        if line is None:
            who = agent_names.get(r.agent_id, "") if r.agent_id else mask(r.contact or "")
            line = buyers[redeemer] = BuyerLine(redeemer, who, [])
        line.order_nos.append(r.order_no)
        result.order_ids.append(r.id)
    result.buyers = list(buyers.values())
    return result


def _agent_names(ids: set[int]) -> dict[int, str]:
    from app.agents.models import Agent

    if not ids:
        return {}
    return dict(db.session.execute(select(Agent.id, Agent.name).where(Agent.id.in_(sorted(ids)))).all())


# --- issuing ----------------------------------------------------------------------------------------------------------

def issue(c: Criteria, amount: int, reason: str, valid_days: int, key: str, expect_orders: int, expect_buyers: int,
          actor_id: int | None) -> CompensationBatch:
    """Issue the batch the preview showed (one coupon per buyer), audited. Commits. A key already used returns its
    batch (a double submit); a selection that changed since the preview is refused (Conflict)."""
    if not isinstance(key, str) or not 16 <= len(key) <= 64 or not key.isalnum():
        raise ValidationError(_("预览已失效，请重新预览"))
    done = db.session.scalar(select(CompensationBatch).where(CompensationBatch.key == key))
    if done is not None:
        return done
    try:
        plan = preview(c)
        if (plan.orders, len(plan.buyers)) != (expect_orders, expect_buyers):
            raise Conflict(_("选中的订单已变化（现在 %(orders)s 笔订单、%(buyers)s 位买家），请重新预览",
                             orders=plan.orders, buyers=len(plan.buyers)))
        if not plan.buyers:
            raise ValidationError(_("没有可补偿的订单"))
        now = utcnow()
        batch = CompensationBatch(key=key, reason=reason, amount=amount, valid_days=valid_days,
                                  criteria=c.to_json(), orders=plan.orders, buyers=len(plan.buyers),
                                  total=plan.total(amount), created_by_id=actor_id, created_at=now)
        db.session.add(batch)
        db.session.flush()
        coupon_of: dict[str, int] = {}
        for line in plan.buyers:
            name = f"批量补偿 #{batch.id}"  # i18n-keep: a stored coupon name, shown as it was written
            coupon = coupons.create_coupon(None, name, "fixed", amount, starts_at=now,
                                           ends_at=now + timedelta(days=valid_days), per_user_limit=1, total_limit=1,
                                           owner=line.redeemer)
            coupon_of[line.redeemer] = coupon.id
        redeemer_of = {}
        for line in plan.buyers:
            for order_no in line.order_nos:
                redeemer_of[order_no] = line.redeemer
        ids = dict(db.session.execute(select(Order.order_no, Order.id).where(Order.id.in_(plan.order_ids))).all())
        db.session.add_all([CompensationOrder(order_id=ids[no], batch_id=batch.id, coupon_id=coupon_of[redeemer])
                            for no, redeemer in redeemer_of.items()])
        db.session.flush()
        audit.record("compensation.issue", "compensation_batch", batch.id, None,
                     {"criteria": json.loads(batch.criteria), "amount": amount, "valid_days": valid_days,
                      "orders": plan.orders, "buyers": len(plan.buyers), "total": batch.total},
                     reason=reason, actor_id=actor_id)
        db.session.commit()
        return batch
    except IntegrityError:
        db.session.rollback()
        done = db.session.scalar(select(CompensationBatch).where(CompensationBatch.key == key))
        if done is not None:  # the same preview submitted twice at once: the other request issued it
            return done
        raise Conflict(_("部分订单刚被其他批次补偿，请重新预览")) from None
    except Exception:
        db.session.rollback()
        raise


# --- what buyers see --------------------------------------------------------------------------------------------------

def coupons_for_order(order_id: int) -> list[dict]:
    """The compensation coupon an order's buyer got for it (the storefront lookup shows it after the password)."""
    # Every storefront lookup asks and nearly every order has none: a plain probe by the driver first (an order is
    # compensated at most once: compensation_order.order_id is unique), the coupon only when there is one.
    coupon_id = run(_COMPENSATION_COUPON, {"order_id": order_id}).scalar()
    return [_public(db.session.get(Coupon, coupon_id))] if coupon_id is not None else []


_COMPENSATION_COUPON = (select(CompensationOrder.__table__.c.coupon_id)
                        .where(CompensationOrder.__table__.c.order_id == bindparam("order_id")))


def open_coupons_for_agent(agent_id: int, now: datetime | None = None) -> list[dict]:
    """An agent's compensation coupons it can still use (the portal home's notices)."""
    now = now or utcnow()
    rows = db.session.scalars(select(Coupon).where(Coupon.owner == coupons.redeemer_for_agent(agent_id),
                                                   Coupon.active.is_(True), Coupon.ends_at > now,
                                                   Coupon.used_count < Coupon.total_limit)
                              .order_by(Coupon.ends_at))
    return [_public(c) for c in rows]


def _public(c: Coupon) -> dict:
    return {"code": c.code, "amount": c.value, "ends_at": c.ends_at.replace(microsecond=0).isoformat() + "Z",
            "ends_local": to_local(c.ends_at).strftime("%Y-%m-%d %H:%M"), "used": c.used_count > 0}
