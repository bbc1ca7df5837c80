"""Wallet orders end to end through app.orders.service: pricing, refusals that write nothing, the state machine,
and real concurrent buyers on PostgreSQL."""
from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text, update

from app.agents.errors import AgentInactive
from app.catalog import cards
from app.catalog.errors import OutOfStock, ProductUnavailable
from app.catalog.models import CardSecret, PriceRule, TierPrice
from app.catalog.service import price_for
from app.clock import business_day_start, utcnow
from app.errors import KamengError, NotFound
from app.ledger import service as ledger
from app.ledger.errors import InsufficientBalance
from app.ledger.models import Account, Journal, Posting
from app.money import apply_rate
from app.orders import service as orders
from app.orders.errors import DailyLimitExceeded, InvalidQuantity, InvalidTransition, UnsupportedProductKind
from app.orders.models import ORDER_STATUSES, Order
from app.suppliers.errors import InvalidAccount

BOTH = pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)


# ---------------------------------------------------------------------------------------------------------------
# helpers

def _count(db, model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def snapshot(db) -> dict:
    """Everything a refused purchase must leave untouched."""
    db.session.expire_all()
    codes = db.session.scalars(select(Account.code).order_by(Account.code)).all()
    return {
        "orders": _count(db, Order),
        "journals": _count(db, Journal),
        "postings": _count(db, Posting),
        "balances": {code: ledger.balance_of(code) for code in codes},
        "available": cards.available_counts(),
        "secrets": db.session.execute(select(CardSecret.id, CardSecret.status, CardSecret.order_id)
                                      .order_by(CardSecret.id)).all(),
    }


def assert_refused(db, exc_type, code: str, call) -> KamengError:
    """Given the state now, when `call` runs, then it raises `exc_type` with `code` and nothing changed."""
    before = snapshot(db)
    with pytest.raises(exc_type) as info:
        call()
    assert info.value.code == code, info.value
    assert snapshot(db) == before
    return info.value


def race(app, n: int, target) -> list[tuple[str, object]]:
    """Run target(i) in n real threads, each in its own app context (own session), released together."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        with app.app_context():
            try:
                barrier.wait(timeout=30)
                results[i] = ("ok", target(i))
            except KamengError as exc:
                results[i] = (exc.code, None)
            except Exception as exc:  # noqa: BLE001 - reported as a failure below
                results[i] = ("crash", repr(exc))

    threads = [threading.Thread(target=run, args=(i,), name=f"buyer-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a buyer thread hung"
    assert not [r for r in results if r[0] == "crash"], results
    return results


def buy_and_describe(agent_id: int, product_id: int, quantity: int = 1) -> dict:
    """Runs inside a thread: buy, and return plain values (ORM objects do not leave the thread's session)."""
    order = orders.place_wallet_order(agent_id, product_id, quantity)
    return {"order_id": order.id, "agent_id": agent_id, "amount": order.amount,
            "secret_ids": sorted(s.id for s in order.card_secrets)}


# ---------------------------------------------------------------------------------------------------------------
# the happy path

@BOTH
def test_wallet_purchase_delivers_debits_and_posts_the_sale_journal(app, db, f):
    # given an agent at 90% with 1000 yuan, and a card product whose supplier takes a 3.33% service fee
    a = f.agent(balance=100_000, tier_obj=f.tier(discount_bp=9000), with_user=False)
    p = f.product(face_price=10000, cost=8000, supplier_fee_bp=333)
    stocked = f.stock(p, 5)
    payable = ledger.supplier_account_code(p.supplier_id)

    # when the agent buys three
    order = orders.place_wallet_order(a.id, p.id, 3)

    # then the order is delivered with a server-side price snapshot
    amount, cost_total = 3 * 9000, 3 * 8000
    fee = apply_rate(cost_total, 333)  # 799.2 -> 799 (floor)
    assert fee == 799
    assert (order.status, order.quantity, order.face_price, order.unit_price, order.amount) == \
        ("delivered", 3, 10000, 9000, amount)
    assert (order.cost_total, order.service_fee, order.channel) == (cost_total, fee, "wallet")
    assert order.paid_at is not None and order.delivered_at is not None
    assert order.upline_path == a.path and order.tier_id == a.tier_id

    # and three distinct stocked secrets are sold to it, readable by its owner
    secrets = db.session.scalars(select(CardSecret).where(CardSecret.order_id == order.id)).all()
    assert len(secrets) == 3 and all(s.status == "sold" and s.sold_at for s in secrets)
    plain = cards.reveal(order.id)
    assert len(set(plain)) == 3 and set(plain) <= set(stocked)
    assert cards.available_counts([p.id]) == {p.id: 2}

    # and the wallet is debited by exactly the amount
    assert f.wallet(a) == 100_000 - amount

    # and one balanced sale journal: wallet -amount, supplier +(cost-fee), fees +fee, revenue +(amount-cost)
    journal = db.session.scalar(select(Journal).where(Journal.order_id == order.id))
    assert (journal.kind, journal.idempotency_key) == ("sale", f"order:{order.order_no}:sale")
    postings = {pst.account.code: pst.amount for pst in journal.postings}
    assert postings == {
        ledger.agent_account_code(a.id, "wallet"): -amount,
        payable: cost_total - fee,
        "platform:fees": fee,
        "platform:revenue": amount - cost_total,
    }
    assert sum(postings.values()) == 0
    assert ledger.balance_of(payable) == cost_total - fee
    assert ledger.balance_of("platform:fees") == fee
    assert ledger.balance_of("platform:revenue") == amount - cost_total


@BOTH
def test_quantity_given_as_a_digit_string_is_accepted(app, f):
    a = f.agent(balance=50_000, tier_obj=f.tier(discount_bp=10000), with_user=False)
    p = f.product(face_price=1000, secrets=3)
    order = orders.place_wallet_order(a.id, p.id, " 2 ")
    assert order.quantity == 2 and order.amount == 2000 and order.status == "delivered"


# ---------------------------------------------------------------------------------------------------------------
# prices

@BOTH
def test_price_is_face_times_tier_discount(app, f):
    gold, silver = f.tier(discount_bp=8500), f.tier(discount_bp=9500)
    p = f.product(face_price=10000, secrets=2)
    a_gold = f.agent(tier_obj=gold, balance=100_000, with_user=False)
    a_silver = f.agent(tier_obj=silver, balance=100_000, with_user=False)
    assert orders.place_wallet_order(a_gold.id, p.id, 1).unit_price == 8500
    assert orders.place_wallet_order(a_silver.id, p.id, 1).unit_price == 9500
    assert price_for(None, p) == 10000  # no tier: the public face price


@BOTH
def test_tier_price_overrides_the_discount_for_that_tier_only(app, db, f):
    gold, silver = f.tier(discount_bp=9000), f.tier(discount_bp=9000)
    p = f.product(face_price=10000, secrets=2)
    db.session.add(TierPrice(product_id=p.id, tier_id=gold.id, price=7777))
    db.session.commit()
    a_gold = f.agent(tier_obj=gold, balance=100_000, with_user=False)
    a_silver = f.agent(tier_obj=silver, balance=100_000, with_user=False)

    order = orders.place_wallet_order(a_gold.id, p.id, 1)
    assert (order.unit_price, order.amount, order.face_price) == (7777, 7777, 10000)
    assert f.wallet(a_gold) == 100_000 - 7777
    assert orders.place_wallet_order(a_silver.id, p.id, 1).unit_price == 9000


def _rule(db, p, rate_bp, tier=None, starts=-1, ends=1, active=True):
    """A price rule active from `starts` to `ends` hours around now."""
    now = utcnow()
    rule = PriceRule(name=f"rule {rate_bp}", product_id=p.id, tier_id=tier.id if tier else None, rate_bp=rate_bp,
                     starts_at=now + timedelta(hours=starts), ends_at=now + timedelta(hours=ends), active=active)
    db.session.add(rule)
    db.session.commit()
    return rule


@BOTH
def test_price_rule_for_one_tier_applies_to_that_tier_only(app, db, f):
    gold, silver = f.tier(discount_bp=9000), f.tier(discount_bp=9000)
    p = f.product(face_price=10000, secrets=2)
    _rule(db, p, 8000, tier=gold)
    a_gold = f.agent(tier_obj=gold, balance=100_000, with_user=False)
    a_silver = f.agent(tier_obj=silver, balance=100_000, with_user=False)
    assert orders.place_wallet_order(a_gold.id, p.id, 1).unit_price == 7200  # 10000 × 90% × 80%
    assert orders.place_wallet_order(a_silver.id, p.id, 1).unit_price == 9000
    assert price_for(None, p) == 10000  # a tier's rule is not the public price


@BOTH
def test_price_rule_for_all_tiers_applies_to_every_tier_and_the_public_price(app, db, f):
    gold, silver = f.tier(discount_bp=9000), f.tier(discount_bp=9500)
    p = f.product(face_price=10000, secrets=2)
    _rule(db, p, 9000)
    db.session.add(TierPrice(product_id=p.id, tier_id=silver.id, price=9900))
    db.session.commit()
    a_gold = f.agent(tier_obj=gold, balance=100_000, with_user=False)
    a_silver = f.agent(tier_obj=silver, balance=100_000, with_user=False)
    assert orders.place_wallet_order(a_gold.id, p.id, 1).unit_price == 8100
    assert orders.place_wallet_order(a_silver.id, p.id, 1).unit_price == 8910  # the override, then the rule
    assert price_for(None, p) == 9000


@BOTH
def test_only_rules_inside_their_window_and_active_count(app, db, f):
    t = f.tier(discount_bp=10000)
    p = f.product(face_price=10000, secrets=1)
    _rule(db, p, 5000, starts=-48, ends=-24)  # expired
    _rule(db, p, 5000, starts=24, ends=48)  # not yet started
    _rule(db, p, 5000, active=False)  # switched off
    other = f.tier(discount_bp=10000)
    _rule(db, p, 5000, tier=other)  # someone else's
    a = f.agent(tier_obj=t, balance=100_000, with_user=False)
    assert orders.place_wallet_order(a.id, p.id, 1).unit_price == 10000

    # the window is [starts_at, ends_at)
    rule = _rule(db, p, 7000, starts=1, ends=2)
    assert price_for(t, p, at=rule.starts_at - timedelta(seconds=1)) == 10000
    assert price_for(t, p, at=rule.starts_at) == 7000
    assert price_for(t, p, at=rule.ends_at - timedelta(seconds=1)) == 7000
    assert price_for(t, p, at=rule.ends_at) == 10000


@BOTH
def test_lowest_active_rule_wins(app, db, f):
    gold, silver = f.tier(discount_bp=10000), f.tier(discount_bp=10000)
    p = f.product(face_price=10000, secrets=2)
    _rule(db, p, 9500)  # all tiers
    _rule(db, p, 8000, tier=gold)
    _rule(db, p, 9000, tier=gold)
    a_gold = f.agent(tier_obj=gold, balance=100_000, with_user=False)
    a_silver = f.agent(tier_obj=silver, balance=100_000, with_user=False)
    assert orders.place_wallet_order(a_gold.id, p.id, 1).unit_price == 8000  # rules never stack
    assert orders.place_wallet_order(a_silver.id, p.id, 1).unit_price == 9500


@BOTH
def test_price_is_floored_once_not_per_step(app, db, f):
    t = f.tier(discount_bp=9999)
    p = f.product(face_price=1001, cost=500, secrets=2)
    _rule(db, p, 9999)
    a = f.agent(tier_obj=t, balance=100_000, with_user=False)
    once = apply_rate(1001, 9999, 9999)
    per_step = apply_rate(apply_rate(1001, 9999), 9999)
    assert (once, per_step) == (1000, 999)  # the case tells the two roundings apart
    order = orders.place_wallet_order(a.id, p.id, 2)
    assert order.unit_price == once and order.amount == 2 * once


@BOTH
def test_order_keeps_its_price_snapshot_when_prices_change_later(app, db, f):
    t = f.tier(discount_bp=9000)
    p = f.product(face_price=10000, secrets=1)
    a = f.agent(tier_obj=t, balance=100_000, with_user=False)
    order = orders.place_wallet_order(a.id, p.id, 1)
    p.face_price = 20000
    db.session.add(TierPrice(product_id=p.id, tier_id=t.id, price=1))
    db.session.commit()
    db.session.expire_all()
    again = db.session.get(Order, order.id)
    assert (again.face_price, again.unit_price, again.amount) == (10000, 9000, 9000)


# ---------------------------------------------------------------------------------------------------------------
# refusals leave everything unchanged

@BOTH
def test_out_of_stock_changes_nothing(app, db, f):
    a = f.agent(balance=100_000, with_user=False)
    p = f.product(face_price=1000, secrets=2)
    assert_refused(db, OutOfStock, "out_of_stock", lambda: orders.place_wallet_order(a.id, p.id, 3))
    empty = f.product(face_price=1000)
    assert_refused(db, OutOfStock, "out_of_stock", lambda: orders.place_wallet_order(a.id, empty.id, 1))
    # and the two in stock can still be bought afterwards
    assert orders.place_wallet_order(a.id, p.id, 2).status == "delivered"


@BOTH
def test_insufficient_balance_changes_nothing(app, db, f):
    a = f.agent(balance=18_999, tier_obj=f.tier(discount_bp=9500), with_user=False)
    p = f.product(face_price=10000, secrets=3)
    assert_refused(db, InsufficientBalance, "insufficient_balance", lambda: orders.place_wallet_order(a.id, p.id, 2))
    broke = f.agent(tier_obj=f.tier(discount_bp=9500), with_user=False)
    assert_refused(db, InsufficientBalance, "insufficient_balance",
                   lambda: orders.place_wallet_order(broke.id, p.id, 1))
    # the exact balance is enough
    f.fund(a, 1)
    assert orders.place_wallet_order(a.id, p.id, 2).amount == 19_000
    assert f.wallet(a) == 0


@BOTH
def test_daily_limit_counts_todays_purchases_and_changes_nothing_when_exceeded(app, db, f):
    t = f.tier(discount_bp=10000, daily_limit=20_000)
    a = f.agent(tier_obj=t, balance=100_000, with_user=False)
    p = f.product(face_price=10000, secrets=5)
    first = orders.place_wallet_order(a.id, p.id, 1)
    orders.place_wallet_order(a.id, p.id, 1)  # exactly at the limit is allowed
    err = assert_refused(db, DailyLimitExceeded, "daily_limit_exceeded",
                         lambda: orders.place_wallet_order(a.id, p.id, 1))
    assert "200.00" in err.message  # tells the agent the limit

    # yesterday's purchases do not count against today
    db.session.execute(update(Order).where(Order.agent_id == a.id)
                       .values(created_at=business_day_start() - timedelta(seconds=1)))
    db.session.commit()
    assert orders.place_wallet_order(a.id, p.id, 2).amount == 20_000
    assert first.id  # the earlier orders still exist
    # a single order over the limit is refused outright
    db.session.execute(update(Order).where(Order.agent_id == a.id)
                       .values(created_at=business_day_start() - timedelta(seconds=1)))
    db.session.commit()
    assert_refused(db, DailyLimitExceeded, "daily_limit_exceeded", lambda: orders.place_wallet_order(a.id, p.id, 3))


BAD_QUANTITIES = [0, -1, "abc", 1.5, True, False, None, "", " ", "-1", "1.5", "1e3", "²", [1], 11, "11", 10 ** 30]


@BOTH
@pytest.mark.parametrize("quantity", BAD_QUANTITIES, ids=repr)
def test_bad_quantity_is_refused_and_writes_nothing(app, db, f, quantity):
    a = f.agent(balance=1_000_000, with_user=False)
    p = f.product(face_price=100, secrets=12, max_per_order=10)
    assert_refused(db, InvalidQuantity, "invalid_quantity", lambda: orders.place_wallet_order(a.id, p.id, quantity))


@BOTH
def test_unknown_or_inactive_product_is_refused(app, db, f):
    a = f.agent(balance=1_000_000, with_user=False)
    p = f.product(face_price=100, secrets=2)
    off = f.product(face_price=100, secrets=2)
    off.active = False
    db.session.commit()
    for product_id in (off.id, 999_999, "abc", None, "", -1, 0, p.id + 0.5, float(p.id), str(p.id) + ".5", [p.id],
                       True, 10 ** 30, "9" * 30, "²"):
        assert_refused(db, ProductUnavailable, "product_unavailable",
                       lambda pid=product_id: orders.place_wallet_order(a.id, pid, 1))
    # the product id as a digit string is still fine
    assert orders.place_wallet_order(a.id, str(p.id), 1).status == "delivered"


@BOTH
def test_manual_products_are_not_sold_from_the_wallet(app, db, f):
    a = f.agent(balance=1_000_000, with_user=False)
    p = f.product(kind="manual", face_price=100)
    assert_refused(db, UnsupportedProductKind, "unsupported_product_kind",
                   lambda: orders.place_wallet_order(a.id, p.id, 1, account="13800138000"))


@BOTH
def test_direct_products_need_an_account_and_a_supplier_able_to_take_them(app, db, f):
    """Direct top-ups are sold from the wallet (tests/test_recharge.py); refused, they charge nothing."""
    a = f.agent(balance=1_000_000, with_user=False)
    p = f.product(kind="direct", face_price=100)
    for account in (None, "", "   ", 13800138000, "1" * 65, "138\x00"):
        assert_refused(db, InvalidAccount, "invalid_account",
                       lambda acc=account: orders.place_wallet_order(a.id, p.id, 1, account=acc))
    # no supplier maps it: out of stock
    assert_refused(db, OutOfStock, "out_of_stock",
                   lambda: orders.place_wallet_order(a.id, p.id, 1, account="13800138000"))
    assert ledger.agent_balances(a.id)["wallet"] == 1_000_000


@BOTH
def test_inactive_or_unknown_agent_cannot_buy(app, db, f):
    a = f.agent(balance=1_000_000, with_user=False)
    p = f.product(face_price=100, secrets=2)
    a.active = False
    db.session.commit()
    assert_refused(db, AgentInactive, "agent_inactive", lambda: orders.place_wallet_order(a.id, p.id, 1))
    assert_refused(db, AgentInactive, "agent_inactive", lambda: orders.place_wallet_order(999_999, p.id, 1))


# ---------------------------------------------------------------------------------------------------------------
# order numbers

@BOTH
def test_order_numbers_are_unique_non_sequential_18_digit_strings(app, db, f):
    a = f.agent(balance=1_000_000, tier_obj=f.tier(discount_bp=10000), with_user=False)
    p = f.product(face_price=100, secrets=15, max_per_order=10)
    numbers = [orders.place_wallet_order(a.id, p.id, 1).order_no for _ in range(15)]
    for no in numbers:
        assert isinstance(no, str) and len(no) == 18 and no.isdigit() and no.isascii(), no
    assert len(set(numbers)) == 15
    values = [int(n) for n in numbers]
    assert values != sorted(values), "order numbers follow creation order"
    assert len({b - a_ for a_, b in zip(values, values[1:], strict=False)}) > 1, "order numbers have a fixed step"
    # the random part is wide: many fresh numbers never collide
    many = {orders.new_order_no() for _ in range(5000)}
    assert len(many) == 5000
    assert len({n[6:9] for n in many}) > 500  # the leading random digits vary too


# ---------------------------------------------------------------------------------------------------------------
# the state machine

EXPECTED_MOVES = {
    "pending_payment": {"paid", "closed"},
    "paid": {"delivering", "delivered", "failed", "refunded", "reviewing"},
    "reviewing": {"paid", "refunded"},  # risk control's hold: approved or rejected
    "delivering": {"delivered", "failed", "refunded"},
    "delivered": {"refunded", "disputed"},
    "disputed": {"delivered", "refunded"},
    "failed": {"refunded"},
    "refunded": set(),
    "closed": {"refunded"},  # a late payment for an expired order is recorded, then refunded at once
}


def _pending_order(db, p) -> Order:
    """A storefront-style order awaiting payment (no agent, no money moved yet)."""
    order = Order(order_no=orders.new_order_no(), agent_id=None, product_id=p.id, supplier_id=p.supplier_id,
                  quantity=1, face_price=p.face_price, unit_price=p.face_price, amount=p.face_price,
                  cost_total=p.cost, service_fee=0, status="pending_payment", channel="sandbox")
    db.session.add(order)
    db.session.commit()
    return order


def _status(db, order_id: int) -> str:
    return db.session.scalar(select(Order.status).where(Order.id == order_id))


@BOTH
def test_transition_allows_exactly_the_designed_moves(app, db, f):
    assert set(EXPECTED_MOVES) == set(ORDER_STATUSES)
    p = f.product(kind="direct", face_price=1000)
    order = _pending_order(db, p)
    for source in ORDER_STATUSES:
        for target in list(ORDER_STATUSES) + ["bogus", ""]:
            db.session.execute(update(Order).where(Order.id == order.id).values(status=source))
            db.session.commit()
            if target in EXPECTED_MOVES[source]:
                orders.transition(order.id, target)
                db.session.commit()
                assert _status(db, order.id) == target
            else:
                with pytest.raises(InvalidTransition) as info:
                    orders.transition(order.id, target)
                assert info.value.code == "invalid_transition"
                db.session.rollback()
                assert _status(db, order.id) == source, f"{source} -> {target} changed the order"
    db.session.execute(update(Order).where(Order.id == order.id).values(status="closed"))
    db.session.commit()


@BOTH
def test_transition_stamps_times_and_refuses_unknown_orders(app, db, f):
    p = f.product(kind="direct", face_price=1000)
    order = _pending_order(db, p)
    orders.transition(order.id, "paid")
    db.session.commit()
    db.session.refresh(order)
    assert order.paid_at is not None and order.delivered_at is None
    with pytest.raises(NotFound):
        orders.transition(999_999, "paid")
    db.session.rollback()


@BOTH
def test_delivered_wallet_order_cannot_go_back(app, db, f):
    a = f.agent(balance=100_000, with_user=False)
    p = f.product(face_price=1000, secrets=1)
    order = orders.place_wallet_order(a.id, p.id, 1)
    for target in ("pending_payment", "paid", "delivering", "closed", "failed"):
        with pytest.raises(InvalidTransition):
            orders.transition(order.id, target)
        db.session.rollback()
        assert _status(db, order.id) == "delivered"


@pytest.mark.parametrize("app", ["postgresql"], indirect=True)
def test_transition_is_guarded_against_a_concurrent_change(app, db, f):
    """Given another transaction moves the order first, the guarded UPDATE on the old status changes nothing."""
    p = f.product(kind="direct", face_price=1000)
    order = _pending_order(db, p)
    order_id = order.id
    db.session.commit()
    locked, release, done = threading.Event(), threading.Event(), threading.Event()
    outcome: dict = {}

    def payer():
        with app.app_context():
            from app.extensions import db as tdb
            tdb.session.execute(text("SELECT id FROM orders WHERE id = :id FOR UPDATE"), {"id": order_id})
            orders.transition(order_id, "paid")
            locked.set()
            release.wait(30)
            tdb.session.commit()
            done.set()

    def closer():
        with app.app_context():
            from app.extensions import db as tdb
            try:
                orders.transition(order_id, "closed")  # reads pending_payment, then waits on the row lock
                tdb.session.commit()
                outcome["result"] = "closed"
            except InvalidTransition as exc:
                tdb.session.rollback()
                outcome["result"] = exc.code

    t1 = threading.Thread(target=payer)
    t1.start()
    assert locked.wait(30)
    t2 = threading.Thread(target=closer)
    t2.start()
    # wait until the closer is blocked on the payer's row lock, then let the payer commit
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        waiting = db.session.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                         "AND datname = current_database()"))
        db.session.rollback()
        if waiting:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the second transition never waited on the row lock")
    release.set()
    t1.join(30)
    t2.join(30)
    assert done.is_set()
    assert outcome["result"] == "invalid_transition"
    assert _status(db, order_id) == "paid"
    orders.transition(order_id, "refunded")
    db.session.commit()


