"""The delivery promise (到账承诺) of direct top-ups, end to end: orders placed through the Open API, submitted to
supplier simulators over real HTTP, one of them made slow; the `delivery-sla` job at the deadline withdraws the
top-up (撤单) and fails it over to the next supplier, or refunds it when none is left; a top-up whose state at the
supplier is unknown is never failed over or refunded; support is alerted (signal, timeline, 到账超时, workbench).
The `app` fixture checks the ledger after each test.
"""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
import requests
from sqlalchemy import select, update

from app.analytics import delivery
from app.clock import to_local, utcnow
from app.extensions import db
from app.orders.models import Order
from app.payments.models import Refund
from app.suppliers import recharge, sla
from app.suppliers.models import RechargeAttempt, RechargeEvent
from tests import supplier_sim_helpers
from tests.dashboards_helpers import login_as
from tests.recharge_helpers import (
    PRICE,
    START_BALANCE,
    attempts,
    count_sales,
    events,
    order,
    place_api,
    world,
)
from tests.recharge_helpers import second_sim as second_sim  # noqa: PLC0414  (the fixture, re-exported)
from tests.supplier_sim_helpers import sim_supplier
from workers import jobs

supplier_sim = supplier_sim_helpers.supplier_sim  # the fixture
SLOW = {"mode": "pending", "pending_polls": 10_000}  # keeps answering "processing": a supplier that is slow


@pytest.fixture
def w(f):
    return world(f)


@pytest.fixture
def alerts(app):
    """Every Breach the SLA announces (what the alerts domain receives)."""
    seen: list[sla.Breach] = []

    def receiver(sender, breach):
        seen.append(breach)

    sla.delivery_sla_breached.connect(receiver)
    try:
        yield seen
    finally:
        sla.delivery_sla_breached.disconnect(receiver)


def wallet(w) -> int:
    from app.ledger.service import agent_balances

    db.session.rollback()
    return agent_balances(w.buyer.id)["wallet"]


def age(order_no: str, minutes: float) -> None:
    """The clock as the SLA sees it: the order was paid, and its attempts made, `minutes` earlier than they were."""
    found = attempts(order_no)  # (each reader starts a fresh transaction: read first, then write)
    o = order(order_no)
    shift = timedelta(minutes=minutes)
    db.session.execute(update(Order).where(Order.id == o.id).values(paid_at=o.paid_at - shift))
    for a in found:
        db.session.execute(update(RechargeAttempt).where(RechargeAttempt.id == a.id)
                           .values(created_at=a.created_at - shift))
    db.session.commit()


def sla_events(order_no: str) -> list[str]:
    db.session.rollback()
    return [e.detail for e in db.session.scalars(
        select(RechargeEvent).join(Order, Order.id == RechargeEvent.order_id)
        .where(Order.order_no == order_no, RechargeEvent.source == sla.SOURCE).order_by(RechargeEvent.id))]


def paid_day(order_no: str):
    return to_local(order(order_no).paid_at).date()


# --- failover and refund ----------------------------------------------------------------------------------------------

