"""Every real channel end to end against its simulator over real HTTP: the buyer checks out on the storefront API,
opens the pay URL and pays at the gateway; the gateway's signed notification reaches /pay/notify/<channel>
(duplicated, late, or lost and found by the query job); refunds go back through the channel (retried after a
timeout without paying twice; WeChat Pay and UnionPay answer by refund notification); expired orders are closed at
the channel; the day's bill is downloaded and reconciled. Each test ends with the ledger invariant check."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import requests
from sqlalchemy import func, select, update
from werkzeug.wrappers import Request, Response

from app.catalog import cards
from app.clock import utcnow
from app.extensions import db
from app.ledger.models import Journal
from app.network.simulators import serve
from app.orders.models import Order
from app.payments import reconciliation, refunds
from app.payments import service as payments
from app.payments.models import ChannelOrder, OrderCheckout, Payment, PaymentNotification, Refund
from tests import channel_sim_helpers as csh

live = csh.live
gateway = csh.gateway
CHANNELS = pytest.mark.parametrize("channel", ["alipay", "wechatpay", "unionpay"])


def _order(order_no: str) -> Order:
    db.session.rollback()
    return db.session.scalar(select(Order).where(Order.order_no == order_no))


def _outcomes(order_no: str) -> list[str]:
    db.session.rollback()
    return list(db.session.scalars(select(PaymentNotification.outcome).where(PaymentNotification.order_no == order_no)
                                   .order_by(PaymentNotification.id)))


def _buy(live, sim, product, **extra) -> str:
    """Checkout over HTTP and open the pay URL as the buyer's browser would; the gateway now knows the order."""
    answer = csh.checkout(live, product, sim.channel, **extra)
    opened = csh.open_pay_url(answer["pay_url"], answer["order_no"])
    assert opened.status_code < 400, opened.text[:300]
    return answer["order_no"]


def _pay(live, sim, product, **pay_kw) -> str:
    order_no = _buy(live, sim, product)
    sim.pay(order_no, **pay_kw)
    csh.wait_for(lambda: csh.order_status(order_no) == "delivered", what=f"{order_no} delivered")
    return order_no


def _refund_cli(app, order_no: str, reason: str = "买家申请退款") -> dict:
    import json

    result = app.test_cli_runner().invoke(args=["kameng", "refund", order_no, "--reason", reason])
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def _refund_done(order_no: str, status: str = "succeeded") -> Refund:
    """Wait for the refund to reach `status`: by the channel's answer or notification, or else by the refund job
    (which runs every REFUND_POLL_SECONDS in production) asking the channel."""
    def reached():
        refund = csh.refund_of(order_no)
        if refund is not None and refund.status in refunds.OPEN_STATUSES:
            refunds.poll_due(now=utcnow() + timedelta(hours=1))
            refund = csh.refund_of(order_no)
        return refund if refund is not None and refund.status == status else None

    return csh.wait_for(reached, timeout=30, what=f"the refund of {order_no} to be {status}")


def _refund_journals(order: Order) -> int:
    db.session.rollback()
    return db.session.scalar(select(func.count()).select_from(Journal).where(
        Journal.order_id == order.id, Journal.kind == "refund"))


@CHANNELS
def test_pay_duplicate_notifications_refund_and_reconcile_the_bill(app, f, live, gateway, channel):
    sim = gateway(channel)
    product = f.product(face_price=3000, cost=2500, secrets=4)
    # a buyer pays; the gateway notifies three times (two duplicates, concurrently with its retries)
    order_no = _pay(live, sim, product, duplicates=2)
    order = _order(order_no)
    csh.wait_for(lambda: len(_outcomes(order_no)) >= 3, what="the duplicate notifications")
    outcomes = _outcomes(order_no)
    assert outcomes[0] == "accepted" and set(outcomes[1:]) == {"duplicate"}
    assert db.session.scalar(select(func.count()).select_from(Payment).where(Payment.order_id == order.id)) == 1
    assert len(cards.reveal(order.id)) == 1
    # a second order is paid and stays paid: the bill will carry a planted difference for it
    other_no = _pay(live, sim, product)
    # support refunds the first order from the CLI: the channel is asked, the ledger follows its answer
    shown = _refund_cli(app, order_no)
    assert shown["destination"] == channel and shown["amount"] == 3000
    refund = _refund_done(order_no)
    assert _order(order_no).status == "refunded" and _refund_journals(order) == 1
    [at_gateway] = sim.refunds()
    assert (at_gateway["out_trade_no"], at_gateway["out_refund_no"], at_gateway["amount"]) == \
        (order_no, refund.out_refund_no, 3000)
    # the day's bill, downloaded from the gateway, matches except for the planted difference
    sim.plant(other_no, 3001)
    report = reconciliation.run_channel_daily(channel, reconciliation.china_today())
    from app.payments.models import ReconciliationDifference

    diffs = db.session.execute(select(ReconciliationDifference.kind, ReconciliationDifference.order_no,
                                      ReconciliationDifference.statement_amount,
                                      ReconciliationDifference.our_amount)
                               .where(ReconciliationDifference.import_id == report["import_id"])).all()
    assert [tuple(d) for d in diffs] == [("amount_differs", other_no, 3001, 3000)]
    assert report["differences"] == 1 and report["matched"] >= 2


