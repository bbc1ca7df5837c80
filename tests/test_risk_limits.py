"""Risk limits under real concurrency on PostgreSQL, and replay of stored decisions.

- 50 storefront checkouts (POST /shop/api/orders over HTTP from 50 threads, the app served threaded) of one buyer
  (same contact and device) never overshoot RISK_DAILY_LIMIT_FEN: exactly floor(limit / price) get 201.
- Across midnight in BUSINESS_TIMEZONE: an order created just before the business day's start counts for the
  previous day (yesterday's limit is spent, today's is fresh); a checkout after midnight does not wait for an
  uncommitted one from before midnight (each day is its own row), and the running totals equal the orders.
- An agent's tier limit under 20 concurrent Open API purchases.
- 200 decisions of the risk bench's generator replay to the outcome they were stored with.
"""
from __future__ import annotations

import importlib.util
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import requests
from sqlalchemy import func, select

from app.clock import business_day_start
from app.crypto import pii_hash
from app.orders.models import Order
from app.risk import usage
from app.risk.identity import digest
from app.risk.models import RiskDecision
from tests import payments_helpers as h
from tests.openapi_helpers import api_client, new_key, served

ROOT = Path(__file__).resolve().parent.parent
CONTACT = "13912340000"
DEVICE = "fp-one-buyer"
PRICE = 1000  # fen


def _bench():
    """bench/risk.py as a module (bench/ is not a package)."""
    if "risk_bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location("risk_bench", ROOT / "bench" / "risk.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["risk_bench"] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules["risk_bench"]


