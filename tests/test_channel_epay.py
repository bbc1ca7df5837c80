"""易支付 (epay V1, MD5) end to end: the app served on 127.0.0.1 (PostgreSQL) and the epay simulator
(app/payments/simulators/epay.py) over real HTTP. A buyer checks out, opens submit.php, pays; the provider's
signed GET notification delivers the order once. Forged, altered, wrong-amount, foreign and replayed notifications
are refused or change nothing; 50 copies racing deliver once; refunds go through act=refund, or are marked for
manual refund with an alert; a lost notification is found by act=order. The ledger check runs after every test
(the `app` fixture) and explicitly where money moved."""
from __future__ import annotations

import hashlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from sqlalchemy import select

from app.catalog.models import CardSecret
from app.extensions import db
from app.ledger.invariants import check_ledger
from app.ledger.models import Journal
from app.orders.models import Order
from app.payments import refunds
from app.payments import service as payments
from app.payments.channels.base import BadNotification, ChannelError, PaymentRequest
from app.payments.channels.epay import EpayChannel, content_to_sign, sign
from app.payments.models import Payment, PaymentAlert, Refund
from app.payments.simulators.epay import EpaySimulator
from tests import channel_sim_helpers as csh
from tests import payments_helpers as h

live = csh.live
gateway = csh.gateway


@pytest.fixture
def product(f):
    return f.product(name="点卡 50 元", face_price=5000, cost=4500, secrets=3)


def sim_order(sim, order_no: str) -> dict:
    return next(o for o in sim.orders() if o["out_trade_no"] == order_no)


def genuine_fields(sim, order_no: str, **override) -> dict:
    """The notification the provider sends for a paid order, signed with the merchant key it holds."""
    o = sim_order(sim, order_no)
    fields = {"pid": sim.sim.pid, "trade_no": o["trade_no"], "out_trade_no": order_no, "type": "alipay",
              "name": "点卡 50 元", "money": h.yuan(o["amount"]), "trade_status": "TRADE_SUCCESS", **override}
    fields["sign"] = sign(fields, sim.sim.key)
    fields["sign_type"] = "MD5"
    return fields


def checkout_and_open(live, product, **extra) -> dict:
    answer = csh.checkout(live, product, "epay", **extra)
    page = requests.get(answer["pay_url"], timeout=10)
    assert page.status_code == 200 and "易支付收银台" in page.text, page.text[:300]
    return answer


def notify(live, fields: dict, method: str = "GET") -> requests.Response:
    if method == "GET":
        return requests.get(f"{live}/pay/notify/epay", params=fields, timeout=30)
    return requests.post(f"{live}/pay/notify/epay", data=fields, timeout=30)


def assert_ledger_clean() -> None:
    db.session.rollback()
    assert check_ledger() == []


# --- the protocol ----------------------------------------------------------------------------------------------

def test_signature_is_md5_of_the_sorted_non_empty_fields_plus_the_key():
    params = {"pid": "1001", "type": "alipay", "out_trade_no": "K1", "name": "点卡", "money": "1.00",
              "sitename": "", "sign": "x", "sign_type": "MD5", "param": "0"}
    assert content_to_sign(params) == "money=1.00&name=点卡&out_trade_no=K1&param=0&pid=1001&type=alipay"
    assert sign(params, "KEY") == hashlib.md5(
        "money=1.00&name=点卡&out_trade_no=K1&param=0&pid=1001&type=alipay".encode() + b"KEY").hexdigest()


