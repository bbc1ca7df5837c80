"""Payments that hold in production: the sandbox does not exist there whatever the settings say; a cashier page never
shows or links to an order's card secrets; notifications are rate-limited and forged ones cannot grow the log
without bound; request bodies are capped; the HTML checkout is rate-limited like the JSON one."""
from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select

from app import crypto
from app.catalog import cards
from app.errors import NotFound, ValidationError
from app.extensions import db
from app.payments import service as payments
from app.payments.models import Payment, PaymentChannel, PaymentNotification, WalletTopUp
from tests import payments_helpers as h
from tests.conftest import make_app

PROD_SECRET = "p" * 40
PROD_CARD_KEY = "c" * 40


def production_app(pg_url):
    """The same database served by a production-mode app (its own keys), its sandbox row switched on and keyed as a
    copied demo database would have it. Made after the test's data (a second app's start-up ends the session)."""
    prod = make_app(pg_url, KAMENG_ENV="production", SECRET_KEY=PROD_SECRET, CARD_SECRET_KEY=PROD_CARD_KEY,
                    PUBLIC_BASE_URL="https://shop.example.com")
    with prod.app_context():
        row = db.session.scalar(select(PaymentChannel).where(PaymentChannel.code == "sandbox"))
        if row is None:
            row = PaymentChannel(code="sandbox", name="沙箱支付")
            db.session.add(row)
        row.enabled = True
        row.settings_enc = crypto.encrypt(json.dumps({"key": h.SANDBOX_KEY}))
        db.session.commit()
    return prod


