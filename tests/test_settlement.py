"""Settlement: due commissions move pending → wallet once, in batches; debts are recovered first."""
from __future__ import annotations

import threading
from datetime import timedelta

from redis import Redis
from rq import Queue
from sqlalchemy import func, select

from app.clock import utcnow
from app.extensions import db
from app.ledger import service as ledger
from app.ledger.invariants import check_ledger
from app.network import commissions, settlement
from app.network.models import Commission, SettlementRun
from app.orders import service as orders
from app.payments import service as payments
from workers import jobs


def _setup(f, buyers: int = 1, direct: int = 1000, settle_days: int = 0):
    t = f.tier(direct_commission_bp=direct, settle_days=settle_days)
    up = f.agent(tier_obj=t, with_user=False)
    kids = [f.agent(parent=up, tier_obj=f.tier(), with_user=False) for _ in range(buyers)]
    for k in kids:
        f.fund(k, 1_000_000)
    return up, kids, f.product(secrets=40)


def _bal(agent_id):
    db.session.expire_all()
    return ledger.agent_balances(agent_id)


def test_settle_twice_settles_once_in_batches(app, f):
    up, kids, p = _setup(f, buyers=2)
    made = [orders.place_wallet_order(k.id, p.id, 1) for k in kids for _ in range(3)]
    total = sum(o.amount // 10 for o in made)
    run = settlement.settle(batch_size=4)
    assert (run.status, run.settled_count, run.settled_amount, run.recovered_amount) == ("done", 6, total, 0)
    assert _bal(up.id) == {"wallet": total, "pending": 0, "frozen": 0}
    again = settlement.settle()
    assert (again.settled_count, again.settled_amount) == (0, 0)
    assert _bal(up.id)["wallet"] == total
    assert db.session.scalar(select(func.count()).select_from(Commission).where(
        Commission.settlement_run_id == run.id, Commission.status == "settled")) == 6
    assert check_ledger() == []


def test_not_yet_due_commissions_wait(app, f):
    up, kids, p = _setup(f, settle_days=7)
    orders.place_wallet_order(kids[0].id, p.id, 1)
    assert settlement.settle().settled_count == 0
    later = settlement.settle(cutoff=utcnow() + timedelta(days=8))
    assert later.settled_count == 1 and _bal(up.id)["pending"] == 0


def test_concurrent_runs_never_double_settle(app, f):
    up, kids, p = _setup(f, buyers=3)
    made = [orders.place_wallet_order(k.id, p.id, 1) for k in kids for _ in range(10)]
    total = sum(o.amount // 10 for o in made)
    up_id = up.id
    db.session.remove()
    runs, errors = [], []

    def go():
        with app.app_context():
            try:
                runs.append(settlement.report(settlement.settle(batch_size=3)))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(r["settled_count"] for r in runs) == 30
    assert sum(r["settled_amount"] for r in runs) == total
    assert _bal(up_id) == {"wallet": total, "pending": 0, "frozen": 0}
    assert check_ledger() == []


def test_refund_after_settlement_takes_wallet_then_debt_recovered_later(app, f):
    up, kids, p = _setup(f)
    o1 = orders.place_wallet_order(kids[0].id, p.id, 1)
    settlement.settle()
    c1 = o1.amount // 10
    # the upline spends part of it (a purchase of its own)
    ledger.post_journal("test:spend", "adjustment", [ledger.Line(f"agent:{up.id}:wallet", -(c1 - 100)),
                                                     ledger.Line("platform:adjustments", c1 - 100)])
    db.session.commit()
    payments.refund_order(o1.id, "退款", None)
    assert _bal(up.id)["wallet"] == 0
    assert commissions.receivable_owed([up.id]) == {up.id: c1 - 100}
    # later commissions pay the debt first
    o2 = orders.place_wallet_order(kids[0].id, p.id, 1)
    run = settlement.settle()
    c2 = o2.amount // 10
    assert run.recovered_amount == c1 - 100
    assert _bal(up.id)["wallet"] == c2 - (c1 - 100)
    assert commissions.receivable_owed([up.id]) == {}
    assert check_ledger() == []


def test_cli_settle_prints_the_report(app, f):
    up, kids, p = _setup(f)
    orders.place_wallet_order(kids[0].id, p.id, 1)
    result = app.test_cli_runner().invoke(args=["kameng", "settle"])
    assert result.exit_code == 0, result.output
    assert "settled_count: 1" in result.output and "trigger: cli" in result.output


def test_scheduled_job_runs_in_a_real_worker(app, f, redis_url):
    up, kids, p = _setup(f)
    o = orders.place_wallet_order(kids[0].id, p.id, 2)
    saved = app.config.get("REDIS_URL")
    app.config["REDIS_URL"] = redis_url
    try:
        q = Queue("low", connection=Redis.from_url(redis_url))
        q.enqueue(jobs.settle_commissions, job_id="commission-settlement-test")
        result = app.test_cli_runner().invoke(args=["kameng", "worker", "--burst", "--queues", "low", "--no-cron"])
        assert result.exit_code == 0, result.output
        assert q.failed_job_registry.get_job_ids() == []
    finally:
        app.config["REDIS_URL"] = saved
    db.session.expire_all()
    run = db.session.scalar(select(SettlementRun).order_by(SettlementRun.id.desc()))
    assert (run.trigger, run.status, run.settled_count) == ("scheduled", "done", 1)
    assert _bal(up.id)["wallet"] == o.amount // 10


def test_a_batch_claims_no_more_than_its_size_whatever_the_plan(app, f):
    """Statistics taken while the table held one commission make PostgreSQL plan the claim as a nested-loop semi
    join; a LIMIT ... FOR UPDATE SKIP LOCKED inside IN (...) then ran again for every outer row, passing over the
    rows the statement had just claimed, and one batch of 1 claimed all three. Picked once (a materialized CTE), a
    batch takes at most its size."""
    from app.network.models import SettlementRun

    up, kids, p = _setup(f, buyers=3)
    orders.place_wallet_order(kids[0].id, p.id, 1)
    db.session.commit()
    db.session.connection().exec_driver_sql("ANALYZE commission")
    db.session.commit()
    for k in kids[1:]:
        orders.place_wallet_order(k.id, p.id, 1)
    run = SettlementRun(trigger="manual", cutoff=utcnow(), status="running", started_at=utcnow(), settled_count=0,
                        settled_amount=0, recovered_amount=0)
    db.session.add(run)
    db.session.flush()
    claimed = settlement._claim(db.session.connection(), run.id, utcnow(), 1, utcnow())
    assert len(claimed) == 1
    db.session.rollback()
    # And end to end: batches of one settle the three in three batches, each once.
    done = settlement.settle(batch_size=1)
    assert (done.status, done.settled_count) == ("done", 3)
    from app.ledger.models import Journal

    assert db.session.scalar(select(func.count()).select_from(Journal).where(Journal.kind == "settlement")) == 3
    assert check_ledger() == []


def test_a_batch_reads_only_due_commissions_whatever_the_statistics_say(app, f):
    """Many commissions settled, then a backlog due, with statistics taken then: the claim's statement reads the due
    ones through the (status, settle_after) index, never the settled ones by walking the primary key. Measured on a
    temporary table of the same shape that shadows `commission` for this connection (the planner's choice depends on
    the rows and statistics, which only a table of this size shows)."""
    from sqlalchemy import text

    from tests.plan_helpers import plan_nodes, statements_sent

    conn = db.session.connection()
    conn.exec_driver_sql("CREATE TEMPORARY TABLE commission (LIKE public.commission INCLUDING ALL) ON COMMIT DROP")
    conn.exec_driver_sql(
        "INSERT INTO commission (order_id, agent_id, level, rate_bp, base_amount, amount, status, settle_after, "
        "created_at) SELECT n, 1, 1, 100, 1000, 10, CASE WHEN n <= 100000 THEN 'settled' ELSE 'pending' END, "
        "now() AT TIME ZONE 'UTC' - interval '1 day', now() AT TIME ZONE 'UTC' - interval '8 days' "
        "FROM generate_series(1, 103000) AS n")
    conn.exec_driver_sql("ANALYZE commission")
    with statements_sent("SKIP LOCKED") as sent:
        claimed = settlement._claim(conn, 1, utcnow(), 500, utcnow())
    assert len(claimed) == 500
    [(statement, parameters)] = sent
    nodes = plan_nodes(statement, parameters)  # the rollback takes the temporary table with it
    # the due ones found through (status, settle_after); the primary key, if used, only fetches claimed rows by id
    assert any(n.get("Index Name", "").endswith("status_settle_after_idx") for n in nodes), nodes
    reads = [n for n in nodes if n.get("Relation Name") == "commission" and n["Node Type"] != "ModifyTable"]
    assert all(n["Actual Rows"] + n.get("Rows Removed by Filter", 0) <= 3000 for n in reads), reads
    assert db.session.execute(text("SELECT to_regclass('pg_temp.commission')")).scalar() is None
