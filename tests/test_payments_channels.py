"""Payment channels with keys generated here: the sandbox (HMAC-SHA256), Alipay (RSA2) and WeChat Pay v3
(SHA256-RSA + AEAD_AES_256_GCM). Valid notifications deliver; forged, altered, replayed, mismatched, stale and
malformed ones are refused (4xx) and change nothing. Payment creation signs what the channel checks.

Notifications go through the Flask test client; WeChat Pay's API is a small simulator on 127.0.0.1.
"""
from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from app.errors import KamengError
from app.ledger.models import Journal
from app.payments import service as payments
from app.payments.channels.base import PaymentRequest
from app.payments.models import Payment, PaymentNotification
from tests import payments_helpers as h

CHANNELS = ["sandbox", "alipay", "wechatpay"]


@pytest.fixture
def product(f):
    h.setup_all()
    return f.product(face_price=10_000, cost=8_000, secrets=4)


def assert_refused(client, channel: str, send) -> object:
    """`send()` posts something: it must answer 4xx, not the channel's success, and change nothing."""
    before = h.snapshot()
    response = send()
    assert 400 <= response.status_code < 500, (response.status_code, response.get_data(as_text=True))
    assert not h.accepted(channel, response)
    assert h.snapshot() == before
    return response


def post_raw(client, channel: str, form: dict | None = None, body: bytes | None = None, headers=None):
    if form is not None:
        return client.post(f"/pay/notify/{channel}", data=form, headers=headers or {})
    return client.post(f"/pay/notify/{channel}", data=body or b"", headers=headers or {})


# --- valid notifications -----------------------------------------------------------------------------------

def test_valid_alipay_notification_is_accepted_and_delivers(app, client, product):
    # given an unpaid Alipay order for 2 cards
    order = h.guest_order(product, "alipay", quantity=2)
    trade = h.trade_no("2024")
    # when Alipay posts its signed, form-encoded notification
    form = h.alipay_form(order.order_no, trade, order.amount)
    assert form["total_amount"] == "200.00" and form["sign_type"] == "RSA2"
    r = client.post("/pay/notify/alipay", data=form)
    # then the body is exactly `success` and the order is delivered with its payment, journals and secrets
    assert r.status_code == 200 and r.get_data(as_text=True) == "success"
    assert h.order_state(order.order_no) == "delivered"
    assert h.count(Payment, Payment.channel == "alipay", Payment.trade_no == trade, Payment.order_id == order.id) == 1
    assert h.count(Journal, Journal.idempotency_key == f"pay:alipay:{trade}") == 1
    assert h.sale_journals(order) == 1
    assert [s for _, s in h.secrets_of(order)] == ["sold", "sold"]
    assert h.notifications(order.order_no) == [("accepted", trade)]
    # and the same notification again answers success and changes nothing
    before = h.snapshot()
    assert client.post("/pay/notify/alipay", data=form).get_data(as_text=True) == "success"
    assert h.snapshot() == before
    assert h.notifications(order.order_no)[-1] == ("duplicate", trade)


def test_valid_wechatpay_notification_is_accepted_and_delivers(app, client, product):
    # given an unpaid WeChat Pay order
    order = h.guest_order(product, "wechatpay")
    trade = h.trade_no("4200")
    # when WeChat posts its signed notification with the encrypted transaction
    body, headers = h.wechat_notification(order.order_no, trade, order.amount)
    assert "out_trade_no" not in body.decode()  # the transaction travels encrypted
    r = client.post("/pay/notify/wechatpay", data=body, headers=headers)
    # then it answers 200 with JSON code SUCCESS and the order is delivered
    assert r.status_code == 200 and r.get_json()["code"] == "SUCCESS", r.get_data(as_text=True)
    assert h.order_state(order.order_no) == "delivered"
    assert h.count(Payment, Payment.channel == "wechatpay", Payment.trade_no == trade) == 1
    assert h.count(Journal, Journal.idempotency_key == f"pay:wechatpay:{trade}") == 1
    assert h.sale_journals(order) == 1 and len(h.secrets_of(order)) == 1
    # and a duplicate answers SUCCESS and changes nothing
    before = h.snapshot()
    r = client.post("/pay/notify/wechatpay", data=body, headers=headers)
    assert r.status_code == 200 and r.get_json()["code"] == "SUCCESS"
    assert h.snapshot() == before


