"""Found by a review of the payment change: NUL characters never reach the database (400, not a 500); a trade the
channel reports as paid and since refunded is never delivered; an error while asking about a refund the channel
took does not fail it; the sandbox exists only in development and test."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from app.errors import NotFound
from app.payments import refunds
from app.payments import service as payments
from app.payments.channels.base import ChannelError, RefundResult, TradeStatus
from app.payments.models import ChannelOrder, Payment, PaymentAlert, Refund
from tests import payments_helpers as h


@pytest.mark.parametrize("method,path,kw", [
    ("get", "/pay/go/%00", {}), ("get", "/pay/wechatpay/qr/%00", {}), ("get", "/pay/sandbox/cashier/%00", {}),
    ("post", "/pay/sandbox/cashier/topup/T%00", {"data": {"result": "pay"}}), ("get", "/pay/status/%00", {}),
    ("post", "/shop/api/lookup", {"json": {"order_no": "1\x00", "query_password": "x" * 8}}),
    ("post", "/pay/notify/alipay", {"data": {"out_trade_no": "1\x00", "sign": "x"}}),
    ("post", "/pay/notify/sandbox", {"data": {"order_no\x00": "1"}}),
    ("get", "/shop/lookup?order_no=%00", {}),
])
def test_nul_characters_are_refused_with_400(app, client, method, path, kw):
    h.setup_all()
    r = getattr(client, method)(path, **kw)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_request"


class FakeGateway:
    code = "wechatpay"

    def __init__(self, status=None, refund_error=None):
        self.status, self.refund_error = status, refund_error

    def query_payment(self, number, meta):
        return self.status

    def query_refund(self, request):
        raise self.refund_error

    refund = query_refund


def test_a_trade_paid_and_since_refunded_at_the_channel_is_never_delivered(app, f, monkeypatch):
    h.setup_wechat()
    product = f.product(secrets=1)
    order = h.guest_order(product, "wechatpay")
    from app.clock import utcnow

    payments.db.session.add(ChannelOrder(channel="wechatpay", out_trade_no=order.order_no, order_id=order.id,
                                         amount=order.amount, pay_url="/x", expires_at=utcnow()))
    payments.db.session.commit()
    co_id = payments.db.session.scalar(select(ChannelOrder.id))
    fake = FakeGateway(TradeStatus("refunded", trade_no="4200REFUNDED", amount=order.amount))
    monkeypatch.setattr(payments, "get_channel", lambda code: fake)  # the gateway's answer; the rest is real
    assert payments.ask_channel(co_id) == "refunded"
    assert h.order_state(order.order_no) == "pending_payment" and h.count(Payment) == 0
    assert [a.kind for a in payments.db.session.scalars(select(PaymentAlert))] == ["paid_then_refunded"]
    assert payments.db.session.get(ChannelOrder, co_id).status == "closed"


def test_an_error_asking_about_a_refund_in_progress_does_not_fail_it(app, f, client, monkeypatch):
    h.setup_sandbox()
    order = h.guest_order(f.product(secrets=1), "sandbox")
    h.notify(client, "sandbox", order, "SBX-HARD-1")
    refund = payments.refund_order(order.id, "测试", None)
    refunds.book(refund.id, RefundResult("processing"))
    monkeypatch.setattr(refunds.gateways, "get_channel",
                        lambda code: FakeGateway(refund_error=ChannelError("HTTP 403 something odd")))
    from datetime import timedelta

    from app.clock import utcnow

    refunds.poll_due(now=utcnow() + timedelta(hours=1))
    row = payments.db.session.get(Refund, refund.id)
    assert row.status == "processing" and "no answer" in row.last_error
    monkeypatch.undo()
    h.channel_answers_refund(row)  # the channel finishes it: the ledger check at the end holds


@pytest.mark.parametrize("env", ["production", "staging", "prod", "test", None])
def test_the_sandbox_exists_only_in_development(app, env):
    app.config["KAMENG_ENV"], before = env, app.config["KAMENG_ENV"]
    try:
        assert payments.channel_exists("sandbox") is False
        with pytest.raises(NotFound):
            payments.get_channel("sandbox")
    finally:
        app.config["KAMENG_ENV"] = before
    assert payments.channel_exists("sandbox") is True


def test_order_passwords_are_keyed_hashes_and_older_hashes_still_open_their_orders(app, f, client):
    """A checkout stores the order password as HMAC-SHA256 under the app's key with a salt (no plaintext, no slow
    hash on the storefront's path); orders from before keep their werkzeug hash and still open."""
    from app.payments.models import OrderCheckout

    h.setup_sandbox()
    product = f.product(secrets=2)
    r = client.post("/shop/api/orders", json={"product_id": product.id, "quantity": 1, "contact": "13800001234",
                                              "query_password": "my-order-pass", "channel": "sandbox"})
    assert r.status_code == 201, r.get_data(as_text=True)
    order_no = r.get_json()["order_no"]
    stored = payments.db.session.scalar(select(OrderCheckout.query_password_hash).join(
        payments.Order, payments.Order.id == OrderCheckout.order_id).where(payments.Order.order_no == order_no))
    scheme, salt, mac = stored.split("$")
    assert scheme == "hmac-sha256" and len(mac) == 64 and "my-order-pass" not in stored
    again = client.post("/shop/api/orders", json={"product_id": product.id, "quantity": 1, "contact": "13800001234",
                                                  "query_password": "my-order-pass", "channel": "sandbox"})
    assert again.status_code == 201
    lookup = client.post("/shop/api/lookup", json={"order_no": order_no, "query_password": "my-order-pass"})
    assert lookup.status_code == 200 and lookup.get_json()["order_no"] == order_no
    wrong = client.post("/shop/api/lookup", json={"order_no": order_no, "query_password": "my-order-pasS"})
    assert wrong.status_code == 404

    legacy = h.guest_order(product, "sandbox", password="legacy-pass-1")  # a werkzeug hash, as before
    assert client.post("/shop/api/lookup", json={"order_no": legacy.order_no,
                                                 "query_password": "legacy-pass-1"}).status_code == 200
    assert client.post("/shop/api/lookup", json={"order_no": legacy.order_no,
                                                 "query_password": "legacy-pass-2"}).status_code == 404
