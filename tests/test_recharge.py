"""Direct top-ups (直充) end to end: orders placed through the Open API, the portal and the storefront, paid into
buyer_funds, submitted by real RQ workers on real Redis to simulator suppliers over HTTP, resolved by polling and
by signed callbacks, failed over, delivered once or refunded once. The `app` fixture checks the ledger after each.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from app.clock import utcnow
from app.extensions import db
from app.ledger.service import balance_of, supplier_account_code
from app.openapi import signing
from app.outbox.models import OutboxMessage
from app.payments.models import Payment, Refund
from app.suppliers import recharge
from app.suppliers.models import RechargeAttempt, RechargeEvent
from tests import supplier_sim_helpers
from tests.payments_helpers import sandbox_form, setup_sandbox, trade_no
from tests.recharge_helpers import (
    ACCOUNT,
    COMMISSION,
    PRICE,
    START_BALANCE,
    attempts,
    commissions_of,
    count_sales,
    events,
    journal_keys,
    make_poll_due,
    order,
    outbox_for,
    place_api,
    poll_now,
    work,
    world,
)
from tests.recharge_helpers import second_sim as second_sim  # noqa: PLC0414  (the fixture, re-exported)
from tests.supplier_sim_helpers import sim_supplier

supplier_sim = supplier_sim_helpers.supplier_sim  # the fixture


@pytest.fixture
def w(f):
    return world(f)


@pytest.fixture
def with_redis(app, redis_url):
    app.config["REDIS_URL"] = redis_url
    try:
        yield redis_url
    finally:
        app.config["REDIS_URL"] = None


@pytest.fixture
def public_url(app):
    """Our app served over real HTTP, and PUBLIC_BASE_URL pointing at it, so suppliers' callbacks reach us."""
    from tests.openapi_helpers import served

    with served(app) as url:
        app.config["PUBLIC_BASE_URL"] = url
        try:
            yield url
        finally:
            app.config["PUBLIC_BASE_URL"] = None


def wallet(w) -> int:
    from app.ledger.service import agent_balances

    db.session.rollback()
    return agent_balances(w.buyer.id)["wallet"]


def assert_delivered_once(order_no: str, supplier, cost: int, sim, w=None) -> None:
    o = order(order_no)
    assert o.status == "delivered" and o.upstream_status == "success" and o.delivered_at is not None
    assert o.supplier_id == supplier.id and o.cost_total == cost
    assert count_sales(order_no) == 1
    assert f"order:{order_no}:sale" in journal_keys(order_no)
    assert sim.orders()[order_no]["credits"] == 1
    if w is not None:
        assert wallet(w) == START_BALANCE - PRICE  # charged once
        assert commissions_of(order_no) == [(w.parent.id, COMMISSION, "pending")]


# --- success -------------------------------------------------------------------------------------------------

def test_open_api_direct_order_is_paid_then_delivered_by_the_worker(app, client, f, w, supplier_sim, with_redis):
    sup = sim_supplier(supplier_sim, priority=1, balance=50_000, mappings={w.product.id: ("CMCC-10", 900)})
    payable0 = balance_of(supplier_account_code(sup.id))

    body = place_api(client, w)
    order_no = body["order_no"]
    # Given back at once: paid, the money held in buyer_funds, the recharge job queued after the commit.
    assert body["status"] == "paid" and body["kind"] == "direct" and body["account"] == ACCOUNT
    assert wallet(w) == START_BALANCE - PRICE
    assert journal_keys(order_no) == [f"order:{order_no}:hold"]
    assert balance_of("platform:buyer_funds") == PRICE
    assert [m.status for m in outbox_for(order_no)] == ["pending"]
    from workers.queues import get_queue
    assert get_queue("high").get_job_ids() == [f"recharge-{order_no}"]
    assert supplier_sim.orders() == {}

    work()

    assert_delivered_once(order_no, sup, 900, supplier_sim, w)
    assert [(a.supplier_id, a.status, a.seq, a.cost) for a in attempts(order_no)] == [(sup.id, "success", 1, 900)]
    assert attempts(order_no)[0].upstream_trade_no == supplier_sim.orders()[order_no]["trade_no"]
    assert events(order_no) == [("submit", "submitting"), ("submit", "success")]
    assert balance_of("platform:buyer_funds") == 0
    assert balance_of(supplier_account_code(sup.id)) == payable0 + 900
    assert balance_of("platform:revenue") == PRICE - 900
    db.session.refresh(sup)
    assert sup.balance == 50_000 - 900  # the local estimate until the next balance sync
    assert [m.status for m in outbox_for(order_no)] == ["done"]

    # The Open API shows it delivered.
    from tests.openapi_helpers import signed_call
    r = signed_call(client, w.key, w.secret, "GET", f"/open/v1/orders/{order_no}")
    assert r.get_json()["status"] == "delivered" and r.get_json()["upstream_status"] == "success"

    # The job again, and the sweeper re-dispatching the same message under the same job id: nothing changes.
    assert recharge.run(order(order_no).id) == "done"
    message = outbox_for(order_no)[0]
    db.session.execute(update(OutboxMessage).where(OutboxMessage.id == message.id)
                       .values(status="pending", dispatched_at=utcnow() - timedelta(minutes=5)))
    db.session.commit()
    from app.outbox import service as outbox
    assert outbox.sweep() == 1
    assert get_queue("high").get_job_ids() == [f"recharge-{order_no}"]  # RQ re-enqueues the same id
    work()
    assert [m.status for m in outbox_for(order_no)] == ["done"]  # it ran again ...
    assert_delivered_once(order_no, sup, 900, supplier_sim, w)  # ... and changed nothing
    assert supplier_sim.orders()[order_no]["submits"] == 1
    assert len(events(order_no)) == 2


@pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
def test_without_redis_the_top_up_runs_right_after_the_request(app, client, f, w, supplier_sim):
    """The embedded default (no REDIS_URL, SQLite): the outbox runs the recharge inline after the response."""
    assert app.config["REDIS_URL"] is None
    sup = sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    body = place_api(client, w)
    assert body["status"] == "paid"
    assert_delivered_once(body["order_no"], sup, 900, supplier_sim, w)
    assert events(body["order_no"]) == [("submit", "submitting"), ("submit", "success")]
    # failing everywhere: refunded to the wallet at once
    supplier_sim.behave("CMCC-10", mode="fail")
    failed = place_api(client, w)["order_no"]
    assert order(failed).status == "refunded" and wallet(w) == START_BALANCE - PRICE
    assert journal_keys(failed) == sorted([f"order:{failed}:hold", f"order:{failed}:refund"])


def test_without_redis_the_cli_poll_resolves_unknown_and_fails_over(app, client, f, w, supplier_sim, second_sim):
    """No worker, no scheduler: `flask kameng recharge-poll` (from cron) asks the suppliers; a failover it finds
    is submitted to the next supplier before the command ends."""
    first = sim_supplier(supplier_sim, priority=1, timeout_seconds=1, mappings={w.product.id: ("CMCC-10", 900)})
    second = sim_supplier(second_sim, priority=2, mappings={w.product.id: ("CMCC-10", 905)})
    supplier_sim.behave("CMCC-10", mode="timeout", timeout_ms=1500, final="failed")
    order_no = place_api(client, w)["order_no"]
    assert attempts(order_no)[0].status == "unknown"
    runner = app.test_cli_runner()
    result = runner.invoke(args=["kameng", "recharge-poll"])
    assert result.exit_code == 0 and json.loads(result.output) == {"claimed": 0}  # not due yet
    make_poll_due(order_no)
    result = runner.invoke(args=["kameng", "recharge-poll"])
    assert result.exit_code == 0 and json.loads(result.output) == {"claimed": 1}, result.output
    assert_delivered_once(order_no, second, 905, second_sim, w)
    assert [(a.supplier_id, a.status) for a in attempts(order_no)] == [(first.id, "failed"), (second.id, "success")]
    assert supplier_sim.orders()[order_no]["credits"] == 0


def test_direct_order_without_a_supplier_is_refused_out_of_stock(app, client, f, w, supplier_sim):
    from tests.openapi_helpers import assert_error, signed_call

    r = signed_call(client, w.key, w.secret, "POST", "/open/v1/orders",
                    {"out_trade_no": "x1", "product_id": w.product.id, "quantity": 1, "account": ACCOUNT})
    assert_error(r, 409, "out_of_stock")
    # A mapping whose last stock sync said 0, or at an inactive supplier, or above our balance there: the same.
    sup = sim_supplier(supplier_sim, mappings={w.product.id: ("CMCC-10", 900)}, balance=899)
    r = signed_call(client, w.key, w.secret, "POST", "/open/v1/orders",
                    {"out_trade_no": "x2", "product_id": w.product.id, "quantity": 1, "account": ACCOUNT})
    assert_error(r, 409, "out_of_stock")
    sup.balance = None
    db.session.commit()
    r = signed_call(client, w.key, w.secret, "POST", "/open/v1/orders",
                    {"out_trade_no": "x3", "product_id": w.product.id, "quantity": 1, "account": "a\x01b"})
    assert_error(r, 400)
    r = signed_call(client, w.key, w.secret, "POST", "/open/v1/orders",
                    {"out_trade_no": "x4", "product_id": w.product.id, "quantity": 1, "account": "1" * 65})
    assert_error(r, 400, "invalid_account")
    assert wallet(w) == START_BALANCE
    r = signed_call(client, w.key, w.secret, "GET", "/open/v1/products")
    listed = {p["id"]: p["in_stock"] for p in r.get_json()["products"]}
    assert listed[w.product.id] is True
    sup.active = False
    db.session.commit()
    r = signed_call(client, w.key, w.secret, "GET", "/open/v1/products")
    assert {p["id"]: p["in_stock"] for p in r.get_json()["products"]}[w.product.id] is False