def test_valid_sandbox_notification_is_accepted_and_delivers(app, client, product):
    order = h.guest_order(product, "sandbox")
    r = h.notify(client, "sandbox", order, "SBX1")
    assert r.status_code == 200 and r.get_data(as_text=True) == "success"
    assert h.order_state(order.order_no) == "delivered"
    before = h.snapshot()
    assert h.notify(client, "sandbox", order, "SBX1").get_data(as_text=True) == "success"  # duplicate, new nonce
    assert h.snapshot() == before


# --- refused, for every channel ----------------------------------------------------------------------------

def forged(channel: str, order, trade: str):
    """Signed with the wrong key."""
    if channel == "sandbox":
        return {"form": h.sandbox_form(order.order_no, trade, order.amount, key="not-the-channel-key")}
    if channel == "alipay":
        return {"form": h.alipay_sign(h.alipay_params(order.order_no, trade, order.amount), h.keys()["stranger"][0])}
    body = h.wechat_body(h.wechat_transaction(order.order_no, trade, order.amount))
    return {"body": body, "headers": h.wechat_headers(body, private_pem=h.keys()["stranger"][0])}


def altered(channel: str, order, trade: str):
    """A genuine notification with its amount (sandbox, Alipay) or its envelope (WeChat) changed after signing."""
    if channel == "sandbox":
        return {"form": {**h.sandbox_form(order.order_no, trade, 1), "amount": str(order.amount)}}
    if channel == "alipay":
        return {"form": {**h.alipay_form(order.order_no, trade, 1), "total_amount": h.yuan(order.amount)}}
    body, headers = h.wechat_notification(order.order_no, trade, order.amount, trade_state="NOTPAY")
    envelope = json.loads(body)
    envelope["event_type"] = "TRANSACTION.SUCCESS "
    return {"body": json.dumps(envelope, ensure_ascii=False).encode(), "headers": headers}


def moved_to(channel: str, genuine_for_a, a, b, trade: str):
    """A's genuine notification with the order number changed to B's (WeChat: B's transaction encrypted anew, as
    if the APIv3 key had leaked, under A's signature headers)."""
    if channel in ("sandbox", "alipay"):
        field = "order_no" if channel == "sandbox" else "out_trade_no"
        assert genuine_for_a["form"][field] == a.order_no
        return {"form": {**genuine_for_a["form"], field: b.order_no}}
    body = h.wechat_body(h.wechat_transaction(b.order_no, trade, b.amount))
    return {"body": body, "headers": genuine_for_a["headers"]}


def genuine(channel: str, order, trade: str, fen: int | None = None, **override):
    fen = order.amount if fen is None else fen
    if channel == "sandbox":
        return {"form": h.sandbox_form(order.order_no, trade, fen, **override)}
    if channel == "alipay":
        return {"form": h.alipay_form(order.order_no, trade, fen, **override)}
    body, headers = h.wechat_notification(order.order_no, trade, fen, **override)
    return {"body": body, "headers": headers}


def send(client, channel: str, note: dict):
    return post_raw(client, channel, form=note.get("form"), body=note.get("body"), headers=note.get("headers"))


@pytest.mark.parametrize("channel", CHANNELS)
def test_forged_signature_is_refused(app, client, product, channel):
    order = h.guest_order(product, channel)
    assert_refused(client, channel, lambda: send(client, channel, forged(channel, order, h.trade_no())))
    assert h.order_state(order.order_no) == "pending_payment"
    assert [o for o, _ in h.notifications()] == ["rejected"]


@pytest.mark.parametrize("channel", CHANNELS)
def test_field_altered_after_signing_is_refused(app, client, product, channel):
    order = h.guest_order(product, channel)
    assert_refused(client, channel, lambda: send(client, channel, altered(channel, order, h.trade_no())))
    assert h.order_state(order.order_no) == "pending_payment"


