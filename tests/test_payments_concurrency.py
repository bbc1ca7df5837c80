"""Notifications racing over real HTTP: 20 orders, 200 sandbox notifications (genuine duplicates, re-signed
duplicates, FAILED statuses) sent in shuffled order by 20 threads to the app served by werkzeug (threaded) on
PostgreSQL. Each order is delivered exactly once; the ledger check runs after the test (`app` fixture)."""
from __future__ import annotations

import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests
from sqlalchemy import func, select

from app.catalog.models import CardSecret
from app.extensions import db
from app.ledger.models import Journal
from app.orders.models import Order
from app.payments.models import Payment, PaymentNotification
from tests import payments_helpers as h
from tests.openapi_helpers import served


def test_concurrent_duplicate_and_out_of_order_notifications_deliver_each_order_once(app, f):
    # given 20 unpaid sandbox orders over two products whose stock is exactly what they need
    h.setup_sandbox()
    quantities = [1 + i % 3 for i in range(20)]
    products = [f.product(face_price=1_000 + 100 * k, cost=800, max_per_order=5) for k in range(2)]
    for k, product in enumerate(products):
        f.stock(product, sum(q for i, q in enumerate(quantities) if i % 2 == k))
    orders = [h.guest_order(products[i % 2], "sandbox", quantity=q) for i, q in enumerate(quantities)]
    before = h.balances()

    # and, per order, 10 notifications: 7 copies of the genuine one, 1 re-signed duplicate (new nonce and ts),
    # a FAILED status for the same trade_no and a FAILED one under another trade_no
    notes = []
    for order in orders:
        trade = h.trade_no("SBX")
        genuine = h.sandbox_form(order.order_no, trade, order.amount)
        notes += [("genuine", order.order_no, genuine)] * 7
        notes.append(("genuine", order.order_no, h.sandbox_form(order.order_no, trade, order.amount,
                                                                ts=int(time.time()) - 5)))
        notes.append(("failed", order.order_no, h.sandbox_form(order.order_no, trade, order.amount,
                                                               status="FAILED")))
        notes.append(("failed", order.order_no, h.sandbox_form(order.order_no, h.trade_no("SBXF"), order.amount,
                                                               status="FAILED")))
    assert len(notes) == 200
    random.Random(20240501).shuffle(notes)

    # when they all arrive concurrently over real HTTP
    with served(app) as base:
        def post(note):
            kind, order_no, form = note
            r = requests.post(f"{base}/pay/notify/sandbox", data=form, timeout=120)
            return kind, order_no, r.status_code, r.text

        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(post, notes))

    # then every genuine notification (and every well-formed FAILED one) was answered `success`
    bad = [(kind, no, status, text) for kind, no, status, text in answers if (status, text) != (200, "success")]
    assert not bad, bad[:5]
    db.session.rollback()
    # each order delivered exactly once: one payment, one sale journal, its quantity of secrets
    for order, qty in zip(orders, quantities, strict=True):
        assert db.session.scalar(select(Order.status).where(Order.id == order.id)) == "delivered", order.order_no
        assert h.count(Payment, Payment.order_id == order.id) == 1
        assert h.count(Journal, Journal.order_id == order.id, Journal.kind == "sale") == 1
        assert h.count(Journal, Journal.order_id == order.id, Journal.kind == "payment") == 1
        assert h.count(CardSecret, CardSecret.order_id == order.id, CardSecret.status == "sold") == qty
        outcomes = Counter(o for o, _ in h.notifications(order.order_no))
        assert outcomes == {"accepted": 1, "duplicate": 7, "not_paid": 2}, (order.order_no, outcomes)
    assert h.count(CardSecret, CardSecret.status == "available") == 0
    assert h.count(Payment) == 20 and h.count(PaymentNotification) == 200
    # and the money: the buyers' payments are all in clearing, sold at the public price
    now = h.balances()
    total = sum(o.amount for o in orders)
    assert now["platform:clearing:sandbox"] - before["platform:clearing:sandbox"] == -total
    assert now["platform:buyer_funds"] == before["platform:buyer_funds"]
    assert db.session.scalar(select(func.count(func.distinct(CardSecret.order_id)))
                             .where(CardSecret.status == "sold")) == 20
