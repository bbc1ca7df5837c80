"""Order rules: the state machine, and placing + paying + delivering a wallet order in one transaction."""
from __future__ import annotations

import secrets as pyrandom
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from flask_babel import gettext
from sqlalchemy import case, func, inspect, select, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from app import cache, states
from app.agents.errors import AgentInactive
from app.agents.models import Agent
from app.agents.service import AgentFacts, agent_facts
from app.catalog import cards
from app.catalog.errors import ProductUnavailable
from app.catalog.facts import ProductFacts, product_facts
from app.catalog.service import price_for
from app.chain import service as chain
from app.clock import business_day_start, utcnow
from app.crypto import mask
from app.errors import NotFound, ValidationError
from app.extensions import db
from app.ledger import service as ledger
from app.ledger.errors import InsufficientBalance
from app.ledger.models import Journal
from app.ledger.service import BUYER_FUNDS, Line, agent_account_code, supplier_account_code
from app.money import apply_rate, format_fen
from app.network import commissions
from app.orders.errors import (
    DailyLimitExceeded,
    InvalidContact,
    InvalidQuantity,
    InvalidTransition,
    UnsupportedProductKind,
)
from app.orders.models import Order
from app.outbox import service as outbox
from app.risk import agents as risk_agents
from app.risk import usage
from app.rows import insert_loaded
from app.states import Machine

# The only allowed moves. An order is created pending_payment (storefront: a channel pays it later) or paid (wallet:
# charged in the transaction that creates it); card orders paid from the wallet go paid -> delivered in that same
# transaction.
TRANSITIONS: dict[str, set[str]] = {
    "pending_payment": {"paid", "closed"},
    "paid": {"delivering", "delivered", "failed", "refunded", "reviewing"},
    "reviewing": {"paid", "refunded"},  # risk control's hold: approved (then delivered as usual) or rejected
    "delivering": {"delivered", "failed", "refunded"},
    "delivered": {"refunded", "disputed"},
    "disputed": {"delivered", "refunded"},
    "failed": {"refunded"},
    "refunded": set(),
    "closed": {"refunded"},  # a late payment for an expired order is recorded, then refunded at once
}
ORDER_STATES = Machine("order", Order, TRANSITIONS, initial=("pending_payment", "paid"), title="order",
                       illegal=InvalidTransition, lost=InvalidTransition)
# States a reseller acts on: these are POSTed to the order's notify_url.
NOTIFIED_STATUSES = ("delivered", "failed", "refunded", "closed", "disputed")
# Statuses whose amount counts toward a tier's daily purchase limit.
COUNTED_STATUSES = ("paid", "delivering", "delivered", "disputed")