@pytest.mark.parametrize("channel", CHANNELS)
def test_genuine_notification_moved_to_another_order_breaks_its_signature(app, client, product, channel):
    # given two unpaid orders of the same amount, and A's genuine notification
    a, b = h.guest_order(product, channel), h.guest_order(product, channel)
    trade = h.trade_no()
    note = genuine(channel, a, trade)
    # when its order number is changed to B's, it is refused
    assert_refused(client, channel, lambda: send(client, channel, moved_to(channel, note, a, b, trade)))
    assert h.order_state(b.order_no) == "pending_payment" and h.order_state(a.order_no) == "pending_payment"
    # and the untouched notification still pays A (the test's notification was genuine)
    assert h.accepted(channel, send(client, channel, note))
    assert h.order_state(a.order_no) == "delivered" and h.order_state(b.order_no) == "pending_payment"


@pytest.mark.parametrize("channel", CHANNELS)
def test_trade_no_of_a_paid_order_never_pays_another(app, client, product, channel):
    # given order A paid with trade_no T
    a, b = h.guest_order(product, channel), h.guest_order(product, channel)
    trade = h.trade_no()
    assert h.accepted(channel, send(client, channel, genuine(channel, a, trade)))
    # when a correctly signed notification claims the same T for order B (same amount)
    assert_refused(client, channel, lambda: send(client, channel, genuine(channel, b, trade)))
    # then B is not paid and T still belongs to A only
    assert h.order_state(b.order_no) == "pending_payment"
    assert h.count(Payment, Payment.order_id == b.id) == 0
    assert h.count(Payment, Payment.trade_no == trade) == 1


@pytest.mark.parametrize("channel", CHANNELS)
def test_wrong_amount_is_recorded_as_mismatch_and_never_delivered(app, client, product, channel):
    order = h.guest_order(product, channel)
    trade = h.trade_no()
    assert_refused(client, channel, lambda: send(client, channel, genuine(channel, order, trade, order.amount - 1)))
    assert h.order_state(order.order_no) == "pending_payment"
    assert h.notifications(order.order_no) == [("amount_mismatch", trade)]
    assert h.count(PaymentNotification, PaymentNotification.amount == order.amount - 1) == 1


@pytest.mark.parametrize("channel", CHANNELS)
def test_wrong_currency_is_refused(app, client, product, channel):
    order = h.guest_order(product, channel)
    trade = h.trade_no()
    if channel == "sandbox":
        note = genuine(channel, order, trade, currency="USD")
    elif channel == "alipay":
        note = genuine(channel, order, trade, trans_currency="USD")
    else:
        note = genuine(channel, order, trade,
                       amount={"total": order.amount, "payer_total": order.amount, "currency": "USD"})
    assert_refused(client, channel, lambda: send(client, channel, note))
    assert h.order_state(order.order_no) == "pending_payment"
    assert [o for o, _ in h.notifications(order.order_no)] == ["amount_mismatch"]


@pytest.mark.parametrize("channel", CHANNELS)
def test_notification_on_another_channel_than_the_orders_is_refused(app, client, product, channel):
    # an order placed for another channel is not paid by this channel's (valid) notification
    other = "alipay" if channel != "alipay" else "sandbox"
    order = h.guest_order(product, other)
    assert_refused(client, channel, lambda: send(client, channel, genuine(channel, order, h.trade_no())))
    assert h.order_state(order.order_no) == "pending_payment"


@pytest.mark.parametrize("channel,override", [
    ("alipay", {"app_id": "2021000000009999"}),
    ("wechatpay", {"mchid": "1900009999"}),
    ("wechatpay", {"appid": "wx9999999999999999"}),
])
def test_notification_for_another_merchant_is_refused(app, client, product, channel, override):
    order = h.guest_order(product, channel)
    assert_refused(client, channel, lambda: send(client, channel, genuine(channel, order, h.trade_no(), **override)))
    assert h.order_state(order.order_no) == "pending_payment"