def test_create_payment_signs_what_the_provider_checks(app, gateway):
    sim = gateway("epay")
    channel = payments.get_channel("epay")
    start = channel.create_payment(PaymentRequest(order_no="K20240001", amount=1234, subject="点卡 12.34",
                                                  notify_url="https://shop.example/pay/notify/epay",
                                                  return_url="https://shop.example/shop/paid/K20240001"))
    query = dict(parse_qsl(urlsplit(start.pay_url).query))
    assert start.pay_url.startswith(sim.url + "/submit.php?")
    assert query["money"] == "12.34" and query["pid"] == sim.sim.pid and query["sign_type"] == "MD5"
    assert query["sign"] == sign(query, sim.sim.key)
    assert requests.get(start.pay_url, timeout=10).status_code == 200
    # the provider refuses a changed amount (the signature no longer matches) and another merchant's request
    tampered = start.pay_url.replace("money=12.34", "money=1.00")
    assert requests.get(tampered, timeout=10).status_code == 400
    other = EpayChannel(str(int(sim.sim.pid) + 1), sim.sim.key, sim.url)
    foreign = other.create_payment(PaymentRequest(order_no="K20240002", amount=100, subject="x",
                                                  notify_url="https://a/n", return_url="https://a/r"))
    assert requests.get(foreign.pay_url, timeout=10).status_code == 400


def test_unconfigured_channel_refuses_everything(app):
    for settings in ({}, {"pid": "1001", "gateway": "http://127.0.0.1:9/"}, {"key": "k" * 16}):
        channel = EpayChannel.from_settings(settings)
        fields = {"pid": "1001", "trade_no": "T1", "out_trade_no": "K1", "money": "1.00",
                  "trade_status": "TRADE_SUCCESS"}
        fields["sign"] = sign(fields, settings.get("key", ""))
        with pytest.raises(BadNotification):
            channel.verify_notification({}, fields, b"")
        with pytest.raises(ChannelError):
            channel.create_payment(PaymentRequest("K1", 100, "x", "https://a/n", "https://a/r"))


# --- paying -----------------------------------------------------------------------------------------------------

def test_buyer_pays_and_the_signed_get_notification_delivers(app, live, gateway, product):
    sim = gateway("epay")
    answer = checkout_and_open(live, product)
    order_no = answer["order_no"]
    assert answer["amount"] == 5000 and csh.order_status(order_no) == "pending_payment"
    paid = sim.pay(order_no)
    csh.wait_for(lambda: csh.order_status(order_no) == "delivered", what="delivery")
    db.session.rollback()
    order = db.session.scalar(select(Order).where(Order.order_no == order_no))
    assert h.count(Payment, Payment.order_id == order.id, Payment.trade_no == paid["trade_no"]) == 1
    assert h.count(Journal, Journal.idempotency_key == f"pay:epay:{paid['trade_no']}") == 1
    assert h.sale_journals(order) == 1
    assert h.count(CardSecret, CardSecret.order_id == order.id, CardSecret.status == "sold") == 1
    csh.wait_for(lambda: sim_order(sim, order_no)["notify_status"] == "answered", what="answered")
    assert h.notifications(order_no) == [("accepted", paid["trade_no"])]
    assert_ledger_clean()


def test_fifty_concurrent_copies_deliver_once(app, live, gateway, product):
    sim = gateway("epay")
    order_no = checkout_and_open(live, product)["order_no"]
    sim.pay(order_no, notify="drop")  # the test sends the provider's notification itself, 50 times at once
    fields = genuine_fields(sim, order_no)
    before = h.balances()
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda i: notify(live, fields, "GET" if i % 2 else "POST"), range(50)))
    assert [(r.status_code, r.text) for r in answers] == [(200, "success")] * 50
    db.session.rollback()
    order = db.session.scalar(select(Order).where(Order.order_no == order_no))
    assert order.status == "delivered"
    assert h.count(Payment, Payment.order_id == order.id) == 1 and h.sale_journals(order) == 1
    assert h.count(CardSecret, CardSecret.order_id == order.id) == 1
    assert Counter(o for o, _ in h.notifications(order_no)) == {"accepted": 1, "duplicate": 49}
    after = h.balances()
    assert after["platform:clearing:epay"] - before.get("platform:clearing:epay", 0) == -5000
    assert_ledger_clean()


@pytest.mark.parametrize("tamper, outcome", [("sign", "rejected"), ("amount", "rejected"), ("pid", "rejected"),
                                             ("money", "amount_mismatch")])
