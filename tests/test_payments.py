"""Storefront checkout and lookup over real HTTP, the sandbox protocol of DESIGN.md, the sandbox cashier, and the
money side of payments: refunds reversing the ledger exactly, late / double / out-of-stock payments refunded at
once, manual confirmation, order expiry. Every test ends with the ledger check (`app` fixture)."""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from datetime import timedelta

import pytest
import requests
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import func, select, update

from app.audit.models import AuditEntry
from app.catalog.models import CardSecret
from app.clock import utcnow
from app.errors import Conflict, ValidationError
from app.extensions import db
from app.ledger.models import Account, Journal, Posting
from app.orders import service as orders
from app.orders.models import Order
from app.payments import service as payments
from app.payments.models import OrderCheckout, Payment, PaymentNotification, Refund
from tests import payments_helpers as h
from tests.conftest import make_app
from tests.openapi_helpers import assert_error, served


def sandbox_fields(order_no: str, trade_no: str, amount: int, status: str = "SUCCESS", key: str = h.SANDBOX_KEY):
    """The sandbox protocol written out from DESIGN.md, independently of the app's own signing code."""
    fields = {"order_no": order_no, "trade_no": trade_no, "amount": str(amount), "currency": "CNY",
              "status": status, "ts": str(int(time.time())), "nonce": secrets.token_hex(8)}
    message = "&".join(f"{k}={fields[k]}" for k in sorted(fields))
    fields["sign"] = hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()
    return fields


def order_payload(product, **extra) -> dict:
    body = {"product_id": product.id, "quantity": 1, "contact": "buyer@example.com", "query_password": "pass-1234",
            "channel": "sandbox"}
    body.update(extra)
    return body


def pay(client, order, trade_no: str | None = None):
    r = client.post("/pay/notify/sandbox", data=sandbox_fields(order.order_no, trade_no or h.trade_no("SBX"),
                                                               order.amount))
    assert r.status_code == 200 and r.get_data(as_text=True) == "success", r.get_data(as_text=True)
    return r


def order_postings(order) -> dict[str, int]:
    """Per account, the sum of the postings of the journals booked for this order."""
    db.session.rollback()
    rows = db.session.execute(select(Account.code, func.sum(Posting.amount)).join(Posting.account)
                              .join(Journal, Journal.id == Posting.journal_id)
                              .where(Journal.order_id == order.id).group_by(Account.code)).all()
    return {code: int(total) for code, total in rows}


def fresh(order) -> Order:
    db.session.rollback()
    return db.session.get(Order, order.id)


# --- storefront over real HTTP -----------------------------------------------------------------------------