def transition(order_id: int, to_status: str, current: str | None = None) -> None:
    """Move an order to `to_status` with a guarded UPDATE on its current status. The one place status changes.

    `current`: the status the caller knows the order is in (the one it wrote itself in this transaction); it
    saves a read. The UPDATE is guarded on it all the same: an order in any other status is refused.
    """
    if current is None:
        current = db.session.scalar(select(Order.status).where(Order.id == order_id))
    if current is None:
        raise NotFound(gettext("订单不存在：%(order_id)s", order_id=order_id))
    from app.analytics import service as rollups

    now = utcnow()
    values: dict = {"updated_at": now}
    if to_status == "paid":
        values["paid_at"] = now
    elif to_status == "delivered":
        # A dispute rejected returns the order to delivered: it was delivered when it first was (settlement
        # counts from then), so keep the first time.
        values["delivered_at"] = states.IfUnset(now)
    loaded = db.session.identity_map.get(identity_key(Order, order_id))
    # Analytics: one pending row in this transaction, folded into the rollups by a job; a first delivery is chained
    # with it. On PostgreSQL both are written by the move's own statement (data-modifying CTEs): one round trip.
    sign = rollups.pending_sign(current, to_status)
    first_delivery = sign == 1
    noted = db.engine.dialect.name == "postgresql" and sign is not None
    chained = noted and first_delivery and _values_at_hand(loaded)  # what the delivery record's digest covers

    follow = None
    if noted:
        follow = rollups.note_moved(sign)
        if chained:
            follow = states.follow_all(follow, chain.delivery_moved(loaded, now))

    # Closed, failed or refunded: the amount stops counting toward the buyer's daily limits (app.risk.usage).
    releasing = to_status in usage.UNCOUNTED_STATUSES and current not in usage.UNCOUNTED_STATUSES
    returning = ("id", "order_no", "notify_url", "amount", "product_id", "agent_id", "delivered_at")
    if releasing:
        returning += ("buyer_key", "device_key", "payment_account_key", "created_at", "paid_at")
    row = states.move(ORDER_STATES, order_id, current, to_status, **values, follow=follow,
                      returning=returning)
    if releasing:
        usage.release(order_id, row.amount, usage.order_identifiers(
            row.agent_id, row.buyer_key, row.device_key, row.payment_account_key, row.created_at, row.paid_at))
    if loaded is not None and "delivered_at" in values:  # the time the database kept (the first delivery's)
        set_committed_value(loaded, "delivered_at", row.delivered_at)
    if sign is not None and not noted:
        {1: rollups.record_delivery, -1: rollups.record_refund, 0: rollups.record_failure}[sign](order_id)
    if first_delivery and row.delivered_at == now:  # its first delivery (delivered_at keeps the first time)
        if not chained:
            chain.append_delivery(order_id, row.order_no, row.amount, row.product_id, row.agent_id, now)
        if row.agent_id is None:  # a storefront buyer's e-mail / SMS leave by the outbox after this commit
            from app.notices import service as notices

            notices.queue_for_delivery(order_id)
    if to_status in NOTIFIED_STATUSES and row.notify_url:
        # The order's new state is POSTed to notify_url after this transaction commits (outbox).
        outbox.write("order_callback", f"order:{row.order_no}:notify:{to_status}",
                     {"order_id": order_id, "status": to_status})


def _values_at_hand(order: Order | None) -> bool:
    """Whether a loaded order holds what its delivery record covers without a reload."""
    if order is None:
        return False
    unloaded = inspect(order).unloaded
    if unloaded & {"order_no", "amount", "product_id", "agent_id"}:
        return False
    return order.agent_id is not None or "contact" not in unloaded  # a storefront buyer is recorded by contact


def new_order_no() -> str:
    """Date prefix for humans, 12 random digits so numbers are neither sequential nor guessable."""
    return utcnow().strftime("%y%m%d") + f"{pyrandom.randbelow(10 ** 12):012d}"


def _validate_quantity(quantity: object, product: ProductFacts) -> int:
    if isinstance(quantity, int) and not isinstance(quantity, bool):
        qty = quantity
    elif isinstance(quantity, str) and quantity.strip().isdecimal():  # isdigit() admits '²', which int() refuses
        qty = int(quantity.strip())
    else:
        raise InvalidQuantity(gettext("数量必须是正整数"))
    if qty < 1:
        raise InvalidQuantity(gettext("数量至少为 1"))
    if qty > product.max_per_order:
        raise InvalidQuantity(gettext("单笔最多购买 %(max)s 件", max=product.max_per_order))
    return qty


def _load_product(product_id: object) -> ProductFacts:
    # Only an int or a digit string names a product: int(1.5) or int(True) would silently pick product 1.
    if isinstance(product_id, bool) or not isinstance(product_id, int | str):
        raise ProductUnavailable(gettext("商品不存在"))
    try:
        pid = int(product_id)
    except ValueError:
        raise ProductUnavailable(gettext("商品不存在")) from None
    if not 0 < pid < 2 ** 31:  # beyond the id column's range: SQLite overflows, PostgreSQL compares as numeric
        raise ProductUnavailable(gettext("商品不存在"))
    product = product_facts(pid)
    if product is None or not product.active:
        raise ProductUnavailable(gettext("商品不存在或已下架"))
    return product


