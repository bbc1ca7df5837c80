"""Analytics rollups off the purchase transaction: a delivery or refund writes one rollup_pending row (no lock, no
read, no rollup row), `fold_orders` turns pending rows into the deltas the dashboards read, and the result equals
a rebuild: with refunds and disputes, in batches, with a late delivery that precedes a buyer's folded first order,
with a pending row committed after a fold passed higher ids, and with one agent's deliveries racing on threads
while a fold runs beside them. The dashboards say how fresh the figures are."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import event, func, select

from app.agents.models import Agent
from app.analytics import service as rollups
from app.analytics.models import RollupPending
from app.clock import to_local, utcnow
from app.extensions import db as _db
from app.payments import disputes
from app.payments import service as payments
from app.suppliers import recharge
from tests import supplier_sim_helpers, test_rollups
from tests.dashboards_helpers import login_as
from tests.openapi_helpers import new_key
from tests.recharge_helpers import World as RechargeWorld
from tests.recharge_helpers import order as recharge_order
from tests.recharge_helpers import place_api
from tests.supplier_sim_helpers import sim_supplier
from tests.test_rollups import (
    assert_rebuild_equal,
    buy,
    counts,
    grouped,
    order_status,
    past,
    profile,
    sales,
    snapshot,
    today,
)

BOTH = pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
PG = pytest.mark.parametrize("app", ["postgresql"], indirect=True)
supplier_sim = supplier_sim_helpers.supplier_sim  # the fixtures
world = test_rollups.world


@pytest.fixture
def deferred(monkeypatch):
    """Folds only when the test (or the periodic job) runs them, as with Redis: not after each commit."""
    monkeypatch.setattr(rollups, "fold_inline", lambda: False)


def pending() -> list[tuple[int, int]]:
    _db.session.rollback()
    return [tuple(r) for r in _db.session.execute(
        select(RollupPending.order_id, RollupPending.sign).order_by(RollupPending.id)).all()]


class Statements:
    """Every SQL statement the engine runs inside the block (all connections, this process)."""

    def __init__(self) -> None:
        self.sql: list[str] = []
        self.params: list = []

    def _capture(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self.sql.append(statement)
        self.params.append(parameters)

    def __enter__(self) -> Statements:
        event.listen(_db.engine, "before_cursor_execute", self._capture)
        return self

    def __exit__(self, *exc) -> None:
        event.remove(_db.engine, "before_cursor_execute", self._capture)


@PG
def test_purchase_writes_one_pending_row_and_takes_no_lock(app, world, deferred):
    w = world
    with Statements() as st:
        order = buy(w["c"], w["p1"], 1)
    rollup_sql = [s for s in st.sql if "rollup_" in s]
    # One INSERT (on PostgreSQL written by the order's own move to delivered, as a data-modifying CTE)
    assert len(rollup_sql) == 1 and rollup_sql[0].count("INSERT INTO rollup_pending") == 1, rollup_sql
    assert "UPDATE rollup_" not in rollup_sql[0]
    # The only advisory lock left on the purchase path is risk control's per-identifier limit lock (key 7301):
    # none of the rollups' (the per-buyer 7020302, the maintenance 7020301).
    locks = [p for s, p in zip(st.sql, st.params, strict=True) if "advisory" in s.lower()]
    assert all(7301 in dict(p).values() for p in locks), locks
    assert not [p for p in locks if {rollups.ADVISORY_LOCK_KEY, 7_020_302} & set(dict(p).values())]
    assert pending() == [(order.id, 1)]
    assert sales(0) == (0, 0, 0, 0, 0, 0)  # not folded yet

    assert rollups.fold_orders() == 1
    assert pending() == []
    assert sales(0) == (1, 1, 9500, 8000, 0, 1500)
    assert rollups.fold_orders() == 0
    assert_rebuild_equal(today(), today())


@BOTH
def test_inline_fold_after_commit_keeps_screens_current(app, world):
    """Without Redis the fold follows the purchase's commit: nothing stays pending, the figures are there."""
    buy(world["c"], world["p1"], 2)
    assert pending() == []
    assert sales(world["b"]) == (1, 2, 19000, 16000, 0, 3000)


