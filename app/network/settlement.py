"""Commission settlement: due pending commissions move to the agents' wallets, in set-based batches.

Each batch is one transaction:
1. claim up to `batch_size` due rows and mark them settled with the run id in one UPDATE ... WHERE id IN
   (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED) RETURNING agent_id, amount (PostgreSQL; SQLite has no row locks
   and serializes writers, so the same statement without the locking clause is enough there);
2. lock the batch's agents' pending and wallet rows in ascending id order (as every other writer does);
3. one journal `settlement:<run_id>:<batch_no>`: per agent pending -sum, receivable +recovered (debt from
   reversed, already-settled commissions is recovered first), wallet +rest;
4. posted through app.ledger.service.post_journal, which updates the cached balances set-based.

Idempotent: a row is settled only by the UPDATE guarded on status = 'pending'; running twice settles once, and
concurrent runs skip each other's locked rows (they never wait for, or double-settle, the same commission).
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from sqlalchemy import select, update

from app import states
from app.audit import service as audit
from app.clock import utcnow
from app.extensions import db
from app.ledger import service as ledger
from app.ledger.models import Account
from app.ledger.service import Line
from app.network.commissions import receivable_owed
from app.network.models import COMMISSION_STATES, SETTLEMENT_RUN_STATES, Commission, SettlementRun

DEFAULT_BATCH = 5000


def _claim(conn, run_id: int, cutoff: datetime, batch_size: int, now: datetime) -> list[tuple[int, int]]:
    table = Commission.__table__
    # Longest due first, in the order of the (status, settle_after) index, the one index that gives it: ordered by
    # id, statistics that saw many commissions pending could have the planner walk the primary key through every
    # settled commission below the first due one, for every batch.
    due = (select(table.c.id).where(table.c.status == "pending", table.c.settle_after <= cutoff)
           .order_by(table.c.settle_after, table.c.id).limit(batch_size))
    if conn.dialect.name == "postgresql":
        # Picked once, in a materialized CTE. As a plain IN (subquery) PostgreSQL may plan a nested-loop semi join
        # that re-runs the LIMIT ... FOR UPDATE SKIP LOCKED for every outer row; each re-run passes over the rows
        # this statement has just updated and returns the next due ones, so one batch claimed every due row
        # (seen here: batch_size=1 settled two commissions in one transaction).
        picked = due.with_for_update(skip_locked=True).cte("due").prefix_with("MATERIALIZED")
        ids = select(picked.c.id).scalar_subquery()
    else:
        ids = due.scalar_subquery()
    return states.move_all(COMMISSION_STATES, "pending", "settled", table.c.id.in_(ids),
                           returning=("agent_id", "amount"), settlement_run_id=run_id, settled_at=now)


def _settle_batch(run_id: int, batch_no: int, cutoff: datetime, batch_size: int) -> tuple[int, int, int]:
    """One batch in the current transaction. Returns (count, amount, recovered); count 0 when nothing is due."""
    conn = db.session.connection()
    now = utcnow()
    claimed = _claim(conn, run_id, cutoff, batch_size, now)
    if not claimed:
        return 0, 0, 0
    per_agent: dict[int, int] = defaultdict(int)
    for agent_id, amount in claimed:
        per_agent[agent_id] += amount
    agent_ids = sorted(per_agent)
    owed = receivable_owed(agent_ids)
    acc = Account.__table__
    rows = conn.execute(
        select(acc.c.id, acc.c.agent_id, acc.c.kind, acc.c.code, acc.c.cached).where(
            acc.c.agent_id.in_(agent_ids), acc.c.kind.in_(("pending", "wallet", "receivable")))
        .order_by(acc.c.id)).all()
    # Lock the cached rows in ascending id order (the same order every writer uses).
    balances = dict(conn.execute(select(acc.c.id, acc.c.balance).where(
        acc.c.id.in_([r.id for r in rows if r.cached])).order_by(acc.c.id).with_for_update()).all())
    locked = {r.code: (r.id, r.cached, balances.get(r.id, 0)) for r in rows}

    lines: list[Line] = []
    recovered = 0
    for agent_id in agent_ids:
        total = per_agent[agent_id]
        recover = min(total, owed.get(agent_id, 0))
        recovered += recover
        lines.append(Line(f"agent:{agent_id}:pending", -total))
        if recover:
            lines.append(Line(f"agent:{agent_id}:receivable", recover))
        if total - recover:
            lines.append(Line(f"agent:{agent_id}:wallet", total - recover))
    amount = sum(per_agent.values())
    # The ledger posts it: balanced, once per key, cached balances updated set-based for the whole batch.
    ledger.post_journal(f"settlement:{run_id}:{batch_no}", "settlement", lines,
                        memo=f"佣金结算 #{run_id} 批次 {batch_no}", locked=locked)  # i18n-keep: data
    return len(claimed), amount, recovered


def settle(trigger: str = "manual", actor_id: int | None = None, cutoff: datetime | None = None,
           batch_size: int = DEFAULT_BATCH) -> SettlementRun:
    """Settle every commission due at `cutoff` (default now). Commits each batch; returns the run's report."""
    cutoff = cutoff or utcnow()
    run = SettlementRun(trigger=trigger, actor_id=actor_id, cutoff=cutoff, status="running", started_at=utcnow(),
                        settled_count=0, settled_amount=0, recovered_amount=0)
    db.session.add(run)
    if actor_id is not None:
        db.session.flush()
        audit.record("settlement.run", "settlement_run", run.id, None, {"trigger": trigger,
                                                                        "cutoff": cutoff.isoformat()},
                     actor_id=actor_id)
    db.session.commit()
    run_id = run.id
    count = amount = recovered = 0
    batch_no = 0
    try:
        while True:
            batch_no += 1
            n, amt, rec = _settle_batch(run_id, batch_no, cutoff, batch_size)
            if n == 0:
                db.session.rollback()
                break
            count, amount, recovered = count + n, amount + amt, recovered + rec
            db.session.execute(update(SettlementRun).where(SettlementRun.id == run_id).values(
                settled_count=count, settled_amount=amount, recovered_amount=recovered),
                execution_options={"synchronize_session": False})
            db.session.commit()
    except Exception as exc:
        db.session.rollback()
        move_run(run_id, "running", "failed", error=str(exc)[:255], finished_at=utcnow())
        db.session.commit()
        raise
    move_run(run_id, "running", "done", finished_at=utcnow())
    db.session.commit()
    run = db.session.get(SettlementRun, run_id)
    db.session.refresh(run)
    return run


def move_run(run_id: int, current: str, new: str, **values: object) -> None:
    """The one place a settlement run's status changes (SETTLEMENT_RUN_STATES). Does not commit."""
    states.move(SETTLEMENT_RUN_STATES, run_id, current, new, **values)


def report(run: SettlementRun) -> dict:
    return {"run_id": run.id, "trigger": run.trigger, "status": run.status, "settled_count": run.settled_count,
            "settled_amount": run.settled_amount, "recovered_amount": run.recovered_amount,
            "cutoff": run.cutoff.isoformat(sep=" ", timespec="seconds")}