def test_forged_altered_foreign_and_wrong_amount_notifications_never_deliver(app, live, gateway, product, tamper,
                                                                             outcome):
    # given a provider that sends a bad notification (another key / money changed after signing / another
    # merchant / a correctly signed wrong amount)
    sim = gateway("epay")
    sim.behave(notify_tamper=tamper)
    order_no = checkout_and_open(live, product)["order_no"]
    before = h.snapshot()
    sim.pay(order_no)
    # then it is refused (the provider keeps resending: never answered success) and nothing is booked
    csh.wait_for(lambda: sim_order(sim, order_no)["notify_status"] == "unanswered", timeout=20, what="given up")
    assert csh.order_status(order_no) == "pending_payment"
    assert h.snapshot() == before
    seen = {o for o, _ in h.notifications(order_no)}
    assert seen == {outcome}, seen
    assert_ledger_clean()


def test_handmade_forgeries_are_refused(app, live, gateway, product):
    sim = gateway("epay")
    order_no = checkout_and_open(live, product)["order_no"]
    sim.pay(order_no, notify="drop")
    good = genuine_fields(sim, order_no)
    before = h.snapshot()
    forged = [{k: v for k, v in good.items() if k != "sign"},  # unsigned
              # a wrong digest (its last digit changed, whatever it was; the case does not matter to the check)
              {**good, "sign": good["sign"].upper()[:-1] + ("1" if good["sign"][-1] == "0" else "0")},
              {**good, "sign_type": "RSA"},  # another algorithm
              {**good, "trade_status": "TRADE_SUCCESS ", "sign": good["sign"]},  # altered after signing
              genuine_fields(sim, order_no, money="0.01"),  # re-signed by someone holding the key: wrong amount
              {**good, "sign": sign(good, "not-the-key")}]
    for fields in forged:
        r = notify(live, fields)
        assert r.status_code == 400 and r.text != "success", fields
    assert h.snapshot() == before
    assert csh.order_status(order_no) == "pending_payment"
    # a GET is refused for channels that POST
    assert requests.get(f"{live}/pay/notify/alipay", params=good, timeout=10).status_code == 405
    assert_ledger_clean()


def test_replayed_notification_changes_nothing_and_a_trade_number_is_unique(app, live, gateway, f, product):
    sim = gateway("epay")
    first = checkout_and_open(live, product)["order_no"]
    sim.pay(first, notify="drop")
    fields = genuine_fields(sim, first)
    assert notify(live, fields).text == "success"
    assert csh.order_status(first) == "delivered"
    before = h.snapshot()
    # replayed later, GET or POST: answered success (the provider stops), nothing moves
    assert notify(live, fields).text == "success" and notify(live, fields, "POST").text == "success"
    assert h.snapshot() == before
    # the same provider trade number for another order (a provider bug, or a replay re-signed with a stolen key)
    second = checkout_and_open(live, product, contact="13900139000")["order_no"]
    sim.pay(second, notify="drop")
    reused = genuine_fields(sim, second, trade_no=fields["trade_no"])
    r = notify(live, reused)
    assert r.status_code == 400
    assert csh.order_status(second) == "pending_payment"
    assert h.notifications(second)[-1][0] == "rejected"
    assert Counter(o for o, _ in h.notifications(first)) == {"accepted": 1, "duplicate": 2}
    assert_ledger_clean()


def test_channel_with_an_empty_key_refuses_everything(app, live, gateway, product):
    sim = gateway("epay")
    order_no = checkout_and_open(live, product)["order_no"]
    sim.pay(order_no, notify="drop")
    settings = payments.channel_settings("epay")
    payments.save_channel("epay", True, {**settings, "key": ""})
    fields = genuine_fields(sim, order_no)
    empty = {**fields, "sign": sign(fields, "")}
    before = h.snapshot()
    assert notify(live, fields).status_code == 400 and notify(live, empty).status_code == 400
    assert h.snapshot() == before
    assert_ledger_clean()