def _check_daily_limit(agent: AgentFacts, amount: int) -> None:
    limit = agent.tier.daily_limit
    if not limit:
        return
    spent = db.session.scalar(
        select(func.coalesce(func.sum(Order.amount), 0)).where(
            Order.agent_id == agent.id, Order.status.in_(COUNTED_STATUSES), Order.created_at >= business_day_start()
        )
    )
    if spent + amount > limit:
        raise DailyLimitExceeded(gettext("超出今日采购限额 %(limit)s（今日已采购 %(spent)s）", limit=format_fen(limit),
                                         spent=format_fen(spent)))


def _load_agent(agent_id: int) -> AgentFacts:
    """The buying agent's facts (tier, path, login), refused when it is disabled or held by risk control."""
    agent = agent_facts(agent_id)
    if agent is None or not agent.active:
        raise AgentInactive(gettext("代理不存在或已停用"))
    risk_agents.check_not_held(agent)
    return agent


@dataclass(frozen=True)
class RiskContext:
    """Where a wallet purchase comes from, for risk control: the event name and the caller's address and device."""
    event: str = "portal_purchase"  # or openapi_order
    ip: str | None = None
    device: str | None = None


def place_wallet_order(agent_id: int, product_id: object, quantity: object, out_trade_no: str | None = None,
                       account: str | None = None, notify_url: str | None = None,
                       request_hash: str | None = None, api_key_id: int | None = None,
                       coupon: object = None, risk: RiskContext | None = None,
                       before_commit: Callable[[Order], object] | None = None) -> Order:
    """Validate, price on the server, pass risk control, charge the wallet, allocate card secrets and deliver; one
    transaction. A direct (直充) product is paid into buyer_funds instead and handed to app.suppliers.recharge
    (status paid). An order risk control sends to review is paid into buyer_funds and held (status reviewing)
    until a reviewer approves (delivered from there) or rejects (back to the wallet).

    Commits on success. On any refusal (stock, balance, limit, input, coupon, risk) rolls back: nothing is charged
    or sold. `coupon`: an optional coupon code (app.payments.coupons), redeemed as `agent:<id>`.
    `before_commit`: called with the placed order just before the commit, while every row it reads is in hand (the
    Open API renders its answer there rather than reloading the order after the commit).
    """
    try:
        order = _place_wallet_order(agent_id, product_id, quantity, out_trade_no, account, notify_url,
                                    request_hash, api_key_id, coupon, risk or RiskContext())
        if before_commit is not None:
            before_commit(order)
        db.session.commit()
        return order
    except Exception:
        db.session.rollback()
        raise


