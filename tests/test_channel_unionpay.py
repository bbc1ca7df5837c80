"""UnionPay 全渠道 adapter against its simulator, over real HTTP on 127.0.0.1 (no database)."""
from __future__ import annotations

import base64
import html
import io
import re
import threading
import time
import zipfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from werkzeug.wrappers import Request, Response

from app.network.simulators import serve
from app.payments.channels.base import (
    BadNotification,
    ChannelError,
    ChannelUnavailable,
    PaymentRequest,
    RefundRequest,
)
from app.payments.channels.unionpay import (
    UnionPayChannel,
    beijing_now,
    parse_answer,
    rsa_sign,
    sign_fields,
    signing_digest,
)
from app.payments.simulators.unionpay import UnionPaySimulator, issue, make_chain, merchant_settings


class Receiver:
    """Our side's notify URLs: /notify (payments) and /refund-notify (refunds), verified with the channel the
    way the payments view would, answered success (200 "ok") or failure (4xx). `forced` answers come first."""

    def __init__(self):
        self.lock = threading.Lock()
        self.channel: UnionPayChannel | None = None
        self.calls: list[dict] = []
        self.forced: list[int] = []

    def __call__(self, environ, start_response):
        request = Request(environ)
        form = request.form.to_dict()
        try:
            if request.path == "/refund-notify":
                outcome = self.channel.verify_refund_notification(request.headers, form, b"")
            else:
                outcome = self.channel.verify_notification(request.headers, form, b"")
            answer = self.channel.success_answer()
        except BadNotification as exc:
            outcome, answer = exc, self.channel.failure_answer(str(exc))
        with self.lock:
            status = self.forced.pop(0) if self.forced else answer.status
            self.calls.append({"path": request.path, "form": form, "outcome": outcome, "status": status})
        return Response(answer.body, status=status, mimetype=answer.content_type)(environ, start_response)

    def wait(self, count: int, path: str = "/notify", timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                calls = [c for c in self.calls if c["path"] == path]
            if len(calls) >= count:
                return calls
            time.sleep(0.02)
        raise AssertionError(f"expected {count} call(s) to {path}, got {len(calls)}")


@pytest.fixture(scope="module")
def gateway():
    sim = UnionPaySimulator()
    server, url = serve(sim)
    yield sim, url
    sim.close()
    server.shutdown()


@pytest.fixture(scope="module")
def settings(gateway):
    return {**merchant_settings(gateway[1]), "timeout": 1}


@pytest.fixture(scope="module")
def receiver_server():
    receiver = Receiver()
    server, url = serve(receiver)
    yield receiver, url
    server.shutdown()


@pytest.fixture
def env(gateway, settings, receiver_server):
    sim, url = gateway
    receiver, notify_base = receiver_server
    sim.reset()
    channel = UnionPayChannel.from_settings(settings)
    receiver.channel = channel
    with receiver.lock:
        receiver.calls.clear()
        receiver.forced.clear()
    return {"sim": sim, "url": url, "channel": channel, "receiver": receiver, "notify_base": notify_base,
            "settings": settings}


_seq = iter(range(10_000_000, 99_999_999))


def utcnow() -> datetime:
    """Naive UTC, as PaymentRequest.expires_at is."""
    return datetime.now(UTC).replace(tzinfo=None)


def order_no() -> str:
    return f"T{next(_seq)}{int(time.time()) % 100000:05d}"


def start(env, amount: int = 1234, expires_at=None, no: str | None = None):
    no = no or order_no()
    request = PaymentRequest(order_no=no, amount=amount, subject="点卡", notify_url=env["notify_base"] + "/notify",
                             return_url=env["notify_base"] + "/return", expires_at=expires_at)
    return no, env["channel"].create_payment(request)


def open_cashier(env, payment_start) -> requests.Response:
    """What the buyer's browser does with our auto-submitting form."""
    return requests.post(payment_start.pay_url, data=payment_start.form, timeout=5)


def sim_pay(env, no: str, **body) -> requests.Response:
    return requests.post(f"{env['url']}/_sim/pay/{no}", json=body, timeout=5)


def sim_get(env, what: str):
    return requests.get(f"{env['url']}/_sim/{what}", timeout=5).json()


def behave(env, **behaviour):
    answer = requests.post(f"{env['url']}/_sim/behaviour", json=behaviour, timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()


def paid_order(env, amount: int = 1234):
    """A consume paid through /_sim/pay with its notification dropped; (order_no, meta, trade_no)."""
    no, payment_start = start(env, amount)
    assert open_cashier(env, payment_start).status_code == 200
    answer = sim_pay(env, no, notify="drop")
    assert answer.status_code == 200, answer.text
    return no, payment_start.meta, answer.json()["trade_no"]


def refund_request(env, no: str, trade_no: str, amount: int, total: int = 1234, out_refund_no: str | None = None,
                   meta: dict | None = None) -> RefundRequest:
    return RefundRequest(out_trade_no=no, trade_no=trade_no, out_refund_no=out_refund_no or "R" + order_no()[1:],
                         amount=amount, total=total, reason="客户申请",
                         notify_url=env["notify_base"] + "/refund-notify", meta=meta or {})


def hidden_inputs(page: str) -> dict:
    return {html.unescape(k): html.unescape(v)
            for k, v in re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', page, re.S)}


# --- payments ---------------------------------------------------------------------------------------------------

def test_create_payment_signs_the_consume_form(env):
    expires = utcnow().replace(microsecond=0) + timedelta(minutes=30)
    no, payment_start = start(env, amount=1000, expires_at=expires)
    form = payment_start.form
    assert payment_start.pay_url == env["url"] + "/gateway/api/frontTransReq.do"
    assert {k: form[k] for k in ("version", "encoding", "signMethod", "txnType", "txnSubType", "bizType",
                                 "channelType", "accessType", "currencyCode", "orderId", "txnAmt")} == {
        "version": "5.1.0", "encoding": "utf-8", "signMethod": "01", "txnType": "01", "txnSubType": "01",
        "bizType": "000201", "channelType": "07", "accessType": "0", "currencyCode": "156", "orderId": no,
        "txnAmt": "1000"}
    assert form["backUrl"].endswith("/notify") and form["frontUrl"].endswith("/return")
    assert form["payTimeout"] == (expires + timedelta(hours=8)).strftime("%Y%m%d%H%M%S")  # Beijing time
    assert payment_start.meta == {"txnTime": form["txnTime"], "payTimeout": form["payTimeout"]}
    assert re.fullmatch(r"\d{14}", form["txnTime"])
    # certId is the decimal serial of our certificate, and the signature is SHA256withRSA over the hex digest
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(env["settings"]["sign_cert"].encode())
    assert form["certId"] == str(cert.serial_number)
    cert.public_key().verify(base64.b64decode(form["signature"]), signing_digest(form, omit_empty=True).encode(),
                             padding.PKCS1v15(), hashes.SHA256())


def test_create_payment_refuses_what_unionpay_would(env):
    with pytest.raises(ChannelError, match="8-32"):
        start(env, no="T123")
    with pytest.raises(ChannelError, match="8-32"):
        start(env, no="T-2024-0001")
    with pytest.raises(ChannelError, match="expired"):
        start(env, expires_at=utcnow() - timedelta(seconds=1))


def test_buyer_pays_at_the_cashier_and_both_notifications_verify(env):
    no, payment_start = start(env, amount=1234)
    cashier = open_cashier(env, payment_start)
    assert cashier.status_code == 200 and "付款" in cashier.text and "12.34" in cashier.text
    paid = requests.post(f"{env['url']}/_sim/cashier/{no}/pay", timeout=5)
    assert paid.status_code == 200
    # the browser is sent to frontUrl with the signed result: the front notification verifies too
    assert f'action="{env["notify_base"]}/return"' in paid.text
    front = env["channel"].verify_notification({}, hidden_inputs(paid.text), b"")
    assert (front.order_no, front.amount, front.succeeded) == (no, 1234, True)

    call = env["receiver"].wait(1)[0]
    notification = call["outcome"]
    order = next(o for o in sim_get(env, "orders") if o["out_trade_no"] == no)
    assert (notification.order_no, notification.amount, notification.currency, notification.succeeded) == \
        (no, 1234, "CNY", True)
    assert notification.trade_no == order["trade_no"] == front.trade_no and len(order["trade_no"]) == 21
    assert call["status"] == 200 and env["channel"].success_answer().body == "ok"
    time.sleep(0.3)
    order = next(o for o in sim_get(env, "orders") if o["out_trade_no"] == no)
    assert (order["state"], order["notifications_sent"], order["notify_status"]) == ("paid", 1, "answered")


def test_query_not_found_waiting_paid(env):
    channel = env["channel"]
    no, payment_start = start(env)
    assert channel.query_payment(no, payment_start.meta).state == "not_found"  # the browser never posted it
    open_cashier(env, payment_start)
    assert channel.query_payment(no, payment_start.meta).state == "waiting"
    answer = sim_pay(env, no, notify="drop").json()
    status = channel.query_payment(no, payment_start.meta)
    assert (status.state, status.trade_no, status.amount) == ("paid", answer["trade_no"], 1234)
    booked = status.as_notification(no)
    assert (booked.trade_no, booked.amount, booked.succeeded) == (answer["trade_no"], 1234, True)
    assert sim_pay(env, no).status_code == 409  # already paid
    assert sim_pay(env, "T00000000404").status_code == 404
    with pytest.raises(ChannelError, match="txnTime"):
        channel.query_payment(no, {})


def test_close_asks_and_the_expired_order_cannot_be_paid(env):
    channel = env["channel"]
    no, meta, _ = paid_order(env)
    assert channel.close_payment(no, meta) is False  # paid: cannot be closed

    expires = utcnow() + timedelta(seconds=1.5)
    late, payment_start = start(env, expires_at=expires)
    open_cashier(env, payment_start)
    assert channel.query_payment(late, payment_start.meta).state == "waiting"
    assert channel.close_payment(late, payment_start.meta) is True
    time.sleep(max(0.0, (expires - utcnow()).total_seconds()) + 0.1)  # payTimeout <= expires_at
    assert sim_pay(env, late).status_code == 409
    assert channel.query_payment(late, payment_start.meta).state == "closed"
    order = next(o for o in sim_get(env, "orders") if o["out_trade_no"] == late)
    assert order["state"] == "closed" and order["closes"] == 0 and order["queries"] >= 3


# --- notifications ----------------------------------------------------------------------------------------------

def test_notifications_are_resent_until_answered_200(env):
    receiver = env["receiver"]
    receiver.forced.extend([500, 503])
    no, payment_start = start(env)
    open_cashier(env, payment_start)
    assert sim_pay(env, no).status_code == 200
    calls = receiver.wait(3, timeout=4)
    assert [c["status"] for c in calls] == [500, 503, 200]
    assert all(c["outcome"].order_no == no for c in calls)
    time.sleep(0.2)
    order = next(o for o in sim_get(env, "orders") if o["out_trade_no"] == no)
    assert (order["notifications_sent"], order["notify_status"], order["notify_answers"]) == \
        (3, "answered", [500, 503, 200])

    other, payment_start = start(env)
    open_cashier(env, payment_start)
    sim_pay(env, other, duplicates=1)
    copies = [c for c in receiver.wait(5, timeout=4) if c["outcome"].order_no == other]
    assert len(copies) == 2 and copies[0]["outcome"].trade_no == copies[1]["outcome"].trade_no


def test_dropped_notification_sends_nothing(env):
    behave(env, notify="drop")
    no, payment_start = start(env)
    open_cashier(env, payment_start)
    assert sim_pay(env, no).json()["notify_status"] == "dropped"
    time.sleep(0.3)
    assert env["receiver"].calls == []


def test_tampered_amount_is_refused_and_resent(env):
    behave(env, notify_mode="tamper_amount")
    no, payment_start = start(env, amount=1000)
    open_cashier(env, payment_start)
    sim_pay(env, no)
    calls = env["receiver"].wait(2, timeout=3)
    assert all(isinstance(c["outcome"], BadNotification) and c["status"] == 400 for c in calls)
    assert calls[0]["form"]["txnAmt"] == "1001" and "bad signature" in str(calls[0]["outcome"])


def _notification(env, **changes) -> dict:
    fields = {"accessType": "0", "bizType": "000201", "currencyCode": "156", "encoding": "utf-8",
              "merId": env["settings"]["mer_id"], "orderId": "T12345678", "queryId": "123456789012345678901",
              "respCode": "00", "respMsg": "成功[0000000]", "txnAmt": "1000", "txnSubType": "01",
              "txnTime": beijing_now().strftime("%Y%m%d%H%M%S"), "txnType": "01", "version": "5.1.0"}
    fields.update(changes)
    return fields


def _signed_by(issued, fields: dict) -> dict:
    fields = {**fields, "signPubKeyCert": issued.cert_pem}
    fields["signature"] = rsa_sign(issued.key, signing_digest(fields, omit_empty=False))
    return fields


def test_forged_notifications_are_refused(env):
    channel, sim = env["channel"], env["sim"]
    genuine = sim.sign(_notification(env))
    assert channel.verify_notification({}, genuine, b"").amount == 1000
    # the same bytes as a urlencoded body work too
    body = requests.Request("POST", "http://x", data=genuine).prepare().body.encode()
    assert channel.verify_notification({}, {}, body).trade_no == "123456789012345678901"

    cases = {
        "chain": _signed_by(make_chain().sign, _notification(env)),  # right CN, foreign CA
        "CN": _signed_by(issue("041@8310000000000001@某某支付有限公司@00000001", issuer=sim.chain.middle),
                         _notification(env)),
        "validity": _signed_by(issue("041@1@中国银联股份有限公司@1", issuer=sim.chain.middle, days=1,
                                     not_before=datetime.now(UTC) - timedelta(days=3)), _notification(env)),
        "another merId": sim.sign(_notification(env, merId="777290058000000")),
        "unsigned": _notification(env),
        "not a consume": sim.sign(_notification(env, txnType="04", txnSubType="00")),
    }
    altered = dict(genuine, txnAmt="1")
    cases["bad signature"] = altered
    for why, form in cases.items():
        with pytest.raises(BadNotification):
            channel.verify_notification({}, form, b"")
        assert why  # (the loop names the case in a failure's traceback)
    with pytest.raises(BadNotification, match="not a refund"):
        channel.verify_refund_notification({}, genuine, b"")

    bare = UnionPayChannel.from_settings({})
    with pytest.raises(BadNotification):
        bare.verify_notification({}, genuine, b"")


# --- the simulator refuses bad requests -------------------------------------------------------------------------

def test_simulator_refuses_bad_requests(env):
    settings = env["settings"]
    no, payment_start = start(env, amount=1000)
    tampered = dict(payment_start.form, txnAmt="1")
    refused = requests.post(payment_start.pay_url, data=tampered, timeout=5)
    assert refused.status_code == 400 and "respCode=11" in refused.text

    def resign(**changes):
        fields = {k: v for k, v in payment_start.form.items() if k not in ("signature", "certId")}
        fields.update(changes)
        return sign_fields(fields, settings["private_key"], payment_start.form["certId"])

    for changes, code in (({"txnAmt": "10.00"}, "10"), ({"txnAmt": "01000"}, "10"), ({"currencyCode": "840"}, "10"),
                          ({"orderId": "T1"}, "10"), ({"version": "5.0.0"}, "10"), ({"signMethod": "11"}, "10"),
                          ({"backUrl": ""}, "13")):
        answer = requests.post(payment_start.pay_url, data=resign(**changes), timeout=5)
        assert answer.status_code == 400 and f"respCode={code}" in answer.text, changes

    assert open_cashier(env, payment_start).status_code == 200
    again = open_cashier(env, payment_start)  # the same orderId + txnTime again
    assert again.status_code == 400 and "respCode=12" in again.text

    # a request signed with another key under our certId: 11 验证签名失败, signed by UnionPay
    other_key = issue("x").key_pem
    impostor = UnionPayChannel.from_settings({**settings, "private_key": other_key})
    with pytest.raises(ChannelUnavailable, match="11"):
        impostor.query_payment(no, payment_start.meta)
    paid_no, _, trade_no = paid_order(env)
    result = impostor.refund(refund_request(env, paid_no, trade_no, 100))
    assert result.status == "failed" and result.message.startswith("11")
    assert sim_get(env, "refunds") == []


def test_untrusted_or_unreachable_gateway_is_unavailable(env):
    no, payment_start = start(env)
    open_cashier(env, payment_start)
    foreign = make_chain()
    distrustful = UnionPayChannel.from_settings({**env["settings"], "root_cert": foreign.root.cert_pem,
                                                 "middle_cert": foreign.middle.cert_pem})
    with pytest.raises(ChannelUnavailable, match="not trusted"):
        distrustful.query_payment(no, payment_start.meta)
    closed = UnionPayChannel.from_settings({**env["settings"], "gateway": "http://127.0.0.1:9"})
    with pytest.raises(ChannelUnavailable, match="unreachable"):
        closed.query_payment(no, payment_start.meta)
    with pytest.raises(ChannelUnavailable):
        closed.refund(refund_request(env, no, "123456789012345678901", 100))


def test_unconfigured_channel_refuses_everything(env):
    bare = UnionPayChannel.from_settings({"mer_id": "777290058000000"})
    request = refund_request(env, "T12345678", "123456789012345678901", 1)
    with pytest.raises(ChannelError):
        bare.create_payment(PaymentRequest("T12345678", 1, "x", "http://n", "http://r"))
    for call in (lambda: bare.query_payment("T12345678", {"txnTime": "20250101000000"}),
                 lambda: bare.close_payment("T12345678", {"txnTime": "20250101000000"}),
                 lambda: bare.refund(request), lambda: bare.query_refund(request),
                 lambda: bare.download_statement(beijing_now().date())):
        with pytest.raises(ChannelError):
            call()
    with pytest.raises(BadNotification):
        bare.verify_refund_notification({}, {"signature": "x"}, b"")


# --- refunds ----------------------------------------------------------------------------------------------------

def test_refund_success_notification_and_query(env):
    channel = env["channel"]
    no, _, trade_no = paid_order(env)
    request = refund_request(env, no, trade_no, 234)
    result = channel.refund(request)
    assert result.status == "processing" and re.fullmatch(r"\d{14}", result.meta["refund_txnTime"])
    notice = env["receiver"].wait(1, "/refund-notify")[0]["outcome"]
    assert (notice.out_refund_no, notice.status, notice.amount) == (request.out_refund_no, "succeeded", 234)
    assert notice.channel_refund_no == result.channel_refund_no
    queried = channel.query_refund(replace(request, meta=result.meta))
    assert (queried.status, queried.channel_refund_no) == ("succeeded", result.channel_refund_no)
    [listed] = sim_get(env, "refunds")
    assert {k: listed[k] for k in ("out_trade_no", "out_refund_no", "amount", "status", "requests", "trade_no")} == \
        {"out_trade_no": no, "out_refund_no": request.out_refund_no, "amount": 234, "status": "succeeded",
         "requests": 1, "trade_no": trade_no}
    with pytest.raises(BadNotification, match="not a consume"):
        channel.verify_notification({}, env["receiver"].calls[-1]["form"], b"")


def test_refund_is_idempotent_on_out_refund_no(env):
    channel = env["channel"]
    no, _, trade_no = paid_order(env, amount=1000)
    request = refund_request(env, no, trade_no, 600, total=1000)
    first = channel.refund(request)
    second = channel.refund(replace(request, meta={**first.meta, "txnTime": "20200101000000"}))
    assert (first.status, second.status) == ("processing", "processing") and "重复交易" in second.message
    [listed] = sim_get(env, "refunds")
    assert (listed["requests"], listed["amount"], listed["status"]) == (2, 600, "succeeded")
    over = channel.refund(refund_request(env, no, trade_no, 500, total=1000))  # 600 + 500 > 1000
    assert over.status == "failed" and over.message.startswith("36")
    rest = channel.refund(refund_request(env, no, trade_no, 400, total=1000))
    assert rest.status == "processing"
    assert sum(r["amount"] for r in sim_get(env, "refunds") if r["status"] == "succeeded") == 1000
    assert next(o for o in sim_get(env, "orders") if o["out_trade_no"] == no)["state"] == "refunded"
    unknown = channel.refund(refund_request(env, no, "999999999999999999999", 1, total=1000))
    assert unknown.status == "failed" and unknown.message.startswith("35")


def test_refund_timeout_then_retry_refunds_once(env):
    channel = env["channel"]
    behave(env, refund="timeout", refund_timeout_ms=1500)
    no, _, trade_no = paid_order(env)
    request = refund_request(env, no, trade_no, 1234)
    with pytest.raises(ChannelUnavailable) as caught:
        channel.refund(request)
    meta = caught.value.meta  # what the caller keeps to make the retry the same request
    retry = channel.refund(replace(request, meta=meta))
    assert retry.status == "processing" and retry.meta == meta
    assert channel.query_refund(replace(request, meta=retry.meta)).status == "succeeded"
    [listed] = sim_get(env, "refunds")
    assert (listed["requests"], listed["amount"], listed["status"], listed["txn_time"]) == \
        (2, 1234, "succeeded", meta["refund_txnTime"])


def test_refund_processing_until_queried(env):
    channel = env["channel"]
    behave(env, refund="processing", refund_processing_queries=2)
    no, _, trade_no = paid_order(env)
    request = refund_request(env, no, trade_no, 1000)
    result = channel.refund(request)
    assert result.status == "processing"
    request = replace(request, meta=result.meta)
    assert [channel.query_refund(request).status for _ in range(3)] == ["processing", "processing", "succeeded"]
    notice = env["receiver"].wait(1, "/refund-notify")[0]["outcome"]
    assert (notice.status, notice.out_refund_no) == ("succeeded", request.out_refund_no)


def test_refund_refused(env):
    channel = env["channel"]
    behave(env, refund="fail")
    no, _, trade_no = paid_order(env)
    request = refund_request(env, no, trade_no, 1000)
    result = channel.refund(request)
    assert result.status == "failed" and result.message.startswith("01")
    unknown = channel.query_refund(replace(request, meta=result.meta))  # 34: refused ones are not recorded
    assert unknown.status == "processing" and "查无此交易" in unknown.message  # never a false "failed"
    with pytest.raises(ChannelUnavailable, match="txnTime"):
        channel.query_refund(request)
    [listed] = sim_get(env, "refunds")
    assert (listed["status"], listed["amount"]) == ("failed", 1000)
    behave(env, refund="success")  # the same out_refund_no may be tried again
    assert channel.refund(replace(request, meta=result.meta)).status == "processing"
    [listed] = sim_get(env, "refunds")
    assert (listed["status"], listed["requests"]) == ("succeeded", 2)


def test_refund_abnormal(env):
    channel = env["channel"]
    behave(env, refund="abnormal")
    no, _, trade_no = paid_order(env)
    request = refund_request(env, no, trade_no, 1000)
    result = channel.refund(request)
    assert result.status == "processing"
    assert channel.query_refund(replace(request, meta=result.meta)).status == "abnormal"
    notice = env["receiver"].wait(1, "/refund-notify")[0]["outcome"]
    assert notice.status == "abnormal"


# --- reconciliation ---------------------------------------------------------------------------------------------

def test_download_statement_shows_planted_differences(env):
    channel = env["channel"]
    first, _, first_trade = paid_order(env, amount=1234)
    second, _, second_trade = paid_order(env, amount=500)
    refund = refund_request(env, first, first_trade, 34)
    assert channel.refund(refund).status == "processing"
    for plant in ({"out_trade_no": second, "amount": 499}, {"out_trade_no": "T99999999", "amount": 777}):
        assert requests.post(f"{env['url']}/_sim/bill/plant", json=plant, timeout=5).status_code == 200
    lines = channel.download_statement(beijing_now().date())
    by_kind = {(line.kind, line.order_no): line for line in lines}
    assert len(lines) == 4
    assert (by_kind["payment", first].trade_no, by_kind["payment", first].amount) == (first_trade, 1234)
    assert (by_kind["payment", second].trade_no, by_kind["payment", second].amount) == (second_trade, 499)
    assert by_kind["payment", "T99999999"].amount == 777
    assert (by_kind["refund", first].trade_no, by_kind["refund", first].amount) == (first_trade, 34)
    assert channel.download_statement(beijing_now().date() - timedelta(days=1)) == []  # 98 文件不存在


def _zm(fields: dict[int, str]) -> bytes:
    """Built independently of the simulator: the ZM widths of UnionPay's file interface."""
    widths = [3, 11, 11, 6, 10, 19, 12, 4, 2, 21, 2, 32, 2, 6, 10, 13, 13, 4, 15, 2, 2, 6, 2, 4, 32, 1, 21, 15, 1,
              15, 32, 13, 13, 8, 32, 13, 13, 12, 2, 1, 32, 13, 2, 1, 12, 67]
    cells = [fields.get(i + 1, "").encode("gbk").ljust(w, b" ") for i, w in enumerate(widths)]
    return b" ".join(cells)


def test_parse_statement_of_the_real_format(env):
    payment = _zm({1: "S22", 4: "123456", 5: "0905101112", 6: "6226****0048", 7: "000000001234",
                   10: "201509051011121234567", 12: "T2015090500001", 17: "C000000001230", 20: "01", 21: "01",
                   22: "000201", 28: "802310048993424", 31: "某某商户"})
    refund = _zm({1: "S30", 7: "000000000200", 10: "201509051200001234567", 12: "R2015090500001", 20: "04",
                  21: "00", 27: "201509051011121234567", 28: "802310048993424", 31: "某某商户",
                  41: "T2015090500001"})
    zm = payment + b"\r\n" + refund + b"\r\n\r\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("INN15090588ZM_802310048993424", zm)
        archive.writestr("INN15090588ZME_802310048993424", b"")
        archive.writestr("RD00000000_802310048993424", b"not a transaction file")
    expected = [("201509051011121234567", "T2015090500001", 1234, "payment"),
                ("201509051011121234567", "T2015090500001", 200, "refund")]
    channel = env["channel"]
    for content in (buffer.getvalue(), zm):
        assert [(x.trade_no, x.order_no, x.amount, x.kind) for x in channel.parse_statement(content)] == expected
    with pytest.raises(ChannelError, match="too short"):
        channel.parse_statement(b"S22 00010000")
    with pytest.raises(ChannelError, match="fen"):
        channel.parse_statement(_zm({7: "12.34", 10: "1", 12: "T2015090500001", 20: "01"}))


def test_parse_answer_keeps_certificates_and_groups():
    text = ("respCode=00&respMsg=成功[0000000]&reserved={a=1&b=2}&signPubKeyCert=-----BEGIN CERTIFICATE-----\r\n"
            "MIIE+/a==\r\n-----END CERTIFICATE-----&empty=&signature=ab+c/=")
    assert parse_answer(text) == {"respCode": "00", "respMsg": "成功[0000000]", "reserved": "{a=1&b=2}",
                                  "signPubKeyCert": "-----BEGIN CERTIFICATE-----\r\nMIIE+/a==\r\n"
                                                    "-----END CERTIFICATE-----", "empty": "", "signature": "ab+c/="}


def test_control_api(env):
    url = env["url"]
    keys = sim_get(env, "keys")
    assert keys["mer_id"] == env["settings"]["mer_id"] and keys["root_cert"] == env["settings"]["root_cert"]
    assert "BEGIN CERTIFICATE" in keys["middle_cert"]
    assert requests.post(f"{url}/_sim/merchant", json={"mer_id": "1", "cert": "x"}, timeout=5).status_code == 400
    assert requests.post(f"{url}/_sim/behaviour", json={"refund": "sometimes"}, timeout=5).status_code == 400
    assert requests.post(f"{url}/_sim/behaviour", json={"colour": "red"}, timeout=5).status_code == 400
    assert behave(env, refund="processing")["refund"] == "processing"
    assert requests.get(f"{url}/_sim/behaviour", timeout=5).json()["refund"] == "processing"
    assert sim_pay(env, "T12345678", duplicates=-1).status_code == 400
    paid_order(env)
    assert requests.post(f"{url}/_sim/reset", timeout=5).json() == {"reset": True}
    assert sim_get(env, "orders") == [] and sim_get(env, "refunds") == []
    assert requests.get(f"{url}/_sim/behaviour", timeout=5).json()["refund"] == "success"
    assert sim_get(env, "keys")["mer_id"] == env["settings"]["mer_id"]  # merchants survive a reset