@BOTH
def test_fold_with_refunds_and_disputes_equals_a_rebuild(app, world, deferred, monkeypatch):
    w = world
    c = w["c"]
    with monkeypatch.context() as m:
        m.setattr("app.orders.service.utcnow", past(3))
        x = buy(c, w["p1"], 1)  # delivered three days ago
    old_day = to_local(_db.session.get(type(x), x.id).delivered_at).date()
    y = buy(c, w["p1"], 1)
    z = buy(c, w["p2"], 2)
    buy(w["e"], w["p2"], 3)
    buy(w["a"], w["p1"], 1)
    # X delivered and refunded before any fold: both rows in the same batch
    payments.refund_order(x.id, "测试退款", None)
    agent = _db.session.get(Agent, c)
    d = disputes.open_as_agent(agent, y.order_no, "没收到卡密", None)
    disputes.resolve(d.id, "reject", "已核实发货", None)  # writes nothing: Y never stopped counting
    d2 = disputes.open_as_agent(agent, z.order_no, "没收到卡密", None)
    disputes.resolve(d2.id, "refund", "同意退款", None)
    assert order_status(z.id) == "refunded"
    assert [s for _o, s in pending()] == [1, 1, 1, 1, 1, -1, -1]

    while rollups.fold_orders(limit=2):  # small batches: a delivery and its refund in different batches too
        pass
    assert pending() == []
    assert sales(0, old_day) == (0, 0, 0, 0, 0, 0)
    assert sales(c) == (1, 1, 9500, 8000, 0, 1500)  # Y only
    assert sales(0) == (3, 5, 9500 + 14250 + 9000, 8000 + 12000 + 8000, 120, 1500 + 2250 + 1000)
    # X (refunded) was C's first delivery: Y is returning, whatever order the batches took
    assert profile(c, "buyer_type") == {"returning": (1, 9500)}
    low, top, t, m = w["low"], w["top"], str(today()), str(today().replace(day=1))
    assert counts("active") == {(0, t, low): 2, (0, t, top): 1, (w["a"], t, low): 1, (w["a"], t, top): 1,
                                 (w["b"], t, low): 1, (c, t, low): 1, (w["d"], t, low): 1, (w["e"], t, low): 1}
    assert counts("retention")[(0, m, m, low)] == 2
    assert_rebuild_equal(old_day, today())


@BOTH
def test_a_late_delivery_before_the_folded_first_order_moves_it_to_returning(app, world, deferred, monkeypatch):
    """What a delivery that commits after a later one of the same buyer was folded looks like to the fold: its
    delivered_at precedes the buyer's folded first order, which must become 'returning'."""
    w = world
    later = buy(w["c"], w["p1"], 1)
    assert rollups.fold_orders() == 1
    assert profile(w["c"], "buyer_type") == {"first": (1, 9500)}
    with monkeypatch.context() as m:
        m.setattr("app.orders.service.utcnow", lambda: utcnow() - timedelta(seconds=5))
        earlier = buy(w["c"], w["p2"], 1)
    assert rollups.fold_orders() == 1
    assert profile(w["c"], "buyer_type") == {"first": (1, 4750), "returning": (1, 9500)}
    # refunding the old first (now returning) subtracts it from returning
    payments.refund_order(later.id, "测试退款", None)
    rollups.fold_orders()
    assert profile(w["c"], "buyer_type") == {"first": (1, 4750)}
    assert earlier.id > later.id
    assert_rebuild_equal(today() - timedelta(days=1), today())


@PG
def test_a_pending_row_committed_after_a_fold_passed_it_is_folded(app, world, deferred):
    """Thread T delivers C's order and stops just before its commit: its pending row has the lower id. Meanwhile
    E's order commits and a fold folds it (T's row is invisible). T then commits: the next fold folds its row."""
    w = world
    inside, release = threading.Event(), threading.Event()
    worker: list[threading.Thread] = []
    errors: list[BaseException] = []

    def hold(session) -> None:
        if worker and threading.current_thread() is worker[0] and session.info.get(rollups._FOLD_DUE):
            inside.set()
            release.wait(timeout=30)

    def deliver_c() -> None:
        with app.app_context():
            try:
                buy(w["c"], w["p1"], 1)
            except BaseException as exc:  # surfaced by the assertions below
                errors.append(exc)
            finally:
                _db.session.remove()

    event.listen(_db.session, "before_commit", hold)
    try:
        worker.append(threading.Thread(target=deliver_c))
        worker[0].start()
        assert inside.wait(timeout=30)
        buy(w["e"], w["p2"], 1)  # commits its pending row, with a higher id
        assert rollups.fold_orders() == 1
        assert sales(w["e"])[:3] == (1, 1, 4750) and sales(w["c"])[:3] == (0, 0, 0)
        release.set()
        worker[0].join(timeout=30)
    finally:
        release.set()
        event.remove(_db.session, "before_commit", hold)
    assert not errors
    _db.session.rollback()
    assert _db.session.scalar(select(func.min(RollupPending.id))) == 1  # the lower id, committed last
    assert rollups.fold_orders() == 1
    assert sales(w["c"])[:3] == (1, 1, 9500) and sales(0)[:3] == (2, 2, 14250)
    assert_rebuild_equal(today(), today())


