"""`make run`'s embedded default: the demo's direct products reach the upstream simulator, and the periodic jobs
(here the top-up poll) run on the inline scheduler thread without Redis."""
from __future__ import annotations

import time

import pytest
from sqlalchemy import select, update

from app.catalog.models import Product
from app.extensions import db
from app.orders import service as orders
from app.suppliers.models import RechargeAttempt
from tests import supplier_sim_helpers
from tests.recharge_helpers import order
from workers.inline import start_inline_scheduler

supplier_sim = supplier_sim_helpers.supplier_sim
PHONE = "中国移动话费 100元 直充"


def _demo(app, sim) -> None:
    result = app.test_cli_runner().invoke(args=["kameng", "demo", "--password", "demo-pass-1",
                                                "--sandbox-key", "sandbox-key-1", "--supplier-url", sim.url,
                                                "--supplier-key", sim.key])
    assert result.exit_code == 0, result.output
    assert "模拟上游（演示）" in result.output


@pytest.mark.parametrize("app", ["sqlite"], indirect=True)
def test_demo_direct_products_top_up_through_the_simulator(app, supplier_sim):
    supplier_sim.sim.app_key = "kameng-demo"  # the demo's account at the upstream
    _demo(app, supplier_sim)
    _demo(app, supplier_sim)  # idempotent: one supplier, one mapping per product
    product = db.session.scalar(select(Product).where(Product.name == PHONE))
    buyer = _agent("agent3")
    placed = orders.place_wallet_order(buyer.id, product.id, 1, account="13800138000")
    order_no = placed.order_no
    from app.outbox.service import dispatch_due

    dispatch_due()  # what a request's teardown does: the top-up runs inline
    assert order(order_no).status == "delivered"
    assert supplier_sim.orders()[order_no]["credits"] == 1
    assert len(db.session.scalars(select(RechargeAttempt)).all()) == 1


@pytest.mark.parametrize("app", ["sqlite"], indirect=True)
def test_inline_scheduler_polls_a_pending_top_up_to_success(app, supplier_sim):
    supplier_sim.sim.app_key = "kameng-demo"
    _demo(app, supplier_sim)
    supplier_sim.behave("CMCC-100", mode="pending", pending_polls=0, final="success", callback="none")
    product = db.session.scalar(select(Product).where(Product.name == PHONE))
    placed = orders.place_wallet_order(_agent("agent3").id, product.id, 1, account="13800138000")
    order_no = placed.order_no
    from app.outbox.service import dispatch_due

    dispatch_due()
    assert order(order_no).status == "delivering"  # the upstream said processing
    db.session.execute(update(RechargeAttempt).values(next_poll_at=RechargeAttempt.created_at))
    db.session.commit()
    app.config.update(INLINE_SCHEDULER=True, RECHARGE_POLL_SECONDS=1)
    stop = start_inline_scheduler(app, tick=0.2)
    assert stop is not None
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and order(order_no).status != "delivered":
            db.session.rollback()
            time.sleep(0.3)
    finally:
        stop.set()
        app.config.update(INLINE_SCHEDULER=False)
    assert order(order_no).status == "delivered"
    assert supplier_sim.orders()[order_no]["credits"] == 1


def test_inline_scheduler_stays_off_with_redis_or_unless_asked(app):
    assert start_inline_scheduler(app) is None  # INLINE_SCHEDULER is off by default
    app.config.update(INLINE_SCHEDULER=True, REDIS_URL="redis://127.0.0.1:6379/15")
    try:
        assert start_inline_scheduler(app) is None  # with Redis the worker's scheduler runs them
    finally:
        app.config.update(INLINE_SCHEDULER=False, REDIS_URL=None)


def _agent(username: str):
    from app.agents.models import Agent

    return db.session.scalar(select(Agent).where(Agent.name == username))