# ---------------------------------------------------------------------------------------------------------------
# real concurrency on PostgreSQL

PG_ONLY = pytest.mark.parametrize("app", ["postgresql"], indirect=True)


@PG_ONLY
def test_twenty_agents_race_for_five_secrets(app, db, f):
    # given 20 agents with 100 yuan each and a product with exactly 5 secrets
    t = f.tier(discount_bp=9000)
    buyers = [f.agent(tier_obj=t, balance=10_000, with_user=False) for _ in range(20)]
    p = f.product(face_price=10000, cost=8000, supplier_fee_bp=500)
    f.stock(p, 5)
    buyer_ids, pid = [b.id for b in buyers], p.id  # plain values: threads must not touch this session's objects
    db.session.commit()

    # when all 20 buy one at the same moment
    results = race(app, 20, lambda i: buy_and_describe(buyer_ids[i], pid))

    # then exactly 5 are delivered with 5 distinct secrets, and 15 are told out_of_stock
    assert Counter(code for code, _ in results) == {"ok": 5, "out_of_stock": 15}
    won = [r for code, r in results if code == "ok"]
    sold = [sid for r in won for sid in r["secret_ids"]]
    assert len(sold) == 5 and len(set(sold)) == 5
    db.session.expire_all()
    assert cards.available_counts([p.id]) == {}
    assert _count(db, Order) == 5
    assert db.session.scalar(select(func.count()).where(Journal.kind == "sale")) == 5
    # and each winner paid exactly once, each loser nothing
    winners = {r["agent_id"] for r in won}
    for agent_id in buyer_ids:
        expected = 10_000 - 9000 if agent_id in winners else 10_000
        assert ledger.agent_balances(agent_id)["wallet"] == expected
    assert ledger.balance_of("platform:revenue") == 5 * (9000 - 8000)
    assert ledger.balance_of(ledger.supplier_account_code(p.supplier_id)) == 5 * (8000 - 400)