def test_a_slow_top_up_is_withdrawn_and_failed_over_at_the_deadline(app, client, w, supplier_sim, second_sim, alerts):
    slow = sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    fast = sim_supplier(second_sim, priority=2, mappings={w.product.id: ("CMCC-10", 905)})
    supplier_sim.behave("CMCC-10", **SLOW)
    order_no = place_api(client, w)["order_no"]
    assert order(order_no).status == "delivering"
    assert [(a.supplier_id, a.status) for a in attempts(order_no)] == [(slow.id, "processing")]

    age(order_no, 9)  # within the promise: the job does not even look at it
    assert jobs.enforce_delivery_sla() == {}
    assert supplier_sim.orders()[order_no]["cancels"] == 0

    age(order_no, 2)  # 11 minutes after payment
    assert jobs.enforce_delivery_sla() == {"failed_over": 1}

    # Withdrawn at the slow supplier (it will never credit), delivered once by the next one.
    at_slow = supplier_sim.orders()[order_no]
    assert (at_slow["status"], at_slow["credits"], at_slow["cancels"]) == ("failed", 0, 1)
    assert second_sim.orders()[order_no]["credits"] == 1
    o = order(order_no)
    assert (o.status, o.supplier_id, o.cost_total) == ("delivered", fast.id, 905)
    assert count_sales(order_no) == 1 and wallet(w) == START_BALANCE - PRICE
    assert [(a.supplier_id, a.status) for a in attempts(order_no)] == [(slow.id, "failed"), (fast.id, "success")]
    assert ("sla", "failed") in events(order_no)
    details = sla_events(order_no)
    assert details[0].startswith("已超过到账承诺（10 分钟）") and "请求" in details[1] and "撤单" in details[1]
    assert [(b.order_no, b.action) for b in alerts] == [(order_no, "breached"), (order_no, "failed_over")]
    assert alerts[0].minutes >= 11 and alerts[0].product == w.product.name

    # Idempotent: delivered now, so the next run has nothing to do; nothing was asked twice.
    assert jobs.enforce_delivery_sla() == {}
    assert supplier_sim.orders()[order_no]["cancels"] == 1 and len(alerts) == 2

    # The delivery time counts, late, on the day of payment (fold == rebuild is tests/test_rollups' business).
    stats = delivery.platform_stats(paid_day(order_no), paid_day(order_no))
    assert (stats.delivered, stats.failed, stats.late) == (1, 0, 1)
    assert stats.p95_ms == 900_000  # 11 minutes: the bucket (10 min, 15 min]


def test_with_no_supplier_left_the_late_top_up_is_refunded(app, client, w, supplier_sim, alerts):
    slow = sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    supplier_sim.behave("CMCC-10", **SLOW)
    order_no = place_api(client, w)["order_no"]
    assert wallet(w) == START_BALANCE - PRICE
    age(order_no, 11)

    assert jobs.enforce_delivery_sla() == {"refunded": 1}

    o = order(order_no)
    assert (o.status, o.upstream_status, o.delivered_at) == ("refunded", "failed", None)
    assert wallet(w) == START_BALANCE  # back in the wallet, once
    refund = db.session.scalar(select(Refund).where(Refund.order_id == o.id))
    assert (refund.destination, refund.status, refund.amount) == ("wallet", "succeeded", PRICE)
    assert "超过到账承诺" in refund.reason
    assert supplier_sim.orders()[order_no]["credits"] == 0 and supplier_sim.orders()[order_no]["cancels"] == 1
    assert [a.status for a in attempts(order_no)] == ["failed"] and attempts(order_no)[0].supplier_id == slow.id
    assert [b.action for b in alerts] == ["breached", "refunded"]
    assert count_sales(order_no) == 0
    # The failure counts against the day's success rate.
    stats = delivery.platform_stats(paid_day(order_no), paid_day(order_no))
    assert (stats.delivered, stats.failed, stats.success_rate_bp) == (0, 1, 0)
    # A late "success" from the withdrawn order is impossible: the simulator answers a resubmit with its failure.
    assert jobs.enforce_delivery_sla() == {}


# --- never when the state at the supplier is unknown ----------------------------------------------------------------

def test_an_unknown_top_up_is_never_failed_over_or_refunded(app, client, w, supplier_sim, second_sim, alerts):
    """The supplier took it (and credited it) but its answer was lost: unknown. At the deadline the withdrawal
    request gets no answer either: no failover (the second supplier is never asked), no refund; support is alerted,
    the poll keeps asking, and the supplier's success delivers it once."""
    sim_supplier(supplier_sim, priority=1, timeout_seconds=1, mappings={w.product.id: ("CMCC-10", 900)})
    sim_supplier(second_sim, priority=2, mappings={w.product.id: ("CMCC-10", 905)})
    supplier_sim.behave("CMCC-10", mode="timeout", timeout_ms=1500, final="success")
    order_no = place_api(client, w)["order_no"]
    assert attempts(order_no)[0].status == "unknown"
    supplier_sim.sim.latency_ms = 1500  # and now every answer comes too late: the withdrawal's too
    age(order_no, 11)

    assert jobs.enforce_delivery_sla() == {"unknown": 1}
    assert order(order_no).status == "delivering" and attempts(order_no)[0].status == "unknown"
    assert db.session.scalar(select(Refund).where(Refund.order_id == order(order_no).id)) is None
    assert second_sim.orders() == {} and wallet(w) == START_BALANCE - PRICE
    assert [b.action for b in alerts] == ["breached", "unknown"]
    assert "上游结果未知，不改派、不退款" in sla_events(order_no)[-1]

    # Asked once: later runs leave it to the poll and to support.
    assert jobs.enforce_delivery_sla() == {"waiting": 1}
    assert supplier_sim.orders()[order_no]["cancels"] == 1 and len(alerts) == 2

    supplier_sim.sim.latency_ms = 0
    assert recharge.poll(attempts(order_no)[0].id) == "delivered"
    assert order(order_no).status == "delivered" and count_sales(order_no) == 1
    assert supplier_sim.orders()[order_no]["credits"] == 1