# --- failure then failover -----------------------------------------------------------------------------------

def test_portal_order_fails_at_the_first_supplier_and_succeeds_at_the_next(app, client, f, w, supplier_sim,
                                                                           second_sim, with_redis):
    first = sim_supplier(supplier_sim, name="上游A", priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    second = sim_supplier(second_sim, name="上游B", priority=2, mappings={w.product.id: ("CMCC-10", 910)})
    supplier_sim.behave("CMCC-10", mode="fail")

    f.login(client, w.buyer.name)
    page = client.get("/portal/buy")
    assert 'name="account"' in page.get_data(as_text=True)
    r = client.post("/portal/buy", data={"product_id": w.product.id, "quantity": "1", "account": ACCOUNT})
    assert r.status_code == 302 and "/portal/orders/" in r.headers["Location"]
    order_no = r.headers["Location"].rstrip("/").rsplit("/", 1)[1]
    assert order(order_no).status == "paid"

    work()

    assert_delivered_once(order_no, second, 910, second_sim, w)
    assert [(a.supplier_id, a.status, a.seq) for a in attempts(order_no)] == [
        (first.id, "failed", 1), (second.id, "success", 2)]
    assert supplier_sim.orders()[order_no]["credits"] == 0
    assert events(order_no) == [("submit", "submitting"), ("submit", "failed"), ("failover", "submitting"),
                                ("submit", "submitting"), ("submit", "success")]
    assert balance_of(supplier_account_code(first.id)) == 0
    page = client.get(f"/portal/orders/{order_no}").get_data(as_text=True)
    assert ACCOUNT in page and "充值成功" in page


# --- timeout, then the poll finds it -------------------------------------------------------------------------

def test_timeout_is_unknown_until_the_poll_finds_it_credited_once(app, client, f, w, supplier_sim, second_sim,
                                                                  with_redis):
    sup = sim_supplier(supplier_sim, priority=1, timeout_seconds=1, mappings={w.product.id: ("CMCC-10", 900)})
    sim_supplier(second_sim, priority=2, mappings={w.product.id: ("CMCC-10", 900)})  # must never be tried
    supplier_sim.behave("CMCC-10", mode="timeout", timeout_ms=1500)
    order_no = place_api(client, w)["order_no"]

    work()

    o = order(order_no)
    assert o.status == "delivering" and o.upstream_status == "unknown"
    [a] = attempts(order_no)
    assert a.status == "unknown" and a.polls == 0 and a.last_error
    assert utcnow() < a.next_poll_at <= utcnow() + timedelta(seconds=6)
    assert supplier_sim.orders()[order_no]["credits"] == 1  # the upstream did credit it
    assert count_sales(order_no) == 0 and wallet(w) == START_BALANCE - PRICE
    # Not due yet: the poll leaves it alone, and the job again does not pick another supplier.
    assert poll_now() == {"claimed": 0}
    assert recharge.run(o.id) == "scheduled"
    assert second_sim.orders() == {}

    assert make_poll_due(order_no) == 1
    assert poll_now() == {"claimed": 1}

    assert_delivered_once(order_no, sup, 900, supplier_sim, w)
    assert supplier_sim.orders()[order_no]["submits"] == 1 and supplier_sim.orders()[order_no]["queries"] == 1
    assert events(order_no) == [("submit", "submitting"), ("submit", "unknown"), ("poll", "success")]
    assert second_sim.orders() == {}
    # Polling again finds nothing due; the job again changes nothing.
    db.session.execute(update(RechargeAttempt).values(next_poll_at=utcnow() - timedelta(minutes=1)))
    db.session.commit()
    assert poll_now() == {"claimed": 0}
    assert recharge.run(o.id) == "done"
    assert_delivered_once(order_no, sup, 900, supplier_sim, w)


def test_pending_backs_off_then_fails_over_and_unknown_is_flagged_never_refunded(app, client, f, w, supplier_sim,
                                                                                  second_sim, with_redis):
    first = sim_supplier(supplier_sim, priority=1, timeout_seconds=1, mappings={w.product.id: ("CMCC-10", 900)})
    second = sim_supplier(second_sim, priority=2, mappings={w.product.id: ("CMCC-10", 905)})
    supplier_sim.behave("CMCC-10", mode="pending", pending_polls=2, final="failed")
    order_no = place_api(client, w)["order_no"]
    work()
    [a] = attempts(order_no)
    assert a.status == "processing" and order(order_no).upstream_status == "processing"

    waits = []
    for _ in range(2):  # processing twice: the wait doubles each time
        make_poll_due(order_no)
        before = utcnow()
        poll_now()
        [a] = attempts(order_no)
        waits.append(round((a.next_poll_at - before).total_seconds()))
    assert a.status == "processing" and a.polls == 2 and waits == [10, 20]
    assert recharge.backoff(10) == timedelta(minutes=5)

    make_poll_due(order_no)
    poll_now()  # the upstream now says failed: the next supplier is tried by the recharge job (outbox)
    assert_delivered_once(order_no, second, 905, second_sim, w)
    assert [(x.supplier_id, x.status) for x in attempts(order_no)] == [(first.id, "failed"), (second.id, "success")]
    assert [m.key.rsplit(":", 2)[-2] for m in outbox_for(order_no)][1:] == ["after"]



def test_an_unknown_outcome_is_polled_on_flagged_once_and_never_refunded(app, client, f, w, supplier_sim,
                                                                         second_sim, with_redis):
    sup = sim_supplier(supplier_sim, priority=1, timeout_seconds=1, mappings={w.product.id: ("CMCC-10", 900)})
    sim_supplier(second_sim, priority=2, mappings={w.product.id: ("CMCC-10", 900)})
    supplier_sim.behave("CMCC-10", mode="unknown")  # credits it, but answers HTTP 500
    order_no = place_api(client, w)["order_no"]
    work()
    [a] = attempts(order_no)
    assert a.status == "unknown" and supplier_sim.orders()[order_no]["credits"] == 1
    # The supplier is now unreachable, and has been unknown for longer than RECHARGE_UNKNOWN_ALERT_MINUTES.
    endpoint = sup.endpoint
    db.session.execute(update(RechargeAttempt).where(RechargeAttempt.id == a.id)
                       .values(created_at=utcnow() - timedelta(minutes=31)))
    from app.catalog.models import Supplier
    db.session.execute(update(Supplier).where(Supplier.id == sup.id).values(endpoint="http://127.0.0.1:1"))
    db.session.commit()
    for _ in range(3):
        make_poll_due(order_no)
        poll_now()
    [a] = attempts(order_no)
    o = order(order_no)
    assert a.status == "unknown" and a.polls == 3 and o.status == "delivering" and o.upstream_status == "unknown"
    assert events(order_no).count(("system", "unknown")) == 1  # support is asked once
    assert wallet(w) == START_BALANCE - PRICE and count_sales(order_no) == 0
    assert recharge.run(o.id) == "scheduled" and second_sim.orders() == {}  # never a second supplier
    # Reachable again: the next poll finds it credited and delivers it.
    db.session.execute(update(Supplier).where(Supplier.id == sup.id).values(endpoint=endpoint))
    db.session.commit()
    make_poll_due(order_no)
    poll_now()
    assert_delivered_once(order_no, sup, 900, supplier_sim, w)
    assert second_sim.orders() == {}


# --- callbacks -----------------------------------------------------------------------------------------------

def test_duplicate_and_late_callbacks_change_nothing(app, client, f, w, supplier_sim, with_redis, public_url):
    sup = sim_supplier(supplier_sim, priority=1, timeout_seconds=1, mappings={w.product.id: ("CMCC-10", 900)})
    # Processing at first; the upstream finishes it by itself 300 ms later and calls back three times.
    supplier_sim.behave("CMCC-10", mode="pending", pending_polls=100, complete_after_ms=300, duplicate_callbacks=2)
    order_no = place_api(client, w)["order_no"]
    work()
    assert attempts(order_no)[0].status == "processing"
    sent = supplier_sim.wait_callbacks(order_no, 3)
    assert sent["callback_answers"] == ["200 success"] * 3
    assert_delivered_once(order_no, sup, 900, supplier_sim, w)
    assert events(order_no) == [("submit", "submitting"), ("submit", "processing"), ("callback", "success"),
                                ("callback", "success"), ("callback", "success")]
    details = [e.detail for e in db.session.scalars(select(RechargeEvent).where(RechargeEvent.source == "callback")
                                                    .order_by(RechargeEvent.id))]
    assert "重复或迟到" not in details[0] and all("重复或迟到" in d for d in details[1:])
    assert all(e.remote_addr == "127.0.0.1" for e in db.session.scalars(
        select(RechargeEvent).where(RechargeEvent.source == "callback")))

    # Late: the poll resolves it first (a timeout, then the poll), the callback arrives 4 s after the credit.
    supplier_sim.behave("CMCC-10", mode="timeout", timeout_ms=1500, callback_delay_ms=4000)
    late = place_api(client, w)["order_no"]
    work()
    assert attempts(late)[0].status == "unknown"
    make_poll_due(late)
    poll_now()
    assert order(late).status == "delivered"
    assert supplier_sim.orders()[late]["callbacks_sent"] == 0
    supplier_sim.wait_callbacks(late, 1)
    assert_delivered_once(late, sup, 900, supplier_sim)
    assert events(late)[-1] == ("callback", "success") and count_sales(late) == 1
    assert wallet(w) == START_BALANCE - 2 * PRICE


def _signed_callback(client, supplier_id: int, payload: dict, secret: str, app_key: str):
    body = json.dumps(payload).encode()
    path = f"/supplier/notify/{supplier_id}"
    headers = signing.signed_headers(app_key, secret, "POST", path, body)
    headers["Content-Type"] = "application/json"
    return client.post(path, data=body, headers=headers)


def test_callbacks_are_verified_and_bound_to_the_supplier_that_sent_them(app, client, f, w, supplier_sim,
                                                                         with_redis):
    sup = sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    # Another supplier whose key we also hold (here: the same simulator account) but that never got this order.
    other = sim_supplier(supplier_sim, priority=5, mappings={})
    supplier_sim.behave("CMCC-10", mode="pending", pending_polls=100, callback="none")
    order_no = place_api(client, w)["order_no"]
    work()
    assert attempts(order_no)[0].status == "processing"
    success = {"order_no": order_no, "trade_no": "FORGED1", "status": "success", "message": ""}

    r = _signed_callback(client, sup.id, success, "not-the-key", supplier_sim.app_key)
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "invalid_callback"
    r = _signed_callback(client, other.id, success, supplier_sim.key, supplier_sim.app_key)
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "attempt_not_found"
    r = _signed_callback(client, 999_999, success, supplier_sim.key, supplier_sim.app_key)
    assert r.status_code == 404
    r = client.post(f"/supplier/notify/{sup.id}", data=b"not json", headers={"Content-Type": "text/plain"})
    assert r.status_code == 401
    assert order(order_no).status == "delivering" and count_sales(order_no) == 0
    rejected = list(db.session.scalars(select(RechargeEvent).where(RechargeEvent.order_id.is_(None))
                                       .order_by(RechargeEvent.id)))
    assert [(e.supplier_id, e.source) for e in rejected] == [(sup.id, "callback"), (other.id, "callback"),
                                                              (sup.id, "callback")]
    assert all(e.remote_addr for e in rejected)

    # The genuine supplier's callback settles it, once; a repeat answers success and changes nothing.
    r = _signed_callback(client, sup.id, {**success, "trade_no": "UP1"}, supplier_sim.key, supplier_sim.app_key)
    assert r.status_code == 200 and r.get_data(as_text=True) == "success"
    r = _signed_callback(client, sup.id, {**success, "trade_no": "UP1"}, supplier_sim.key, supplier_sim.app_key)
    assert r.status_code == 200 and r.get_data(as_text=True) == "success"
    o = order(order_no)
    assert o.status == "delivered" and count_sales(order_no) == 1
    assert attempts(order_no)[0].upstream_trade_no == "UP1"
    # (the simulator itself never credited: the forged-looking order is still processing there, credits 0)
    assert supplier_sim.orders()[order_no]["credits"] == 0


# --- every supplier fails: refunded --------------------------------------------------------------------------

def test_all_suppliers_fail_the_wallet_is_refunded_in_the_same_transaction(app, client, f, w, supplier_sim,
                                                                            second_sim, with_redis):
    first = sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    second = sim_supplier(second_sim, priority=2, mappings={w.product.id: ("CMCC-10", 900)})
    supplier_sim.behave("CMCC-10", mode="fail")
    second_sim.behave("CMCC-10", mode="pending", pending_polls=0, final="failed")
    body = place_api(client, w, notify_url="http://127.0.0.1:9/notify")
    order_no = body["order_no"]
    work()
    assert [(a.supplier_id, a.status) for a in attempts(order_no)] == [(first.id, "failed"),
                                                                       (second.id, "processing")]
    make_poll_due(order_no)
    poll_now()  # the second says failed → the recharge job finds no supplier left → failed and refunded
    o = order(order_no)
    assert o.status == "refunded" and o.upstream_status == "failed"
    assert [(a.supplier_id, a.status) for a in attempts(order_no)] == [(first.id, "failed"), (second.id, "failed")]
    assert wallet(w) == START_BALANCE
    assert journal_keys(order_no) == sorted([f"order:{order_no}:hold", f"order:{order_no}:refund"])
    assert count_sales(order_no) == 0 and commissions_of(order_no) == []
    assert balance_of("platform:buyer_funds") == 0
    refund = db.session.scalar(select(Refund).where(Refund.order_id == o.id))
    assert refund.destination == "wallet" and refund.amount == PRICE
    assert events(order_no)[-1] == ("refund", "failed")
    assert supplier_sim.orders()[order_no]["credits"] == 0 and second_sim.orders()[order_no]["credits"] == 0
    # The reseller hears failed, then refunded (outbox order callbacks).
    notified = sorted(m.key for m in db.session.scalars(select(OutboxMessage).where(
        OutboxMessage.key.like(f"order:{order_no}:notify:%"))))
    assert notified == [f"order:{order_no}:notify:failed", f"order:{order_no}:notify:refunded"]
    # Again: nothing more.
    assert recharge.run(o.id) == "done"
    assert wallet(w) == START_BALANCE and len(journal_keys(order_no)) == 2


def test_storefront_direct_order_paid_by_channel_is_refunded_through_the_channel(app, client, f, w, supplier_sim,
                                                                                  with_redis):
    setup_sandbox()
    sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    supplier_sim.behave("CMCC-10", mode="fail")
    r = client.get("/shop/api/products")
    assert {p["id"]: p["in_stock"] for p in r.get_json()["products"]}[w.product.id] is True
    r = client.post("/shop/api/orders", json={"product_id": w.product.id, "quantity": 1, "contact": "13900000000",
                                              "query_password": "secret-123", "channel": "sandbox"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_account"
    r = client.post("/shop/api/orders", json={"product_id": w.product.id, "quantity": 1, "contact": "13900000000",
                                              "query_password": "secret-123", "channel": "sandbox",
                                              "account": ACCOUNT})
    assert r.status_code == 201, r.get_data(as_text=True)
    order_no, amount = r.get_json()["order_no"], r.get_json()["amount"]
    assert amount == w.product.face_price
    trade = trade_no()
    r = client.post("/pay/notify/sandbox", data=sandbox_form(order_no, trade, amount))
    assert r.status_code == 200 and r.get_data(as_text=True) == "success"
    assert order(order_no).status == "paid" and balance_of("platform:buyer_funds") == amount
    # The same notification again: success, nothing new.
    r = client.post("/pay/notify/sandbox", data=sandbox_form(order_no, trade, amount))
    assert r.get_data(as_text=True) == "success"

    work()

    o = order(order_no)
    assert o.status == "refunded" and o.upstream_status == "failed"
    payment = db.session.scalar(select(Payment).where(Payment.order_id == o.id))
    assert payment.status == "refunded"
    assert journal_keys(order_no) == sorted([f"pay:sandbox:{trade}", f"refund:sandbox:{trade}"])
    assert balance_of("platform:buyer_funds") == 0 and balance_of("platform:clearing:sandbox") == 0
    refund = db.session.scalar(select(Refund).where(Refund.order_id == o.id))
    assert refund.destination == "sandbox" and refund.amount == amount
    assert supplier_sim.orders()[order_no]["credits"] == 0
    r = client.post("/shop/api/lookup", json={"order_no": order_no, "query_password": "secret-123"})
    assert r.get_json()["status"] == "refunded"


def test_storefront_direct_order_delivered_after_payment(app, client, f, w, supplier_sim, with_redis):
    setup_sandbox()
    sup = sim_supplier(supplier_sim, priority=1, service_fee_bp=100, mappings={w.product.id: ("CMCC-10", 900)})
    r = client.post("/shop/api/orders", json={"product_id": w.product.id, "quantity": 1, "contact": "13900000000",
                                              "query_password": "secret-123", "channel": "sandbox",
                                              "account": ACCOUNT})
    order_no, amount = r.get_json()["order_no"], r.get_json()["amount"]
    client.post("/pay/notify/sandbox", data=sandbox_form(order_no, trade_no(), amount))
    work()
    assert_delivered_once(order_no, sup, 900, supplier_sim)
    o = order(order_no)
    assert o.service_fee == 9  # 1% of the cost at the supplier that delivered
    assert balance_of(supplier_account_code(sup.id)) == 900 - 9
    assert balance_of("platform:fees") == 9 and balance_of("platform:revenue") == amount - 900


# --- races ---------------------------------------------------------------------------------------------------

def _in_threads(app, *calls):
    results, errors = [], []
    barrier = threading.Barrier(len(calls))

    def run(call):
        with app.app_context():
            try:
                barrier.wait()
                results.append(call())
            except Exception as exc:  # reported below
                errors.append(exc)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results


def test_two_concurrent_runs_deliver_once(app, client, f, w, supplier_sim):
    sup = sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    supplier_sim.behave("CMCC-10", latency_ms=300)
    app.config["REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens: the job stays in the outbox for now
    try:
        order_no = place_api(client, w)["order_no"]
    finally:
        app.config["REDIS_URL"] = None
    order_id = order(order_no).id
    assert order(order_no).status == "paid" and supplier_sim.orders() == {}

    results = _in_threads(app, lambda: recharge.run(order_id), lambda: recharge.run(order_id))

    assert sorted(results) in (["delivered", "ignored"], ["delivered", "delivered"], ["delivered", "done"],
                               ["delivered", "scheduled"])
    assert_delivered_once(order_no, sup, 900, supplier_sim, w)
    assert len(attempts(order_no)) == 1


def test_a_poll_and_a_callback_racing_deliver_once(app, client, f, w, supplier_sim, with_redis):
    sup = sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    supplier_sim.behave("CMCC-10", mode="pending", pending_polls=0, callback="none", latency_ms=200)
    order_no = place_api(client, w)["order_no"]
    work()
    [a] = attempts(order_no)
    assert a.status == "processing"
    payload = json.dumps({"order_no": order_no, "trade_no": a.upstream_trade_no, "status": "success",
                          "message": ""}).encode()
    path = f"/supplier/notify/{sup.id}"

    def callback():
        headers = signing.signed_headers(supplier_sim.app_key, supplier_sim.key, "POST", path, payload)
        headers["Content-Type"] = "application/json"
        return app.test_client().post(path, data=payload, headers=headers).status_code

    results = _in_threads(app, lambda: recharge.poll(a.id), callback, lambda: recharge.poll(a.id))

    assert 200 in results
    assert_delivered_once(order_no, sup, 900, supplier_sim, w)
    assert [x[1] for x in events(order_no)].count("success") == 3
    assert sum(1 for e in db.session.scalars(select(RechargeEvent.detail).where(
        RechargeEvent.detail.like("充值成功%")))) == 1


def test_a_killed_submit_is_asked_about_then_submitted_again_never_elsewhere(app, client, f, w, supplier_sim,
                                                                             second_sim):
    """A job that died after recording the attempt and before sending it: the next run asks the same supplier,
    hears not_found, and submits again there (the upstream dedupes on our order number)."""
    sup = sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    sim_supplier(second_sim, priority=2, mappings={w.product.id: ("CMCC-10", 900)})
    app.config["REDIS_URL"] = "redis://127.0.0.1:1/0"
    try:
        order_no = place_api(client, w)["order_no"]
    finally:
        app.config["REDIS_URL"] = None
    o = order(order_no)
    kind, attempt_id, _ = recharge._next_step(o.id)  # the job's first step, committed; then it "dies"
    assert kind == "submit" and order(order_no).upstream_status == "submitting"
    assert recharge.run(o.id) == "delivered"
    assert_delivered_once(order_no, sup, 900, supplier_sim, w)
    assert supplier_sim.orders()[order_no]["submits"] == 1  # (the query found nothing there to count)
    assert second_sim.orders() == {}
    assert ("poll", "submitting") in events(order_no)


# --- refusals and the support refund -------------------------------------------------------------------------

def test_manual_products_are_still_refused_and_support_refund_of_a_held_order(app, client, f, w, supplier_sim):
    from tests.openapi_helpers import assert_error, signed_call

    manual = f.product(kind="manual", face_price=1_000)
    r = signed_call(client, w.key, w.secret, "POST", "/open/v1/orders",
                    {"out_trade_no": uuid.uuid4().hex, "product_id": manual.id, "quantity": 1, "account": "x"})
    assert_error(r, 422, "unsupported_product_kind")

    # Support refunds a top-up whose outcome is unknown (after checking with the supplier): the held money goes
    # back to the wallet; while the supplier is still processing, the refund is refused.
    sim_supplier(supplier_sim, priority=1, timeout_seconds=1, mappings={w.product.id: ("CMCC-10", 900)})
    supplier_sim.behave("CMCC-10", mode="pending", pending_polls=100, callback="none")
    order_no = place_api(client, w)["order_no"]  # inline (no Redis): submitted after the request
    assert attempts(order_no)[0].status == "processing"
    from app.errors import Conflict
    from app.payments import service as payments
    with pytest.raises(Conflict):
        payments.refund_order(order(order_no).id, "客户要求", None)
    db.session.execute(update(RechargeAttempt).values(status="unknown"))
    db.session.commit()
    payments.refund_order(order(order_no).id, "供应商确认未到账", None)
    assert order(order_no).status == "refunded" and wallet(w) == START_BALANCE
    assert journal_keys(order_no) == sorted([f"order:{order_no}:hold", f"order:{order_no}:refund"])
    assert balance_of("platform:buyer_funds") == 0


# --- docking (对接): another Kameng's card product as our direct product -----------------------------------------

def test_docking_a_card_product_from_another_kameng_delivers_its_secrets_once(app, client, f, w):
    """The upstream is a Kameng (here the test app itself, served over HTTP): our direct product maps to its card
    product; the upstream's secrets are stored, encrypted, as our order's and shown only to our buyer."""
    from app import crypto
    from app.catalog import service as catalog
    from app.catalog.models import CardSecret
    from app.suppliers.models import SupplierProduct
    from tests.openapi_helpers import new_key, served, signed_call

    reseller = f.agent(balance=50_000, tier_obj=f.tier(discount_bp=9000))  # our account at the upstream
    card = f.product(face_price=1_000, cost=800, secrets=3)  # the upstream's card product, ¥9.00 for us there
    key, secret = new_key(reseller, name="downstream")
    with served(app) as base:
        app.config["PUBLIC_BASE_URL"] = base  # the upstream calls back here (its callback races our submit)
        try:
            sup = catalog.create_supplier("上游卡盟")
            sup.protocol, sup.endpoint, sup.app_key = "kameng", base, key.app_key
            sup.secret_enc = crypto.encrypt(secret)
            db.session.add(SupplierProduct(supplier_id=sup.id, product_id=w.product.id, upstream_code=str(card.id),
                                           cost=900, priority=1, active=True))
            db.session.commit()
            order_no = place_api(client, w, account="game-account-1", quantity=2)["order_no"]  # runs inline
            deadline = time.monotonic() + 10
            while order(order_no).status != "delivered" and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            app.config["PUBLIC_BASE_URL"] = None
        o = order(order_no)
        assert o.status == "delivered" and o.supplier_id == sup.id and o.cost_total == 1_800
        assert count_sales(order_no) == 1 and wallet(w) == START_BALANCE - 2 * PRICE
        assert f.wallet(reseller) == 50_000 - 2 * 900  # we paid the upstream once
        ours = list(db.session.scalars(select(CardSecret).where(CardSecret.order_id == o.id)))
        theirs = list(db.session.scalars(select(CardSecret).where(CardSecret.product_id == card.id,
                                                                  CardSecret.status == "sold")))
        assert len(ours) == 2 and all(c.status == "sold" and c.product_id == w.product.id for c in ours)
        assert sorted(crypto.decrypt(c.secret_enc) for c in ours) == \
            sorted(crypto.decrypt(c.secret_enc) for c in theirs)
        r = signed_call(client, w.key, w.secret, "GET", f"/open/v1/orders/{order_no}")
        assert sorted(r.get_json()["card_secrets"]) == sorted(crypto.decrypt(c.secret_enc) for c in theirs)
        assert [s for s, _ in events(order_no)].count("submit") >= 1
        assert [x.status for x in attempts(order_no)] == ["success"]


def test_pages_ask_for_the_account_and_refuse_without_it(app, client, f, w, supplier_sim):
    setup_sandbox()
    f.login(client, w.buyer.name)
    r = client.post("/portal/buy", data={"product_id": w.product.id, "quantity": "1"}, follow_redirects=True)
    assert "请填写充值账号" in r.get_data(as_text=True)
    page = client.get("/portal/buy").get_data(as_text=True)
    assert "缺货" in page  # no supplier maps it yet
    sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    page = client.get("/portal/buy").get_data(as_text=True)
    assert "有货" in page and 'name="account"' in page
    shop = app.test_client()
    page = shop.get(f"/shop/buy/{w.product.id}").get_data(as_text=True)
    assert 'name="account"' in page
    r = shop.post(f"/shop/buy/{w.product.id}", data={"quantity": "1", "contact": "13900000000",
                                                     "query_password": "secret-123", "channel": "sandbox"})
    assert r.status_code == 400 and "请填写充值账号" in r.get_data(as_text=True)
    r = shop.post(f"/shop/buy/{w.product.id}", data={"quantity": "1", "contact": "13900000000", "account": ACCOUNT,
                                                     "query_password": "secret-123", "channel": "sandbox"})
    assert r.status_code == 302
    assert wallet(w) == START_BALANCE and supplier_sim.orders() == {}