@CHANNELS
def test_refund_timeout_is_retried_with_the_same_number_and_pays_once(app, f, live, gateway, channel):
    sim = gateway(channel, timeout=1)
    product = f.product(face_price=2000, cost=1500, secrets=2)
    order_no = _pay(live, sim, product)
    order = _order(order_no)
    # the gateway performs the refund but answers after our client gave up
    sim.behave(refund="timeout", refund_timeout_ms=2500)
    shown = _refund_cli(app, order_no)
    assert shown["status"] in ("requested", "succeeded")  # a refund notification may already have arrived
    sim.behave(refund="success")
    refund = csh.refund_of(order_no)
    if refund.status == "requested":
        assert refund.attempts == 1 and "no answer" in refund.last_error
        # the refund job asks again when it is due, with the same refund number
        refunds.poll_due(now=utcnow() + timedelta(minutes=5))
    refund = _refund_done(order_no)
    [at_gateway] = sim.refunds()
    assert at_gateway["out_refund_no"] == refund.out_refund_no and at_gateway["amount"] == 2000
    assert _refund_journals(order) == 1
    if channel == "unionpay":  # the retry repeated the txnTime fixed before the first call
        import json

        assert at_gateway["txn_time"] == json.loads(refund.meta)["refund_txnTime"]


@CHANNELS
def test_lost_notification_is_found_by_the_query_job(app, f, live, gateway, channel):
    sim = gateway(channel)
    product = f.product(face_price=1500, cost=1000, secrets=1)
    sim.behave(notify="drop")
    order_no = _buy(live, sim, product)
    sim.pay(order_no)
    assert csh.order_status(order_no) == "pending_payment"
    # too early: a payment only a minute old is not asked about yet
    assert payments.query_open_payments()["asked"] == 0
    from workers import jobs

    app.config["PAYMENT_QUERY_AFTER_SECONDS"], before = 0, app.config["PAYMENT_QUERY_AFTER_SECONDS"]
    try:
        report = jobs.query_open_payments()
    finally:
        app.config["PAYMENT_QUERY_AFTER_SECONDS"] = before
    assert report["paid"] == 1
    assert csh.order_status(order_no) == "delivered"
    db.session.rollback()
    note = db.session.scalar(select(PaymentNotification).where(PaymentNotification.order_no == order_no))
    assert (note.outcome, note.detail) == ("accepted", "found by query")
    co = db.session.scalar(select(ChannelOrder).where(ChannelOrder.out_trade_no == order_no))
    assert co.status == "paid" and co.queries == 1


class Gate:
    """In front of the app: payment notifications are refused (503, so the gateway retries) until the gate opens;
    everything else passes."""

    def __init__(self, target: str):
        self.target, self.open, self.refused = target, threading.Event(), 0

    def __call__(self, environ, start_response):
        request = Request(environ)
        if request.path.startswith("/pay/notify/") and not self.open.is_set():
            self.refused += 1
            return Response("closed", status=503)(environ, start_response)
        upstream = requests.request(request.method, self.target + request.full_path.rstrip("?"),
                                    data=request.get_data(), allow_redirects=False, timeout=10,
                                    headers={k: v for k, v in request.headers if k.lower() != "host"})
        return Response(upstream.content, status=upstream.status_code,
                        content_type=upstream.headers.get("Content-Type"))(environ, start_response)


@CHANNELS
def test_notification_arriving_after_the_query_found_the_payment(app, f, live, gateway, channel):
    """Out of order: the query job books the payment first; the gateway's retried notification comes after it
    and is answered as received, changing nothing."""
    sim = gateway(channel)
    product = f.product(face_price=1200, cost=1000, secrets=1)
    gate = Gate(live)
    server, gate_url = serve(gate)
    try:
        app.config["PUBLIC_BASE_URL"] = gate_url  # the notify URL the gateway is given
        order_no = _buy(live, sim, product)
        app.config["PUBLIC_BASE_URL"] = live
        sim.pay(order_no)
        csh.wait_for(lambda: gate.refused >= 1, what="a notification refused at the gate")
        db.session.rollback()
        co_id = db.session.scalar(select(ChannelOrder.id).where(ChannelOrder.out_trade_no == order_no))
        assert payments.ask_channel(co_id) == "paid"
        assert csh.order_status(order_no) == "delivered"
        gate.open.set()
        csh.wait_for(lambda: "duplicate" in _outcomes(order_no), timeout=20, what="the late notification")
    finally:
        server.shutdown()
    assert _outcomes(order_no)[0] == "accepted"
    order = _order(order_no)
    assert db.session.scalar(select(func.count()).select_from(Payment).where(Payment.order_id == order.id)) == 1