@PG_ONLY
def test_one_agent_twenty_threads_race_for_five_secrets(app, db, f):
    a = f.agent(tier_obj=f.tier(discount_bp=10000), balance=1_000_000, with_user=False)
    p = f.product(face_price=1000, secrets=5)
    aid, pid = a.id, p.id
    db.session.commit()
    results = race(app, 20, lambda i: buy_and_describe(aid, pid))
    assert Counter(code for code, _ in results) == {"ok": 5, "out_of_stock": 15}
    sold = [sid for code, r in results if code == "ok" for sid in r["secret_ids"]]
    assert len(set(sold)) == 5
    db.session.expire_all()
    assert f.wallet(a) == 1_000_000 - 5 * 1000
    assert _count(db, Order) == 5


@PG_ONLY
def test_ten_threads_on_one_wallet_that_covers_three(app, db, f):
    # given a wallet that covers three purchases and not a fourth, and plenty of stock
    a = f.agent(tier_obj=f.tier(discount_bp=9500), balance=3 * 9500 + 9499, with_user=False)
    p = f.product(face_price=10000, secrets=20)
    aid, pid, wallet_code = a.id, p.id, ledger.agent_account_code(a.id, "wallet")
    db.session.commit()
    lowest: list[int] = []
    stop = threading.Event()

    def watch():  # an outside observer polling the committed balance during the race
        with app.app_context():
            from app.extensions import db as tdb
            while not stop.is_set():
                lowest.append(tdb.session.scalar(select(Account.balance).where(Account.code == wallet_code)))
                tdb.session.rollback()
                time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # when ten threads buy one each at once
        results = race(app, 10, lambda i: buy_and_describe(aid, pid))
    finally:
        stop.set()
        watcher.join(10)

    # then exactly three succeed, seven are refused for balance, and the wallet never went negative
    assert Counter(code for code, _ in results) == {"ok": 3, "insufficient_balance": 7}
    assert lowest and min(lowest) >= 0
    db.session.expire_all()
    assert f.wallet(a) == 9499
    assert cards.available_counts([p.id]) == {p.id: 17}
    assert _count(db, Order) == 3
