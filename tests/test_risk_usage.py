"""Daily limits as running totals (app.risk.usage), through the entry points buyers and staff use.

- An agent's purchase checks its limit on one row, whatever it bought that day: no statement of the purchase sums
  the day's orders.
- A refund gives the amount back: the agent buys again up to its limit.
- A storefront order closed unpaid gives its contact and device back; a paid one counts for its paying account on
  the day it paid.
- After a mixed day (wallet purchases, a refund, checkouts paid, closed and refunded) the running totals equal the
  orders (`usage.mismatches`), and the purge job drops only days no limit reads.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, func, select

from app.clock import business_day_start, utcnow
from app.extensions import db as _db
from app.payments import service as payments
from app.risk import usage
from app.risk.identity import digest
from app.risk.models import RiskDayRelease, RiskDayUsage
from tests import payments_helpers as h
from tests.openapi_helpers import assert_error, new_key, signed_call

PRICE = 10_000  # fen, face price; the tier pays 90%
PAID = 9_000


def _buy(client, key, secret, out_trade_no: str, product_id: int):
    return signed_call(client, key, secret, "POST", "/open/v1/orders",
                       {"out_trade_no": out_trade_no, "product_id": product_id, "quantity": 1})


def _agent_with_limit(f, per_day: int, balance: int = 1_000_000):
    tier = f.tier(discount_bp=9000)
    tier.risk_daily_limit = per_day
    _db.session.commit()
    agent = f.agent(balance=balance, tier_obj=tier)
    key, secret = new_key(agent)
    return agent, key, secret


def _statements_during(call) -> list[str]:
    seen: list[str] = []

    def record(conn, cursor, statement, params, context, executemany):
        seen.append(" ".join(statement.split()))

    event.listen(_db.engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(_db.engine, "before_cursor_execute", record)
    return seen


def test_a_purchase_checks_its_limit_on_one_row_not_the_days_orders(app, f, client):
    agent, key, secret = _agent_with_limit(f, per_day=10 ** 9)
    product = f.product(face_price=PRICE, cost=8_000, secrets=30)
    for i in range(20):
        assert _buy(client, key, secret, f"warm-{i}", product.id).status_code == 201
    statements = _statements_during(lambda: _buy(client, key, secret, "measured", product.id))
    assert any(s.startswith("INSERT INTO risk_day_usage") for s in statements), statements
    summing_orders = [s for s in statements if "sum(" in s.lower() and "from orders" in s.lower()]
    assert summing_orders == []
    day = usage.business_day(utcnow())
    assert usage.counted("agent", digest("agent", str(agent.id)), day) == 21 * PAID
    assert usage.mismatches(business_day_start()) == []


def test_a_refund_gives_the_amount_back_to_the_agents_day(app, f, client):
    agent, key, secret = _agent_with_limit(f, per_day=2 * PAID)
    product = f.product(face_price=PRICE, cost=8_000, secrets=10)
    first = _buy(client, key, secret, "r-1", product.id)
    assert first.status_code == 201
    assert _buy(client, key, secret, "r-2", product.id).status_code == 201
    assert_error(_buy(client, key, secret, "r-3", product.id), 403, "risk_limit")

    order_id = _db.session.scalar(select(func.max(RiskDayRelease.id)))  # none yet
    assert order_id is None
    from app.orders.models import Order

    refunded = _db.session.scalar(select(Order.id).where(Order.order_no == first.get_json()["order_no"]))
    payments.refund_order(refunded, "用户申请退款", actor_id=None)
    assert _db.session.scalar(select(func.count()).select_from(RiskDayRelease)) == 1

    assert _buy(client, key, secret, "r-3", product.id).status_code == 201  # the refunded ¥90 is free again
    assert_error(_buy(client, key, secret, "r-4", product.id), 403, "risk_limit")
    assert usage.counted("agent", digest("agent", str(agent.id)), usage.business_day(utcnow())) == 2 * PAID
    assert usage.mismatches(business_day_start()) == []


def test_storefront_closed_orders_free_the_buyer_and_paid_ones_count_for_the_payer(app, f, client):
    h.setup_all()
    product = f.product(face_price=PRICE, cost=8_000, secrets=10)
    app.config["RISK_DAILY_LIMIT_FEN"] = 2 * PRICE
    try:
        h.guest_order(product, "alipay", expires_in=timedelta(seconds=-1))  # unpaid, already past its expiry
        paid = h.guest_order(product, "alipay")
        contact = digest("contact", "13800000000")
        today = usage.business_day(utcnow())
        assert usage.counted("contact", contact, today) == 2 * PRICE
        with pytest.raises(Exception) as refused:  # a third is over the contact's ¥200
            h.guest_order(product, "alipay")
        assert getattr(refused.value, "code", None) == "risk_limit"
        _db.session.rollback()

        assert h.accepted("alipay", h.notify(client, "alipay", paid, h.trade_no()))
        payer = digest("payment_account", "2088000000000001")
        assert usage.counted("payment_account", payer, today) == PRICE

        assert payments.expire_unpaid() == 1  # the unpaid one is closed: its ¥100 is the contact's again
        assert usage.counted("contact", contact, today) == PRICE
        again = h.guest_order(product, "alipay")
        assert again.status == "pending_payment"

        payments.refund_order(paid.id, "买家申请退款", actor_id=None)
        assert usage.counted("payment_account", payer, today) == 0
        assert usage.counted("contact", contact, today) == PRICE  # only `again` counts now
        assert usage.mismatches(business_day_start()) == []
    finally:
        app.config["RISK_DAILY_LIMIT_FEN"] = 2_000_000


def test_the_purge_drops_only_days_no_limit_reads(app, f):
    today = usage.business_day(utcnow())
    for days_ago in (0, usage.KEEP_DAYS, usage.KEEP_DAYS + 1, 30):
        _db.session.add(RiskDayUsage(dimension="agent", key=f"k{days_ago}", day=today - timedelta(days=days_ago),
                                     amount=100))
        _db.session.add(RiskDayRelease(dimension="agent", key=f"k{days_ago}", day=today - timedelta(days=days_ago),
                                       amount=100, order_id=days_ago + 1))
    _db.session.commit()
    from workers import jobs

    assert jobs.purge_risk_day_usage() == 4
    left = sorted(_db.session.scalars(select(RiskDayUsage.key)))
    assert left == ["k0", f"k{usage.KEEP_DAYS}"]


@pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
def test_a_refused_checkout_reserves_nothing(app, f):
    """Refused by the limit or by a block list, a checkout leaves no reservation (SQLite stores the refused decision
    with the caller's session, so there the reservation is taken back before that commit)."""
    from app.risk import lists

    h.setup_sandbox()
    product = f.product(face_price=PRICE, cost=8_000, secrets=5)
    contact = digest("contact", "13800000000")
    today = usage.business_day(utcnow())
    app.config["RISK_DAILY_LIMIT_FEN"] = PRICE
    try:
        h.guest_order(product, "sandbox")
        with pytest.raises(Exception) as over_limit:
            h.guest_order(product, "sandbox")
        assert getattr(over_limit.value, "code", None) == "risk_limit"
        _db.session.rollback()
        assert usage.counted("contact", contact, today) == PRICE

        app.config["RISK_DAILY_LIMIT_FEN"] = 2_000_000
        lists.add("contact", "13900000000", "block", reason="测试")
        _db.session.commit()
        with pytest.raises(Exception) as listed:
            h.guest_order(product, "sandbox", contact="13900000000")
        assert getattr(listed.value, "code", None) == "risk_blocked"
        _db.session.rollback()
        assert usage.counted("contact", digest("contact", "13900000000"), today) == 0
        assert usage.mismatches(business_day_start()) == []
    finally:
        app.config["RISK_DAILY_LIMIT_FEN"] = 2_000_000


def test_the_migrations_backfill_rebuilds_the_running_totals_from_the_orders(app, f, client, monkeypatch):
    """Deployed on a live database, the migration fills the totals from the orders that count (what the sums over
    orders gave before), so no limit restarts from zero mid-day."""
    import importlib.util
    import types
    from pathlib import Path

    agent, key, secret = _agent_with_limit(f, per_day=10 ** 9)
    product = f.product(face_price=PRICE, cost=8_000, secrets=10)
    for i in range(3):
        assert _buy(client, key, secret, f"b-{i}", product.id).status_code == 201
    h.setup_sandbox()
    h.guest_order(product, "sandbox")
    expected = {(d, k, day): amount for d, k, day, amount in _db.session.execute(
        select(RiskDayUsage.dimension, RiskDayUsage.key, RiskDayUsage.day, RiskDayUsage.amount))}
    assert len(expected) == 2  # the agent; the guest's contact (no device id given)
    _db.session.execute(RiskDayUsage.__table__.delete())
    _db.session.commit()

    path = next((Path(__file__).parent.parent / "migrations" / "versions").glob("c20u00000001_*.py"))
    spec = importlib.util.spec_from_file_location("usage_migration", path)
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    monkeypatch.setattr(migration, "op", types.SimpleNamespace(get_bind=lambda: _db.session.connection()))
    migration._backfill()
    _db.session.commit()
    rebuilt = {(d, k, day): amount for d, k, day, amount in _db.session.execute(
        select(RiskDayUsage.dimension, RiskDayUsage.key, RiskDayUsage.day, RiskDayUsage.amount))}
    assert rebuilt == expected
    assert usage.mismatches(business_day_start()) == []