@pytest.mark.parametrize("channel", CHANNELS)
def test_channel_with_an_empty_key_refuses_everything(app, client, product, channel):
    order = h.guest_order(product, channel)
    if channel == "sandbox":
        h.setup_sandbox(key="")
        note = {"form": h.sandbox_form(order.order_no, h.trade_no(), order.amount, key="")}
    elif channel == "alipay":
        h.setup_alipay(alipay_public_key="")
        note = genuine(channel, order, h.trade_no())
    else:
        h.setup_wechat(api_v3_key="")
        note = genuine(channel, order, h.trade_no())
    r = assert_refused(client, channel, lambda: send(client, channel, note))
    assert "no key" in r.get_data(as_text=True) or channel != "sandbox"
    assert h.order_state(order.order_no) == "pending_payment"


def test_stale_notifications_are_refused(app, client, product):
    # WeChat: a timestamp outside 5 minutes, correctly signed
    order = h.guest_order(product, "wechatpay")
    body = h.wechat_body(h.wechat_transaction(order.order_no, h.trade_no(), order.amount))
    stale = h.wechat_headers(body, ts=int(time.time()) - 301)
    assert_refused(client, "wechatpay", lambda: post_raw(client, "wechatpay", body=body, headers=stale))
    future = h.wechat_headers(body, ts=int(time.time()) + 600)
    assert_refused(client, "wechatpay", lambda: post_raw(client, "wechatpay", body=body, headers=future))
    # sandbox: older than a day
    sbx = h.guest_order(product, "sandbox")
    form = h.sandbox_form(sbx.order_no, h.trade_no(), sbx.amount, ts=int(time.time()) - 2 * 24 * 3600)
    assert_refused(client, "sandbox", lambda: post_raw(client, "sandbox", form=form))
    assert h.order_state(order.order_no) == h.order_state(sbx.order_no) == "pending_payment"


def test_wechat_unknown_serial_is_refused(app, client, product):
    order = h.guest_order(product, "wechatpay")
    body = h.wechat_body(h.wechat_transaction(order.order_no, h.trade_no(), order.amount))
    # signed by the real platform key, but naming a serial we do not know; and a stranger's key under its own serial
    unknown = h.wechat_headers(body, serial="UNKNOWNSERIAL")
    assert_refused(client, "wechatpay", lambda: post_raw(client, "wechatpay", body=body, headers=unknown))
    stranger = h.wechat_headers(body, serial="STRANGER", private_pem=h.keys()["stranger"][0])
    assert_refused(client, "wechatpay", lambda: post_raw(client, "wechatpay", body=body, headers=stranger))
    assert h.order_state(order.order_no) == "pending_payment"


# --- malformed ---------------------------------------------------------------------------------------------

