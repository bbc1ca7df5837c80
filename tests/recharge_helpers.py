"""Helpers for the direct top-up (直充) tests: a buyer under a commissioned parent, direct products mapped to
simulator suppliers, placing orders through the Open API and the portal, real RQ workers, and readers for
attempts, events and journals.

    w = world(f)                                  # parent (5% direct commission) → buyer (¥1,000.00, 95% tier)
    sup = sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    order_no = place_api(client, w, "13800138000")["order_no"]
    work()                                        # a burst RQ worker on the high queue runs recharge-<order_no>
    assert order(order_no).status == "delivered"
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.clock import utcnow
from app.extensions import db
from app.ledger.models import Journal
from app.network.models import Commission
from app.network.simulators import serve
from app.orders.models import Order
from app.outbox.models import OutboxMessage
from app.suppliers.models import RechargeAttempt, RechargeEvent
from app.suppliers.simulator import SupplierSimulator
from tests.openapi_helpers import new_key, signed_call
from tests.supplier_sim_helpers import SIM_APP_KEY, SIM_KEY, SimHandle
from workers.runner import run_worker

ACCOUNT = "13800138000"
FACE = 1_000  # ¥10.00 phone credit
PRICE = 950  # the buyer's tier pays 95%
COMMISSION = 47  # 5% of 950, floor
START_BALANCE = 100_000


@dataclass
class World:
    parent: object
    buyer: object
    product: object
    key: object
    secret: str


def world(f, face_price: int = FACE) -> World:
    parent = f.agent(tier_obj=f.tier(discount_bp=9000, direct_commission_bp=500), with_user=False)
    buyer = f.agent(parent=parent, tier_obj=f.tier(discount_bp=9500), balance=START_BALANCE)
    product = f.product(kind="direct", face_price=face_price, cost=880, name=f.unique("话费直充"))
    key, secret = new_key(buyer)
    return World(parent, buyer, product, key, secret)


@pytest.fixture
def second_sim():
    """Another upstream, a separate simulator (its own orders, credits and key) on its own port."""
    sim = SupplierSimulator(SIM_KEY + "-2", app_key=SIM_APP_KEY + "-2")
    server, url = serve(sim)
    try:
        yield SimHandle(sim, url)
    finally:
        sim.close()
        server.shutdown()
        server.server_close()


def place_api(client, w: World, account: str | None = ACCOUNT, quantity: int = 1, expect: int = 201,
              **extra) -> dict:
    body = {"out_trade_no": uuid.uuid4().hex, "product_id": w.product.id, "quantity": quantity, **extra}
    if account is not None:
        body["account"] = account
    r = signed_call(client, w.key, w.secret, "POST", "/open/v1/orders", body)
    assert r.status_code == expect, r.get_data(as_text=True)
    return r.get_json()


def work(queues: list[str] | None = None) -> None:
    """A real RQ worker in burst mode inside the app (as `flask kameng worker` runs it), then a fresh read."""
    run_worker(queues or ["high"], burst=True, with_cron=False)
    db.session.rollback()
    db.session.expire_all()


def order(order_no: str) -> Order:
    db.session.rollback()
    db.session.expire_all()
    return db.session.scalar(select(Order).where(Order.order_no == order_no))


def attempts(order_no: str) -> list[RechargeAttempt]:
    db.session.rollback()
    return list(db.session.scalars(select(RechargeAttempt).join(Order, Order.id == RechargeAttempt.order_id)
                                   .where(Order.order_no == order_no).order_by(RechargeAttempt.seq)))


def events(order_no: str) -> list[tuple[str, str | None]]:
    """(source, status) of the order's timeline, oldest first."""
    db.session.rollback()
    return [(e.source, e.status) for e in db.session.scalars(
        select(RechargeEvent).join(Order, Order.id == RechargeEvent.order_id)
        .where(Order.order_no == order_no).order_by(RechargeEvent.id))]


def journal_keys(order_no: str) -> list[str]:
    db.session.rollback()
    return sorted(db.session.scalars(select(Journal.idempotency_key).join(Order, Order.id == Journal.order_id)
                                     .where(Order.order_no == order_no)))


def commissions_of(order_no: str) -> list[tuple[int, int, str]]:
    db.session.rollback()
    return [(c.agent_id, c.amount, c.status) for c in db.session.scalars(
        select(Commission).join(Order, Order.id == Commission.order_id).where(Order.order_no == order_no))]


def make_poll_due(order_no: str) -> int:
    """Move the clock for this order's open attempts: their next poll is due now. Returns how many."""
    ids = [a.id for a in attempts(order_no) if a.status in ("submitting", "submitted", "processing", "unknown")]
    if ids:
        db.session.execute(update(RechargeAttempt).where(RechargeAttempt.id.in_(ids))
                           .values(next_poll_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    return len(ids)


def poll_now() -> dict:
    """The scheduled `recharge-poll` job, then a worker for the per-attempt poll jobs it enqueued."""
    from workers import jobs

    report = jobs.poll_recharges()
    work()
    return report


def outbox_for(order_no: str) -> list[OutboxMessage]:
    db.session.rollback()
    return list(db.session.scalars(select(OutboxMessage).where(OutboxMessage.key.like(f"recharge:{order_no}%"))
                                   .order_by(OutboxMessage.id)))


def count_sales(order_no: str) -> int:
    db.session.rollback()
    return db.session.scalar(select(func.count()).select_from(Journal).join(Order, Order.id == Journal.order_id)
                             .where(Order.order_no == order_no, Journal.kind == "sale"))