@PG
def test_one_agents_racing_deliveries_folded_meanwhile_count_exactly(app, client, f, supplier_sim, deferred):
    """Eight direct top-ups of one agent delivered by eight threads at once (no per-buyer lock any more), while a
    ninth thread folds over and over: the agent is active once, one order is its first (the earliest), the rest
    returning, and everything equals a rebuild."""
    buyer = f.agent(tier_obj=f.tier(discount_bp=9500), balance=100_000)
    w = RechargeWorld(None, buyer, f.product(kind="direct", face_price=1_000, cost=880), *new_key(buyer))
    sim_supplier(supplier_sim, priority=1, mappings={w.product.id: ("CMCC-10", 900)})
    supplier_sim.behave("CMCC-10", latency_ms=100)
    app.config["REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens: the jobs wait in the outbox
    try:
        order_ids = [recharge_order(place_api(client, w)["order_no"]).id for _ in range(8)]
    finally:
        app.config["REDIS_URL"] = None
    barrier = threading.Barrier(len(order_ids) + 1)
    done = threading.Event()
    results: list = []

    def deliver(order_id: int) -> None:
        with app.app_context():
            barrier.wait(timeout=30)
            results.append(recharge.run(order_id))
            _db.session.remove()

    def fold() -> None:
        with app.app_context():
            barrier.wait(timeout=30)
            while not done.is_set():
                rollups.fold_orders(limit=3)
            _db.session.remove()

    threads = [threading.Thread(target=deliver, args=(i,)) for i in order_ids]
    folder = threading.Thread(target=fold)
    for t in [*threads, folder]:
        t.start()
    for t in threads:
        t.join(timeout=60)
    done.set()
    folder.join(timeout=60)
    assert results == ["delivered"] * 8
    rollups.fold_orders_all()
    assert pending() == []
    day, tier, month = str(today()), buyer.tier_id, str(today().replace(day=1))
    assert counts("active") == {(0, day, tier): 1, (buyer.id, day, tier): 1}
    assert counts("retention") == {(0, month, month, tier): 1}
    assert grouped("agent") == {(day, buyer.id): (8, 8 * 950)}
    assert profile(0, "buyer_type") == {"first": (1, 950), "returning": (7, 7 * 950)}
    assert_rebuild_equal(today(), today())


@PG
def test_rebuild_leaves_rows_pending_meanwhile_to_their_fold(app, world, deferred, monkeypatch):
    """A delivery that commits after rebuild's own fold is left out of the rebuilt rows and added by its fold:
    counted exactly once."""
    w = world
    buy(w["c"], w["p1"], 1)
    real_fold = rollups.fold_orders_all

    def fold_then_deliver(*args, **kwargs):
        n = real_fold(*args, **kwargs)
        buy(w["e"], w["p2"], 1)  # commits a pending row between rebuild's fold and its statements
        return n

    monkeypatch.setattr(rollups, "fold_orders_all", fold_then_deliver)
    rollups.rebuild(today(), today())
    monkeypatch.setattr(rollups, "fold_orders_all", real_fold)
    assert sales(0)[:3] == (1, 1, 9500)  # E's order is pending, not rebuilt
    assert len(pending()) == 1
    assert rollups.fold_orders_all() == 1
    assert sales(0)[:3] == (2, 2, 14250)
    assert_rebuild_equal(today(), today())


@BOTH
def test_dashboards_say_how_fresh_they_are(app, f, world, deferred, monkeypatch):
    client, _user = login_as(app, f, "Manager")
    page = client.get("/analytics/gmv/").get_data(as_text=True)
    assert "数据更新于" in page
    moment = utcnow() - timedelta(minutes=7)
    monkeypatch.setattr("app.analytics.service.utcnow", lambda: moment)
    buy(world["c"], world["p1"], 1)  # pending since `moment`
    page = client.get("/analytics/gmv/").get_data(as_text=True)
    assert f"数据更新于 {to_local(moment):%H:%M:%S}" in page
    import flask_babel

    flask_babel.refresh()
    assert client.get("/lang/en").status_code == 302
    flask_babel.refresh()
    english = client.get("/analytics/money/").get_data(as_text=True)
    flask_babel.refresh()
    assert f"Data as of {to_local(moment):%H:%M:%S}" in english
    assert snapshot()["sales"] == {}


@BOTH
def test_cli_job_and_schedule_fold_orders(app, world, deferred):
    from workers import jobs
    from workers.schedule import PERIODIC

    buy(world["c"], world["p1"], 1)
    buy(world["e"], world["p2"], 1)
    result = app.test_cli_runner().invoke(args=["kameng", "rollups", "fold-orders"])
    assert result.exit_code == 0 and "pending rows folded: 2" in result.output, result.output
    buy(world["c"], world["p1"], 1)
    assert jobs.fold_order_rollups() == 1 and jobs.fold_order_rollups() == 0
    assert sales(0)[:3] == (3, 3, 9500 + 4750 + 9500)
    item = next(p for p in PERIODIC if p.name == "rollup-orders")
    assert item.func is jobs.fold_order_rollups and app.config[item.interval_setting] == 5
    assert_rebuild_equal(today(), today())
