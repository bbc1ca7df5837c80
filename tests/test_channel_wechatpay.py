"""The WeChat Pay v3 adapter against its simulator, over real HTTP on 127.0.0.1 (no database).

The simulator (app/payments/simulators/wechatpay.py) checks our signatures, nonces, timestamps and integer
amounts, signs its answers and notifications with its platform key and encrypts notification resources with
our APIv3 key; a small local receiver stands in for our notify endpoints and answers as we tell it to.
"""
from __future__ import annotations

import json
import secrets
import threading
import time
from datetime import date, datetime, timedelta, timezone

import pytest
import requests
from werkzeug.wrappers import Request, Response

from app.network.simulators import serve
from app.payments.channels import rsa
from app.payments.channels.base import (
    BadNotification,
    ChannelError,
    ChannelUnavailable,
    PaymentRequest,
    RefundRequest,
)
from app.payments.channels.wechatpay import WechatPayChannel
from app.payments.simulators.wechatpay import WechatPaySimulator, _keypair, merchant_settings

CHINA = timezone(timedelta(hours=8))


class Receiver:
    """Our notify endpoint: records every POST; answers the queued statuses first, then 200 (or, with a
    `verifier`, 200 for a notification the channel accepts and 400 for one it refuses)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.received: list[dict] = []
        self.answers: list[int] = []
        self.verifier = None
        self.prefix = "/t0"

    def reset(self) -> str:
        """Forget everything; returns the new path prefix (a late resend for an earlier test is ignored)."""
        with self.lock:
            self.received, self.answers, self.verifier = [], [], None
            self.prefix = f"/t{secrets.token_hex(4)}"
            return self.prefix

    def __call__(self, environ, start_response):
        request = Request(environ)
        body = request.get_data()
        headers = dict(request.headers.items())
        with self.lock:
            if not request.path.startswith(self.prefix + "/"):
                return Response("gone", status=410)(environ, start_response)
            status = self.answers.pop(0) if self.answers else None
            verifier = self.verifier
        if status is None and verifier is not None:
            try:
                verifier(headers, {}, body)
                status = 200
            except BadNotification:
                status = 400
        status = status or 200
        with self.lock:
            self.received.append({"path": request.path[len(self.prefix):], "headers": headers, "body": body,
                                  "answered": status})
        return Response(json.dumps({"code": "SUCCESS" if status == 200 else "FAIL"}), status=status,
                        mimetype="application/json")(environ, start_response)

    def wait(self, count: int, path: str | None = None, timeout: float = 5.0) -> list[dict]:
        deadline = time.time() + timeout
        while True:
            with self.lock:
                got = [r for r in self.received if path is None or r["path"] == path]
            if len(got) >= count or time.time() > deadline:
                return got
            time.sleep(0.02)


@pytest.fixture(scope="module")
def world():
    sim = WechatPaySimulator()
    server, url = serve(sim)
    receiver = Receiver()
    rserver, rurl = serve(receiver)
    settings = {**merchant_settings(url), "timeout": 1}
    yield {"sim": sim, "url": url, "receiver": receiver, "receiver_url": rurl, "settings": settings}
    server.shutdown()
    rserver.shutdown()


@pytest.fixture
def w(world):
    control(world, "POST", "/_sim/reset")
    prefix = world["receiver"].reset()
    world["notify_url"] = f"{world['receiver_url']}{prefix}/pay/notify/wechatpay"
    world["refund_url"] = f"{world['receiver_url']}{prefix}/pay/refund-notify/wechatpay"
    world["channel"] = WechatPayChannel.from_settings(world["settings"])
    return world


def control(world, method: str, path: str, body: dict | None = None):
    with requests.Session() as session:
        session.trust_env = False
        r = session.request(method, world["url"] + path, json=body, timeout=5)
    return r


def sim_list(world, what: str) -> dict:
    key = "out_refund_no" if what == "refunds" else "out_trade_no"
    return {row[key]: row for row in control(world, "GET", f"/_sim/{what}").json()}


def order_no() -> str:
    return "26" + secrets.token_hex(8)


def start(w, fen: int = 1234, expires_at: datetime | None = None, no: str | None = None):
    no = no or order_no()
    if expires_at is None:
        expires_at = datetime.utcnow() + timedelta(minutes=15)
    began = w["channel"].create_payment(PaymentRequest(no, fen, "点卡 100 元", w["notify_url"], "http://x/r",
                                                       expires_at))
    return no, began


def paid(w, fen: int = 1234, **pay) -> tuple[str, str]:
    """An order created and paid (notification dropped unless asked): (out_trade_no, transaction_id)."""
    no, _ = start(w, fen)
    r = control(w, "POST", f"/_sim/pay/{no}", {"notify": "drop", **pay})
    assert r.status_code == 200, r.text
    return no, r.json()["trade_no"]


def refund_request(w, no: str, trade: str, fen: int, total: int = 1234, out_refund_no: str | None = None):
    return RefundRequest(out_trade_no=no, trade_no=trade, out_refund_no=out_refund_no or "RF" + secrets.token_hex(6),
                         amount=fen, total=total, reason="买家申请退款", notify_url=w["refund_url"])


def raw_call(world, method: str, path: str, body=None, *, ts: int | None = None, nonce: str | None = None,
             private_key: str | None = None, sign_body: str | None = None):
    """A request signed by hand (to send what the adapter never would)."""
    s = world["settings"]
    text = "" if body is None else (body if isinstance(body, str) else json.dumps(body, ensure_ascii=False))
    ts_s, nonce = str(int(time.time()) if ts is None else ts), nonce or secrets.token_hex(16)
    signed_text = text if sign_body is None else sign_body
    signature = rsa.sign(private_key or s["private_key"], f"{method}\n{path}\n{ts_s}\n{nonce}\n{signed_text}\n")
    auth = (f'WECHATPAY2-SHA256-RSA2048 mchid="{s["mchid"]}",nonce_str="{nonce}",signature="{signature}",'
            f'timestamp="{ts_s}",serial_no="{s["serial_no"]}"')
    with requests.Session() as session:
        session.trust_env = False
        return session.request(method, s["api_base"] + path, data=text.encode() if text else None, timeout=5,
                               headers={"Authorization": auth, "Content-Type": "application/json",
                                        "Accept": "application/json"})


def china_today() -> date:
    return datetime.now(CHINA).date()


# --- paying --------------------------------------------------------------------------------------------------

def test_create_pay_and_the_notification_verifies(w):
    # when a native payment is created
    no, began = start(w, 1234)
    # then the buyer goes to our QR page, and the QR content is WeChat's code_url
    assert began.pay_url == f"/pay/wechatpay/qr/{no}"
    assert began.code_url.startswith("weixin://wxpay/bizpayurl?pr=")
    order = sim_list(w, "orders")[no]
    assert order["amount"] == 1234 and order["state"] == "NOTPAY" and order["time_expire"].endswith("+08:00")
    # and a buyer pays
    r = control(w, "POST", f"/_sim/pay/{no}", {})
    assert r.status_code == 200 and r.json()["notify_status"] == "queued"
    trade = r.json()["trade_no"]
    # then one notification arrives, encrypted, and it verifies
    [got] = w["receiver"].wait(1)
    assert no not in got["body"].decode() and got["path"] == "/pay/notify/wechatpay"
    note = w["channel"].verify_notification(got["headers"], {}, got["body"])
    assert (note.order_no, note.trade_no, note.amount, note.currency, note.succeeded) == (no, trade, 1234, "CNY",
                                                                                          True)
    assert note.raw["event_type"] == "TRANSACTION.SUCCESS"
    # and, answered 200, it is not sent again
    time.sleep(0.35)
    assert len(w["receiver"].received) == 1 and sim_list(w, "orders")[no]["notify_answered"] is True
    # and paying twice is refused
    assert control(w, "POST", f"/_sim/pay/{no}", {}).status_code == 409


def test_a_tampered_or_foreign_notification_is_refused(w):
    no, _ = start(w)
    control(w, "POST", f"/_sim/pay/{no}", {})
    [got] = w["receiver"].wait(1)
    channel, headers, body = w["channel"], got["headers"], got["body"]
    channel.verify_notification(headers, {}, body)  # the genuine one passes
    envelope = json.loads(body)
    altered = {**envelope, "summary": envelope["summary"] + "!"}
    cases = {
        "body altered": (headers, json.dumps(altered, ensure_ascii=False).encode()),
        "unknown serial": ({**headers, "Wechatpay-Serial": "0123456789ABCDEF"}, body),
        "timestamp moved": ({**headers, "Wechatpay-Timestamp": str(int(headers["Wechatpay-Timestamp"]) - 1)}, body),
        "no signature": ({k: v for k, v in headers.items() if k != "Wechatpay-Signature"}, body),
    }
    for name, (h, b) in cases.items():
        with pytest.raises(BadNotification):
            channel.verify_notification(h, {}, b)
            pytest.fail(name)
    # another merchant's APIv3 key cannot decrypt it; another merchant id is refused
    other = WechatPayChannel.from_settings({**w["settings"], "api_v3_key": "f" * 32})
    with pytest.raises(BadNotification, match="decrypt"):
        other.verify_notification(headers, {}, body)
    with pytest.raises(BadNotification, match="another merchant"):
        WechatPayChannel.from_settings({**w["settings"], "mchid": "1999999999"}).verify_notification(headers, {},
                                                                                                     body)
    # a payment notification is not a refund notification
    with pytest.raises(BadNotification, match="not a refund notification"):
        channel.verify_refund_notification(headers, {}, body)


@pytest.mark.parametrize("mode", ["stale", "unknown_serial", "tampered"])
def test_notification_modes_are_refused_and_resent(w, mode):
    # given the simulator sends stale / unknown-serial / tampered notifications, and our endpoint verifies
    control(w, "POST", "/_sim/behaviour", {"notify_mode": mode})
    w["receiver"].verifier = w["channel"].verify_notification
    no, _ = start(w)
    control(w, "POST", f"/_sim/pay/{no}", {})
    # then each copy is refused (400) and WeChat tries again
    got = w["receiver"].wait(2)
    assert len(got) == 2 and {g["answered"] for g in got} == {400}
    for g in got:
        with pytest.raises(BadNotification):
            w["channel"].verify_notification(g["headers"], {}, g["body"])
    assert sim_list(w, "orders")[no]["notify_answered"] is False
    if mode == "stale":
        assert int(got[0]["headers"]["Wechatpay-Timestamp"]) < time.time() - 300


def test_notifications_are_resent_until_answered_and_duplicates_share_the_id(w):
    # given our endpoint fails twice (500, then 400)
    w["receiver"].answers = [500, 400]
    no, _ = start(w)
    control(w, "POST", f"/_sim/pay/{no}", {"duplicates": 1})
    # then WeChat resends: the third try is answered, then one extra copy arrives (duplicates: 1)
    got = w["receiver"].wait(4)
    assert [g["answered"] for g in got] == [500, 400, 200, 200]
    notes = [w["channel"].verify_notification(g["headers"], {}, g["body"]) for g in got]
    assert len({n.raw["id"] for n in notes}) == 1 and len({n.trade_no for n in notes}) == 1
    assert len({g["headers"]["Wechatpay-Nonce"] for g in got}) == 4  # each try signed anew
    time.sleep(0.6)
    assert len(w["receiver"].received) == 4
    assert sim_list(w, "orders")[no]["notifications_sent"] == 4


def test_a_lost_notification_is_found_by_query(w):
    no, _ = start(w, 990)
    # while unpaid the query says waiting
    status = w["channel"].query_payment(no, {})
    assert status.state == "waiting" and status.trade_no is None
    r = control(w, "POST", f"/_sim/pay/{no}", {"notify": "drop"})
    assert r.json()["notify_status"] == "dropped"
    time.sleep(0.1)
    assert w["receiver"].received == []
    # then the query says paid, with what the notification would have said
    status = w["channel"].query_payment(no, {})
    assert (status.state, status.trade_no, status.amount) == ("paid", r.json()["trade_no"], 990)
    note = status.as_notification(no)
    assert note.succeeded and note.amount == 990
    assert w["channel"].query_payment("26nosuchorder0", {}).state == "not_found"
    assert sim_list(w, "orders")[no]["queries"] == 2


def test_close_an_unpaid_order_and_refuse_to_close_a_paid_one(w):
    no, _ = start(w)
    assert w["channel"].close_payment(no, {}) is True
    assert w["channel"].close_payment(no, {}) is True  # closing again is fine
    assert w["channel"].query_payment(no, {}).state == "closed"
    assert control(w, "POST", f"/_sim/pay/{no}", {}).status_code == 409
    # a paid order cannot be closed: WeChat answers ORDERPAID
    paid_no, _ = paid(w)
    assert w["channel"].close_payment(paid_no, {}) is False
    assert sim_list(w, "orders")[paid_no]["closes"] == 1


def test_an_expired_order_cannot_be_paid(w):
    no, _ = start(w, expires_at=datetime.utcnow() - timedelta(seconds=5))
    assert control(w, "POST", f"/_sim/pay/{no}", {}).status_code == 409
    assert control(w, "POST", "/_sim/pay/26neverseen0000", {}).status_code == 404


# --- the simulator checks what we send ---------------------------------------------------------------------

def test_the_simulator_refuses_badly_signed_requests(w):
    # another key under our serial: 401, and no order is created
    stranger_private, _ = _keypair()
    forged = WechatPayChannel.from_settings({**w["settings"], "private_key": stranger_private})
    no = order_no()
    with pytest.raises(ChannelUnavailable, match="HTTP 401"):
        forged.create_payment(PaymentRequest(no, 100, "x", w["notify_url"], "http://x/r"))
    assert no not in sim_list(w, "orders")
    body = {"appid": w["settings"]["appid"], "mchid": w["settings"]["mchid"], "description": "x",
            "out_trade_no": no, "notify_url": w["notify_url"], "amount": {"total": 100, "currency": "CNY"}}
    path = "/v3/pay/transactions/native"
    # a body changed after signing, a stale timestamp, a reused nonce: 401 SIGN_ERROR, unsigned
    changed = raw_call(w, "POST", path, body, sign_body=json.dumps({**body, "amount": {"total": 1}}))
    stale = raw_call(w, "POST", path, body, ts=int(time.time()) - 301)
    nonce = secrets.token_hex(16)
    first = raw_call(w, "POST", path, body, nonce=nonce)
    again = raw_call(w, "POST", path, body, nonce=nonce)
    assert first.status_code == 200
    for r in (changed, stale, again):
        assert r.status_code == 401 and r.json()["code"] == "SIGN_ERROR", r.text
        assert "Wechatpay-Signature" not in r.headers


@pytest.mark.parametrize("total", [10.00, "1000", 10.5, True, 0])
def test_the_simulator_wants_integer_fen(w, total):
    body = {"appid": w["settings"]["appid"], "mchid": w["settings"]["mchid"], "description": "x",
            "out_trade_no": order_no(), "notify_url": w["notify_url"], "amount": {"total": total, "currency": "CNY"}}
    r = raw_call(w, "POST", "/v3/pay/transactions/native", body)
    assert r.status_code == 400 and r.json()["code"] == "PARAM_ERROR", r.text
    # the refusal is signed by the platform (so the adapter may act on it)
    assert w["channel"]._response_signed(r)


def test_refund_total_must_be_the_order_total(w):
    no, trade = paid(w, 1234)
    body = {"transaction_id": trade, "out_refund_no": "RF" + secrets.token_hex(4),
            "amount": {"refund": 100, "total": 1000, "currency": "CNY"}}
    r = raw_call(w, "POST", "/v3/refund/domestic/refunds", body)
    assert r.status_code == 400 and r.json()["code"] == "INVALID_REQUEST"
    r = raw_call(w, "POST", "/v3/refund/domestic/refunds", {**body, "amount": {"refund": "100", "total": 1234,
                                                                                "currency": "CNY"}})
    assert r.status_code == 400 and r.json()["code"] == "PARAM_ERROR"
    # through the adapter, a refused refund is a definite failure
    result = w["channel"].refund(refund_request(w, no, trade, 100, total=1000))
    assert result.status == "failed" and "INVALID_REQUEST" in result.message
    assert sim_list(w, "refunds") == {}


def test_answers_not_signed_by_a_known_platform_key_are_unknown(w):
    # our configured platform key is not the simulator's: every answer is untrusted
    other_public = _keypair()[1]
    serial = next(iter(w["settings"]["platform_keys"]))
    channel = WechatPayChannel.from_settings({**w["settings"], "platform_keys": {serial: other_public}})
    with pytest.raises(ChannelUnavailable, match="not signed"):
        channel.create_payment(PaymentRequest(order_no(), 100, "x", w["notify_url"], "http://x/r"))
    with pytest.raises(ChannelUnavailable):
        channel.query_payment("26nosuchorder0", {})  # even a 404 is not believed unsigned
    # a gateway that does not answer
    down = WechatPayChannel.from_settings({**w["settings"], "api_base": "http://127.0.0.1:9"})
    with pytest.raises(ChannelUnavailable, match="unreachable"):
        down.query_payment("26nosuchorder0", {})


def test_a_channel_without_keys_refuses_everything(w):
    empty = WechatPayChannel.from_settings({})
    with pytest.raises(ChannelError, match="not configured"):
        empty.create_payment(PaymentRequest(order_no(), 100, "x", w["notify_url"], "http://x/r"))
    with pytest.raises(ChannelError, match="not configured"):
        empty.refund(RefundRequest("a", "b", "c", 1, 1, "r", w["refund_url"]))
    with pytest.raises(ChannelError, match="not configured"):
        empty.download_statement(china_today())
    with pytest.raises(BadNotification):
        empty.verify_notification({}, {}, b"{}")
    with pytest.raises(BadNotification):
        empty.verify_refund_notification({}, {}, b"{}")


def test_a_wechat_pay_public_key_id_works_like_a_certificate_serial():
    sim = WechatPaySimulator(platform_serial="PUB_KEY_ID_0114232134912410000000000000")
    server, url = serve(sim)
    try:
        settings = merchant_settings(url)
        assert list(settings["platform_keys"]) == ["PUB_KEY_ID_0114232134912410000000000000"]
        channel = WechatPayChannel.from_settings({**settings, "platform_keys": json.dumps(settings["platform_keys"]),
                                                  "timeout": 1})
        no = order_no()
        channel.create_payment(PaymentRequest(no, 100, "x", "http://127.0.0.1:9/n", "http://x/r"))
        assert channel.query_payment(no, {}).state == "waiting"
    finally:
        server.shutdown()


# --- refunds ---------------------------------------------------------------------------------------------------

def test_refund_succeeds_once_however_often_asked(w):
    no, trade = paid(w, 1234)
    req = refund_request(w, no, trade, 1000)
    first = w["channel"].refund(req)
    again = w["channel"].refund(req)
    assert first.status == again.status == "succeeded"
    assert first.channel_refund_no and first.channel_refund_no == again.channel_refund_no
    assert first.meta == {"refund_id": first.channel_refund_no}
    refunds = sim_list(w, "refunds")
    assert list(refunds) == [req.out_refund_no]
    assert refunds[req.out_refund_no]["requests"] == 2 and refunds[req.out_refund_no]["amount"] == 1000
    assert w["channel"].query_refund(req).status == "succeeded"
    assert w["channel"].query_payment(no, {}).state == "refunded"
    # the REFUND.SUCCESS notification verifies
    [got] = w["receiver"].wait(1, path="/pay/refund-notify/wechatpay")
    notice = w["channel"].verify_refund_notification(got["headers"], {}, got["body"])
    assert (notice.out_refund_no, notice.status, notice.amount, notice.channel_refund_no) == (
        req.out_refund_no, "succeeded", 1000, first.channel_refund_no)
    with pytest.raises(BadNotification, match="not a payment notification"):
        w["channel"].verify_notification(got["headers"], {}, got["body"])
    # more than what is left is refused; the rest is fine
    assert w["channel"].refund(refund_request(w, no, trade, 235)).status == "failed"
    assert w["channel"].refund(refund_request(w, no, trade, 234)).status == "succeeded"


def test_refund_timeout_is_unknown_and_the_retry_does_not_pay_twice(w):
    control(w, "POST", "/_sim/behaviour", {"refund": "timeout", "refund_timeout_ms": 1600})
    no, trade = paid(w, 1234)
    req = refund_request(w, no, trade, 1234)
    with pytest.raises(ChannelUnavailable):
        w["channel"].refund(req)
    # the simulator did refund; asking again with the same out_refund_no answers its state
    result = w["channel"].refund(req)
    assert result.status == "succeeded"
    [row] = sim_list(w, "refunds").values()
    assert (row["out_refund_no"], row["amount"], row["requests"], row["status"]) == (req.out_refund_no, 1234, 2,
                                                                                      "SUCCESS")


def test_refund_processing_then_query_then_notification(w):
    control(w, "POST", "/_sim/behaviour", {"refund": "processing", "refund_processing_queries": 1})
    no, trade = paid(w, 800)
    req = refund_request(w, no, trade, 800, total=800)
    assert w["channel"].refund(req).status == "processing"
    assert w["channel"].query_refund(req).status == "processing"
    assert w["receiver"].received == []
    assert w["channel"].query_refund(req).status == "succeeded"
    [got] = w["receiver"].wait(1, path="/pay/refund-notify/wechatpay")
    assert w["channel"].verify_refund_notification(got["headers"], {}, got["body"]).status == "succeeded"
    # an unknown refund is not there: nothing was refunded
    assert w["channel"].query_refund(refund_request(w, no, trade, 1, out_refund_no="RFnever")).status == "failed"


def test_refund_refused_then_retried(w):
    control(w, "POST", "/_sim/behaviour", {"refund": "fail"})
    no, trade = paid(w, 500)
    req = refund_request(w, no, trade, 500, total=500)
    result = w["channel"].refund(req)
    assert result.status == "failed" and "NOT_ENOUGH" in result.message
    assert sim_list(w, "refunds")[req.out_refund_no]["status"] == "REFUSED"
    assert w["channel"].query_refund(req).status == "failed"
    # once the merchant's balance is back, the same out_refund_no refunds (once)
    control(w, "POST", "/_sim/behaviour", {"refund": "success"})
    assert w["channel"].refund(req).status == "succeeded"
    row = sim_list(w, "refunds")[req.out_refund_no]
    assert (row["status"], row["requests"]) == ("SUCCESS", 2)


def test_refund_abnormal(w):
    control(w, "POST", "/_sim/behaviour", {"refund": "abnormal"})
    no, trade = paid(w, 500)
    req = refund_request(w, no, trade, 500, total=500)
    assert w["channel"].refund(req).status == "abnormal"
    [got] = w["receiver"].wait(1, path="/pay/refund-notify/wechatpay")
    notice = w["channel"].verify_refund_notification(got["headers"], {}, got["body"])
    assert notice.status == "abnormal" and notice.raw["event_type"] == "REFUND.ABNORMAL"


def test_a_stale_refund_notification_is_refused(w):
    control(w, "POST", "/_sim/behaviour", {"notify_mode": "stale"})
    no, trade = paid(w, 500)
    w["channel"].refund(refund_request(w, no, trade, 500, total=500))
    [got, *_] = w["receiver"].wait(1, path="/pay/refund-notify/wechatpay")
    with pytest.raises(BadNotification, match="window"):
        w["channel"].verify_refund_notification(got["headers"], {}, got["body"])


# --- bills -------------------------------------------------------------------------------------------------

def test_download_statement_shows_payments_refunds_and_planted_differences(w):
    a, trade_a = paid(w, 1234)
    b, trade_b = paid(w, 5000)
    req = refund_request(w, b, trade_b, 2000, total=5000)
    w["channel"].refund(req)
    control(w, "POST", "/_sim/bill/plant", {"out_trade_no": a, "amount": 1200})
    control(w, "POST", "/_sim/bill/plant", {"out_trade_no": "26plantedextra1", "amount": 777})
    lines = w["channel"].download_statement(china_today())
    got = {(line.order_no, line.kind): (line.trade_no, line.amount) for line in lines}
    assert got[(a, "payment")] == (trade_a, 1200)  # the planted difference
    assert got[(b, "payment")] == (trade_b, 5000)
    assert got[(b, "refund")] == (trade_b, 2000)
    assert got[("26plantedextra1", "payment")][1] == 777
    assert len(lines) == 4
    # a day without trades has no bill
    assert w["channel"].download_statement(date(2020, 1, 1)) == []


def test_a_bill_that_does_not_match_its_hash_is_refused(w):
    paid(w, 1234)
    control(w, "POST", "/_sim/behaviour", {"bill_corrupt": True})
    with pytest.raises(ChannelUnavailable, match="SHA1"):
        w["channel"].download_statement(china_today())


def test_the_bill_download_url_lives_five_minutes(w):
    paid(w, 1234)
    r = raw_call(w, "GET", f"/v3/bill/tradebill?bill_date={china_today().isoformat()}&bill_type=ALL")
    assert r.status_code == 200 and w["channel"]._response_signed(r)
    url = r.json()["download_url"]
    path = url[len(w["url"]):]
    ok = raw_call(w, "GET", path)
    assert ok.status_code == 200 and "Wechatpay-Signature" not in ok.headers
    with w["sim"].lock:
        for bill in w["sim"].bills.values():
            bill["expires"] = time.time() - 1
    gone = raw_call(w, "GET", path)
    assert gone.status_code == 400 and gone.json()["code"] == "INVALID_REQUEST"


BILL = """交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,\
付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,\
退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注\r
`2024-05-01 10:00:00,`wx2421b1c4370ec43b,`10000100,`0,`,`4200002024050112345678901234,`24050100000000001,\
`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`NATIVE,`SUCCESS,`OTHERS,`CNY,`100.00,`0.00,`0,`0,`0.00,`0.00,`,`,`点卡,`,`0.60000,\
`0.60%,`100.00,`0.00,`\r
`2024-05-01 11:00:00,`wx2421b1c4370ec43b,`10000100,`0,`,`4200002024050112345678901234,`24050100000000001,\
`oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,`NATIVE,`REFUND,`OTHERS,`CNY,`0.00,`0.00,`50300000012024050100001,`RF1,`25.50,\
`0.00,`ORIGINAL,`SUCCESS,`点卡,`,`-0.15000,`0.60%,`0.00,`25.50,`\r
总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r
`2,`100.00,`25.50,`0.00,`0.45000,`100.00,`25.50\r
"""


def test_parse_statement_reads_the_trade_bill_format(w):
    lines = w["channel"].parse_statement(BILL.encode("utf-8"))
    assert [(x.trade_no, x.order_no, x.amount, x.kind) for x in lines] == [
        ("4200002024050112345678901234", "24050100000000001", 10000, "payment"),
        ("4200002024050112345678901234", "24050100000000001", 2550, "refund"),
    ]
    assert w["channel"].parse_statement(("\ufeff" + BILL).encode("utf-8")) == lines
    with pytest.raises(ChannelError):
        w["channel"].parse_statement(b"a,b\n1,2\n")
    with pytest.raises(ChannelError):
        w["channel"].parse_statement(BILL.replace("`100.00,`0.00,`0,", "`abc,`0.00,`0,").encode("utf-8"))