def test_storefront_checkout_pay_and_lookup_over_http(app, f):
    # given the sandbox channel and a card product with 3 secrets (¥25.00), and one without stock
    h.setup_sandbox()
    product = f.product(face_price=2_500, cost=2_000)
    stocked = f.stock(product, 3)
    empty = f.product(face_price=100, cost=50)
    with served(app) as base:
        # the public catalogue: public price and stock yes/no
        r = requests.get(f"{base}/shop/api/products", timeout=30)
        assert r.status_code == 200
        listed = {p["id"]: p for p in r.json()["products"]}
        assert listed[product.id] == {"id": product.id, "name": product.name, "category": product.category.name,
                                      "kind": "card", "price": 2_500, "in_stock": True}
        assert listed[empty.id]["in_stock"] is False
        # when a buyer orders 2 (the price sent is ignored)
        r = requests.post(f"{base}/shop/api/orders", timeout=30,
                          json=order_payload(product, quantity=2, amount=1, price=1))
        assert r.status_code == 201, r.text
        created = r.json()
        assert {"order_no", "amount", "pay_url"} <= set(created) and created["amount"] == 5_000
        order_no = created["order_no"]
        assert created["pay_url"] == f"{base}/pay/sandbox/cashier/{order_no}"
        lookup = {"order_no": order_no, "query_password": "pass-1234"}
        r = requests.post(f"{base}/shop/api/lookup", json=lookup, timeout=30)
        assert r.status_code == 200 and r.json()["status"] == "pending_payment" and r.json()["card_secrets"] == []
        # and the sandbox channel notifies, exactly as DESIGN.md specifies
        r = requests.post(f"{base}/pay/notify/sandbox", data=sandbox_fields(order_no, "SBX-HTTP-1", 5_000),
                          timeout=30)
        assert r.status_code == 200 and r.text == "success"
        # then the lookup with the right password shows it delivered with its two secrets
        r = requests.post(f"{base}/shop/api/lookup", json=lookup, timeout=30)
        assert r.status_code == 200, r.text
        shown = r.json()
        assert shown["status"] == "delivered" and shown["order_no"] == order_no and shown["amount"] == 5_000
        assert len(shown["card_secrets"]) == 2 and set(shown["card_secrets"]) <= set(stocked)
        # a wrong password answers exactly like an unknown order; so does the contact, alone or as a password
        unknown = requests.post(f"{base}/shop/api/lookup", timeout=30,
                                json={"order_no": "999999999999999999", "query_password": "pass-1234"})
        assert unknown.status_code == 404
        for attempt in ({"order_no": order_no, "query_password": "pass-12345"},
                        {"order_no": order_no, "query_password": "PASS-1234"},
                        {"order_no": order_no, "contact": "buyer@example.com"},
                        {"order_no": order_no, "query_password": "buyer@example.com"},
                        {"contact": "buyer@example.com"},
                        {"order_no": order_no}):
            r = requests.post(f"{base}/shop/api/lookup", json=attempt, timeout=30)
            assert (r.status_code, r.content, r.headers["Content-Type"]) == \
                (unknown.status_code, unknown.content, unknown.headers["Content-Type"]), attempt
            assert order_no not in r.text and not any(s in r.text for s in stocked)
        # the signed link shows the secrets
        token = payments.lookup_token(order_no)
        r = requests.get(f"{base}/shop/order/{token}", timeout=30)
        assert r.status_code == 200 and all(s in r.text for s in shown["card_secrets"])
        # an altered or expired link answers 404 and reveals nothing
        altered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
        expired = _past_token(app, order_no, days=8)
        for bad in (altered, expired, "not-a-token", token + "x"):
            r = requests.get(f"{base}/shop/order/{bad}", timeout=30)
            assert r.status_code == 404, bad
            assert order_no not in r.text and not any(s in r.text for s in stocked)
        # a link signed an hour ago is still good (the expired check above can fail)
        assert requests.get(f"{base}/shop/order/{_past_token(app, order_no, seconds=3600)}",
                            timeout=30).status_code == 200


def _past_token(flask_app, order_no: str, days: int = 0, seconds: int = 0) -> str:
    """A lookup link signed as if `days`/`seconds` ago (LOOKUP_LINK_SECONDS is 7 days)."""
    offset = days * 86_400 + seconds

    class PastSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - offset

    return URLSafeTimedSerializer(flask_app.config["SECRET_KEY"], salt=payments.LOOKUP_SALT,
                                  signer=PastSigner).dumps(order_no)


def test_expired_link_with_a_short_lifetime(pg_url, app, f):
    # given an app whose links live 1 second
    h.setup_sandbox()
    order = h.guest_order(f.product(secrets=1), "sandbox")
    short = make_app(pg_url, LOOKUP_LINK_SECONDS=1)
    client = short.test_client()
    with short.app_context():
        token = payments.lookup_token(order.order_no)
    assert client.get(f"/shop/order/{token}").status_code == 200
    # when it is 2 seconds old, it answers 404
    time.sleep(2.2)
    r = client.get(f"/shop/order/{token}")
    assert r.status_code == 404 and order.order_no not in r.get_data(as_text=True)


@pytest.mark.parametrize("change,code", [
    ({"product_id": 999_999}, None), ({"product_id": "abc"}, None), ({"product_id": 1.5}, None),
    ({"product_id": True}, None), ({"product_id": None}, None),
    ({"quantity": 0}, None), ({"quantity": -1}, None), ({"quantity": "x"}, None), ({"quantity": 11}, None),
    ({"quantity": 1.5}, None),
    ({"contact": ""}, None), ({"contact": "ab"}, None), ({"contact": None}, None), ({"contact": "ab\x01cd"}, None),
    ({"contact": "x" * 129}, None),
    ({"query_password": "12345"}, "invalid_request"), ({"query_password": "x" * 65}, "invalid_request"),
    ({"query_password": None}, "invalid_request"), ({"query_password": 123456}, "invalid_request"),
    ({"channel": "paypal"}, "invalid_request"), ({"channel": "alipay"}, "invalid_request"),
    ({"channel": "wallet"}, "invalid_request"), ({"channel": None}, "invalid_request"),
])
def test_create_order_refuses_bad_input(app, f, client, change, code):
    h.setup_sandbox()
    payments.save_channel("alipay", False, {"app_id": "x"})  # configured but disabled
    product = f.product(secrets=3, max_per_order=10)
    r = client.post("/shop/api/orders", json=order_payload(product, **change))
    body = assert_error(r, r.status_code, code)
    assert 400 <= r.status_code < 500, body
    assert h.count(Order) == 0 and h.count(OrderCheckout) == 0