def test_a_withdrawal_that_finds_the_top_up_credited_delivers_it(app, client, w, supplier_sim, second_sim, alerts):
    sim_supplier(supplier_sim, priority=1, timeout_seconds=1, mappings={w.product.id: ("CMCC-10", 900)})
    sim_supplier(second_sim, priority=2, mappings={w.product.id: ("CMCC-10", 905)})
    supplier_sim.behave("CMCC-10", mode="timeout", timeout_ms=1500, final="success")
    order_no = place_api(client, w)["order_no"]
    assert attempts(order_no)[0].status == "unknown"
    age(order_no, 12)

    assert jobs.enforce_delivery_sla() == {"delivered": 1}
    assert order(order_no).status == "delivered" and count_sales(order_no) == 1
    assert second_sim.orders() == {}  # never sent to a second supplier
    assert [b.action for b in alerts] == ["breached", "delivered"]


def test_a_supplier_that_cannot_withdraw_keeps_the_order(app, client, w, supplier_sim, second_sim, alerts):
    sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    sim_supplier(second_sim, priority=2, mappings={w.product.id: ("CMCC-10", 905)})
    supplier_sim.behave("CMCC-10", **SLOW, cancel="refuse")
    order_no = place_api(client, w)["order_no"]
    age(order_no, 11)

    assert jobs.enforce_delivery_sla() == {"cannot_cancel": 1}
    assert order(order_no).status == "delivering" and attempts(order_no)[0].status == "processing"
    assert second_sim.orders() == {} and supplier_sim.orders()[order_no]["status"] == "processing"
    assert [b.action for b in alerts] == ["breached", "cannot_cancel"]
    assert jobs.enforce_delivery_sla() == {"waiting": 1}
    assert supplier_sim.orders()[order_no]["cancels"] == 1


# --- configuration ----------------------------------------------------------------------------------------------------

def test_switched_off_the_sla_only_alerts(app, client, w, supplier_sim, second_sim, alerts):
    sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    supplier_sim.behave("CMCC-10", **SLOW)
    app.config["DELIVERY_SLA_REFUND"] = False
    try:
        alone = place_api(client, w)["order_no"]
        age(alone, 11)
        # No other supplier and no automatic refund: the supplier is not even asked to withdraw.
        assert jobs.enforce_delivery_sla() == {"alert_only": 1}
        assert supplier_sim.orders()[alone]["cancels"] == 0 and order(alone).status == "delivering"
        assert jobs.enforce_delivery_sla() == {"waiting": 1}
        assert [b.action for b in alerts] == ["breached", "alert_only"]

        app.config["DELIVERY_SLA_FAILOVER"] = False
        sim_supplier(second_sim, priority=2, mappings={w.product.id: ("CMCC-10", 905)})
        other = place_api(client, w)["order_no"]
        age(other, 11)
        assert jobs.enforce_delivery_sla() == {"alert_only": 1, "waiting": 1}
        assert supplier_sim.orders()[other]["cancels"] == 0 and second_sim.orders() == {}

        app.config["DELIVERY_SLA_MINUTES"] = 30  # a longer promise: neither is overdue
        assert jobs.enforce_delivery_sla() == {}
    finally:
        app.config.update(DELIVERY_SLA_REFUND=True, DELIVERY_SLA_FAILOVER=True, DELIVERY_SLA_MINUTES=10)