def _post_checkouts(base: str, n: int, contact: str = CONTACT, device: str = DEVICE, product_id: int = 0):
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def buy(i: int) -> None:
        session = requests.Session()
        barrier.wait()
        try:
            results[i] = session.post(f"{base}/shop/api/orders", timeout=120, json={
                "product_id": product_id, "quantity": 1, "contact": contact, "query_password": h.PASSWORD,
                "channel": "sandbox", "device_id": device})
        except Exception as exc:  # noqa: BLE001 (reported in the assertion)
            results[i] = exc

    threads = [threading.Thread(target=buy, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return results


def _statuses(results) -> list:
    return [getattr(r, "status_code", repr(r)) for r in results]


def _spent_today(**where) -> int:
    h.db.session.rollback()
    conditions = [getattr(Order, k) == v for k, v in where.items()]
    return int(h.db.session.scalar(select(func.coalesce(func.sum(Order.amount), 0)).where(
        *conditions, Order.created_at >= business_day_start())))


def test_50_concurrent_checkouts_of_one_buyer_never_overshoot_the_daily_limit(app, f):
    h.setup_sandbox()
    product = f.product(face_price=PRICE, cost=800, secrets=60)
    limit = 7_500
    app.config["RISK_DAILY_LIMIT_FEN"] = limit
    try:
        with served(app) as base:
            results = _post_checkouts(base, 50, product_id=product.id)
    finally:
        app.config["RISK_DAILY_LIMIT_FEN"] = 2_000_000
    statuses = _statuses(results)
    assert statuses.count(201) == limit // PRICE, statuses
    assert statuses.count(403) == 50 - limit // PRICE, statuses
    assert {r.json()["error"]["code"] for r in results if r.status_code == 403} == {"risk_limit"}
    assert h.count(Order) == limit // PRICE
    assert _spent_today(contact_hash=pii_hash(CONTACT)) == (limit // PRICE) * PRICE <= limit


def test_the_limit_is_per_business_day_and_each_day_is_its_own_lock(app, f):
    """Yesterday's spend (an order created one second before today's start in BUSINESS_TIMEZONE) does not count
    today; evaluated at that second, it is yesterday's limit that is spent. A checkout from just before midnight
    that has not committed holds the buyer's row for yesterday: a checkout after midnight does not wait for it."""
    from app.extensions import db
    from app.risk import service as risk

    h.setup_sandbox()
    product = f.product(face_price=PRICE, cost=800, secrets=40)
    limit = 5_000
    app.config["RISK_DAILY_LIMIT_FEN"] = limit
    midnight = business_day_start()
    just_before = midnight - timedelta(seconds=1)

    def yesterday_checkout(amount: int):
        """A checkout evaluated one second before midnight, its order created then (as it would have been)."""
        event = risk.RiskInput(event="shop_checkout", amount=amount, device=DEVICE, contact=CONTACT,
                               values={"is_guest": True})
        decision = risk.evaluate(event, now=just_before)
        if decision.outcome == "block":
            db.session.rollback()
            return decision
        keys = risk.keys_of(event)
        db.session.add(Order(order_no=f"Y{amount}{time.monotonic_ns() % 10 ** 9}", product_id=product.id,
                             supplier_id=product.supplier_id, quantity=1, face_price=amount, unit_price=amount,
                             amount=amount, cost_total=0, service_fee=0, status="pending_payment",
                             channel="sandbox", contact=CONTACT, buyer_key=keys["contact"],
                             device_key=keys["device"], created_at=just_before, updated_at=just_before))
        return decision

    try:
        # Yesterday: ¥45 spent just before midnight; ¥10 more, still yesterday, is over yesterday's ¥50 limit.
        assert yesterday_checkout(4_500).outcome != "block"
        db.session.commit()
        refused = yesterday_checkout(1_000)
        assert refused.outcome == "block" and refused.limit
        # A second checkout from before midnight, not yet committed: it holds the buyer's row for yesterday only.
        assert yesterday_checkout(500).outcome != "block"
        with served(app) as base:
            waiting: list = []
            after = threading.Thread(target=lambda: waiting.extend(
                _post_checkouts(base, 1, product_id=product.id)))
            after.start()
            after.join(30)
            assert not after.is_alive(), "the checkout after midnight waited for yesterday's"
            assert _statuses(waiting) == [201]
            db.session.commit()  # the pre-midnight checkout commits: ¥50 yesterday, exactly the limit
            # Today is fresh: yesterday's ¥50 does not count, so ¥50 more today in all (¥10 each), no more.
            results = _post_checkouts(base, 10, product_id=product.id)
        statuses = _statuses(results)
        assert statuses.count(201) == limit // PRICE - 1, statuses
        assert _spent_today(contact_hash=pii_hash(CONTACT)) == limit
        h.db.session.rollback()
        yesterday = h.db.session.scalar(select(func.sum(Order.amount)).where(Order.created_at < midnight))
        assert yesterday == limit
        assert usage.mismatches(midnight - timedelta(days=1)) == []
        assert usage.counted("contact", digest("contact", CONTACT), usage.business_day(just_before)) == limit
    finally:
        db.session.rollback()
        app.config["RISK_DAILY_LIMIT_FEN"] = 2_000_000


def test_an_agents_tier_limit_holds_under_20_concurrent_open_api_purchases(app, f):
    tier = f.tier(discount_bp=9000)
    tier.risk_daily_limit = 50_000  # ¥500 a day; the agent pays ¥90 a card
    h.db.session.commit()
    agent = f.agent(balance=1_000_000, tier_obj=tier)
    product = f.product(face_price=10_000, cost=8_000, secrets=25)
    key, secret = new_key(agent)
    product_id = product.id  # ORM attributes are read here, not in the threads
    n = 20
    barrier = threading.Barrier(n)
    results: list = [None] * n
    with served(app) as base:
        clients = [api_client(base, key, secret) for _ in range(n)]

        def buy(i: int) -> None:
            barrier.wait()
            try:
                results[i] = clients[i].create_order(f"tier-limit-{i}", product_id)
            except Exception as exc:  # noqa: BLE001
                results[i] = exc

        threads = [threading.Thread(target=buy, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
    statuses = _statuses(results)
    allowed = 50_000 // 9_000
    assert statuses.count(201) == allowed, [getattr(r, "text", r) for r in results]
    assert statuses.count(403) == n - allowed
    assert {r.json()["error"]["code"] for r in results if r.status_code == 403} == {"risk_limit"}
    assert _spent_today(agent_id=agent.id) == allowed * 9_000
    assert f.wallet(agent) == 1_000_000 - allowed * 9_000


def test_200_decisions_of_the_bench_generator_replay_to_their_outcome(app):
    from app.risk.service import replay

    bench = _bench()
    day = bench.generate(400, seed=11, attack_min=15)
    data = bench.build_data(day, 50)
    out = bench.run(day, data)
    outcomes = {r.outcome for r in out["results"]}
    assert outcomes == {"allow", "review", "block"}, outcomes  # the sample covers every outcome
    h.db.session.rollback()
    rows = list(h.db.session.execute(select(RiskDecision.id, RiskDecision.outcome).order_by(RiskDecision.id)))
    step = max(1, len(rows) // 200)
    sample = rows[::step][:200]
    assert len(sample) == 200
    assert {o for _, o in sample} == {"allow", "review", "block"}
    mismatched = [(i, o, replay(i)) for i, o in sample if replay(i) != o]
    assert not mismatched, mismatched