@pytest.mark.parametrize("raw,content_type", [
    (b"not json", "application/json"), (b"[1, 2]", "application/json"), (b"", "application/json"),
    (b"\xff\xfe", "application/json"), (b"product_id=1&quantity=1", "application/x-www-form-urlencoded"),
])
def test_create_order_refuses_a_body_that_is_not_a_json_object(app, f, client, raw, content_type):
    h.setup_sandbox()
    f.product(secrets=1)
    r = client.post("/shop/api/orders", data=raw, headers={"Content-Type": content_type})
    assert_error(r, 400, "invalid_request")
    assert h.count(Order) == 0


def test_create_order_password_boundaries_and_inactive_product(app, f, client):
    h.setup_sandbox()
    product = f.product(secrets=3)
    for password in ("x" * 6, "y" * 64):
        r = client.post("/shop/api/orders", json=order_payload(product, query_password=password))
        assert r.status_code == 201, r.get_data(as_text=True)
    product.active = False
    db.session.commit()
    assert_error(client.post("/shop/api/orders", json=order_payload(product)), 404, "product_unavailable")
    assert h.count(Order) == 2


def test_lookup_is_rate_limited_per_address(pg_url, app, f):
    # given an app with lookups limited to 3 per minute
    limited = make_app(pg_url, RATELIMIT_ENABLED=True, SHOP_LOOKUP_RATE_LIMIT="3 per minute")
    client = limited.test_client()
    attempt = {"order_no": "999999999999999999", "query_password": "pass-1234"}
    # when one address tries 4 times, the 4th is 429
    statuses = [client.post("/shop/api/lookup", json=attempt, environ_base={"REMOTE_ADDR": "10.1.1.1"}).status_code
                for _ in range(4)]
    assert statuses == [404, 404, 404, 429]
    # and another address is not affected
    assert client.post("/shop/api/lookup", json=attempt,
                       environ_base={"REMOTE_ADDR": "10.1.1.2"}).status_code == 404


def test_sandbox_cashier_pays_or_fails(app, f, client):
    h.setup_sandbox()
    product = f.product(secrets=2)
    order = h.guest_order(product, "sandbox")
    # the cashier page shows the order
    r = client.get(f"/pay/sandbox/cashier/{order.order_no}")
    assert r.status_code == 200 and order.order_no in r.get_data(as_text=True)
    assert client.get("/pay/sandbox/cashier/999999999999999999").status_code == 404
    # "fail" leaves it pending
    r = client.post(f"/pay/sandbox/cashier/{order.order_no}", data={"result": "fail"})
    assert r.status_code == 302 and r.headers["Location"] == f"/shop/paid/{order.order_no}"
    assert h.order_state(order.order_no) == "pending_payment"
    assert h.count(Payment) == 0
    assert [o for o, _ in h.notifications(order.order_no)] == ["not_paid"]
    # "pay" delivers; the buyer goes on to the lookup, which asks for the order password before any secret
    r = client.post(f"/pay/sandbox/cashier/{order.order_no}", data={"result": "pay"})
    assert r.status_code == 302
    assert h.order_state(order.order_no) == "delivered"
    landing = client.get(r.headers["Location"])
    assert landing.status_code == 303 and landing.headers["Location"] == f"/shop/lookup?order_no={order.order_no}"
    page = client.get(landing.headers["Location"])
    from app.catalog import cards
    secret = cards.reveal(order.id)[0]
    assert page.status_code == 200 and secret not in page.get_data(as_text=True)
    assert f'value="{order.order_no}"' in page.get_data(as_text=True)  # the number is filled in, not the password
    shown = client.post("/shop/lookup", data={"order_no": order.order_no, "query_password": h.PASSWORD})
    assert shown.status_code == 200 and secret in shown.get_data(as_text=True)
    assert shown.headers["Cache-Control"] == "no-store"


# --- refunds -----------------------------------------------------------------------------------------------

@pytest.fixture
def sold(app, f, client):
    """A sandbox order for 2 cards (¥100.00 each, cost ¥80.00, supplier fee 5%) paid and delivered; the balances
    before the order."""
    h.setup_sandbox()
    product = f.product(face_price=10_000, cost=8_000, secrets=2, supplier_fee_bp=500)
    before = h.balances()
    order = h.guest_order(product, "sandbox", quantity=2)
    pay(client, order, "SBX-SOLD-1")
    assert h.order_state(order.order_no) == "delivered"
    return order, product, before