def test_production_refuses_the_sandbox_checkout_cashier_and_notifications(app, f, pg_url):
    product = f.product(secrets=2)
    order = h.guest_order(product, "sandbox")
    topup = WalletTopUp(topup_no="T261204000000000001", agent_id=f.agent().id, amount=1000, channel="sandbox")
    db.session.add(topup)
    db.session.commit()
    order_no, amount, topup_id = order.order_no, order.amount, topup.id
    production = production_app(pg_url)
    client = production.test_client()
    with production.app_context():
        assert payments.enabled_channels() == []
        with pytest.raises(NotFound):
            payments.get_channel("sandbox")
    # checkout: the channel is not offered
    r = client.post("/shop/api/orders", json={"product_id": product.id, "quantity": 1, "contact": "13800138000",
                                              "query_password": h.PASSWORD, "channel": "sandbox"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_request"
    # the cashier pages and the notification endpoint do not exist
    assert client.get(f"/pay/sandbox/cashier/{order_no}").status_code == 404
    assert client.post(f"/pay/sandbox/cashier/{order_no}", data={"result": "pay"}).status_code == 404
    assert client.post("/pay/sandbox/cashier/topup/T261204000000000001", data={"result": "pay"}).status_code == 404
    form = h.sandbox_form(order_no, "SBX-PROD-1", amount)
    r = client.post("/pay/notify/sandbox", data=form)
    assert r.status_code == 404 and r.get_data(as_text=True) != "success"
    assert client.post("/pay/refund-notify/sandbox", data=form).status_code == 404
    # nothing was paid or credited
    assert h.count(Payment) == 0 and h.order_state(order_no) == "pending_payment"
    db.session.rollback()
    assert db.session.get(WalletTopUp, topup_id).status == "pending_payment"
    # and its settings cannot switch it on
    with production.app_context():
        with pytest.raises(ValidationError) as refused:
            payments.save_channel("sandbox", True, {"key": h.SANDBOX_KEY})
        assert "生产环境" in str(refused.value)


def test_a_switched_off_sandbox_refuses_late_notifications(app, f, client):
    h.setup_sandbox()
    product = f.product(secrets=1)
    order = h.guest_order(product, "sandbox")
    h.setup_sandbox(enabled=False)
    r = client.post("/pay/notify/sandbox", data=h.sandbox_form(order.order_no, "SBX-OFF-1", order.amount))
    assert r.status_code == 400 and h.count(Payment) == 0
    assert h.order_state(order.order_no) == "pending_payment"


def test_no_button_on_another_buyers_cashier_shows_its_secrets(app, f, client):
    """Someone holding another buyer's pay_url (a delivered order) presses every button: never a secret, never the
    signed lookup link; only the lookup form, which asks for the order password."""
    h.setup_sandbox()
    product = f.product(secrets=2)
    r = client.post("/shop/api/orders", json={"product_id": product.id, "quantity": 1, "contact": "13800138000",
                                              "query_password": h.PASSWORD, "channel": "sandbox"})
    assert r.status_code == 201
    answer = r.get_json()
    assert answer["lookup_url"].startswith("http") and "/shop/order/" in answer["lookup_url"]
    pay_path = urlsplit(answer["pay_url"]).path
    client.post(pay_path, data={"result": "pay"})
    order_no = answer["order_no"]
    assert h.order_state(order_no) == "delivered"
    db.session.rollback()
    secret = cards.reveal(payments.db.session.scalar(
        select(payments.Order.id).where(payments.Order.order_no == order_no)))[0]

    stranger = type(client)(app, app.response_class)  # a new browser: no cookies of the buyer's
    seen = []
    for method, data in (("get", None), ("post", {"result": "pay"}), ("post", {"result": "fail"}), ("post", {})):
        response = getattr(stranger, method)(pay_path, data=data, follow_redirects=True)
        seen.append(response.get_data(as_text=True))
        assert response.status_code in (200, 404)
    for page in seen:
        assert secret not in page and "/shop/order/" not in page
    # the page the buttons lead to asks for the password
    assert 'name="query_password"' in seen[1]
    # one payment only: pressing "pay" on a paid order sent nothing
    assert h.count(Payment) == 1
    # the buyer's own signed link (only the checkout answer had it) shows the secret, uncached
    own = client.get(urlsplit(answer["lookup_url"]).path)
    assert own.status_code == 200 and secret in own.get_data(as_text=True)
    assert own.headers["Cache-Control"] == "no-store"


def test_request_bodies_are_capped(app, client):
    app.config["MAX_CONTENT_LENGTH"], before = 1024, app.config.get("MAX_CONTENT_LENGTH")
    try:
        r = client.post("/shop/api/orders", data=b"{" + b" " * 4096 + b"}", content_type="application/json")
        assert r.status_code == 413
        r = client.post("/pay/notify/alipay", data={"x": "y" * 4096})
        assert r.status_code == 413
    finally:
        app.config["MAX_CONTENT_LENGTH"] = before


def test_forged_notifications_are_logged_at_most_a_cap_per_address(app, f, client):
    h.setup_all()
    app.config["NOTIFY_REJECTED_LOG_PER_HOUR"], before = 5, app.config["NOTIFY_REJECTED_LOG_PER_HOUR"]
    try:
        for i in range(12):
            r = client.post("/pay/notify/alipay", data={"out_trade_no": f"X{i}", "sign": "forged"},
                            environ_base={"REMOTE_ADDR": "203.0.113.9"})
            assert r.status_code == 400
        r = client.post("/pay/notify/alipay", data={"out_trade_no": "Y", "sign": "forged"},
                        environ_base={"REMOTE_ADDR": "203.0.113.10"})
    finally:
        app.config["NOTIFY_REJECTED_LOG_PER_HOUR"] = before
    db.session.rollback()
    by_addr = dict(db.session.execute(select(PaymentNotification.remote_addr, func.count())
                                      .group_by(PaymentNotification.remote_addr)).all())
    assert by_addr == {"203.0.113.9": 5, "203.0.113.10": 1}


@pytest.fixture
def limited_app(pg_url):
    return make_app(pg_url, RATELIMIT_ENABLED=True, SHOP_ORDER_RATE_LIMIT="3 per minute",
                    NOTIFY_RATE_LIMIT="4 per minute")


def test_html_checkout_and_notifications_are_rate_limited(app, f, limited_app):
    h.setup_sandbox()
    product = f.product(secrets=5)
    client = limited_app.test_client()
    codes = [client.post(f"/shop/buy/{product.id}", data={"quantity": "1", "contact": "13800138000",
                                                          "query_password": "short", "channel": "sandbox"},
                         environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code for _ in range(5)]
    assert codes[:3] == [400, 400, 400] and codes[3:] == [429, 429]
    codes = [client.post("/pay/notify/alipay", data={"sign": "x"},
                         environ_base={"REMOTE_ADDR": "198.51.100.8"}).status_code for _ in range(6)]
    assert codes[4:] == [429, 429]
    # another address is not held back by the first one's flood
    assert client.post("/pay/notify/alipay", data={"sign": "x"},
                       environ_base={"REMOTE_ADDR": "198.51.100.9"}).status_code == 400