def test_a_lost_recharge_job_is_moved_on_at_the_deadline(app, client, w, supplier_sim, redis_url, alerts):
    """Paid, but its recharge job never ran (queued in Redis, no worker): at the deadline the SLA submits it."""
    app.config["REDIS_URL"] = redis_url
    try:
        sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
        order_no = place_api(client, w)["order_no"]
        assert order(order_no).status == "paid" and attempts(order_no) == []
        age(order_no, 11)
        assert jobs.enforce_delivery_sla() == {"delivered": 1}
    finally:
        app.config["REDIS_URL"] = None
    assert order(order_no).status == "delivered" and count_sales(order_no) == 1
    assert supplier_sim.orders()[order_no]["credits"] == 1
    assert [b.action for b in alerts] == ["breached"]


# --- protocol, job, screens ----------------------------------------------------------------------------------------

def test_simulator_withdrawal_protocol(app, supplier_sim):
    """POST /api/cancel over real HTTP through the adapter: an order never received is barred (a later submit of
    that number fails without crediting); a pending one is withdrawn; a credited one stays credited."""
    from app.suppliers.adapters import get_adapter

    sup = sim_supplier(supplier_sim)
    adapter = get_adapter(sup)
    assert adapter.cancel("NEVER-SEEN-1").status == "failed"
    assert adapter.submit("NEVER-SEEN-1", "CMCC-10", "13800138000", 1).status == "failed"
    assert supplier_sim.orders()["NEVER-SEEN-1"]["credits"] == 0
    supplier_sim.behave("CMCC-10", **SLOW)
    assert adapter.submit("PENDING-1", "CMCC-10", "13800138000", 1).status == "processing"
    result = adapter.cancel("PENDING-1")
    assert result.status == "failed" and "撤单" in result.message
    assert adapter.query("PENDING-1").status == "failed"
    supplier_sim.behave("CMCC-10", mode="success")
    assert adapter.submit("DONE-1", "CMCC-10", "13800138000", 1).status == "success"
    assert adapter.cancel("DONE-1").status == "success"
    assert supplier_sim.orders()["DONE-1"]["credits"] == 1
    r = requests.post(supplier_sim.url + "/_sim/behaviour", json={"code": "*", "cancel": "maybe"}, timeout=5)
    assert r.status_code == 400


def test_the_job_is_scheduled_and_the_cli_runs_it(app, client, w, supplier_sim):
    from workers.schedule import PERIODIC

    item = next(p for p in PERIODIC if p.name == "delivery-sla")
    assert (item.func, item.queue, item.interval_setting) == (jobs.enforce_delivery_sla, "high",
                                                              "DELIVERY_SLA_SCAN_SECONDS")
    assert app.config["DELIVERY_SLA_MINUTES"] == 10
    sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    supplier_sim.behave("CMCC-10", **SLOW)
    order_no = place_api(client, w)["order_no"]
    age(order_no, 11)
    result = app.test_cli_runner().invoke(args=["kameng", "delivery-sla"])
    assert result.exit_code == 0 and json.loads(result.output) == {"refunded": 1}, result.output


def test_support_sees_the_overdue_top_up(app, client, f, w, supplier_sim):
    sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    supplier_sim.behave("CMCC-10", **SLOW, cancel="refuse")
    order_no = place_api(client, w)["order_no"]
    age(order_no, 11)
    assert sla.overdue_count() == 1
    jobs.enforce_delivery_sla()

    support, _ = login_as(app, f, "Support")
    page = support.get("/delivery-sla/")
    assert page.status_code == 200 and order_no in page.text and "无法撤单" in page.text
    home = support.get("/").text  # the workbench: its to-do list counts it
    assert 'data-key="sla_overdue" data-count="1"' in home
    shown = support.get(f"/orders/show/{order(order_no).id}").text  # the order's timeline says what the SLA did
    assert 'data-source="sla"' in shown and "到账承诺" in shown and "无法撤单" in shown
    finance, _ = login_as(app, f, "Finance")
    assert finance.get("/delivery-sla/").status_code == 403
    assert 'data-key="sla_overdue"' not in finance.get("/").text


def test_overdue_query_is_limited_to_direct_orders_past_the_deadline(app, f):
    card = f.product(secrets=2)
    agent = f.agent(balance=100_000)
    from app.orders import service as orders

    placed = orders.place_wallet_order(agent.id, card.id, 1)
    db.session.execute(update(Order).where(Order.id == placed.id).values(paid_at=utcnow() - timedelta(hours=1)))
    db.session.commit()
    assert sla.overdue_count() == 0  # delivered card order: never overdue
    assert sla.enforce(placed.id) == "not_due"