@pytest.mark.parametrize("channel", ["alipay", "wechatpay"])
def test_expired_order_is_closed_at_the_channel_first(app, f, live, gateway, channel):
    sim = gateway(channel)
    product = f.product(face_price=1000, cost=800, secrets=1)
    order_no = _buy(live, sim, product)
    order = _order(order_no)
    db.session.execute(update(OrderCheckout).where(OrderCheckout.order_id == order.id)
                       .values(expires_at=utcnow() - timedelta(minutes=1)))
    db.session.commit()
    assert payments.expire_unpaid() == 1
    assert csh.order_status(order_no) == "closed"
    [seen] = [o for o in sim.orders() if o["out_trade_no"] == order_no]
    assert seen["closes"] == 1
    # the buyer can no longer pay it at the gateway
    assert sim.pay_response(order_no).status_code == 409
    db.session.rollback()
    assert db.session.scalar(select(ChannelOrder.status).where(ChannelOrder.out_trade_no == order_no)) == "closed"


def test_expired_order_paid_meanwhile_is_delivered_not_closed(app, f, live, gateway):
    sim = gateway("wechatpay")
    product = f.product(face_price=1000, cost=800, secrets=1)
    sim.behave(notify="drop")
    order_no = _buy(live, sim, product)
    sim.pay(order_no)
    order = _order(order_no)
    db.session.execute(update(OrderCheckout).where(OrderCheckout.order_id == order.id)
                       .values(expires_at=utcnow() - timedelta(minutes=1)))
    db.session.commit()
    assert payments.expire_unpaid() == 0
    assert csh.order_status(order_no) == "delivered"


def test_wechat_qr_page_polls_and_moves_on_once_paid(app, f, live, gateway):
    sim = gateway("wechatpay")
    product = f.product(face_price=990, cost=800, secrets=1)
    answer = csh.checkout(live, product, "wechatpay")
    assert answer["pay_url"] == f"{live}/pay/wechatpay/qr/{answer['order_no']}"
    page = requests.get(answer["pay_url"], timeout=10)
    assert page.status_code == 200 and "<svg" in page.text and answer["order_no"] in page.text
    status = requests.get(f"{live}/pay/status/{answer['order_no']}", timeout=10)
    assert status.json() == {"paid": False, "closed": False, "next": f"/shop/paid/{answer['order_no']}"}
    sim.pay(answer["order_no"])
    csh.wait_for(lambda: csh.order_status(answer["order_no"]) == "delivered", what="delivered")
    status = requests.get(f"{live}/pay/status/{answer['order_no']}", timeout=10)
    assert status.json()["paid"] is True and status.headers["Cache-Control"] == "no-store"
    # the QR page of an order that is not a WeChat order, or unknown, does not exist
    assert requests.get(f"{live}/pay/wechatpay/qr/999999999999", timeout=10).status_code == 404


def test_abnormal_refund_fails_with_an_alert_and_staff_settle_it(app, f, live, gateway):
    from app.errors import Conflict
    from app.payments.models import PaymentAlert

    sim = gateway("wechatpay")
    product = f.product(face_price=1800, cost=1500, secrets=1)
    order_no = _pay(live, sim, product)
    sim.behave(refund="abnormal")
    _refund_cli(app, order_no)
    refund = _refund_done(order_no, "failed")
    db.session.rollback()
    [alert] = db.session.scalars(select(PaymentAlert))
    assert alert.kind == "refund_abnormal" and alert.order_no == order_no and alert.refund_id == refund.id
    assert db.session.scalar(select(Payment.status).where(Payment.order_id == refund.order_id)) == "refunding"
    assert _refund_journals(_order(order_no)) == 0  # the ledger never runs ahead of the channel
    # the channel holds it: asking again is refused; staff settle it at WeChat Pay and confirm, with a note
    with pytest.raises(Conflict):
        refunds.retry(refund.id, None)
    refunds.confirm_paid(refund.id, None, "商户平台异常退款已处理")
    assert csh.refund_of(order_no).status == "succeeded" and _refund_journals(_order(order_no)) == 1
    assert len(sim.refunds()) == 1


def test_refused_refund_is_asked_again_with_a_new_number(app, f, live, gateway):
    sim = gateway("alipay")
    product = f.product(face_price=1800, cost=1500, secrets=1)
    order_no = _pay(live, sim, product)
    sim.behave(refund="fail")
    _refund_cli(app, order_no)
    refund = csh.refund_of(order_no)
    assert refund.status == "failed" and _refund_journals(_order(order_no)) == 0
    first_no = refund.out_refund_no
    sim.behave(refund="success")
    refunds.retry(refund.id, None)
    from app.outbox.service import dispatch_due

    dispatch_due()
    refund = _refund_done(order_no)
    assert refund.out_refund_no != first_no and _refund_journals(_order(order_no)) == 1
    assert [r["status"] for r in sim.refunds() if r["out_refund_no"] == refund.out_refund_no] == ["succeeded"]
    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(Refund)) == 1
