"""Daily limits (每日限额) as running totals: per buyer identifier and business day, what its orders have reserved.

risk control's limit check adds the order's amount to the identifier's row for the day and reads the total in the same
statement (`INSERT ... ON CONFLICT DO UPDATE ... RETURNING`), so the check costs one indexed row per identifier
whatever the buyer bought that day (summing the day's orders cost a row per order: 6 ms at 3,000 orders). The row
lock it takes is held until the caller's transaction ends, so checkouts of one buyer on one day queue there and never
overshoot; a refused checkout rolls back and its amount with it.

An order that stops counting (closed, failed, refunded: orders.transition) gives its amount back as an append-only
release row, never by updating the usage row, so a refund never waits on a purchase holding that row.
What counted for (dimension, key, day) = usage.amount − its releases = the sum of that identifier's counted orders of
the day (`mismatches()` checks it): the agent, contact and device by the business day the order was created on, the
paying account by the day it was paid on.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import cache

from sqlalchemy import func, select, text

from app.clock import to_local, utcnow
from app.extensions import db
from app.risk.identity import digest
from app.risk.models import RiskDayRelease, RiskDayUsage
from app.rows import run

UNCOUNTED_STATUSES = ("closed", "failed", "refunded")
KEEP_DAYS = 3  # a limit reads today only; a refund of an older order has nothing left to give back


def business_day(at: datetime) -> date:
    return to_local(at).date()


@cache
def _reserve_statement(rows: int):
    values = ", ".join(f"(:d{i}, :k{i}, :day, :amount)" for i in range(rows))
    return text("INSERT INTO risk_day_usage (dimension, key, day, amount) VALUES " + values
            + " ON CONFLICT (dimension, key, day) DO UPDATE SET amount = risk_day_usage.amount + EXCLUDED.amount"
            " RETURNING dimension, amount - coalesce((SELECT sum(r.amount) FROM risk_day_release r"
            " WHERE r.dimension = risk_day_usage.dimension AND r.key = risk_day_usage.key"
            " AND r.day = risk_day_usage.day), 0)")


def reserve(identifiers: list[tuple[str, str]], at: datetime, amount: int) -> dict[str, int]:
    """Add `amount` to each (dimension, key)'s total for the business day of `at`; return what each had counted
    before it. One statement; the rows stay locked until the caller's transaction ends. Give `identifiers` in one
    order everywhere (sorted by dimension) so two checkouts sharing identifiers never deadlock."""
    if not identifiers:
        return {}
    params: dict[str, object] = {"day": business_day(at), "amount": int(amount)}
    for i, (dimension, key) in enumerate(identifiers):
        params[f"d{i}"], params[f"k{i}"] = dimension, key
    rows = run(_reserve_statement(len(identifiers)), params).all()
    return {dimension: int(total) - int(amount) for dimension, total in rows}


def unreserve(identifiers: list[tuple[str, str]], at: datetime, amount: int) -> None:
    """Take back a reservation inside the same transaction (a refusal the caller commits anyway: SQLite stores a
    blocked decision with the caller's session)."""
    day = business_day(at)
    for dimension, key in identifiers:
        db.session.execute(text("UPDATE risk_day_usage SET amount = amount - :amount "
                                "WHERE dimension = :d AND key = :k AND day = :day"),
                           {"amount": int(amount), "d": dimension, "k": key, "day": day})


def order_identifiers(agent_id: int | None, buyer_key: str | None, device_key: str | None,
                      payment_account_key: str | None, created_at: datetime,
                      paid_at: datetime | None) -> list[tuple[str, str, date]]:
    """The (dimension, key, day) an order's amount was reserved under: what risk control checked it against (an
    agent's purchase by the agent, a storefront buyer's by contact and device; either by the paying account)."""
    created = business_day(created_at)
    found = []
    if agent_id is not None:
        found.append(("agent", digest("agent", str(agent_id)), created))
    else:
        found += [(dimension, key, created) for dimension, key in (("contact", buyer_key), ("device", device_key))
                  if key]
    if payment_account_key:
        found.append(("payment_account", payment_account_key, business_day(paid_at or created_at)))
    return found


def release(order_id: int, amount: int, identifiers: list[tuple[str, str, date]]) -> None:
    """The order stopped counting: its amount goes back to each day it was reserved on (once per order and
    dimension; a day older than KEEP_DAYS is gone and needs nothing)."""
    oldest = business_day(utcnow()) - timedelta(days=KEEP_DAYS)
    rows = [{"dimension": d, "key": k, "day": day, "amount": int(amount), "order_id": order_id, "created_at": utcnow()}
            for d, k, day in identifiers if day >= oldest]
    if not amount or not rows:
        return
    table = RiskDayRelease.__table__
    if db.session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    db.session.execute(insert(table).values(rows).on_conflict_do_nothing(
        index_elements=["order_id", "dimension"]))


def purge(now: datetime | None = None) -> int:
    """Drop the days no limit reads any more (the daily job)."""
    oldest = business_day(now or utcnow()) - timedelta(days=KEEP_DAYS)
    gone = db.session.execute(RiskDayUsage.__table__.delete().where(RiskDayUsage.day < oldest)).rowcount
    gone += db.session.execute(RiskDayRelease.__table__.delete().where(RiskDayRelease.day < oldest)).rowcount
    db.session.commit()
    return gone


def counted(dimension: str, key: str, day: date) -> int:
    """What counts for an identifier on a day (usage − releases)."""
    used = db.session.scalar(select(RiskDayUsage.amount).where(
        RiskDayUsage.dimension == dimension, RiskDayUsage.key == key, RiskDayUsage.day == day)) or 0
    given_back = db.session.scalar(select(func.coalesce(func.sum(RiskDayRelease.amount), 0)).where(
        RiskDayRelease.dimension == dimension, RiskDayRelease.key == key, RiskDayRelease.day == day))
    return int(used) - int(given_back)


def totals_from_orders(since: datetime) -> dict[tuple[str, str, date], int]:
    """Each identifier's counted amount per day, recomputed from the orders created (or paid) since `since`: the
    rebuild the running totals must equal."""
    from app.orders.models import Order

    rows = db.session.execute(select(Order.agent_id, Order.buyer_key, Order.device_key, Order.payment_account_key,
                                     Order.created_at, Order.paid_at, Order.amount)
                              .where(Order.created_at >= since - timedelta(days=1),
                                     Order.status.not_in(UNCOUNTED_STATUSES), Order.amount > 0))
    return totals_from_rows(rows, since)


def totals_from_rows(rows, since: datetime) -> dict[tuple[str, str, date], int]:
    """The per-day totals of counted orders given as (agent_id, buyer_key, device_key, payment_account_key,
    created_at, paid_at, amount), from the business day of `since` on (the migration's backfill reads its own)."""
    out: dict[tuple[str, str, date], int] = {}
    first_day = business_day(since)
    for agent_id, buyer, device, account, created_at, paid_at, amount in rows:
        for ident in order_identifiers(agent_id, buyer, device, account, created_at, paid_at):
            if ident[2] >= first_day:
                out[ident] = out.get(ident, 0) + int(amount)
    return out


def mismatches(since: datetime) -> list[str]:
    """Where the running totals differ from the orders (days from the business day of `since`); [] when exact."""
    from_orders = totals_from_orders(since)
    day0 = business_day(since)
    kept: dict[tuple[str, str, date], int] = {}
    for d, k, day, amount in db.session.execute(select(RiskDayUsage.dimension, RiskDayUsage.key, RiskDayUsage.day,
                                                       RiskDayUsage.amount).where(RiskDayUsage.day >= day0)):
        kept[(d, k, day)] = int(amount)
    for d, k, day, amount in db.session.execute(
            select(RiskDayRelease.dimension, RiskDayRelease.key, RiskDayRelease.day,
                   func.sum(RiskDayRelease.amount)).where(RiskDayRelease.day >= day0)
            .group_by(RiskDayRelease.dimension, RiskDayRelease.key, RiskDayRelease.day)):
        kept[(d, k, day)] = kept.get((d, k, day), 0) - int(amount)
    return [f"{d}:{k[:12]} {day}: running total {kept.get((d, k, day), 0)}, orders {from_orders.get((d, k, day), 0)}"
            for d, k, day in sorted(set(kept) | set(from_orders))
            if kept.get((d, k, day), 0) != from_orders.get((d, k, day), 0)]