def _place_wallet_order(agent_id, product_id, quantity, out_trade_no, account, notify_url, request_hash,
                        api_key_id, coupon, risk_ctx: RiskContext) -> Order:
    from app.network.realname import check_purchase as check_realname_for_purchase
    from app.payments import coupons

    coupon_code = coupons.normalize_code(coupon)
    product = _load_product(product_id)
    if product.kind == "direct":
        return _place_direct_wallet_order(agent_id, product, quantity, out_trade_no, account, notify_url,
                                          request_hash, api_key_id, coupon_code, risk_ctx)
    if product.kind != "card":
        raise UnsupportedProductKind(gettext("「%(name)s」为%(kind)s商品，暂不支持钱包直接下单", name=product.name,
                                             kind=product.kind_display()))
    qty = _validate_quantity(quantity, product)
    agent = _load_agent(agent_id)
    wallet = agent_account_code(agent.id, "wallet")
    payable = supplier_account_code(product.supplier_id)
    # Lock the buyer's wallet and its commission beneficiaries' pending accounts in one ascending-id lock (the
    # only rows locked per order), then check limits under it.
    plan = commissions.beneficiaries(agent.path)
    codes = [wallet, payable, "platform:fees", "platform:revenue"]
    if plan:
        codes += [commissions.EXPENSE] + [b.pending_code for b in plan]
    accounts = ledger.lock_accounts(codes)
    unit_price = price_for(agent.tier, product)
    amount = unit_price * qty
    quote = None
    if coupon_code:
        quote = coupons.quote(coupon_code, amount, coupons.redeemer_for_agent(agent.id))
        amount = quote.amount
    _check_daily_limit(agent, amount)
    check_realname_for_purchase(agent.id, amount)  # one lookup, only above REALNAME_REQUIRED_ABOVE
    if accounts[wallet][2] < amount:
        raise InsufficientBalance(gettext("余额不足：需要 %(amount)s，可用 %(balance)s", amount=format_fen(amount),
                                          balance=format_fen(accounts[wallet][2])))
    order_no = new_order_no()  # named before the decision, which is stored with it (no update afterwards)
    now = utcnow()  # the decision's time is the order's: its limit is reserved on that business day
    event, decision = _risk_check(agent, amount, qty, bool(quote), risk_ctx, order_no, now)

    cost_total = product.cost * qty
    fee = apply_rate(cost_total, product.service_fee_bp)
    order = Order(order_no=order_no, risk_decision_id=decision.id, agent_id=agent.id, product_id=product.id,
                  supplier_id=product.supplier_id,
                  tier_id=agent.tier_id, quantity=qty, face_price=product.face_price, unit_price=unit_price,
                  amount=amount, cost_total=cost_total, service_fee=fee, upline_path=agent.path,
                  status="paid", created_at=now, paid_at=now, channel="wallet", out_trade_no=out_trade_no,
                  account=account,
                  notify_url=notify_url, request_hash=request_hash, api_key_id=api_key_id,
                  discount=quote.discount if quote else 0, coupon_id=quote.coupon.id if quote else None)
    insert_loaded(order)
    if quote:
        coupons.redeem(quote, order, coupons.redeemer_for_agent(agent.id))
    # Paid from the wallet in this same transaction: the order is born paid (nothing follows pending → paid).
    _after_risk_check(order, agent, event, decision)
    if decision.outcome == "review":
        # Paid into buyer_funds like a direct top-up; delivered from there once approved (reviews.approve).
        _hold_in_buyer_funds(order, wallet, {**accounts, **ledger.lock_accounts([BUYER_FUNDS])},
                             f"{product.name} × {qty} 风控审核")  # i18n-keep: data
        return _hold_for_review(order)
    cards.allocate(order.id, product.id, qty)
    ledger.post_journal(f"order:{order.order_no}:sale", "sale", sale_lines(order, wallet),
                        memo=f"{product.name} × {qty}", order_id=order.id, locked=accounts)
    if plan:
        commissions.accrue(order, plan, locked=accounts)
    transition(order.id, "delivered", current="paid")
    return order  # committed by the caller, which expires it: its first use reloads the delivered row


def _risk_check(agent: AgentFacts, amount: int, qty: int, has_coupon: bool, ctx: RiskContext,
                order_no: str | None = None, now: datetime | None = None):
    """Risk control for a wallet purchase, under the wallet's lock and before the order is written: lists (the
    agent's login, address, device), the tier's limits (locked until commit), rules. A block raises."""
    from app.risk import service as risk

    age_hours = (utcnow() - agent.created_at).total_seconds() / 3600 if agent.created_at else 1e9
    event = risk.RiskInput(event=ctx.event, amount=amount, ip=ctx.ip, device=ctx.device, agent_id=agent.id,
                           agent_login=agent.login, tier_id=agent.tier_id, order_no=order_no,
                           values={"account_age_hours": age_hours, "quantity": qty, "has_coupon": has_coupon})
    decision = risk.evaluate(event, now=now)
    decision.raise_if_blocked()
    return event, decision