def test_delivery_books_the_sale(app, sold):
    order, product, before = sold
    now = h.balances()
    supplier = f"supplier:{product.supplier_id}:payable"
    delta = {k: now[k] - before.get(k, 0) for k in now if now[k] != before.get(k, 0)}
    assert delta == {"platform:clearing:sandbox": -20_000, supplier: 16_000 - 800, "platform:fees": 800,
                     "platform:revenue": 4_000}


def test_refund_reverses_the_ledger_exactly(app, client, sold):
    order, product, before = sold
    # a refund without a reason is refused and changes nothing
    snap = h.snapshot()
    for reason in ("", "   ", None):
        with pytest.raises(ValidationError):
            payments.refund_order(order.id, reason, None)
    assert h.snapshot() == snap
    # when Finance refunds it with a reason
    refund = payments.refund_order(order.id, "买家未收到卡密", None)
    # the money waits for the channel: the sale is reversed, nothing has gone back through the channel yet
    assert refund.status == "requested" and fresh(order).status == "refunded"
    assert h.balances()["platform:buyer_funds"] == 20_000
    # then the channel pays it back (the sandbox at once, when the refund job runs)
    assert h.channel_answers_refund(refund) == "succeeded"
    # then every account is back to what it was before the order
    assert h.balances() == before
    assert order_postings(order) == {k: 0 for k in order_postings(order)}
    assert refund.amount == 20_000 and refund.destination == "sandbox"
    assert fresh(order).status == "refunded"
    keys = set(db.session.scalars(select(Journal.idempotency_key).where(Journal.order_id == order.id)))
    assert keys == {"pay:sandbox:SBX-SOLD-1", f"order:{order.order_no}:sale",
                    f"order:{order.order_no}:sale-reversal", "refund:sandbox:SBX-SOLD-1"}
    assert db.session.scalar(select(Payment.status).where(Payment.order_id == order.id)) == "refunded"
    # the secrets are voided, kept with the order
    assert [s for _, s in h.secrets_of(order)] == ["void", "void"]
    # refunding twice is refused and changes nothing
    snap = h.snapshot()
    with pytest.raises(Conflict):
        payments.refund_order(order.id, "again", None)
    assert h.snapshot() == snap and h.balances() == before
    # and the voided secrets are never sold again: the next paid order finds no stock and is refunded
    again = h.guest_order(product, "sandbox")
    pay(client, again)
    assert h.order_state(again.order_no) == "refunded"
    assert h.count(CardSecret, CardSecret.status == "available") == 0
    assert h.count(CardSecret, CardSecret.order_id == again.id) == 0


def test_refund_through_the_finance_screen(app, f, sold):
    order, _product, before = sold
    # Support and Manager cannot refund (Support refunds only by resolving a dispute: tests/test_disputes.py)
    for role in ("Support", "Manager"):
        other = f.login(app.test_client(), f.user(role=role).username)
        assert other.get(f"/order-refund/{order.order_no}").status_code == 403
        assert other.post(f"/order-refund/{order.order_no}", data={"reason": "x"}).status_code == 403
    assert h.order_state(order.order_no) != "refunded" and h.count(Refund) == 0
    finance = f.user(role="Finance")  # 财务 (Finance)
    client = f.login(app.test_client(), finance.username)
    assert client.get(f"/order-refund/{order.order_no}").status_code == 200
    # without a reason: refused, nothing changes
    snap = h.snapshot()
    r = client.post(f"/order-refund/{order.order_no}", data={"reason": "  "})
    assert r.status_code == 200 and h.snapshot() == snap
    # with a reason: refunded, redirected to the order
    r = client.post(f"/order-refund/{order.order_no}", data={"reason": "重复购买，客户要求退款"})
    assert r.status_code == 302, r.get_data(as_text=True)[:500]
    assert h.order_state(order.order_no) == "refunded"
    assert h.balances() == before
    refund = db.session.scalar(select(Refund).where(Refund.order_id == order.id))
    assert refund.actor_id == finance.id and refund.reason == "重复购买，客户要求退款"
    entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "order.refund"))
    assert entry.actor_id == finance.id and entry.target_id == order.order_no
    # twice: refused
    snap = h.snapshot()
    r = client.post(f"/order-refund/{order.order_no}", data={"reason": "again"})
    assert r.status_code == 200 and h.snapshot() == snap
    assert h.count(Refund) == 1


