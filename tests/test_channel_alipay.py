"""The Alipay adapter (app/payments/channels/alipay.py) against the local Alipay gateway simulator
(app/payments/simulators/alipay.py), over real HTTP on 127.0.0.1. No database.

A tiny receiver (serve() of a WSGI callable) is the notify URL: it records what Alipay posts and answers what
each test asks. The simulator and its registered merchant keys live for the module; every test resets it.
"""
from __future__ import annotations

import base64
import csv
import io
import json
import threading
import time
import uuid
import zipfile
from datetime import date, datetime, timedelta
from types import SimpleNamespace
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from werkzeug.wrappers import Request, Response

from app.network.simulators import serve
from app.payments.channels import rsa
from app.payments.channels.alipay import CHINA, AlipayChannel, content_to_sign, signed_node
from app.payments.channels.base import (
    HTTP_TIMEOUT_SECONDS,
    BadNotification,
    ChannelError,
    ChannelUnavailable,
    PaymentRequest,
    RefundRequest,
)
from app.payments.simulators.alipay import AlipaySimulator, _GbkName, generate_keypair, merchant_settings


class Receiver:
    """The merchant's notify URL: records every POST, answers from `answers` (per path, in order), then
    `success`."""

    def __init__(self):
        self.lock = threading.Lock()
        self.posts: dict[str, list[dict]] = {}
        self.answers: dict[str, list[tuple[int, str]]] = {}

    def __call__(self, environ, start_response):
        request = Request(environ)
        body = request.get_data(cache=True)
        with self.lock:
            self.posts.setdefault(request.path, []).append(
                {"form": request.form.to_dict(), "body": body, "headers": dict(request.headers)})
            queue = self.answers.get(request.path) or []
            status, text = queue.pop(0) if queue else (200, "success")
        return Response(text, status=status, content_type="text/plain")(environ, start_response)

    def wait(self, path: str, count: int, timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                got = list(self.posts.get(path, []))
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(f"{len(got)} notifications at {path}, expected {count}")


@pytest.fixture(scope="module")
def env():
    simulator = AlipaySimulator()
    simulator.notify_delays = (0.0, 0.1, 0.2, 0.3, 0.5, 0.5)
    server, url = serve(simulator)
    receiver = Receiver()
    receiver_server, receiver_url = serve(receiver)
    settings = merchant_settings(url)
    yield SimpleNamespace(sim=simulator, url=url, settings=settings, receiver=receiver, receiver_url=receiver_url)
    server.shutdown()
    receiver_server.shutdown()


@pytest.fixture
def gw(env):
    assert requests.post(f"{env.url}/_sim/reset", timeout=5).status_code == 200
    env.sim.bill_url_ttl = 30.0
    env.channel = AlipayChannel.from_settings({**env.settings, "timeout": 1})
    env.notify_path = f"/notify/{uuid.uuid4().hex}"
    return env


# --- helpers -------------------------------------------------------------------------------------------------

def order_no() -> str:
    return "K" + uuid.uuid4().hex[:20].upper()


def create(gw, amount: int = 1234, expires_at: datetime | None = None, number: str | None = None):
    number = number or order_no()
    start = gw.channel.create_payment(PaymentRequest(
        order_no=number, amount=amount, subject="点卡 100 元", notify_url=gw.receiver_url + gw.notify_path,
        return_url="https://shop.example/pay/return/" + number, expires_at=expires_at))
    return number, start


def open_page(start) -> requests.Response:
    return requests.get(start.pay_url, timeout=5, allow_redirects=False)


def sim_pay(gw, number: str, **payload) -> requests.Response:
    return requests.post(f"{gw.url}/_sim/pay/{number}", json=payload, timeout=5)


def paid_order(gw, amount: int = 1234) -> tuple[str, str]:
    """An order the buyer opened and paid; its notification answered. (out_trade_no, trade_no)."""
    number, start = create(gw, amount)
    assert open_page(start).status_code == 200
    r = sim_pay(gw, number)
    assert r.status_code == 200, r.text
    return number, r.json()["trade_no"]


def behave(gw, **kw) -> dict:
    r = requests.post(f"{gw.url}/_sim/behaviour", json=kw, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def sim_list(gw, what: str) -> list[dict]:
    return requests.get(f"{gw.url}/_sim/{what}", timeout=5).json()


def sim_order(gw, number: str) -> dict:
    return next(o for o in sim_list(gw, "orders") if o["out_trade_no"] == number)


def refund_request(number: str, trade_no: str, amount: int, total: int, out_refund_no: str | None = None):
    return RefundRequest(out_trade_no=number, trade_no=trade_no, out_refund_no=out_refund_no or "R" + number,
                         amount=amount, total=total, reason="买家申请退款", notify_url="")


def public_of(private_pem: str) -> str:
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def raw_call(gw, method: str, biz: dict, *, private_key: str | None = None, tamper: dict | None = None,
             **override) -> requests.Response:
    """An API call built by hand (so a test can break one thing in it)."""
    params = {"app_id": gw.settings["app_id"], "method": method, "format": "JSON", "charset": "utf-8",
              "sign_type": "RSA2", "timestamp": datetime.now(CHINA).strftime("%Y-%m-%d %H:%M:%S"), "version": "1.0",
              "biz_content": json.dumps(biz, separators=(",", ":"))}
    params.update(override)
    params["sign"] = rsa.sign(private_key or gw.settings["private_key"], content_to_sign(params))
    params.update(tamper or {})
    return requests.post(gw.settings["gateway"], data=params, timeout=5)


def node_of(response: requests.Response, method: str, gw) -> dict:
    return signed_node(response.text, method, gw.settings["alipay_public_key"])


# --- creating and paying -------------------------------------------------------------------------------------

def test_create_payment_is_a_signed_page_pay_url_with_time_expire(gw):
    expires = datetime(2030, 5, 1, 4, 30, 15)  # naive UTC
    number, start = create(gw, 1234, expires_at=expires)
    parts = urlsplit(start.pay_url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == gw.settings["gateway"]
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    assert params["method"] == "alipay.trade.page.pay" and params["sign_type"] == "RSA2"
    assert params["app_id"] == gw.settings["app_id"] and params["charset"] == "utf-8"
    datetime.strptime(params["timestamp"], "%Y-%m-%d %H:%M:%S")
    biz = json.loads(params["biz_content"])
    assert biz == {"out_trade_no": number, "product_code": "FAST_INSTANT_TRADE_PAY", "total_amount": "12.34",
                   "subject": "点卡 100 元", "time_expire": "2030-05-01 12:30:15"}  # China time
    assert start.meta == {} and start.code_url is None and start.form is None
    content = "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "sign" and params[k] != "")
    assert rsa.verify(public_of(gw.settings["private_key"]), content, params["sign"])
    assert not rsa.verify(gw.settings["alipay_public_key"], content, params["sign"])
    # the buyer's browser opens it: the cashier page of that trade
    page = open_page(start)
    assert page.status_code == 200 and "付款" in page.text and "12.34" in page.text
    order = sim_order(gw, number)
    assert order["state"] == "waiting" and order["amount"] == 1234 and order["time_expire"] == "2030-05-01 12:30:15"


def test_buyer_pays_and_the_notification_verifies(gw):
    number, start = create(gw, 1234)
    assert sim_pay(gw, number).status_code == 404  # never opened: Alipay has no such trade
    assert open_page(start).status_code == 200
    paid = sim_pay(gw, number)
    assert paid.status_code == 200 and paid.json()["amount"] == 1234
    post = gw.receiver.wait(gw.notify_path, 1)[0]
    form = post["form"]
    assert form["notify_type"] == "trade_status_sync" and form["trade_status"] == "TRADE_SUCCESS"
    assert form["total_amount"] == "12.34" and form["app_id"] == gw.settings["app_id"]
    for name in ("notify_time", "notify_id", "sign_type", "sign", "buyer_id", "seller_id", "receipt_amount",
                 "gmt_payment"):
        assert form.get(name), name
    note = gw.channel.verify_notification(post["headers"], form, post["body"])
    assert (note.order_no, note.trade_no, note.amount, note.currency, note.succeeded) == (
        number, paid.json()["trade_no"], 1234, "CNY", True)
    assert gw.channel.success_answer().body == "success"
    time.sleep(0.1)
    order = sim_order(gw, number)
    assert order["notify_status"] == "answered" and order["notifications_sent"] == 1
    assert sim_pay(gw, number).status_code == 409  # paid already


def test_cashier_button_pays_and_returns_the_browser_signed(gw):
    number, start = create(gw, 500)
    page = open_page(start)
    action = page.text.split('action="', 1)[1].split('"', 1)[0]
    r = requests.post(gw.url + action, data={"pay": "1"}, timeout=5, allow_redirects=False)
    assert r.status_code == 302
    location = urlsplit(r.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == "https://shop.example/pay/return/" + number
    back = dict(parse_qsl(location.query))
    assert back["method"] == "alipay.trade.page.pay.return" and back["out_trade_no"] == number
    assert back["total_amount"] == "5.00"
    assert rsa.verify(gw.settings["alipay_public_key"], content_to_sign(back, ("sign", "sign_type")), back["sign"])
    post = gw.receiver.wait(gw.notify_path, 1)[0]
    assert gw.channel.verify_notification({}, post["form"], post["body"]).trade_no == back["trade_no"]
    # the button again: no second payment
    assert requests.post(gw.url + action, data={"pay": "1"}, timeout=5, allow_redirects=False).status_code == 409


def test_tampered_or_foreign_notifications_are_refused(gw):
    number, _ = paid_order(gw)
    post = gw.receiver.wait(gw.notify_path, 1)[0]
    form = post["form"]
    gw.channel.verify_notification({}, form, post["body"])  # the genuine one passes (the checks below can fail)
    with pytest.raises(BadNotification):
        gw.channel.verify_notification({}, {**form, "total_amount": "12.35"}, b"")
    with pytest.raises(BadNotification):
        gw.channel.verify_notification({}, {**form, "out_trade_no": order_no()}, b"")
    stranger = generate_keypair()[0]
    forged = {k: v for k, v in form.items() if k != "sign"}
    forged["sign"] = rsa.sign(stranger, content_to_sign(forged, ("sign", "sign_type")))
    with pytest.raises(BadNotification):
        gw.channel.verify_notification({}, forged, b"")
    # the simulator's own tampering modes
    for mode, path in (("amount", "/tamper-amount"), ("app_id", "/tamper-app")):
        behave(gw, notify_tamper=mode)
        gw.notify_path = path + uuid.uuid4().hex
        paid_order(gw)
        bad = gw.receiver.wait(gw.notify_path, 1)[0]
        with pytest.raises(BadNotification):
            gw.channel.verify_notification({}, bad["form"], bad["body"])


def test_notifications_are_resent_until_the_body_is_exactly_success(gw):
    gw.receiver.answers[gw.notify_path] = [(200, "failure"), (500, "success"), (200, "success\n")]
    number, _ = paid_order(gw)
    posts = gw.receiver.wait(gw.notify_path, 4, timeout=6)
    assert len({p["form"]["notify_id"] for p in posts}) == 1  # the same notification, resent
    time.sleep(0.1)
    order = sim_order(gw, number)
    assert order["notifications_sent"] == 4 and order["notify_status"] == "answered"
    # extra copies after the answer, and a lost notification
    gw.notify_path = "/dup" + uuid.uuid4().hex
    number2, start2 = create(gw)
    open_page(start2)
    assert sim_pay(gw, number2, duplicates=2).status_code == 200
    assert len(gw.receiver.wait(gw.notify_path, 3)) == 3
    gw.notify_path = "/lost" + uuid.uuid4().hex
    number3, start3 = create(gw)
    open_page(start3)
    assert sim_pay(gw, number3, notify="drop").json()["notify_status"] == "dropped"
    time.sleep(0.3)
    assert gw.receiver.posts.get(gw.notify_path) is None
    assert gw.channel.query_payment(number3, {}).state == "paid"  # found by query instead


# --- the gateway's checks ------------------------------------------------------------------------------------

def test_simulator_refuses_badly_signed_and_malformed_requests(gw):
    number, _ = paid_order(gw)
    biz = {"out_trade_no": number}
    good = raw_call(gw, "alipay.trade.query", biz)
    assert node_of(good, "alipay.trade.query", gw)["code"] == "10000"
    cases = {
        "isv.invalid-signature": dict(tamper={"biz_content": json.dumps({"out_trade_no": order_no()})}),
        "isv.invalid-signature-type": dict(sign_type="RSA"),
        "isv.invalid-timestamp": dict(timestamp="2024/05/01 12:00:00"),
        "isv.invalid-charset": dict(charset="gbk"),
        "isv.missing-signature": dict(tamper={"sign": ""}),
    }
    for sub_code, kw in cases.items():
        node = node_of(raw_call(gw, "alipay.trade.query", biz, **kw), "alipay.trade.query", gw)
        assert (node["code"][:3], node["sub_code"]) == ("400", sub_code), (sub_code, node)
    stale = (datetime.now(CHINA) - timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S")
    assert node_of(raw_call(gw, "alipay.trade.query", biz, timestamp=stale), "alipay.trade.query",
                   gw)["sub_code"] == "isv.invalid-timestamp"
    # another key than the registered one: refused; the adapter reports a definite refusal, not "unknown"
    stranger = AlipayChannel.from_settings({**gw.settings, "private_key": generate_keypair()[0], "timeout": 1})
    with pytest.raises(ChannelError, match="isv.invalid-signature") as caught:
        stranger.query_payment(number, {})
    assert not isinstance(caught.value, ChannelUnavailable)
    # an unknown app: the gateway cannot sign for it; unsigned -> unknown to us
    foreign = AlipayChannel.from_settings({**gw.settings, "app_id": "2021000000000001", "timeout": 1})
    with pytest.raises(ChannelUnavailable, match="isv.invalid-app-id"):
        foreign.query_payment(number, {})
    # amounts: yuan with at most two decimals, within the order
    r = raw_call(gw, "alipay.trade.refund", {"out_trade_no": number, "refund_amount": "1.234", "out_request_no": "X"})
    assert node_of(r, "alipay.trade.refund", gw)["sub_code"] == "ACQ.INVALID_PARAMETER"
    r = raw_call(gw, "alipay.trade.refund", {"out_trade_no": number, "refund_amount": "1234", "out_request_no": "X"})
    assert node_of(r, "alipay.trade.refund", gw)["sub_code"] == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"  # 1234 yuan
    assert sim_list(gw, "refunds") == []
    # a page pay URL altered after signing shows the error page and records nothing
    other, start = create(gw, 100)
    assert open_page(start).status_code == 200
    tampered = start.pay_url.replace("1.00", "0.01")
    assert tampered != start.pay_url
    page = requests.get(tampered.replace(other, order_no()), timeout=5)
    assert page.status_code == 400 and "isv.invalid-signature" in page.text
    assert len(sim_list(gw, "orders")) == 2


def test_replies_are_verified_over_the_raw_node_and_a_repeated_node_is_refused(gw):
    key = gw.sim.private_key
    public = gw.settings["alipay_public_key"]
    node = '{"code":"10000","msg":"Success","out_trade_no":"A1","trade_status":"WAIT_BUYER_PAY","total_amount":"1.00"}'
    sign = rsa.sign(key, node)
    text = '{"alipay_trade_query_response":' + node + ',"sign":"' + sign + '"}'
    assert signed_node(text, "alipay.trade.query", public)["trade_status"] == "WAIT_BUYER_PAY"
    # the same JSON re-serialized (spaces) does not verify: the raw text is what was signed
    spaced = '{"alipay_trade_query_response": ' + json.dumps(json.loads(node)) + ', "sign": "' + sign + '"}'
    with pytest.raises(ChannelUnavailable, match="signature"):
        signed_node(spaced, "alipay.trade.query", public)
    # a second node appended (a JSON parser would keep the last one): refused
    forged = node.replace("WAIT_BUYER_PAY", "TRADE_SUCCESS")
    repeated = text[:-1] + ',"alipay_trade_query_response":' + forged + "}"
    assert json.loads(repeated)["alipay_trade_query_response"]["trade_status"] == "TRADE_SUCCESS"
    with pytest.raises(ChannelUnavailable, match="repeats"):
        signed_node(repeated, "alipay.trade.query", public)
    with pytest.raises(ChannelUnavailable, match="unsigned"):
        signed_node('{"alipay_trade_query_response":' + node + "}", "alipay.trade.query", public)
    with pytest.raises(ChannelUnavailable):
        signed_node("<html>busy</html>", "alipay.trade.query", public)
    # the simulator's unsigned / badly signed modes, and a gateway that is not there
    number, trade_no = paid_order(gw)
    for mode in ("none", "bad"):
        behave(gw, reply_sign=mode)
        with pytest.raises(ChannelUnavailable):
            gw.channel.query_payment(number, {})
        with pytest.raises(ChannelUnavailable):
            gw.channel.refund(refund_request(number, trade_no, 100, 1234))
        assert gw.channel.query_refund(refund_request(number, trade_no, 100, 1234)).status == "processing"
    behave(gw, reply_sign="ok")
    dead = AlipayChannel.from_settings({**gw.settings, "gateway": "http://127.0.0.1:9/gateway.do", "timeout": 1})
    with pytest.raises(ChannelUnavailable):
        dead.close_payment(number, {})


# --- query and close -----------------------------------------------------------------------------------------

def test_query_answers_not_found_waiting_paid(gw):
    number, start = create(gw, 2500)
    assert gw.channel.query_payment(number, {}).state == "not_found"  # the buyer never opened the cashier
    open_page(start)
    waiting = gw.channel.query_payment(number, {})
    assert waiting.state == "waiting" and waiting.amount is None
    trade_no = sim_pay(gw, number).json()["trade_no"]
    paid = gw.channel.query_payment(number, {})
    assert (paid.state, paid.trade_no, paid.amount, paid.currency) == ("paid", trade_no, 2500, "CNY")
    note = paid.as_notification(number)
    assert note.succeeded and note.amount == 2500 and note.trade_no == trade_no
    assert sim_order(gw, number)["queries"] == 2  # the first query found no trade to count


def test_close_unopened_waiting_and_paid(gw):
    unopened, _ = create(gw)
    assert gw.channel.close_payment(unopened, {}) is True  # ACQ.TRADE_NOT_EXIST: nothing to pay
    waiting, start = create(gw)
    open_page(start)
    assert gw.channel.close_payment(waiting, {}) is True
    assert gw.channel.query_payment(waiting, {}).state == "closed"
    assert sim_pay(gw, waiting).status_code == 409
    assert open_page(start).status_code == 400  # the cashier shows ACQ.TRADE_HAS_CLOSE
    assert gw.channel.close_payment(waiting, {}) is True  # closing again: still closed
    paid, _ = paid_order(gw)
    assert gw.channel.close_payment(paid, {}) is False
    assert gw.channel.query_payment(paid, {}).state == "paid"
    assert sim_order(gw, waiting)["closes"] == 2


def test_an_order_past_its_time_expire_cannot_be_paid(gw):
    expires = datetime.utcnow() + timedelta(seconds=1.2)
    number, start = create(gw, expires_at=expires)
    assert open_page(start).status_code == 200
    time.sleep(max(0.0, (expires.replace(microsecond=0) - datetime.utcnow()).total_seconds()) + 0.1)
    assert sim_pay(gw, number).status_code == 409
    assert gw.channel.query_payment(number, {}).state == "closed"


# --- refunds -------------------------------------------------------------------------------------------------

def test_refunds_succeed_and_never_exceed_the_total(gw):
    number, trade_no = paid_order(gw, 1000)
    first = gw.channel.refund(refund_request(number, trade_no, 400, 1000, "R1"))
    assert first.status == "succeeded", first
    too_much = gw.channel.refund(refund_request(number, trade_no, 700, 1000, "R2"))
    assert too_much.status == "failed" and "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL" in too_much.message
    rest = gw.channel.refund(refund_request(number, trade_no, 600, 1000, "R3"))
    assert rest.status == "succeeded"
    assert gw.channel.query_refund(refund_request(number, trade_no, 600, 1000, "R3")).status == "succeeded"
    refunded = gw.channel.query_payment(number, {})
    assert (refunded.state, refunded.amount, refunded.trade_no) == ("refunded", 1000, trade_no)
    assert gw.channel.close_payment(number, {}) is False
    done = {r["out_refund_no"]: r for r in sim_list(gw, "refunds")}
    assert done["R1"]["status"] == done["R3"]["status"] == "succeeded" and "R2" not in done  # refused outright
    assert sim_order(gw, number)["refunded"] == 1000


def test_refund_is_idempotent_on_out_refund_no(gw):
    number, trade_no = paid_order(gw, 1000)
    request = refund_request(number, trade_no, 300, 1000)
    assert gw.channel.refund(request).status == "succeeded"
    again = gw.channel.refund(request)  # fund_change=N: confirmed by the refund query
    assert again.status == "succeeded", again
    [refund] = sim_list(gw, "refunds")
    assert (refund["out_refund_no"], refund["amount"], refund["requests"], refund["status"]) == (
        request.out_refund_no, 300, 2, "succeeded")
    assert sim_order(gw, number)["refunded"] == 300


def test_refund_timeout_is_unknown_and_the_retry_pays_once(gw):
    number, trade_no = paid_order(gw, 1000)
    behave(gw, refund="timeout", refund_timeout_ms=1500)
    request = refund_request(number, trade_no, 1000, 1000)
    with pytest.raises(ChannelUnavailable):
        gw.channel.refund(request)  # the channel times out after 1 s; Alipay did refund
    behave(gw, refund="success")
    retry = gw.channel.refund(request)
    assert retry.status == "succeeded", retry
    [refund] = sim_list(gw, "refunds")
    assert refund["requests"] == 2 and refund["amount"] == 1000
    assert sim_order(gw, number)["refunded"] == 1000  # once


def test_refund_processing_is_settled_by_query_refund(gw):
    number, trade_no = paid_order(gw, 1000)
    behave(gw, refund="processing", refund_processing_queries=2)
    request = refund_request(number, trade_no, 250, 1000)
    started = gw.channel.refund(request)
    assert started.status == "processing" and "out_refund_no" in started.message
    assert gw.channel.query_refund(request).status == "processing"
    assert gw.channel.query_refund(request).status == "succeeded"
    [refund] = sim_list(gw, "refunds")
    assert refund["status"] == "succeeded" and refund["queries"] == 3 and refund["requests"] == 1
    assert sim_order(gw, number)["refunded"] == 250


def test_refund_refusals_fail_or_need_staff_and_nothing_moves(gw):
    number, trade_no = paid_order(gw, 1000)
    behave(gw, refund="fail")
    request = refund_request(number, trade_no, 100, 1000)
    failed = gw.channel.refund(request)
    assert failed.status == "failed" and "ACQ.REASON_TRADE_BEEN_FREEZEN" in failed.message
    assert gw.channel.query_refund(request).status == "processing"  # absent: not done (see the adapter)
    behave(gw, refund="abnormal")
    abnormal = gw.channel.refund(refund_request(number, trade_no, 100, 1000, "R-balance"))
    assert abnormal.status == "abnormal" and "SELLER_BALANCE_NOT_ENOUGH" in abnormal.message
    assert sim_order(gw, number)["refunded"] == 0
    assert {r["status"] for r in sim_list(gw, "refunds")} == {"failed", "abnormal"}
    behave(gw, refund="success")
    assert gw.channel.refund(request).status == "succeeded"  # the same out_refund_no, tried anew
    unpaid, start = create(gw)
    open_page(start)
    assert gw.channel.refund(refund_request(unpaid, "", 100, 1234)).status == "failed"
    with pytest.raises(BadNotification, match="no refund notifications"):
        gw.channel.verify_refund_notification({}, {"out_request_no": "x"}, b"")


# --- statements ----------------------------------------------------------------------------------------------

def test_download_statement_shows_payments_refunds_and_planted_differences(gw):
    a, trade_a = paid_order(gw, 1000)
    b, trade_b = paid_order(gw, 2000)
    assert gw.channel.refund(refund_request(b, trade_b, 500, 2000)).status == "succeeded"
    requests.post(f"{gw.url}/_sim/bill/plant", json={"out_trade_no": a, "amount": 999}, timeout=5)
    ghost = order_no()
    requests.post(f"{gw.url}/_sim/bill/plant", json={"out_trade_no": ghost, "amount": 4321}, timeout=5)
    today = datetime.now(CHINA).date()
    lines = gw.channel.download_statement(today)
    got = sorted((line.order_no, line.kind, line.amount) for line in lines)
    assert got == sorted([(a, "payment", 999), (b, "payment", 2000), (b, "refund", 500), (ghost, "payment", 4321)])
    trade_of = {(line.order_no, line.kind): line.trade_no for line in lines}
    assert trade_of[(a, "payment")] == trade_a and trade_of[(b, "refund")] == trade_b
    assert trade_of[(ghost, "payment")].startswith(today.strftime("%Y%m%d"))
    assert gw.channel.download_statement(date(2001, 1, 1)) == []  # isp.bill_not_exist
    gw.sim.bill_url_ttl = 0.0  # the URL dies before we fetch it
    with pytest.raises(ChannelUnavailable, match="30 s"):
        gw.channel.download_statement(today)


def _bill(rows: list[list[str]]) -> bytes:
    header = ("支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,"
              "订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,"
              "券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注")
    out = io.StringIO()
    out.write("#支付宝业务明细查询\r\n#账号：[20880000000000000156]\r\n"
              "#起始日期：[2026年01月01日 00:00:00]   终止日期：[2026年01月02日 00:00:00]\r\n"
              "#-----------------------------------------业务明细列表----------------------------------------\r\n"
              + header + "\r\n")
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    out.write("#-----------------------------------------业务明细列表结束------------------------------------\r\n"
              "#交易合计：2笔，商家实收共30.00元，商家优惠共0.00元\r\n"
              "#退款合计：1笔，商家实收退款共-5.00元，商家优惠退款共0.00元\r\n#导出时间：[2026年01月02日 09:00:00]\r\n")
    return out.getvalue().encode("gbk")


def test_parse_statement_reads_the_real_gbk_csv_and_its_zip():
    def row(trade, order, kind, total, received, request_no=""):
        return [trade + "\t", order + "\t", kind, "点卡, 面值100", "2026-01-01 10:00:00", "2026-01-01 10:00:05",
                "", "", "", "", "138****0000", total, received, "0.00", "0.00", "0.00", "0.00", "0.00", "", "0.00",
                "0.00", request_no, "0.00", "0.00", ""]
    content = _bill([row("2026010122001400000000000001", "K1", "交易", "10.00", "10.00"),
                     row("2026010122001400000000000002", "K2", "交易", "20.00", "20.00"),
                     row("2026010122001400000000000002", "K2", "退款", "20.00", "-5.00", "RK2\t")])
    with pytest.raises(UnicodeDecodeError):
        content.decode("utf-8")
    channel = AlipayChannel("", "", "")  # parsing needs no keys
    expected = [("2026010122001400000000000001", "K1", 1000, "payment"),
                ("2026010122001400000000000002", "K2", 2000, "payment"),
                ("2026010122001400000000000002", "K2", 500, "refund")]
    lines = channel.parse_statement(content)
    assert [(x.trade_no, x.order_no, x.amount, x.kind) for x in lines] == expected
    # the zip as downloaded: GBK entry names without the UTF-8 flag, the summary file beside the detail
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(_GbkName("20880000000000000156_20260101_业务明细(汇总).csv"), "#汇总\r\n".encode("gbk"))
        archive.writestr(_GbkName("20880000000000000156_20260101_业务明细.csv"), content)
    raw = buffer.getvalue()
    assert "业务明细".encode("gbk") in raw and "业务明细".encode() not in raw
    assert [(x.trade_no, x.order_no, x.amount, x.kind) for x in channel.parse_statement(raw)] == expected
    with pytest.raises(ChannelError):
        channel.parse_statement(b"a,b,c\n1,2,3\n")
    assert channel.parse_statement("#只有注释\n".encode("gbk")) == []


# --- configuration -------------------------------------------------------------------------------------------

def test_a_channel_without_keys_refuses_everything(gw):
    for missing in ("app_id", "private_key", "alipay_public_key"):
        channel = AlipayChannel.from_settings({**gw.settings, missing: ""})
        with pytest.raises(ChannelError):
            channel.create_payment(PaymentRequest("K1", 100, "x", "https://n", "https://r"))
        for call in (lambda c: c.query_payment("K1", {}), lambda c: c.close_payment("K1", {}),
                     lambda c: c.refund(refund_request("K1", "T", 1, 1)),
                     lambda c: c.query_refund(refund_request("K1", "T", 1, 1)),
                     lambda c: c.download_statement(date.today())):
            with pytest.raises(ChannelError):
                call(channel)
        with pytest.raises(BadNotification):
            channel.verify_notification({}, {"sign": "x", "app_id": gw.settings["app_id"]}, b"")
    assert sim_list(gw, "orders") == []
    assert AlipayChannel.from_settings({}).timeout == HTTP_TIMEOUT_SECONDS
    assert AlipayChannel.from_settings({"timeout": "3"}).timeout == 3
    assert AlipayChannel.from_settings({}).gateway == "https://openapi.alipay.com/gateway.do"


def test_signature_helper_is_sha256_with_rsa():
    private, public = generate_keypair()
    signature = rsa.sign(private, "a=1&b=2")
    key = serialization.load_pem_public_key(public.encode())
    key.verify(base64.b64decode(signature), b"a=1&b=2", padding.PKCS1v15(), hashes.SHA256())