def _after_risk_check(order: Order, agent: AgentFacts, event, decision) -> None:
    """The order exists: name it on the decision, count it for the velocity rules, and spend top-up money first
    (what is left of it is not withdrawable: app.network.withdrawals)."""
    from app.risk import service as risk

    if order.risk_decision_id != decision.id:  # set at creation: assigning it again would cost a second flush
        order.risk_decision_id = decision.id
    if event.order_no != order.order_no:  # a decision taken before the order was numbered
        event.order_no = order.order_no
        risk.attach_order(decision.id, order.order_no)
    risk.record("order", event)
    if order.coupon_id:
        risk.record("coupon_order", event)
    # Most agents hold no unspent top-up: skip the UPDATE then. The row was read before the wallet's lock, so a
    # top-up committed meanwhile is missed here and stays unspent: the cautious side (it stays unwithdrawable).
    if order.amount and agent.topup_unspent:
        spend_topup(agent.id, order.amount)


def spend_topup(agent_id: int, amount: int) -> None:
    """A wallet purchase spends unspent top-up money first: topup_unspent decreases by min(topup_unspent, amount).
    Under the wallet's lock (every change to topup_unspent takes it). Computed from the row, never from the cached
    agent facts, which keep the figure they had (this decrease leaves every process's cache alone: app.cache)."""
    db.session.execute(update(Agent).where(Agent.id == agent_id, Agent.topup_unspent > 0)
                       .values(topup_unspent=case((Agent.topup_unspent > amount, Agent.topup_unspent - amount),
                                                  else_=0))
                       .execution_options(synchronize_session=False, **cache.UNAFFECTED))


def _hold_in_buyer_funds(order: Order, wallet: str, accounts: dict, memo: str) -> None:
    if order.amount:  # a coupon may have made it free
        ledger.post_journal(f"order:{order.order_no}:hold", "hold",
                            [Line(wallet, -order.amount), Line(BUYER_FUNDS, order.amount)],
                            memo=memo, order_id=order.id, locked=accounts)


def _hold_for_review(order: Order) -> Order:
    order.risk_hold = True
    hold_for_review(order)
    return order


def hold_for_review(order: Order) -> str:
    """A paid order flagged at checkout or at payment goes to risk review (风控审核, app.risk.reviews) instead of
    delivery (caller's transaction)."""
    transition(order.id, "reviewing", current="paid")
    return "held_for_review"


def _place_direct_wallet_order(agent_id, product: ProductFacts, quantity, out_trade_no, account, notify_url,
                               request_hash, api_key_id, coupon_code, risk_ctx: RiskContext) -> Order:
    """A direct top-up from the wallet: the money moves to buyer_funds (held until the supplier's outcome) and the
    recharge job is written to the outbox. No sale journal yet: the sale is booked at the supplier's cost once
    one of them has credited the account; every supplier failing refunds the hold."""
    from app.network.realname import check_purchase as check_realname_for_purchase
    from app.payments import coupons
    from app.suppliers import service as suppliers

    account = suppliers.clean_account(account)
    qty = _validate_quantity(quantity, product)
    agent = _load_agent(agent_id)
    suppliers.check_available(product.id, qty)
    wallet = agent_account_code(agent.id, "wallet")
    accounts = ledger.lock_accounts([wallet, BUYER_FUNDS])  # the buyer's wallet is the only row locked
    unit_price = price_for(agent.tier, product)
    amount = unit_price * qty
    quote = None
    if coupon_code:
        quote = coupons.quote(coupon_code, amount, coupons.redeemer_for_agent(agent.id))
        amount = quote.amount
    _check_daily_limit(agent, amount)
    check_realname_for_purchase(agent.id, amount)
    if accounts[wallet][2] < amount:
        raise InsufficientBalance(gettext("余额不足：需要 %(amount)s，可用 %(balance)s", amount=format_fen(amount),
                                          balance=format_fen(accounts[wallet][2])))
    order_no = new_order_no()
    now = utcnow()
    event, decision = _risk_check(agent, amount, qty, bool(quote), risk_ctx, order_no, now)
    # Supplier and cost are estimates until a supplier succeeds (recharge books the one that did).
    cost_total = product.cost * qty
    order = Order(order_no=order_no, risk_decision_id=decision.id, agent_id=agent.id, product_id=product.id,
                  supplier_id=product.supplier_id,
                  tier_id=agent.tier_id, quantity=qty, face_price=product.face_price, unit_price=unit_price,
                  amount=amount, cost_total=cost_total, service_fee=apply_rate(cost_total, product.service_fee_bp),
                  upline_path=agent.path, status="paid", created_at=now, paid_at=now, channel="wallet",
                  out_trade_no=out_trade_no,
                  account=account, notify_url=notify_url, request_hash=request_hash, api_key_id=api_key_id,
                  discount=quote.discount if quote else 0, coupon_id=quote.coupon.id if quote else None)
    insert_loaded(order)
    if quote:
        coupons.redeem(quote, order, coupons.redeemer_for_agent(agent.id))
    # Paid from the wallet in this same transaction: the order is born paid.
    _after_risk_check(order, agent, event, decision)
    # A journal memo is not encrypted: it names the account masked.
    _hold_in_buyer_funds(order, wallet, accounts, f"{product.name} × {qty} 直充 {mask(account)}")  # i18n-keep: data
    if decision.outcome == "review":
        return _hold_for_review(order)  # no recharge until approved (reviews.approve starts it)
    suppliers.start_recharge(order)
    return order


