"""Coupons (优惠券): define, validate, apply at checkout, release.

Rules:
- kind `fixed`: `value` fen off; kind `percent`: `value` basis points off, floored once (app.money.apply_rate).
- `min_spend` is compared with the amount before the discount (unit price × quantity).
- Valid while `active` and `starts_at <= now < ends_at` (naive UTC).
- `total_limit` (NULL = unlimited) counts redemptions in `used_count`; `per_user_limit` counts a redeemer's
  redemptions: `contact:<blind index of the normalised contact>` on the storefront, `agent:<id>` in the portal.
- A discount never brings an amount below 1 fen.
- Applying writes the order's discount and coupon, a CouponRedemption (unique per order) and increments
  `used_count` with a guarded UPDATE in the caller's transaction. The UPDATE also locks the coupon row until the
  caller commits, so the per-user count taken right after it sees every committed redemption: two concurrent
  checkouts can exceed neither limit.
- An order closed unpaid gives its use back (the redemption is deleted, used_count decremented); a refunded order
  does not (the coupon was used on a sale that happened).
- A compensation coupon (issued when a dispute is resolved, or by a bulk compensation) is bound to the order's
  buyer: only that redeemer may use it (`owner`, or the dispute's order).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask_babel import gettext, lazy_gettext
from sqlalchemy import delete, func, select, update

from app.clock import utcnow
from app.crypto import pii_hash
from app.errors import KamengError, ValidationError
from app.extensions import db
from app.money import BP_SCALE, apply_rate, format_fen
from app.orders.models import Order
from app.payments.models import Coupon, CouponRedemption, Dispute

KINDS = {"fixed": lazy_gettext("满减（固定金额）"), "percent": lazy_gettext("折扣（百分比）")}
COMPENSATION_DAYS = 30


class CouponError(KamengError):
    code = "coupon_invalid"
    status = 400


class CouponInvalid(CouponError):
    code = "coupon_invalid"


class CouponExpired(CouponError):
    code = "coupon_expired"


class CouponMinSpend(CouponError):
    code = "coupon_min_spend"


class CouponUsedUp(CouponError):
    code = "coupon_used_up"
    status = 409


@dataclass(frozen=True)
class Quote:
    coupon: Coupon
    gross: int  # before the discount
    discount: int

    @property
    def amount(self) -> int:
        return self.gross - self.discount


def redeemer_for_contact(contact: str) -> str:
    """A storefront buyer as coupons count it: the blind index of its normalised contact (never the contact)."""
    return f"contact:{pii_hash(contact) or ''}"


def redeemer_for_agent(agent_id: int) -> str:
    return f"agent:{agent_id}"


def redeemer_for_order(order: Order) -> str:
    if order.agent_id:
        return redeemer_for_agent(order.agent_id)
    return f"contact:{order.contact_hash or ''}"  # the stored blind index: no decryption needed


def normalize_code(code: object) -> str | None:
    """None for 'no coupon' (absent, null or blank); a code string otherwise. Anything else is invalid."""
    if code is None:
        return None
    if not isinstance(code, str):
        raise CouponInvalid(gettext("优惠券无效"))
    code = code.strip().upper()
    return code or None


def discount_for(coupon: Coupon, gross: int) -> int:
    """The discount on `gross` fen: floored once, and never leaving less than 1 fen to pay."""
    if coupon.kind == "fixed":
        discount = int(coupon.value)
    elif coupon.kind == "percent":
        discount = apply_rate(gross, int(coupon.value))
    else:
        raise CouponInvalid(gettext("优惠券无效"))
    return max(0, min(discount, gross - 1))


def _load(code: str) -> Coupon:
    coupon = db.session.scalar(select(Coupon).where(Coupon.code == code[:32]))
    if coupon is None or not coupon.active:
        raise CouponInvalid(gettext("优惠券不存在或已停用"))
    return coupon


def _owner(coupon: Coupon) -> str | None:
    """The only redeemer allowed to use a compensation coupon, or None for an ordinary coupon."""
    if coupon.owner:  # bulk compensation (app.support.compensation) names it on the coupon
        return coupon.owner
    dispute = db.session.scalar(select(Dispute).where(Dispute.compensation_coupon_id == coupon.id))
    return redeemer_for_order(dispute.order) if dispute is not None else None


def redemptions_by(coupon_id: int, redeemer: str, device: str | None = None) -> int:
    """A buyer's uses of a coupon: by its normalised contact, or from the same device (another contact typed on
    the same browser is the same buyer)."""
    who = CouponRedemption.redeemer == redeemer
    if device:
        who = who | (CouponRedemption.device == device)
    return db.session.scalar(select(func.count()).select_from(CouponRedemption).where(
        CouponRedemption.coupon_id == coupon_id, who))


def quote(code: str, gross: int, redeemer: str, now: datetime | None = None, device: str | None = None) -> Quote:
    """Check a coupon for an amount and a redeemer (without writing anything) and compute the discount."""
    coupon = _load(normalize_code(code) or "")
    now = now or utcnow()
    if now < coupon.starts_at:
        raise CouponInvalid(
            gettext("优惠券尚未生效：%(starts_at)s", starts_at=format(coupon.starts_at, "%Y-%m-%d %H:%M"))
        )
    if now >= coupon.ends_at:
        raise CouponExpired(gettext("优惠券已过期"))
    owner = _owner(coupon)
    if owner is not None and owner != redeemer:
        raise CouponInvalid(gettext("该优惠券仅限指定用户使用"))
    if gross < coupon.min_spend:
        raise CouponMinSpend(gettext("未达到优惠券最低消费 %(min_spend)s", min_spend=format_fen(coupon.min_spend)))
    if coupon.total_limit is not None and coupon.used_count >= coupon.total_limit:
        raise CouponUsedUp(gettext("优惠券已被领完"))
    if redemptions_by(coupon.id, redeemer, device) >= coupon.per_user_limit:
        raise CouponUsedUp(gettext("您已用过该优惠券"))
    return Quote(coupon=coupon, gross=gross, discount=discount_for(coupon, gross))


def redeem(q: Quote, order: Order, redeemer: str, device: str | None = None) -> None:
    """Write the redemption in the caller's transaction (the caller commits or rolls back).

    The guarded UPDATE refuses when the total limit was reached meanwhile, and holds the coupon row's lock to the
    end of the transaction; the per-user count is taken after it, so it sees every committed redemption.
    """
    table = Coupon.__table__
    db.session.flush()
    row = db.session.connection().execute(
        update(table).where(table.c.id == q.coupon.id, table.c.active.is_(True),
                            (table.c.total_limit.is_(None)) | (table.c.used_count < table.c.total_limit))
        .values(used_count=table.c.used_count + 1).returning(table.c.used_count)).first()
    if row is None:
        raise CouponUsedUp(gettext("优惠券已被领完"))
    if redemptions_by(q.coupon.id, redeemer, device) >= q.coupon.per_user_limit:
        raise CouponUsedUp(gettext("您已用过该优惠券"))
    db.session.add(CouponRedemption(coupon_id=q.coupon.id, order_id=order.id, redeemer=redeemer, device=device,
                                    discount=q.discount))
    db.session.expire(q.coupon, ["used_count"])
    db.session.flush()


def release_for_order(order_id: int) -> bool:
    """Give the use back when an order closes unpaid (in the caller's transaction). True if one was released."""
    conn = db.session.connection()
    rows = conn.execute(delete(CouponRedemption.__table__).where(CouponRedemption.order_id == order_id)
                        .returning(CouponRedemption.coupon_id)).all()
    table = Coupon.__table__
    for (coupon_id,) in rows:
        conn.execute(update(table).where(table.c.id == coupon_id, table.c.used_count > 0)
                     .values(used_count=table.c.used_count - 1))
    return bool(rows)


# --- definitions ---------------------------------------------------------------------------------------------

def check_definition(c: Coupon) -> None:
    """Raise ValueError (form message) when a coupon's definition is incomplete or inconsistent."""
    if not c.code or not c.name:
        raise ValueError(gettext("请填写券码和名称"))
    c.code = c.code.strip().upper()
    if not c.code.isascii() or not c.code.replace("-", "").replace("_", "").isalnum() or len(c.code) > 32:
        raise ValueError(gettext("券码只能包含字母、数字、- 和 _（最多 32 位）"))
    if c.kind not in KINDS:
        raise ValueError(gettext("请选择优惠方式"))
    if c.value is None:
        raise ValueError(gettext("请填写优惠金额或折扣"))
    if c.kind == "fixed" and not 1 <= c.value <= 10 ** 12:
        raise ValueError(gettext("优惠金额必须大于 0"))
    if c.kind == "percent" and not 1 <= c.value < BP_SCALE:
        raise ValueError(gettext("折扣比例必须在 0.01% 到 99.99% 之间"))
    if c.min_spend is None or c.min_spend < 0:
        raise ValueError(gettext("最低消费不能为负"))
    if c.starts_at is None or c.ends_at is None or c.ends_at <= c.starts_at:
        raise ValueError(gettext("请填写有效期，结束时间必须晚于开始时间"))
    if c.per_user_limit is None or c.per_user_limit < 1:
        raise ValueError(gettext("每人限用次数至少为 1"))
    if c.total_limit is not None and c.total_limit < 1:
        raise ValueError(gettext("总量至少为 1（留空为不限）"))


def create_coupon(code: str | None, name: str, kind: str, value: int, *, min_spend: int = 0,
                  starts_at: datetime | None = None, ends_at: datetime | None = None, per_user_limit: int = 1,
                  total_limit: int | None = None, active: bool = True, owner: str | None = None) -> Coupon:
    """Add a coupon to the session and flush (the caller commits). `owner`: the only redeemer who may use it."""
    starts_at = starts_at or utcnow()
    coupon = Coupon(code=code or new_code(), name=name, kind=kind, value=value, min_spend=min_spend,
                    starts_at=starts_at, ends_at=ends_at or starts_at + timedelta(days=COMPENSATION_DAYS),
                    per_user_limit=per_user_limit, total_limit=total_limit, used_count=0, active=active,
                    owner=owner)
    try:
        check_definition(coupon)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    db.session.add(coupon)
    db.session.flush()
    return coupon


def new_code(prefix: str = "BC") -> str:
    return prefix + secrets.token_hex(6).upper()


def describe(c: Coupon) -> str:
    off = format_fen(c.value) if c.kind == "fixed" else f"{c.value / 100:.2f}%"
    if c.kind == "fixed":
        return (gettext("满 %(spend)s 减 %(off)s", spend=format_fen(c.min_spend), off=off) if c.min_spend
                else gettext("减 %(off)s", off=off))
    return (gettext("满 %(spend)s 优惠 %(off)s", spend=format_fen(c.min_spend), off=off) if c.min_spend
            else gettext("优惠 %(off)s", off=off))