def _sandbox_malformed(order):
    good = h.sandbox_form(order.order_no, h.trade_no(), order.amount)
    missing = {k: v for k, v in good.items() if k != "nonce"}
    extra = {k: v for k, v in good.items() if k != "sign"}
    extra["coupon"] = "x"
    extra["sign"] = h.sandbox.sign(h.SANDBOX_KEY, {k: v for k, v in extra.items()})
    not_int = h.sandbox_form(order.order_no, h.trade_no(), order.amount)
    not_int = {k: v for k, v in not_int.items() if k != "sign"}
    not_int["amount"] = "100.00"
    not_int["sign"] = h.sandbox.sign(h.SANDBOX_KEY, not_int)
    huge = h.sandbox_form(order.order_no, h.trade_no(), 10 ** 22)
    return {
        "missing nonce": {"form": missing},
        "missing sign": {"form": {k: v for k, v in good.items() if k != "sign"}},
        "empty sign": {"form": {**good, "sign": ""}},
        "unknown field": {"form": extra},
        "amount not integer": {"form": not_int},
        "amount out of range": {"form": huge},
        "empty body": {"body": b""},
        "json body": {"body": json.dumps(good).encode(), "headers": {"Content-Type": "application/json"}},
        "garbage": {"body": b"\xff\xfe\x00garbage", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
    }


def _alipay_malformed(order):
    good = h.alipay_form(order.order_no, h.trade_no(), order.amount)
    no_amount = h.alipay_sign(h.alipay_params(order.order_no, h.trade_no(), order.amount, total_amount=None))
    bad_amount = h.alipay_sign(h.alipay_params(order.order_no, h.trade_no(), order.amount, total_amount="1e3"))
    no_status = h.alipay_sign(h.alipay_params(order.order_no, h.trade_no(), order.amount, trade_status=None))
    huge = h.alipay_sign(h.alipay_params(order.order_no, h.trade_no(), order.amount,
                                         total_amount="99999999999999999999.00"))
    return {
        "missing sign": {"form": {k: v for k, v in good.items() if k != "sign"}},
        "sign_type RSA (SHA1)": {"form": {**good, "sign_type": "RSA"}},
        "sign not base64": {"form": {**good, "sign": "!!not-base64!!"}},
        "missing total_amount": {"form": no_amount},
        "total_amount not an amount": {"form": bad_amount},
        "total_amount out of range": {"form": huge},
        "missing trade_status": {"form": no_status},
        "empty body": {"body": b""},
        "json body": {"body": json.dumps(good).encode(), "headers": {"Content-Type": "application/json"}},
    }


def _wechat_malformed(order):
    tx = h.wechat_transaction(order.order_no, h.trade_no(), order.amount)

    def signed(body: bytes) -> dict:
        return {"body": body, "headers": h.wechat_headers(body)}

    good = h.wechat_body(tx)
    wrong_alg = json.loads(good)
    wrong_alg["resource"]["algorithm"] = "AEAD_AES_128_GCM"
    garbage = json.loads(good)
    garbage["resource"]["ciphertext"] = base64.b64encode(secrets.token_bytes(64)).decode()
    not_b64 = json.loads(good)
    not_b64["resource"]["ciphertext"] = "%%%"
    other_aad = json.loads(good)
    other_aad["resource"]["associated_data"] = "certificate"
    no_resource = json.loads(good)
    del no_resource["resource"]
    no_amount = {k: v for k, v in tx.items() if k != "amount"}
    return {
        "non-JSON body": signed(b"this is not json"),
        "JSON array": signed(b"[1, 2, 3]"),
        "resource not an object": signed(json.dumps({"resource": "x"}).encode()),
        "missing resource": signed(json.dumps(no_resource).encode()),
        "wrong algorithm": signed(json.dumps(wrong_alg).encode()),
        "garbage ciphertext": signed(json.dumps(garbage).encode()),
        "ciphertext not base64": signed(json.dumps(not_b64).encode()),
        "associated data changed": signed(json.dumps(other_aad).encode()),
        "encrypted with another key": signed(h.wechat_body(tx, resource=h.wechat_encrypt(
            json.dumps(tx).encode(), key="ffffffffffffffffffffffffffffffff"))),
        "plaintext not JSON": signed(h.wechat_body(b"not json")),
        "plaintext a JSON list": signed(h.wechat_body(b"[1, 2]")),
        "no amount": signed(h.wechat_body(no_amount)),
        "amount not an object": signed(h.wechat_body({**tx, "amount": [order.amount]})),
        "amount.total a string": signed(h.wechat_body({**tx, "amount": {"total": str(order.amount)}})),
        "amount.total out of range": signed(h.wechat_body({**tx, "amount": {"total": 10 ** 22, "currency": "CNY"}})),
        "no transaction_id": signed(h.wechat_body({k: v for k, v in tx.items() if k != "transaction_id"})),
        "missing signature headers": {"body": good, "headers": {"Content-Type": "application/json"}},
        "non-UTF-8 body": signed_raw(b"\xff\xfe{}"),
        "empty body": signed(b""),
    }


def signed_raw(body: bytes) -> dict:
    """Headers signed over a body that is not UTF-8 (the signature covers its latin-1 reading)."""
    ts, nonce = str(int(time.time())), secrets.token_hex(16)
    key = serialization.load_pem_private_key(h.keys()["wechat"][0].encode(), password=None)
    message = f"{ts}\n{nonce}\n".encode() + body + b"\n"
    signature = base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()
    return {"body": body, "headers": {"Wechatpay-Timestamp": ts, "Wechatpay-Nonce": nonce,
                                      "Wechatpay-Signature": signature, "Wechatpay-Serial": h.WECHAT_SERIAL}}


MALFORMED = {"sandbox": _sandbox_malformed, "alipay": _alipay_malformed, "wechatpay": _wechat_malformed}


@pytest.mark.parametrize("channel", CHANNELS)
def test_malformed_notifications_are_refused_without_change(app, client, product, channel):
    order = h.guest_order(product, channel)
    cases = MALFORMED[channel](order)
    for name, note in cases.items():
        before = h.snapshot()
        response = send(client, channel, note)
        assert 400 <= response.status_code < 500, (name, response.status_code, response.get_data(as_text=True))
        assert not h.accepted(channel, response), name
        assert h.snapshot() == before, name
    assert h.order_state(order.order_no) == "pending_payment"
    # and the notification endpoint of an unknown channel is a 404
    assert client.post("/pay/notify/paypal", data={"x": "1"}).status_code == 404


def test_wechat_failure_answer_is_json(app, client, product):
    order = h.guest_order(product, "wechatpay")
    r = send(client, "wechatpay", forged("wechatpay", order, h.trade_no()))
    assert r.status_code == 400 and r.get_json()["code"] == "FAIL" and r.get_json()["message"]


# --- creating payments -------------------------------------------------------------------------------------

def test_alipay_create_payment_is_signed_with_the_merchant_key(app, client, product):
    # when an Alipay checkout starts
    r = client.post("/shop/api/orders", json={"product_id": product.id, "quantity": 1, "contact": "13800000000",
                                              "query_password": "secret-123", "channel": "alipay"})
    assert r.status_code == 201, r.get_data(as_text=True)
    pay_url, order_no = r.get_json()["pay_url"], r.get_json()["order_no"]
    # then it is the gateway with the documented parameters
    parts = urlsplit(pay_url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://openapi.alipay.test/gateway.do"
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    assert params["app_id"] == h.ALIPAY_APP_ID and params["method"] == "alipay.trade.page.pay"
    assert params["sign_type"] == "RSA2" and params["charset"] == "utf-8"
    biz = json.loads(params["biz_content"])
    assert biz["out_trade_no"] == order_no and biz["total_amount"] == "100.00"
    assert params["notify_url"].endswith("/pay/notify/alipay")
    # and `sign` verifies with the merchant's public key over every other parameter, sorted, k=v joined by &
    content = "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "sign" and params[k] != "")
    public = serialization.load_pem_public_key(h.keys()["merchant"][1].encode())
    public.verify(base64.b64decode(params["sign"]), content.encode(), padding.PKCS1v15(), hashes.SHA256())
    # a stranger's key does not verify it (the check above can fail)
    stranger = serialization.load_pem_public_key(h.keys()["stranger"][1].encode())
    with pytest.raises(Exception):  # noqa: B017 (InvalidSignature)
        stranger.verify(base64.b64decode(params["sign"]), content.encode(), padding.PKCS1v15(), hashes.SHA256())


AUTH_RE = re.compile(r'^WECHATPAY2-SHA256-RSA2048 mchid="([^"]+)",nonce_str="([^"]+)",signature="([^"]+)",'
                     r'timestamp="([^"]+)",serial_no="([^"]+)"$')


class WechatSimulator:
    """WeChat Pay's native-pay endpoint: checks the merchant's Authorization signature, answers a code_url signed
    with the platform key (mode "signed"), unsigned ("unsigned") or signed by a stranger ("wrong_key")."""

    def __init__(self, mode: str = "signed"):
        self.mode = mode
        self.seen: list[dict] = []
        sim = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                verdict = sim.check(self.command, self.path, self.headers.get("Authorization", ""), body)
                sim.seen.append({"path": self.path, "verdict": verdict, "body": body})
                if verdict != "ok":
                    self.answer(401, json.dumps({"code": "SIGN_ERROR", "message": verdict}), signed=False)
                    return
                self.answer(200, json.dumps({"code_url": "weixin://wxpay/bizpayurl?pr=SIMULATED"}),
                            signed=sim.mode != "unsigned")

            def answer(self, status: int, text: str, signed: bool):
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if signed:
                    ts, nonce = str(int(time.time())), secrets.token_hex(16)
                    pem = h.keys()["stranger" if sim.mode == "wrong_key" else "wechat"][0]
                    self.send_header("Wechatpay-Timestamp", ts)
                    self.send_header("Wechatpay-Nonce", nonce)
                    self.send_header("Wechatpay-Serial", h.WECHAT_SERIAL)
                    self.send_header("Wechatpay-Signature", h.rsa_sign(pem, f"{ts}\n{nonce}\n{text}\n"))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def check(self, method: str, path: str, auth: str, body: str) -> str:
        m = AUTH_RE.match(auth)
        if not m:
            return "no authorization"
        mchid, nonce, signature, timestamp, serial = m.groups()
        if mchid != h.WECHAT_MCHID or serial != h.MERCHANT_SERIAL:
            return "unknown merchant"
        public = serialization.load_pem_public_key(h.keys()["merchant"][1].encode())
        try:
            public.verify(base64.b64decode(signature), f"{method}\n{path}\n{timestamp}\n{nonce}\n{body}\n".encode(),
                          padding.PKCS1v15(), hashes.SHA256())
        except Exception:  # noqa: BLE001
            return "bad signature"
        return "ok"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _request(order_no: str = "240501000000000001") -> PaymentRequest:
    return PaymentRequest(order_no=order_no, amount=1234, subject="测试", notify_url="http://x/pay/notify/wechatpay",
                          return_url="http://x/shop/order/t")


def test_wechat_create_payment_against_the_simulator(app, client, product):
    with WechatSimulator("signed") as sim:
        h.setup_wechat(api_base=sim.url)
        # when a payment is created directly
        start = payments.get_channel("wechatpay").create_payment(_request())
        assert start.code_url == "weixin://wxpay/bizpayurl?pr=SIMULATED"
        assert start.pay_url == "/pay/wechatpay/qr/240501000000000001"
        sent = json.loads(sim.seen[-1]["body"])
        assert sim.seen[-1]["verdict"] == "ok" and sim.seen[-1]["path"] == "/v3/pay/transactions/native"
        assert sent["amount"] == {"total": 1234, "currency": "CNY"} and sent["mchid"] == h.WECHAT_MCHID
        # and through the storefront API
        r = client.post("/shop/api/orders", json={"product_id": product.id, "quantity": 1, "contact": "a@b.cn",
                                                  "query_password": "secret-123", "channel": "wechatpay"})
        assert r.status_code == 201, r.get_data(as_text=True)
        assert r.get_json()["pay_url"].endswith(f"/pay/wechatpay/qr/{r.get_json()['order_no']}")
        assert json.loads(sim.seen[-1]["body"])["out_trade_no"] == r.get_json()["order_no"]


@pytest.mark.parametrize("mode", ["unsigned", "wrong_key"])
def test_wechat_create_payment_refuses_an_answer_not_signed_by_the_platform(app, product, mode):
    with WechatSimulator(mode) as sim:
        h.setup_wechat(api_base=sim.url)
        with pytest.raises(KamengError, match="not signed"):
            payments.get_channel("wechatpay").create_payment(_request())
        assert sim.seen[-1]["verdict"] == "ok"  # our request was fine; the answer was not


def test_wechat_simulator_refuses_a_request_signed_with_another_merchant_key(app, product):
    with WechatSimulator("signed") as sim:
        h.setup_wechat(api_base=sim.url, private_key=h.keys()["stranger"][0])
        with pytest.raises(KamengError, match="HTTP 401"):
            payments.get_channel("wechatpay").create_payment(_request())
        assert sim.seen[-1]["verdict"] == "bad signature"


def test_alipay_notification_for_another_seller_is_refused_once_our_pid_is_set(app, client, product):
    h.setup_alipay(seller_id="2088000000000002")
    order = h.guest_order(product, "alipay")
    assert_refused(client, "alipay", lambda: client.post("/pay/notify/alipay", data=h.alipay_form(
        order.order_no, h.trade_no("2024"), order.amount, seller_id="2088999999999999")))
    r = client.post("/pay/notify/alipay", data=h.alipay_form(order.order_no, h.trade_no("2024"), order.amount))
    assert r.get_data(as_text=True) == "success" and h.order_state(order.order_no) == "delivered"