def test_lost_notification_is_found_by_query(app, live, gateway, product, caplog, monkeypatch):
    import logging

    caplog.set_level(logging.DEBUG)
    # Alembic's fileConfig (the test database's migration) disabled the loggers that existed then: not in production
    monkeypatch.setattr(logging.getLogger("urllib3.connectionpool"), "disabled", False)
    sim = gateway("epay")
    order_no = checkout_and_open(live, product)["order_no"]
    co = payments.channel_order(order_no)
    assert payments.ask_channel(co.id) == "waiting"
    sim.pay(order_no, notify="drop")
    assert payments.ask_channel(co.id) == "paid"
    assert csh.order_status(order_no) == "delivered"
    [(outcome, trade)] = h.notifications(order_no)
    assert outcome == "accepted" and trade == sim_order(sim, order_no)["trade_no"]
    # V1's query carries the merchant key in its query string: none of our log lines has it (urllib3 logs request
    # lines at DEBUG); the provider's own access log (werkzeug, serving the simulator here) is the provider's
    assert sim_order(sim, order_no)["queries"] == 2
    assert not [r for r in caplog.records if r.name != "werkzeug" and sim.sim.key in r.getMessage()]
    assert_ledger_clean()


def test_expired_unpaid_order_closes_and_a_late_payment_is_refunded(app, live, gateway, product):
    sim = gateway("epay")
    order_no = checkout_and_open(live, product)["order_no"]
    assert payments.close_at_channel(order_no) is True  # V1 cannot close: asked, it is unpaid
    from app.orders import service as orders

    order_id = db.session.scalar(select(Order.id).where(Order.order_no == order_no))
    orders.transition(order_id, "closed")
    db.session.commit()
    sim.pay(order_no)  # still payable at the provider
    csh.wait_for(lambda: csh.order_status(order_no) == "refunded", what="late payment refunded")
    refund = csh.wait_for(lambda: (r := csh.refund_of(order_no)) and r.status == "succeeded" and r, what="refund")
    assert refund.destination == "epay" and refund.amount == 5000
    assert [r["status"] for r in sim.refunds()] == ["succeeded"]
    assert sim_order(sim, order_no)["status"] == 2
    assert_ledger_clean()


# --- refunds -----------------------------------------------------------------------------------------------------

def paid_order(live, sim, product) -> Order:
    order_no = checkout_and_open(live, product)["order_no"]
    sim.pay(order_no, notify="drop")
    assert notify(live, genuine_fields(sim, order_no)).text == "success"
    db.session.rollback()
    return db.session.scalar(select(Order).where(Order.order_no == order_no))


def test_refund_through_the_refund_api(app, live, gateway, product):
    sim = gateway("epay")
    order = paid_order(live, sim, product)
    refund = payments.refund_order(order.id, "买家取消", actor_id=None)
    from app.outbox.service import dispatch_due

    dispatch_due()
    refund = csh.refund_of(order.order_no)
    assert refund.status == "succeeded"
    assert h.count(Journal, Journal.idempotency_key == f"refund:epay:{sim_order(sim, order.order_no)['trade_no']}") == 1
    assert [(r["status"], r["amount"]) for r in sim.refunds()] == [("succeeded", 5000)]
    assert_ledger_clean()


def test_refund_timeout_is_asked_again_by_query_and_never_refunded_twice(app, live, gateway, product):
    sim = gateway("epay", timeout=1)
    order = paid_order(live, sim, product)
    sim.behave(refund="timeout", refund_timeout_ms=2500)
    payments.refund_order(order.id, "超时测试", actor_id=None)
    from app.outbox.service import dispatch_due

    dispatch_due()
    refund = csh.refund_of(order.order_no)
    assert refund.status == "requested" and "no answer" in refund.last_error  # the provider did refund, unheard
    refunds.submit(refund.id, now=refund.next_attempt_at)  # asked again: act=order says status 2
    refund = csh.refund_of(order.order_no)
    assert refund.status == "succeeded"
    assert [r["status"] for r in sim.refunds()] == ["succeeded"]  # one refund call only
    assert_ledger_clean()