def test_an_agent_cannot_refund_through_the_refund_screen(app, f, sold):
    order, _product, _before = sold
    agent = f.agent()
    client = f.login(app.test_client(), agent.name)
    snap = h.snapshot()
    r = client.post(f"/order-refund/{order.order_no}", data={"reason": "mine"})
    assert r.status_code in (302, 403) and "/order-refund" not in r.headers.get("Location", "")
    assert h.snapshot() == snap and h.order_state(order.order_no) == "delivered"


def test_wallet_order_refund_returns_the_wallet_exactly(app, f):
    agent = f.agent(balance=50_000, tier_obj=f.tier(discount_bp=9_000))
    product = f.product(face_price=10_000, cost=8_000, secrets=3, supplier_fee_bp=300)
    before = h.balances()
    order = orders.place_wallet_order(agent.id, product.id, 2)
    assert f.wallet(agent) == 50_000 - 18_000
    refund = payments.refund_order(order.id, "充错了", None)
    assert refund.destination == "wallet" and refund.amount == 18_000
    assert f.wallet(agent) == 50_000
    assert h.balances() == before
    assert [s for _, s in h.secrets_of(order)] == ["void", "void"]
    with pytest.raises(Conflict):
        payments.refund_order(order.id, "again", None)
    assert f.wallet(agent) == 50_000


# --- payments that cannot be kept --------------------------------------------------------------------------

def expire(order) -> None:
    db.session.execute(update(OrderCheckout).where(OrderCheckout.order_id == order.id)
                       .values(expires_at=utcnow() - timedelta(minutes=1)))
    db.session.commit()


def test_late_notification_for_a_closed_order_is_refunded(app, f, client):
    # given an unpaid order closed by expiry
    h.setup_sandbox()
    product = f.product(secrets=2)
    before = h.balances()
    order = h.guest_order(product, "sandbox")
    expire(order)
    assert payments.expire_unpaid() == 1
    assert h.order_state(order.order_no) == "closed"
    # when its payment arrives late
    pay(client, order, "SBX-LATE")
    # then the payment is recorded and refunded at once, nothing sold
    assert h.order_state(order.order_no) == "refunded"
    payment = db.session.scalar(select(Payment).where(Payment.order_id == order.id))
    assert (payment.trade_no, payment.status) == ("SBX-LATE", "refunded")
    refund = db.session.scalar(select(Refund).where(Refund.order_id == order.id))
    assert refund is not None and refund.amount == order.amount and refund.destination == "sandbox"
    assert set(order_postings(order).values()) == {0}
    assert h.balances() == before
    assert h.secrets_of(order) == [] and h.count(CardSecret, CardSecret.status == "available") == 2
    assert h.notifications(order.order_no) == [("late_refunded", "SBX-LATE")]
    # and the same notification again changes nothing
    snap = h.snapshot()
    pay(client, order, "SBX-LATE")
    assert h.snapshot() == snap


def test_paid_order_without_stock_is_refunded_at_once(app, f, client):
    # given two unpaid orders for the last secret
    h.setup_sandbox()
    product = f.product(secrets=1)
    a, b = h.guest_order(product, "sandbox"), h.guest_order(product, "sandbox")
    pay(client, a)
    after_a = h.balances()
    # when B's payment arrives after A took the last secret
    pay(client, b, "SBX-B")
    # then B is refunded at once and the ledger nets to zero for it
    assert h.order_state(a.order_no) == "delivered" and h.order_state(b.order_no) == "refunded"
    assert db.session.scalar(select(Payment.status).where(Payment.order_id == b.id)) == "refunded"
    assert h.count(Refund, Refund.order_id == b.id) == 1
    assert set(order_postings(b).values()) == {0}
    assert h.balances() == after_a
    assert h.sale_journals(b) == 0 and h.secrets_of(b) == []


def test_paid_order_short_of_stock_sells_none_of_what_is_left(app, f, client):
    # given an unpaid order for two secrets, and only one left when its payment arrives
    h.setup_sandbox()
    product = f.product(secrets=2)
    pair, single = h.guest_order(product, "sandbox", quantity=2), h.guest_order(product, "sandbox")
    pay(client, single, "SBX-SINGLE")
    # when the pair's payment arrives, it is refunded at once and the last secret stays on sale
    pay(client, pair, "SBX-PAIR")
    assert h.order_state(pair.order_no) == "refunded" and h.secrets_of(pair) == []
    assert h.sale_journals(pair) == 0 and set(order_postings(pair).values()) == {0}
    assert h.count(CardSecret, CardSecret.status == "available") == 1
    last = h.guest_order(product, "sandbox")
    pay(client, last, "SBX-LAST")
    assert h.order_state(last.order_no) == "delivered" and len(h.secrets_of(last)) == 1