def sale_lines(order: Order, funding_account: str) -> list[Line]:
    """The sale journal: the buyer's money to the supplier (cost less its fee), the platform's fee and margin."""
    return [
        Line(funding_account, -order.amount),
        Line(supplier_account_code(order.supplier_id), order.cost_total - order.service_fee),
        Line("platform:fees", order.service_fee),
        Line("platform:revenue", order.amount - order.cost_total),
    ]


def place_guest_order(product_id: object, quantity: object, contact: object, channel: str,
                      coupon: object = None, account: object = None, device_id: object = None,
                      ip: str | None = None, risk_event: str = "checkout", shop=None) -> Order:
    """A storefront order at the public price (less an optional coupon, redeemed as `contact:<its blind index>`),
    unpaid.
    Flushes; the caller adds the checkout and commits (or rolls back on a refusal: nothing is written).

    No stock is reserved: secrets are allocated when the payment arrives (a paid order without stock is refunded).
    A direct product needs `account` (the top-up target) and a supplier able to take it now.
    `shop`: bought in an agent's shop (an app.agentshops.service.ShopPricing): the shop's price instead of the
    public one, and the shop, the agent's own price, its profit and its path snapshotted in the order.
    """
    product = _load_product(product_id)
    if product.kind not in ("card", "direct"):
        raise UnsupportedProductKind(gettext("「%(name)s」为%(kind)s商品，暂不支持在线购买", name=product.name,
                                             kind=product.kind_display()))
    qty = _validate_quantity(quantity, product)
    if product.kind == "direct":
        from app.suppliers import service as suppliers

        account = suppliers.clean_account(account)
        suppliers.check_available(product.id, qty)
    else:
        account = None
    if not isinstance(contact, str) or not 3 <= len(contact.strip()) <= 128 or any(ord(c) < 32 for c in contact):
        raise InvalidContact(gettext("请填写联系方式（手机号、QQ 或邮箱，3-128 个字符）"))
    device = clean_device_id(device_id)
    from app.payments import coupons

    coupon_code = coupons.normalize_code(coupon)
    # --- agent shops (app.agentshops): the shop's price; its agent's price and profit are snapshotted below
    shop_price = shop.price(product) if shop is not None else None
    unit_price = shop_price.unit_price if shop_price else price_for(None, product)
    cost_total = product.cost * qty
    quote = None
    redeemer = coupons.redeemer_for_contact(contact) if coupon_code else None  # one keyed hash, used twice
    if coupon_code:
        quote = coupons.quote(coupon_code, unit_price * qty, redeemer, device=device)
    amount = quote.amount if quote else unit_price * qty
    from app.risk import service as risk

    # Risk control before anything is written: lists, the buyer's limits (locked until the caller commits), rules.
    order_no = new_order_no()  # named before the decision, which is stored with it
    now = utcnow()  # the decision's time is the order's: its limit is reserved on that business day
    event = risk.RiskInput(event=risk_event, amount=amount, ip=ip, device=device, contact=contact.strip(),
                           order_no=order_no, values={"has_coupon": bool(quote), "is_guest": True, "quantity": qty})
    decision = risk.evaluate(event, now=now)
    decision.raise_if_blocked()
    keys = risk.keys_of(event)
    order = Order(order_no=order_no, agent_id=None, product_id=product.id, supplier_id=product.supplier_id,
                  quantity=qty, face_price=product.face_price, unit_price=unit_price,
                  amount=quote.amount if quote else unit_price * qty,
                  discount=quote.discount if quote else 0, coupon_id=quote.coupon.id if quote else None,
                  cost_total=cost_total, service_fee=apply_rate(cost_total, product.service_fee_bp),
                  status="pending_payment", created_at=now, channel=channel, contact=contact.strip(), account=account,
                  buyer_key=keys["contact"], device_key=keys["device"], risk_decision_id=decision.id,
                  risk_hold=decision.outcome == "review")
    if shop_price is not None:  # agent shops: what the delivery credits the agent and its uplines earn on
        order.shop_id, order.upline_path = shop.shop_id, shop.agent_path
        order.shop_base_amount = shop_price.base_unit_price * qty
        order.shop_profit = (shop_price.unit_price - shop_price.base_unit_price) * qty
    insert_loaded(order)
    if quote:
        coupons.redeem(quote, order, redeemer, device=device)
    risk.record("order", event)
    if quote:
        risk.record("coupon_order", event)
    return order