def test_provider_without_refund_api_marks_the_refund_for_manual_handling(app, live, gateway, product):
    sim = gateway("epay", refund_api="no")
    order = paid_order(live, sim, product)
    payments.refund_order(order.id, "人工退款测试", actor_id=None)
    from app.outbox.service import dispatch_due

    dispatch_due()
    refund = csh.refund_of(order.order_no)
    assert refund.status == "failed" and refund.last_error.startswith(refunds.MANUAL)
    assert sim.refunds() == []  # the provider was never asked
    [alert] = db.session.scalars(select(PaymentAlert).where(PaymentAlert.refund_id == refund.id)).all()
    assert alert.kind == "refund_manual" and alert.channel == "epay"
    with pytest.raises(Exception, match="人工退款"):
        refunds.retry(refund.id, actor_id=None)
    # staff refunded it in the provider's back office: confirmed, the ledger books it
    refunds.confirm_paid(refund.id, actor_id=None, note="易支付后台已退款 #123")
    assert csh.refund_of(order.order_no).status == "succeeded"
    assert h.count(Refund, Refund.status == "succeeded") == 1
    assert_ledger_clean()


def test_mapi_mode_answers_a_pay_url_or_a_qr_page(app, live, gateway, f):
    product = f.product(name="点卡 50 元", face_price=5000, cost=4500, secrets=2)
    sim = gateway("epay", mode="mapi")
    answer = csh.checkout(live, product, "epay")
    assert answer["pay_url"].startswith(sim.url + "/pay/")
    page = requests.get(answer["pay_url"], timeout=10)
    assert page.status_code == 200 and "易支付收银台" in page.text
    sim.behave(mapi_answer="qrcode")
    answer = csh.checkout(live, product, "epay", contact="13900139000")
    assert answer["pay_url"] == f"{live}/pay/epay/qr/{answer['order_no']}"
    page = requests.get(answer["pay_url"], timeout=10)
    assert page.status_code == 200 and "<svg" in page.text and "易支付扫码支付" in page.text
    sim.pay(answer["order_no"])
    csh.wait_for(lambda: csh.order_status(answer["order_no"]) == "delivered", what="delivery")
    assert_ledger_clean()


def test_simulator_checks_its_side_of_the_protocol():
    sim = EpaySimulator()
    from app.network.simulators import serve

    server, url = serve(sim)
    try:
        base = {"pid": sim.pid, "out_trade_no": "K1", "notify_url": "http://127.0.0.1:9/n", "name": "x",
                "money": "1.00"}
        good = {**base, "sign": sign(base, sim.key), "sign_type": "MD5"}
        assert requests.get(f"{url}/submit.php", params=good, timeout=5).status_code == 200
        for bad in ({**good, "money": "1.001"}, {**good, "sign": "0" * 32}, {**good, "pid": "1"}):
            assert requests.get(f"{url}/submit.php", params=bad, timeout=5).status_code == 400
        wrong_key = requests.get(f"{url}/api.php", params={"act": "order", "pid": sim.pid, "key": "x",
                                                           "out_trade_no": "K1"}, timeout=5).json()
        assert wrong_key == {"code": -1, "msg": "KEY校验失败"}
        found = requests.get(f"{url}/api.php", params={"act": "order", "pid": sim.pid, "key": sim.key,
                                                       "out_trade_no": "K1"}, timeout=5).json()
        assert (found["code"], found["status"], found["money"]) == (1, 0, "1.00")
    finally:
        server.shutdown()


def test_an_exported_statement_is_reconciled_by_hand_and_there_is_no_bill_download(app, live, gateway, product):
    from app.payments import reconciliation

    sim = gateway("epay")
    order = paid_order(live, sim, product)
    trade = sim_order(sim, order.order_no)["trade_no"]
    export = f"trade_no,out_trade_no,money\n{trade},{order.order_no},50.00\nE9999,K9999,1.00\n".encode()
    summary = reconciliation.summary(reconciliation.import_statement("epay", export, filename="epay-export.csv"))
    assert (summary["lines"], summary["matched"], summary["differences"]) == (2, 1, 1)
    assert reconciliation.run_daily()["epay"]["error"].startswith("易支付没有对账单下载接口")
    with pytest.raises(ChannelError):
        EpayChannel("1", "k" * 16, "http://127.0.0.1:9/").parse_statement(b"trade_no,out_trade_no,money\nT,K,1.234\n")
