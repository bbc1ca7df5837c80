"""客服查单: one box that finds orders by order number, or by a phone number, contact or top-up account in any
spelling, through the blind indexes of the encrypted columns (app.crypto.pii_hash): the plaintext is never
compared or searched, and the results show every personal value masked.

Where a personal value is looked up (each an indexed equality on a keyed hash):
- orders.contact_hash: the storefront buyer's phone / QQ / e-mail;
- orders.account_hash: the account a direct top-up credited (a phone number, a game account);
- delivery_notice.recipient_hash: the e-mail address (or phone) the delivery notice went to;
- agent.phone_hash: an agent's phone: that agent's own orders.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from flask_babel import gettext as _
from flask_babel import lazy_gettext
from sqlalchemy import select

from app.agents.models import Agent
from app.crypto import mask, pii_hash
from app.errors import ValidationError
from app.extensions import db
from app.notices.models import DeliveryNotice
from app.orders.models import Order

MAX_QUERY = 64
LIMIT = 100
MATCHES = {"order_no": lazy_gettext("订单号"), "contact": lazy_gettext("买家联系方式"),
           "account": lazy_gettext("充值账号"), "notice": lazy_gettext("发货通知地址"),
           "agent_phone": lazy_gettext("代理手机号")}


@dataclass(frozen=True)
class Found:
    order: Order
    matched: tuple[str, ...]  # keys of MATCHES

    @property
    def contact_masked(self) -> str:
        return mask(self.order.contact) if self.order.contact else ""

    @property
    def account_masked(self) -> str:
        return mask(self.order.account) if self.order.account else ""


@dataclass
class SearchResult:
    query_masked: str  # what was searched, as the page repeats it (masked: it may be a phone number)
    orders: list[Found] = field(default_factory=list)
    agents: list[Agent] = field(default_factory=list)  # agents whose phone it is
    truncated: bool = False  # more than LIMIT orders matched: the newest are shown


def clean_query(value: object) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise ValidationError(_("请输入订单号、手机号、联系方式或充值账号"))
    if len(text) > MAX_QUERY or any(ord(c) < 32 for c in text):
        raise ValidationError(_("查询内容最多 %(count)s 个字符", count=MAX_QUERY))
    return text


def find_orders(query: object, limit: int = LIMIT) -> SearchResult:
    """Orders matching `query` (newest first, at most `limit`), each with what it matched on."""
    text = clean_query(query)
    digest = pii_hash(text)
    result = SearchResult(query_masked=text if _looks_like_order_no(text) else mask(text))
    matched: dict[int, set[str]] = {}

    def add(ids, why: str) -> None:
        for order_id in ids:
            matched.setdefault(order_id, set()).add(why)

    if _looks_like_order_no(text):
        add(db.session.scalars(select(Order.id).where(Order.order_no == text)), "order_no")
    newest = (Order.created_at.desc(), Order.id.desc())
    add(db.session.scalars(select(Order.id).where(Order.contact_hash == digest).order_by(*newest)
                           .limit(limit + 1)), "contact")
    add(db.session.scalars(select(Order.id).where(Order.account_hash == digest).order_by(*newest)
                           .limit(limit + 1)), "account")
    add(db.session.scalars(select(DeliveryNotice.order_id).where(DeliveryNotice.recipient_hash == digest)
                           .order_by(DeliveryNotice.id.desc()).limit(limit + 1)), "notice")
    result.agents = list(db.session.scalars(select(Agent).where(Agent.phone_hash == digest).order_by(Agent.id)
                                            .limit(20)))
    if result.agents:
        add(db.session.scalars(select(Order.id).where(Order.agent_id.in_([a.id for a in result.agents]))
                               .order_by(*newest).limit(limit + 1)), "agent_phone")
    if not matched:
        return result
    orders = list(db.session.scalars(select(Order).where(Order.id.in_(list(matched))).order_by(*newest)))
    result.truncated = len(orders) > limit
    result.orders = [Found(o, tuple(k for k in MATCHES if k in matched[o.id])) for o in orders[:limit]]
    return result


def _looks_like_order_no(text: str) -> bool:
    # Order numbers are yymmdd + 12 digits (the demo history's differ): digits only, at most the column's 32.
    return text.isascii() and text.isdigit() and 12 <= len(text) <= 32


def matched_text(keys: tuple[str, ...]) -> str:
    return " / ".join(str(MATCHES[k]) for k in keys)