def test_second_trade_no_for_a_paid_order_is_refunded(app, f, client):
    h.setup_sandbox()
    product = f.product(secrets=3)
    order = h.guest_order(product, "sandbox")
    pay(client, order, "SBX-FIRST")
    after_first = h.balances()
    secrets_first = h.secrets_of(order)
    # when a second, different payment arrives for the same order
    pay(client, order, "SBX-SECOND")
    # then it is recorded and refunded; the order stays delivered once
    statuses = dict(db.session.execute(select(Payment.trade_no, Payment.status)
                                       .where(Payment.order_id == order.id)).all())
    assert statuses == {"SBX-FIRST": "paid", "SBX-SECOND": "refunded"}
    assert h.order_state(order.order_no) == "delivered" and h.sale_journals(order) == 1
    assert h.secrets_of(order) == secrets_first
    assert h.balances() == after_first
    assert h.count(Journal, Journal.idempotency_key == "refund:sandbox:SBX-SECOND") == 1
    assert h.notifications(order.order_no)[-1] == ("double_paid_refunded", "SBX-SECOND")


def test_manual_confirmation_delivers_through_the_notification_path(app, f):
    h.setup_sandbox()
    product = f.product(secrets=2)
    order = h.guest_order(product, "sandbox")
    admin = f.user(role="Admin")
    client = f.login(app.test_client(), admin.username)
    assert client.get("/payment-confirm/").status_code == 200
    # a missing trade_no is refused
    snap = h.snapshot()
    r = client.post("/payment-confirm/", data={"order_no": order.order_no, "trade_no": " "})
    assert r.status_code == 200 and h.snapshot() == snap
    # when an admin confirms a payment seen in the channel's back office
    r = client.post("/payment-confirm/", data={"order_no": order.order_no, "trade_no": "BACKOFFICE-1"})
    assert r.status_code == 200 and "accepted" in r.get_data(as_text=True)
    # then the order is delivered by the same path, with the admin named and audited
    assert h.order_state(order.order_no) == "delivered" and h.sale_journals(order) == 1
    payment = db.session.scalar(select(Payment).where(Payment.order_id == order.id))
    assert (payment.trade_no, payment.confirmed_by_id, payment.status) == ("BACKOFFICE-1", admin.id, "paid")
    entry = db.session.scalar(select(AuditEntry).where(AuditEntry.action == "payment.confirm"))
    assert entry.actor_id == admin.id and entry.target_id == order.order_no and "BACKOFFICE-1" in entry.new_value
    assert h.notifications(order.order_no) == [("accepted", "BACKOFFICE-1")]
    # and the channel's own notification of that payment afterwards changes nothing
    snap = h.snapshot()
    pay(client, order, "BACKOFFICE-1")
    assert h.snapshot() == snap


def test_support_cannot_confirm_payments(app, f):
    h.setup_sandbox()
    order = h.guest_order(f.product(secrets=1), "sandbox")
    client = f.login(app.test_client(), f.user(role="Support").username)
    client.post("/payment-confirm/", data={"order_no": order.order_no, "trade_no": "X-1"})
    assert h.order_state(order.order_no) == "pending_payment" and h.count(Payment) == 0


def test_expiry_job_closes_only_expired_unpaid_orders(app, f, client):
    from workers.jobs import expire_unpaid_orders

    h.setup_sandbox()
    product = f.product(secrets=3)
    expired = h.guest_order(product, "sandbox")
    fresh_order = h.guest_order(product, "sandbox")
    paid = h.guest_order(product, "sandbox")
    pay(client, paid)
    expire(expired)
    expire(paid)
    assert expire_unpaid_orders() == 1
    assert h.order_state(expired.order_no) == "closed"
    assert h.order_state(fresh_order.order_no) == "pending_payment"
    assert h.order_state(paid.order_no) == "delivered"
    assert expire_unpaid_orders() == 0  # idempotent
    # a closed order no longer pays: its late payment is refunded
    pay(client, expired)
    assert h.order_state(expired.order_no) == "refunded"
    assert h.count(PaymentNotification, PaymentNotification.outcome == "late_refunded") == 1