def clean_device_id(device_id: object) -> str | None:
    """A page's or API's optional device id (a browser fingerprint): a string of at most 128 printable characters
    (ValidationError when it is not one)."""
    if device_id is None or device_id == "":
        return None
    if not isinstance(device_id, str) or len(device_id) > 128 or not device_id.isprintable():
        raise ValidationError(gettext("device_id 须为不超过 128 个字符的字符串"))
    return device_id


def deliver_paid(order_id: int, funding_account: str) -> None:
    """Deliver a paid card order inside the caller's transaction: allocate secrets, book the sale, mark delivered.

    Raises OutOfStock having written nothing (cards.allocate is its first write; the caller refunds) when the stock
    ran out between checkout and payment.
    """
    order = db.session.get(Order, order_id)
    cards.allocate(order.id, order.product_id, order.quantity)
    ledger.post_journal(f"order:{order.order_no}:sale", "sale", sale_lines(order, funding_account),
                        memo=f"{product_facts(order.product_id).name} × {order.quantity}", order_id=order.id)
    commissions.accrue_for_delivered(order)
    transition(order.id, "delivered", current=order.status)  # the status this transaction loaded or moved it to


def reverse_sale(order_id: int, refund_to: str) -> None:
    """Undo a delivered order's sale journal exactly (for a refund); its card secrets are voided, never resold."""
    order = db.session.get(Order, order_id)
    sale = db.session.scalar(select(func.count()).select_from(Journal).where(
        Journal.order_id == order.id, Journal.kind == "sale"))
    if sale:
        lines = [Line(ln.account_code, -ln.amount) for ln in sale_lines(order, refund_to)]
        ledger.post_journal(f"order:{order.order_no}:sale-reversal", "sale_reversal", lines,
                            memo=f"退款 {order.order_no}", order_id=order.id)  # i18n-keep: data
    cards.void_order_secrets(order.id)
