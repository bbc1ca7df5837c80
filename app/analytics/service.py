"""Analytics rollups: the one module that writes rollup_* tables (app/analytics/models.py explains the tables).

Three writers, one answer:
- `record_delivery` / `record_refund`, called by app.orders.service.transition inside the delivering / refunding
  transaction, write ONE rollup_pending row (order id, sign): an INSERT, no read, no lock, no shared row.
  `fold_orders` (the periodic job `rollup-orders` every ROLLUP_ORDERS_SECONDS; with jobs inline, right after the
  commit) turns pending rows into delta rows (+ on delivery, - on refund, both on the ORIGINAL delivery day) and
  deletes them, one transaction per batch. A rejected dispute (disputed -> delivered) writes nothing: the order
  never stopped counting.
- `fold_money` appends money-flow deltas from ledger journals above a watermark (rollup_state
  'money_journal_id'), advancing it in the same transaction.
- `rebuild(start, end)` folds what is pending, then deletes a day range and recomputes it set-based
  (INSERT ... SELECT) from orders, real-name records and journals, leaving out rows pending meanwhile (their fold
  adds them). Folded rows and a rebuild give the same grouped sums.
`compact` merges the delta rows of one key into one row; readers GROUP BY, so it changes no answer.
Dashboards show how fresh the order rollups are (`data_as_of`: the oldest pending row, else now).

Active agents (rollup_active_daily, rollup_retention_monthly) count each agent once per day (month): a delivery
adds +1 only when it turns the agent's day (month) from no orders to some, a refund -1 only when it empties it,
both read off rollup_agent_daily by the fold, which runs one at a time (the maintenance lock). Tier and branch
are the agent's (agent.tier_id, agent.path) when the row is folded; a rebuild takes them as they are then, so
after an agent is moved or changes tier, a rebuild restates its past days under the new ones.

Definitions (the dashboards rely on them):
- day: China business day (BUSINESS_TIMEZONE) of orders.delivered_at; for money flows, of the journal.
- Delivery times (rollup_delivery_daily, platform only): day of orders.paid_at; a delivery in its time bucket,
  a paid order that ended without one (pending sign 0, written by transition) in the failed bucket
  (app/analytics/delivery.py).
- Counted orders: status delivered or disputed. GMV = orders.amount, cost = cost_total, fees = service_fee,
  margin = amount - cost_total.
- Scopes: 0 (platform) for every order; an agent-bought order also counts for every id on its upline_path
  snapshot (the buyer included). Guest (storefront) orders count only at 0, tier NULL, except those bought in an
  agent's shop (app.agentshops), which also count for every id on the shop's agent's path (its upline_path).
- Agent shops: rollup_shop_daily sums, per scope, day and shop, the counted shop orders, their GMV and the shop
  profit snapshotted in them (orders.shop_profit).
- Profile dimensions: age_band / gender / province from the buyer's *verified* real-name record ('unknown' when
  there is none, and for guests); hour = '00'..'23' China hour of delivered_at; buyer_type = 'first' when the
  buyer (agent_id, or the guest's contact) had no order delivered before this one (delivered_at, then id, as
  the tie-break; an order later refunded still counts as delivered before), else 'returning'.
- Money flows (flow, amount fen, count), from journal kinds:
  commission_accrued (commission_accrual: each beneficiary's pending credit), commission_settled (settlement:
  each agent's pending debit), commission_reversed (commission_reversal: each agent's debits),
  withdrawal_requested (withdrawal_freeze: frozen credit), withdrawal_paid (withdrawal_paid: net to
  platform:payouts), withdrawal_fee (withdrawal_paid: platform:fees), shop_profit_accrued (shop_profit: the
  agent's pending credit), shop_profit_reversed (shop_profit_reversal: its debits) -- scopes 0 + the agent's path
  (settled shop profit is in commission_settled: one settlement journal moves both);
  revenue (platform:revenue), fees (platform:fees), supplier_cost (supplier payable) of sale and sale_reversal
  journals (count +1 per sale, -1 per reversal), refunds (sale_reversal: the amount returned to the buyer's
  wallet or buyer funds) -- scopes 0 + the buying agent's upline_path for agent orders (the shop's agent's for
  shop orders).
  Channel refunds of orders never delivered (journal kind 'refund') move no revenue and are not a flow here.

Concurrency: a purchase writes one pending row (no shared row is ever updated, no advisory lock is taken, so
purchases never wait on each other for analytics). fold_orders, compact, fold_money and rebuild serialize on one
transaction-level advisory lock (PostgreSQL); pending rows are picked and deleted by id (a row committed after
higher ids were folded is folded next time, never skipped). rebuild reads in one snapshot per table (DELETE and
INSERT ... SELECT in one statement), so a delivery committed meanwhile is neither deleted nor recounted.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime

from flask import current_app, g, has_app_context, has_request_context
from flask_babel import gettext
from sqlalchemy import Date, DateTime, Integer, bindparam, event, func, insert, select
from sqlalchemy import text as _text

from app import states
from app.analytics.models import (
    PLATFORM_SCOPE,
    RollupPending,
    RollupState,
)
from app.clock import business_tz, month_last_day, to_local, utcnow
from app.errors import ValidationError
from app.extensions import db

MONEY_WATERMARK = "money_journal_id"
ADVISORY_LOCK_KEY = 7_020_301  # any constant: compact / fold / rebuild take it for their transaction
COUNTED_STATUSES = ("delivered", "disputed")
DIMENSIONS = ("age_band", "gender", "province", "hour", "buyer_type")
UNKNOWN = "unknown"
MAX_REBUILD_DAYS = 3 * 366
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RollupTable:
    """A rollup table's merge key and summed columns (compaction and comparisons use them)."""
    name: str
    key: tuple[str, ...]
    sums: tuple[str, ...]
    nullable_key: tuple[str, ...] = ()
    period: str = "day >= :start AND day <= :end"  # the rows a rebuild of days :start..:end replaces


TABLES = {
    "sales": RollupTable("rollup_sales_daily",
                         ("scope_id", "day", "product_id", "category_id", "channel", "tier_id", "supplier_id"),
                         ("orders", "quantity", "gmv", "cost", "fees", "margin"), ("tier_id",)),
    "profile": RollupTable("rollup_profile_daily", ("scope_id", "day", "dimension", "value", "category_id"),
                           ("orders", "gmv")),
    "agent": RollupTable("rollup_agent_daily", ("day", "agent_id"), ("orders", "gmv")),
    "money": RollupTable("rollup_money_daily", ("scope_id", "day", "flow"), ("amount", "count")),
    "active": RollupTable("rollup_active_daily", ("scope_id", "day", "tier_id"), ("agents",)),
    # A rebuild recomputes whole months: the months of :start and :end and those between.
    "retention": RollupTable("rollup_retention_monthly", ("scope_id", "cohort", "month", "tier_id"), ("agents",),
                             period="month >= :mstart AND month <= :mend"),
    "shop": RollupTable("rollup_shop_daily", ("scope_id", "day", "shop_id"), ("orders", "gmv", "profit")),
    # Delivery times by day of PAYMENT (app/analytics/delivery.py): platform only, no scope.
    "delivery": RollupTable("rollup_delivery_daily", ("day", "product_id", "supplier_id", "bucket"),
                            ("orders", "total_ms")),
}
# The path an order counts along (SQL over orders o): an agent's order its buyer's, a shop order its agent's.
SCOPE_PATH = "CASE WHEN o.agent_id IS NOT NULL OR o.shop_id IS NOT NULL THEN o.upline_path END"


# --- shared helpers ------------------------------------------------------------------------------------------

_TYPES = {"day": Date(), "lo": DateTime(), "hi": DateTime(), "cutoff": DateTime(), "start": Date(), "end": Date(),
          "mstart": Date(), "mend": Date(), "mlo": DateTime(), "mhi": DateTime()}


def text(sql: str):
    """A textual statement whose date/time parameters are typed (each driver then stores them as the ORM does)."""
    stmt = _text(sql)
    typed = [bindparam(name, type_=type_) for name, type_ in _TYPES.items() if f":{name}" in sql]
    return stmt.bindparams(*typed) if typed else stmt


def _dialect() -> str:
    return db.session.get_bind().dialect.name


def path_ids(path: str | None) -> list[int]:
    """Agent ids on a materialized path, root first (`/1/7/42/` -> [1, 7, 42])."""
    return [int(x) for x in (path or "").strip("/").split("/") if x]


def order_scopes(agent_id: int | None, upline_path: str | None, shop_id: int | None = None) -> list[int]:
    """Where an order counts: the platform, and for an agent's order (or an agent shop's) every agent on its path
    snapshot."""
    if agent_id is None and shop_id is None:
        return [PLATFORM_SCOPE]
    return [PLATFORM_SCOPE] + path_ids(upline_path)


def day_bounds(start: date, end: date) -> tuple[datetime, datetime]:
    """Naive-UTC instants bounding China business days start..end (inclusive)."""
    tz = business_tz()
    lo = datetime.combine(start, dtime.min, tzinfo=tz).astimezone(UTC).replace(tzinfo=None)
    hi = datetime.combine(end + timedelta(days=1), dtime.min, tzinfo=tz).astimezone(UTC).replace(tzinfo=None)
    return lo, hi


def _lock() -> None:
    """Serialize the rollup maintenance jobs (not the per-order deltas) for the rest of this transaction.

    On PostgreSQL also: no JIT (compiling these one-off statements took longer than running them: seconds on
    100k orders) and enough work_mem for the aggregates to stay in memory, for this transaction only.
    """
    if _dialect() == "postgresql":
        db.session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        db.session.execute(text("SET LOCAL jit = off"))
        db.session.execute(text(f"SET LOCAL work_mem = '{int(current_app.config.get('ROLLUP_WORK_MEM_MB', 256))}MB'"))


def _get_state(name: str) -> int:
    value = db.session.scalar(select(RollupState.value).where(RollupState.name == name))
    return int(value or 0)


def _set_state(name: str, value: int) -> None:
    table = RollupState.__table__
    if db.session.execute(table.update().where(table.c.name == name).values(value=value)).rowcount == 0:
        db.session.execute(table.insert().values(name=name, value=value))


# --- per-order deltas: one pending row on the purchase path, folded by a job -------------------------------------

def record_delivery(order_id: int) -> None:
    """An order was just delivered (from paid / delivering): note it for the fold, in the caller's transaction."""
    _note(order_id, 1)


def record_refund(order_id: int) -> None:
    """A delivered (or disputed) order was just refunded: note it; the fold subtracts it on its delivery day."""
    _note(order_id, -1)


def record_failure(order_id: int) -> None:
    """A paid order just ended without a delivery (failed, or refunded from paid / delivering): note it for the
    delivery-time rollup (a failure on its day of payment). The other rollups ignore it: it was never delivered."""
    _note(order_id, 0)


def _note(order_id: int, sign: int) -> None:
    # One INSERT: no read, no lock, no shared row. The fold reads the order's facts later (see fold_orders).
    db.session.connection().execute(_PENDING.insert().values(order_id=order_id, sign=sign, created_at=utcnow()))
    db.session.info[_FOLD_DUE] = True


def pending_sign(from_status: str, to_status: str) -> int | None:
    """What an order's move means to the rollups: 1 a first delivery, -1 a refund of a counted order, 0 a paid order
    that ends undelivered (the delivery-time rollup counts a failure), None nothing. A rejected dispute
    (disputed -> delivered) never stopped counting."""
    if to_status == "delivered" and from_status in ("paid", "delivering"):
        return 1
    if to_status == "refunded" and from_status in ("delivered", "disputed"):
        return -1
    if to_status in ("failed", "refunded") and from_status in ("paid", "delivering"):
        return 0
    return None


def note_moved(sign: int) -> states.Follow:
    """`_note` as a data-modifying CTE over the order's move (app.orders.service.transition on PostgreSQL): the
    pending row is written by the statement that moves the order, no round trip of its own."""
    db.session.info[_FOLD_DUE] = True
    return states.Follow(("rollup_noted",), _note_moved_cte, {"rollup_sign": sign, "rollup_at": utcnow()})


def _note_moved_cte(moved) -> list:
    return [insert(_PENDING).from_select(["order_id", "sign", "created_at"], select(
        moved.c.id, bindparam("rollup_sign", type_=Integer), bindparam("rollup_at", type_=DateTime)))
        .cte("rollup_noted")]


_PENDING = RollupPending.__table__
_FOLD_DUE = "kameng_rollup_fold_due"

# The pending rows of a batch with every fact the deltas need: the order, its category, the buyer's verified
# real-name facts, the agent's tier, path and joining time, and `earlier`: whether the buyer has a delivery
# before this one ((delivered_at, id) order) that is already folded (no +1 row pending). A missing order
# (never expected) yields NULL facts: its row is deleted without deltas.
_BATCH = text("""
SELECT p.id AS pid, p.sign, p.order_id, o.agent_id, o.contact_hash, o.upline_path, o.product_id, pr.category_id,
       o.channel, o.tier_id, o.supplier_id, o.quantity, o.amount, o.cost_total, o.service_fee, o.delivered_at,
       o.shop_id, o.shop_profit,
       r.age_band, r.gender, r.province,
       a.tier_id AS agent_tier_id, a.path AS agent_path, a.created_at AS agent_created_at,
       CASE WHEN o.agent_id IS NOT NULL THEN EXISTS (
              SELECT 1 FROM orders e WHERE e.agent_id = o.agent_id AND e.delivered_at IS NOT NULL AND e.id <> o.id
                 AND (e.delivered_at < o.delivered_at OR (e.delivered_at = o.delivered_at AND e.id < o.id))
                 AND NOT EXISTS (SELECT 1 FROM rollup_pending q WHERE q.order_id = e.id AND q.sign = 1))
            ELSE EXISTS (
              SELECT 1 FROM orders e WHERE e.agent_id IS NULL AND e.delivered_at IS NOT NULL AND e.id <> o.id
                 AND (e.contact_hash = o.contact_hash OR (e.contact_hash IS NULL AND o.contact_hash IS NULL))
                 AND (e.delivered_at < o.delivered_at OR (e.delivered_at = o.delivered_at AND e.id < o.id))
                 AND NOT EXISTS (SELECT 1 FROM rollup_pending q WHERE q.order_id = e.id AND q.sign = 1))
       END AS earlier
FROM rollup_pending p
LEFT JOIN orders o ON o.id = p.order_id
LEFT JOIN product pr ON pr.id = o.product_id
LEFT JOIN real_name r ON r.agent_id = o.agent_id AND r.status = 'verified'
LEFT JOIN agent a ON a.id = o.agent_id
ORDER BY p.id
LIMIT :limit
""").columns(delivered_at=DateTime(), agent_created_at=DateTime())  # typed: SQLite returns timestamps as text

# A buyer's first delivery among the folded ones, and whether it still counts in the rollups (not refunded, or
# refunded with the -1 row still pending).
_FIRST_COLS = ("SELECT o.id AS order_id, o.agent_id, o.upline_path, o.shop_id, o.amount, o.delivered_at,"
               " pr.category_id,"
               " CASE WHEN o.status IN ('delivered', 'disputed') OR EXISTS (SELECT 1 FROM rollup_pending q"
               " WHERE q.order_id = o.id AND q.sign = -1) THEN 1 ELSE 0 END AS counted"
               " FROM orders o JOIN product pr ON pr.id = o.product_id WHERE o.delivered_at IS NOT NULL"
               " AND NOT EXISTS (SELECT 1 FROM rollup_pending q WHERE q.order_id = o.id AND q.sign = 1) AND ")
_FIRST_AGENT = text(_FIRST_COLS + "o.agent_id = :agent_id ORDER BY o.delivered_at, o.id LIMIT 1"
                    ).columns(delivered_at=DateTime())
_FIRST_GUEST = text(_FIRST_COLS + "o.agent_id IS NULL AND o.contact_hash = :contact ORDER BY o.delivered_at, o.id"
                    " LIMIT 1").columns(delivered_at=DateTime())
_FIRST_GUEST_NULL = text(_FIRST_COLS + "o.agent_id IS NULL AND o.contact_hash IS NULL"
                         " ORDER BY o.delivered_at, o.id LIMIT 1").columns(delivered_at=DateTime())

# The agents' orders per day over the months a batch touches (the (agent_id, day) index).
_AGENT_DAYS = text("SELECT agent_id, day, sum(orders) FROM rollup_agent_daily WHERE agent_id IN :agents"
                   " AND day >= :start AND day <= :end GROUP BY agent_id, day"
                   ).bindparams(bindparam("agents", expanding=True)).columns(day=Date())


def fold_orders(limit: int | None = None) -> int:
    """Fold up to `limit` pending rows (default ROLLUP_ORDERS_BATCH), oldest id first, into the rollups and
    delete them, in one transaction under the rollup maintenance lock. Commits. Returns how many were folded.

    Exactly what the delivering transaction used to add: sales / profile / agent deltas (+ on delivery, - on
    refund, on the original delivery day), and active / retention +1 when an order turns an agent's day (month)
    active, -1 when a refund empties it, decided on rollup_agent_daily, which only folds change: one fold at a
    time (the lock), so no per-buyer lock is needed.

    Pending rows are picked and deleted by id, never by a watermark: a row whose transaction commits after
    higher ids were folded is simply in the next batch. The 'first vs returning' buyer type is kept exact with
    respect to the folded deliveries: an order is 'first' when no folded delivery of its buyer precedes it
    ((delivered_at, id)); when a delivery committed late precedes the buyer's folded first order, that order's
    profile row moves from 'first' to 'returning' in the same batch. Once every row is folded this is the
    rebuild's definition over all deliveries.
    """
    limit = limit if limit is not None else int(current_app.config.get("ROLLUP_ORDERS_BATCH", 5000))
    try:
        _lock()
        conn = db.session.connection()
        rows = conn.execute(_BATCH, {"limit": limit}).all()
        if not rows:
            db.session.rollback()
            return 0
        deltas = _Deltas()
        _fold_rows(conn, rows, deltas)
        _delivery_deltas(conn, rows, deltas)
        deltas.write(conn)
        conn.execute(_PENDING.delete().where(_PENDING.c.id.in_([r.pid for r in rows])))
        db.session.commit()
        return len(rows)
    except Exception:
        db.session.rollback()
        raise


def fold_orders_all(max_batches: int = 1000) -> int:
    """Fold until nothing is pending (the periodic job, and inline after each commit): one transaction per batch."""
    total = 0
    for _ in range(max_batches):
        n = fold_orders()
        total += n
        if n == 0:
            break
    return total


@dataclass
class _First:
    """A buyer's first delivery among those folded so far, and whether it counts in the rollups now."""
    order_id: int
    facts: object  # a row with agent_id, upline_path, amount, delivered_at, category_id
    counted: bool


class _Deltas:
    """The batch's deltas summed per rollup key (all-zero keys are not written)."""

    def __init__(self) -> None:
        # Every table the fold writes (money flows are folded from journals by fold_money).
        self.tables: dict[str, dict[tuple, list[int]]] = {name: {} for name in TABLES if name != "money"}

    def add(self, table: str, key: tuple, sums: tuple[int, ...]) -> None:
        current = self.tables[table].setdefault(key, [0] * len(sums))
        for i, v in enumerate(sums):
            current[i] += v

    def write(self, conn) -> None:
        for name, rows in self.tables.items():
            t = TABLES[name]
            values = [dict(zip(t.key + t.sums, key + tuple(sums), strict=True))
                      for key, sums in rows.items() if any(sums)]
            if values:
                conn.execute(db.metadata.tables[t.name].insert(), values)


def _fold_rows(conn, rows, deltas: _Deltas) -> None:
    firsts = _load_firsts(conn, rows)  # buyers whose batch has a row with no folded delivery before it
    days = _load_agent_days(conn, rows)
    seen: dict[tuple, list[tuple]] = {}  # buyer -> (delivered_at, id) of its deliveries folded in this batch
    for r in rows:
        if r.delivered_at is None:
            continue
        sign = int(r.sign)
        buyer = _buyer(r)
        position = (r.delivered_at, r.order_id)
        earlier = bool(r.earlier) or any(p < position for p in seen.get(buyer, ()))
        first = firsts.get(buyer)
        if sign > 0:
            seen.setdefault(buyer, []).append(position)
            if not earlier:
                if first is not None and first.counted:  # a late delivery precedes it: no longer the first
                    _move_to_returning(deltas, first.facts)
                firsts[buyer] = _First(r.order_id, r, True)
        elif first is not None and first.order_id == r.order_id:
            first.counted = False
        _order_deltas(deltas, r, sign, "returning" if earlier else "first")
        if r.agent_id is not None:
            _activity_deltas(deltas, days, r, sign)


def _buyer(r) -> tuple:
    return ("agent", r.agent_id) if r.agent_id is not None else ("guest", r.contact_hash)


def _load_firsts(conn, rows) -> dict[tuple, _First | None]:
    """Each buyer's first folded delivery (None: none folded yet), for the buyers that may need it: those with a
    batch row that no folded delivery precedes. Usually a brand-new buyer: one indexed read each."""
    out: dict[tuple, _First | None] = {}
    for r in rows:
        buyer = _buyer(r)
        if r.delivered_at is None or r.earlier or buyer in out:
            continue
        if r.agent_id is not None:
            f = conn.execute(_FIRST_AGENT, {"agent_id": r.agent_id}).first()
        elif r.contact_hash is not None:
            f = conn.execute(_FIRST_GUEST, {"contact": r.contact_hash}).first()
        else:
            f = conn.execute(_FIRST_GUEST_NULL).first()
        out[buyer] = _First(f.order_id, f, bool(f.counted)) if f is not None else None
    return out


def _load_agent_days(conn, rows) -> dict[int, dict[date, int]]:
    """Orders per (agent, day) in rollup_agent_daily over the months of the batch's agent rows."""
    agent_rows = [r for r in rows if r.agent_id is not None and r.delivered_at is not None]
    if not agent_rows:
        return {}
    months = [to_local(r.delivered_at).date().replace(day=1) for r in agent_rows]
    result = conn.execute(_AGENT_DAYS, {"agents": sorted({r.agent_id for r in agent_rows}), "start": min(months),
                                        "end": month_last_day(max(months))})
    days: dict[int, dict[date, int]] = {}
    for agent_id, day, n in result:
        days.setdefault(agent_id, {})[day] = int(n or 0)
    return days


def _order_deltas(deltas: _Deltas, r, sign: int, buyer_type: str) -> None:
    local = to_local(r.delivered_at)
    day = local.date()
    amount, cost = sign * r.amount, sign * r.cost_total
    values = {"age_band": r.age_band or UNKNOWN, "gender": r.gender or UNKNOWN, "province": r.province or UNKNOWN,
              "hour": f"{local.hour:02d}", "buyer_type": buyer_type}
    scopes = order_scopes(r.agent_id, r.upline_path, r.shop_id)
    for scope in scopes:
        deltas.add("sales", (scope, day, r.product_id, r.category_id, r.channel, r.tier_id, r.supplier_id),
                   (sign, sign * r.quantity, amount, cost, sign * r.service_fee, amount - cost))
        for dim in DIMENSIONS:
            deltas.add("profile", (scope, day, dim, values[dim], r.category_id), (sign, amount))
    if r.agent_id is not None:
        deltas.add("agent", (day, r.agent_id), (sign, amount))
    if r.shop_id is not None:
        for scope in scopes:
            deltas.add("shop", (scope, day, r.shop_id), (sign, amount, sign * (r.shop_profit or 0)))


def _move_to_returning(deltas: _Deltas, f) -> None:
    """A counted order's buyer_type profile rows move from 'first' to 'returning' (same day, category, scopes)."""
    day = to_local(f.delivered_at).date()
    for scope in order_scopes(f.agent_id, f.upline_path, f.shop_id):
        deltas.add("profile", (scope, day, "buyer_type", "first", f.category_id), (-1, -f.amount))
        deltas.add("profile", (scope, day, "buyer_type", "returning", f.category_id), (1, f.amount))


def _activity_deltas(deltas: _Deltas, days: dict[int, dict[date, int]], r, sign: int) -> None:
    """rollup_active_daily / rollup_retention_monthly: +1 when this order makes the agent's day (month) active,
    -1 when a refund leaves it with no order; read off the agent's orders per day as folded so far (the table,
    then this batch, in id order)."""
    day = to_local(r.delivered_at).date()
    month = day.replace(day=1)
    agent_days = days.setdefault(r.agent_id, {})
    before_day = agent_days.get(day, 0)
    before_month = sum(n for d, n in agent_days.items() if d.year == day.year and d.month == day.month)
    agent_days[day] = before_day + sign
    turned_day = int(before_day + sign > 0) - int(before_day > 0)
    turned_month = int(before_month + sign > 0) - int(before_month > 0)
    scopes = order_scopes(r.agent_id, r.agent_path)
    if turned_day:
        for s in scopes:
            deltas.add("active", (s, day, r.agent_tier_id), (turned_day,))
    if turned_month:
        cohort = to_local(r.agent_created_at).date().replace(day=1)
        for s in scopes:
            if s != r.agent_id:
                deltas.add("retention", (s, cohort, month, r.agent_tier_id), (turned_month,))


# Whose delivery (or failure) it was: the supplier that delivered it (orders.supplier_id), or for a top-up that was
# never delivered the last supplier it was submitted to (orders.supplier_id still names the product's default).
_DELIVERY_SUPPLIER = ("CASE WHEN o.delivered_at IS NULL THEN coalesce((SELECT ra.supplier_id FROM recharge_attempt ra"
                      " WHERE ra.order_id = o.id ORDER BY ra.seq DESC LIMIT 1), o.supplier_id)"
                      " ELSE o.supplier_id END")
# The facts of a batch's deliveries and failures the delivery-time rollup needs (paid_at, delivered_at).
_DELIVERY_FACTS = text(f"SELECT o.id, o.product_id, {_DELIVERY_SUPPLIER} AS supplier_id, o.paid_at, o.delivered_at"
                       " FROM orders o WHERE o.id IN :ids").bindparams(bindparam("ids", expanding=True)).columns(
    paid_at=DateTime(), delivered_at=DateTime())


def _delivery_deltas(conn, rows, deltas: _Deltas) -> None:
    """rollup_delivery_daily: +1 in the delivery's time bucket (sign +1) or in the failed bucket (sign 0), on the
    China day of payment. A refund (-1) leaves the delivery where it was: it was delivered that fast."""
    from app.analytics import delivery

    wanted = [r for r in rows if int(r.sign) in (0, 1)]
    if not wanted:
        return
    facts = {f.id: f for f in conn.execute(_DELIVERY_FACTS, {"ids": sorted({r.order_id for r in wanted})})}
    for r in wanted:
        f = facts.get(r.order_id)
        if f is None or f.paid_at is None:
            continue
        day = to_local(f.paid_at).date()
        if int(r.sign) == 1 and f.delivered_at is not None:
            ms = delivery.elapsed_ms(f.paid_at, f.delivered_at)
            deltas.add("delivery", (day, f.product_id, f.supplier_id, delivery.bucket_of(ms)), (1, ms))
        elif int(r.sign) == 0 and f.delivered_at is None:
            deltas.add("delivery", (day, f.product_id, f.supplier_id, delivery.FAILED_BUCKET), (1, 0))


def fold_inline() -> bool:
    """Whether folds follow each commit (jobs inline: no REDIS_URL) rather than the periodic job."""
    return not current_app.config.get("REDIS_URL")


def _fold_after_commit(session) -> None:
    """Jobs inline (no REDIS_URL: `make run`, tests): fold right after a transaction that noted deliveries or
    refunds commits, so screens are current. In a fresh app context, hence its own session and connection (the
    committing session may not run SQL here). A failure is logged; the next fold picks the rows up."""
    if not session.info.pop(_FOLD_DUE, False) or not has_app_context() or not fold_inline():
        return
    if has_request_context():
        # A request folds when it ends (fold_due_after_request), on its own session: its connection is back in
        # the pool by then. Folding here would take a second connection while this one is held, and as many
        # concurrent requests as the pool has connections would then wait on each other until the pool times out.
        g.kameng_rollup_fold_due = True
        return
    app = current_app._get_current_object()
    with app.app_context():
        try:
            _fold_pending()
        finally:
            db.session.remove()


def _fold_pending() -> None:
    try:
        # Another committer's fold may have taken this row already: then no wait for the fold lock at all.
        if db.session.scalar(select(RollupPending.id).limit(1)) is not None:
            fold_orders_all()
        else:
            db.session.rollback()  # end the read's transaction: the connection goes back to the pool
    except Exception:
        db.session.rollback()
        log.exception("inline rollup fold failed; the periodic fold retries")


def fold_due_after_request(_exc=None) -> None:
    """teardown_request: the fold a request's commits asked for (jobs inline), on the request's own session."""
    if has_app_context() and g.pop("kameng_rollup_fold_due", False):
        _fold_pending()


def init_app(app) -> None:
    app.teardown_request(fold_due_after_request)


# The flag is not cleared on rollback: a savepoint rolled back may leave the row it followed in the transaction,
# and a flag left over from a rolled-back transaction costs the next commit one SELECT.
if not event.contains(db.session, "after_commit", _fold_after_commit):
    event.listen(db.session, "after_commit", _fold_after_commit)


def data_as_of() -> datetime:
    """How fresh the order rollups are (naive UTC): the oldest unfolded delivery / refund, or now if none."""
    oldest = db.session.scalar(select(func.min(RollupPending.created_at)))
    return oldest or utcnow()


# --- set-based SQL, PostgreSQL and SQLite -----------------------------------------------------------------------

def _local_sql(column: str) -> tuple[str, str]:
    """SQL for the China day (a date) and hour ('00'..'23') of a naive-UTC timestamp column."""
    if _dialect() == "postgresql":
        local = f"(({column} AT TIME ZONE 'UTC') AT TIME ZONE :tz)"
        return f"CAST({local} AS date)", f"to_char({local}, 'HH24')"
    # SQLite has no time zones: the zone's current offset (exact for Asia/Shanghai, which has no DST).
    offset = f"'{_utc_offset_minutes():+d} minutes'"
    return f"date({column}, {offset})", f"strftime('%H', {column}, {offset})"


def _utc_offset_minutes() -> int:
    return int(datetime.now(business_tz()).utcoffset().total_seconds() // 60)


def _tz_params() -> dict:
    return {"tz": current_app.config.get("BUSINESS_TIMEZONE", "Asia/Shanghai")}


def _scoped(src: str, columns: tuple[str, ...]) -> tuple[str, str]:
    """Expand each row of CTE `src` (which has `columns` and a `path` column) into one row per scope: 0 and every
    agent id on its path. Returns (extra CTE text to append, or '', a FROM item aliased x with columns + scope_id).
    """
    if _dialect() == "postgresql":
        return "", (f"(SELECT {', '.join('src.' + c for c in columns)}, sc.scope_id FROM {src} src "
                    "CROSS JOIN LATERAL (SELECT 0 AS scope_id UNION ALL "
                    # unnest(string_to_array()) rather than string_to_table(): the planner then expects ~10 ids
                    # per path instead of 1000, so it neither spills the aggregate to disk nor JIT-compiles.
                    "SELECT CAST(t AS integer) FROM unnest(string_to_array(trim(both '/' from coalesce(src.path, '')),"
                    " '/')) AS t WHERE t <> '') sc) x")
    cols = ", ".join(columns)
    # SQLite: a recursive CTE peels one id off the path per step; the seed row is scope 0.
    cte = (f", {src}_scoped({cols}, rest, scope_id) AS ("
           f"SELECT {cols}, CASE WHEN path IS NULL THEN '' ELSE substr(path, 2) END, 0 FROM {src} "
           f"UNION ALL SELECT {cols}, substr(rest, instr(rest, '/') + 1), "
           f"CAST(substr(rest, 1, instr(rest, '/') - 1) AS INTEGER) FROM {src}_scoped WHERE instr(rest, '/') > 0)")
    return cte, f"{src}_scoped x"


def _assemble(head: str, ctes: str, tail: str, replace: bool) -> str:
    """`head` (INSERT INTO t (...)) + CTEs + `tail` (the SELECT) as one statement.

    PostgreSQL, `replace`: the range's old rows are deleted by a data-modifying CTE of the same statement, so the
    DELETE and the INSERT ... SELECT share one snapshot: a delta committed meanwhile is neither deleted nor
    counted again. SQLite (one writer at a time) gets INSERT INTO t (...) WITH RECURSIVE ... SELECT: its driver
    reports a row count only for statements that begin with INSERT; rebuild deletes first.
    """
    if _dialect() == "sqlite":
        return f"{head} " + (f"WITH RECURSIVE {ctes} " if ctes else "") + tail
    table = head.split()[2]
    period = next(t.period for t in TABLES.values() if t.name == table)
    parts = ([f"gone AS (DELETE FROM {table} WHERE {period})"] if replace else []) + \
        ([ctes] if ctes else [])
    return ("WITH " + ", ".join(parts) + " " if parts else "") + f"{head} {tail}"


def _pending(alias: str, sign: int) -> str:
    # Uncorrelated IN: PostgreSQL hashes the (few) pending ids once instead of probing per order of a year.
    return f"{alias}.id IN (SELECT q.order_id FROM rollup_pending q WHERE q.sign = {sign})"


# What a rebuild counts: the orders the folded rollups count. Status delivered / disputed, but not a delivery still
# pending (its +1 is yet to be folded), and still a refunded order whose -1 is pending. Pending rows change only
# under the lock the rebuild holds, and a delivery or refund commits its status with its pending row, so every
# statement of the rebuild sees the same set, and the later fold adds each pending row exactly once.
COUNTED_FOLDED = (f"(o.status IN ('delivered', 'disputed') OR {_pending('o', -1)}) AND NOT {_pending('o', 1)}")


def _orders_src(where: str) -> str:
    day, hour = _local_sql("o.delivered_at")
    return (f"src AS (SELECT o.id, o.agent_id, {day} AS day, {hour} AS hour, o.product_id, p.category_id, o.channel,"
            " o.tier_id, o.supplier_id, o.quantity, o.amount, o.cost_total, o.service_fee,"
            f" {SCOPE_PATH} AS path"
            " FROM orders o JOIN product p ON p.id = o.product_id"
            f" WHERE {COUNTED_FOLDED} AND {where})")


def _sales_sql(where: str, replace: bool = False) -> str:
    cols = ("day", "product_id", "category_id", "channel", "tier_id", "supplier_id", "quantity", "amount",
            "cost_total", "service_fee")
    extra, source = _scoped("src", cols)
    return _assemble(
        "INSERT INTO rollup_sales_daily (scope_id, day, product_id, category_id, channel, tier_id, supplier_id,"
        " orders, quantity, gmv, cost, fees, margin)", _orders_src(where) + extra,
            "SELECT x.scope_id, x.day, x.product_id, x.category_id, x.channel, x.tier_id, x.supplier_id, count(*),"
            " sum(x.quantity), sum(x.amount), sum(x.cost_total), sum(x.service_fee), sum(x.amount - x.cost_total)"
            f" FROM {source}"
            " GROUP BY x.scope_id, x.day, x.product_id, x.category_id, x.channel, x.tier_id, x.supplier_id"
            " ORDER BY x.scope_id, x.day",  # written in the readers' index order: see _CLUSTERED
        replace)


def _profile_sql(where: str, replace: bool = False) -> str:
    day, hour = _local_sql("o.delivered_at")
    # The first delivered order of each buyer (agent, or guest contact), over all time up to the range's end.
    firsts = ("firsts AS (SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY agent_id,"
              " CASE WHEN agent_id IS NULL THEN contact_hash END ORDER BY delivered_at, id) AS rn"
              " FROM orders fo WHERE delivered_at IS NOT NULL AND delivered_at < :hi"
              f" AND NOT {_pending('fo', 1)}) f WHERE rn = 1)")
    src = (f"src AS (SELECT {day} AS day, {hour} AS hour, p.category_id, o.amount,"
           f" coalesce(nullif(r.age_band, ''), '{UNKNOWN}') AS age_band,"
           f" coalesce(nullif(r.gender, ''), '{UNKNOWN}') AS gender,"
           f" coalesce(nullif(r.province, ''), '{UNKNOWN}') AS province,"
           " CASE WHEN f.id IS NULL THEN 'returning' ELSE 'first' END AS buyer_type,"
           f" {SCOPE_PATH} AS path"
           " FROM orders o JOIN product p ON p.id = o.product_id"
           " LEFT JOIN real_name r ON r.agent_id = o.agent_id AND r.status = 'verified'"
           " LEFT JOIN firsts f ON f.id = o.id"
           f" WHERE {COUNTED_FOLDED} AND {where})")
    cols = ("day", "hour", "category_id", "amount", "age_band", "gender", "province", "buyer_type")
    extra, source = _scoped("src", cols)
    head = "INSERT INTO rollup_profile_daily (scope_id, day, dimension, value, category_id, orders, gmv)"
    if _dialect() == "postgresql":
        # One aggregation with a grouping set per dimension: each order-scope row is read once, not five times.
        # In each set the other dimensions are NULL; the grouped one never is ('unknown' stands for missing).
        dimension = ("CASE " + " ".join(f"WHEN GROUPING(x.{d}) = 0 THEN '{d}'" for d in DIMENSIONS[:-1])
                     + f" ELSE '{DIMENSIONS[-1]}' END")
        value = "COALESCE(" + ", ".join(f"x.{d}" for d in DIMENSIONS) + ")"
        sets = ", ".join(f"(x.{d})" for d in DIMENSIONS)
        return _assemble(head, f"{firsts}, {src}{extra}",
                         f"SELECT x.scope_id, x.day, {dimension}, {value}, x.category_id, count(*), sum(x.amount)"
                         f" FROM {source} GROUP BY x.scope_id, x.day, x.category_id, GROUPING SETS ({sets})"
                         " ORDER BY 1, 3, 2",  # scope_id, dimension, day: the readers' index order (_CLUSTERED)
                         replace)
    dims = "dims(dimension) AS (VALUES " + ", ".join(f"('{d}')" for d in DIMENSIONS) + ")"
    value = "CASE d.dimension " + " ".join(f"WHEN '{d}' THEN x.{d}" for d in DIMENSIONS) + " END"
    return _assemble(head, f"{firsts}, {src}, {dims}{extra}",
                     f"SELECT x.scope_id, x.day, d.dimension, {value}, x.category_id, count(*), sum(x.amount)"
                     f" FROM {source} CROSS JOIN dims d GROUP BY x.scope_id, x.day, d.dimension, {value},"
                     " x.category_id ORDER BY x.scope_id, d.dimension, x.day", replace)


def _shop_sql(where: str, replace: bool = False) -> str:
    """Agent shops' orders, GMV and profit per day and shop, at 0 and every agent on the shop's agent's path."""
    day, _ = _local_sql("o.delivered_at")
    src = (f"src AS (SELECT {day} AS day, o.shop_id, o.amount, coalesce(o.shop_profit, 0) AS profit,"
           f" {SCOPE_PATH} AS path FROM orders o WHERE {COUNTED_FOLDED} AND o.shop_id IS NOT NULL AND {where})")
    extra, source = _scoped("src", ("day", "shop_id", "amount", "profit"))
    return _assemble("INSERT INTO rollup_shop_daily (scope_id, day, shop_id, orders, gmv, profit)", src + extra,
                     f"SELECT x.scope_id, x.day, x.shop_id, count(*), sum(x.amount), sum(x.profit) FROM {source}"
                     " GROUP BY x.scope_id, x.day, x.shop_id ORDER BY x.scope_id, x.day", replace)


def _agent_sql(where: str, replace: bool = False) -> str:
    day, _ = _local_sql("o.delivered_at")
    return _assemble(
        "INSERT INTO rollup_agent_daily (day, agent_id, orders, gmv)", "",
        f"SELECT day, agent_id, count(*), sum(amount) FROM (SELECT {day} AS day, o.agent_id, o.amount"
        f" FROM orders o WHERE {COUNTED_FOLDED} AND o.agent_id IS NOT NULL"
        f" AND {where}) a GROUP BY day, agent_id ORDER BY day, agent_id", replace)


def _month_sql(day_sql: str) -> str:
    """The first day of the month of a DATE expression."""
    if _dialect() == "postgresql":
        return f"CAST(date_trunc('month', {day_sql}) AS date)"
    return f"date({day_sql}, 'start of month')"


def _active_pairs(period_sql: str, where: str) -> str:
    """Distinct (period, agent_id) of agents with counted orders matching `where`."""
    return (f"SELECT DISTINCT {period_sql} AS period, o.agent_id FROM orders o"
            f" WHERE {COUNTED_FOLDED} AND o.agent_id IS NOT NULL AND {where}")


def _active_sql(where: str, replace: bool = False) -> str:
    """Agents who bought, per day, scope and the agent's tier: one per (agent, day), counted at 0 and every agent on
    the agent's path (itself included). Grouped per (day, tier, path) before the path is expanded."""
    day, _ = _local_sql("o.delivered_at")
    src = (f"src AS (SELECT p.period AS day, a.tier_id, a.path, count(*) AS n FROM ({_active_pairs(day, where)}) p"
           " JOIN agent a ON a.id = p.agent_id GROUP BY p.period, a.tier_id, a.path)")
    extra, source = _scoped("src", ("day", "tier_id", "n"))
    return _assemble("INSERT INTO rollup_active_daily (scope_id, day, tier_id, agents)", src + extra,
                     f"SELECT x.scope_id, x.day, x.tier_id, sum(x.n) FROM {source}"
                     " GROUP BY x.scope_id, x.day, x.tier_id ORDER BY x.scope_id, x.day", replace)


def _retention_sql(where: str, replace: bool = False) -> str:
    """Agents who bought, per month, cohort (their joining month), scope and tier: counted at 0 and at every agent
    above them (the parent's path: an agent is not in its own branch's cohorts)."""
    day, _ = _local_sql("o.delivered_at")
    joined, _ = _local_sql("a.created_at")
    parent_path = "substr(a.path, 1, length(a.path) - length(CAST(a.id AS TEXT)) - 1)"
    src = (f"src AS (SELECT p.period AS month, {_month_sql(joined)} AS cohort, a.tier_id, {parent_path} AS path,"
           f" count(*) AS n FROM ({_active_pairs(_month_sql(day), where)}) p JOIN agent a ON a.id = p.agent_id"
           " GROUP BY 1, 2, 3, 4)")
    extra, source = _scoped("src", ("month", "cohort", "tier_id", "n"))
    return _assemble("INSERT INTO rollup_retention_monthly (scope_id, cohort, month, tier_id, agents)", src + extra,
                     f"SELECT x.scope_id, x.cohort, x.month, x.tier_id, sum(x.n) FROM {source}"
                     " GROUP BY x.scope_id, x.cohort, x.month, x.tier_id ORDER BY x.scope_id, x.cohort", replace)


def _delivery_sql(where: str, replace: bool = False) -> str:
    """Delivery-time histogram of the orders paid in the range (`where` on o.paid_at): every order delivered (its
    +1 folded), and every order that ended without a delivery after it was paid (its 0 folded): failed or refunded,
    never delivered, not a risk control rejection (risk_hold). The fold's definition, set-based."""
    from app.analytics import delivery

    dialect = _dialect()
    day, _ = _local_sql("o.paid_at")
    ms = delivery.elapsed_ms_sql("o.paid_at", "o.delivered_at", dialect)
    src = (f"src AS (SELECT {day} AS day, o.product_id, {_DELIVERY_SUPPLIER} AS supplier_id, o.delivered_at,"
           f" CASE WHEN o.delivered_at IS NULL THEN 0 ELSE {ms} END AS ms FROM orders o WHERE {where}"
           f" AND ((o.delivered_at IS NOT NULL AND NOT {_pending('o', 1)})"
           f" OR (o.delivered_at IS NULL AND o.status IN ('failed', 'refunded') AND NOT o.risk_hold"
           f" AND NOT {_pending('o', 0)})))")
    bucket = f"CASE WHEN x.delivered_at IS NULL THEN {delivery.FAILED_BUCKET} ELSE {delivery.bucket_sql('x.ms')} END"
    return _assemble("INSERT INTO rollup_delivery_daily (day, product_id, supplier_id, bucket, orders, total_ms)",
                     src, f"SELECT x.day, x.product_id, x.supplier_id, {bucket}, count(*), sum(x.ms) FROM src x"
                     f" GROUP BY x.day, x.product_id, x.supplier_id, {bucket} ORDER BY x.day", replace)


def _money_sql(journal_where: str, replace: bool = False) -> str:
    """Money-flow deltas of the journals matching `journal_where` (columns of ledger_journal j0).

    Most flows are one posting each (a beneficiary's pending credit, a sale's revenue line ...), classified in one
    pass over the postings; commission reversals (several postings per agent) and paid withdrawals (the agent is
    on another posting than the amounts) are grouped per journal. Flows are summed per (day, flow, path) before
    the path is expanded into scopes, so a busy agent's many sales are expanded once a day, not once each.
    """
    day, _ = _local_sql("j0.created_at")
    joined = ("FROM ledger_journal j0 JOIN ledger_posting p ON p.journal_id = j0.id"
              " JOIN ledger_account a ON a.id = p.account_id")
    sale_sign = "CASE WHEN j0.kind = 'sale' THEN 1 ELSE -1 END"
    order_flow = ("CASE WHEN a.code = 'platform:revenue' THEN 'revenue' WHEN a.code = 'platform:fees' THEN 'fees'"
                  " WHEN a.kind = 'payable' THEN 'supplier_cost'"
                  " WHEN j0.kind = 'sale_reversal' AND p.amount > 0"
                  " AND (a.kind = 'wallet' OR a.code = 'platform:buyer_funds') THEN 'refunds' END")
    ctes = (
        "events AS ("
        # one posting, one agent event
        f"SELECT {day} AS day, CASE j0.kind WHEN 'commission_accrual' THEN 'commission_accrued'"
        " WHEN 'shop_profit' THEN 'shop_profit_accrued'"
        " WHEN 'settlement' THEN 'commission_settled' ELSE 'withdrawal_requested' END AS flow,"
        " a.agent_id, CAST(NULL AS integer) AS order_id,"
        " CASE j0.kind WHEN 'settlement' THEN -p.amount ELSE p.amount END AS amount, 1 AS cnt"
        f" {joined} WHERE {journal_where} AND ((j0.kind IN ('commission_accrual', 'shop_profit', 'settlement')"
        " AND a.kind = 'pending') OR (j0.kind = 'withdrawal_freeze' AND a.kind = 'frozen'))"
        # one posting, one order event (sales and their reversals)
        f" UNION ALL SELECT day, flow, NULL, order_id, amount, cnt FROM (SELECT {day} AS day, {order_flow} AS flow,"
        " j0.order_id, p.amount,"
        f" CASE WHEN j0.kind = 'sale_reversal' AND a.code <> 'platform:revenue' AND a.code <> 'platform:fees'"
        f" AND a.kind <> 'payable' THEN 1 ELSE {sale_sign} END AS cnt"
        f" {joined} WHERE {journal_where} AND j0.kind IN ('sale', 'sale_reversal')) s WHERE flow IS NOT NULL"
        # per journal and agent
        f" UNION ALL SELECT {day}, CASE j0.kind WHEN 'commission_reversal' THEN 'commission_reversed'"
        " ELSE 'shop_profit_reversed' END, a.agent_id, NULL, -sum(p.amount), 1"
        f" {joined} WHERE {journal_where} AND j0.kind IN ('commission_reversal', 'shop_profit_reversal')"
        f" AND a.agent_id IS NOT NULL GROUP BY j0.id, j0.kind, {day}, a.agent_id"
        f" UNION ALL SELECT {day}, 'withdrawal_paid', max(a.agent_id), NULL,"
        " sum(CASE WHEN a.code = 'platform:payouts' THEN p.amount ELSE 0 END), 1"
        f" {joined} WHERE {journal_where} AND j0.kind = 'withdrawal_paid' GROUP BY j0.id, {day}"
        f" UNION ALL SELECT {day}, 'withdrawal_fee', max(a.agent_id), NULL,"
        " sum(CASE WHEN a.code = 'platform:fees' THEN p.amount ELSE 0 END), 1"
        f" {joined} WHERE {journal_where} AND j0.kind = 'withdrawal_paid' GROUP BY j0.id, {day}"
        " HAVING sum(CASE WHEN a.code = 'platform:fees' THEN p.amount ELSE 0 END) <> 0"
        "),"
        " src AS (SELECT e.day, e.flow, sum(e.amount) AS amount, sum(e.cnt) AS cnt,"
        f" CASE WHEN e.agent_id IS NOT NULL THEN ag.path ELSE {SCOPE_PATH} END AS path"
        " FROM events e LEFT JOIN agent ag ON ag.id = e.agent_id LEFT JOIN orders o ON o.id = e.order_id"
        " GROUP BY e.day, e.flow,"
        f" CASE WHEN e.agent_id IS NOT NULL THEN ag.path ELSE {SCOPE_PATH} END)")
    extra, source = _scoped("src", ("day", "flow", "amount", "cnt"))
    return _assemble("INSERT INTO rollup_money_daily (scope_id, day, flow, amount, count)", ctes + extra,
                     f"SELECT x.scope_id, x.day, x.flow, sum(x.amount), sum(x.cnt) FROM {source}"
                     " GROUP BY x.scope_id, x.day, x.flow ORDER BY x.scope_id, x.day", replace)  # see _CLUSTERED


# --- money flows ------------------------------------------------------------------------------------------------

def fold_money(limit: int | None = None) -> int:
    """Fold journals above the watermark into rollup_money_daily and advance it, in one transaction. Commits.

    Takes at most `limit` journals (default ROLLUP_MONEY_BATCH; None in the config = no limit), and only those
    older than ROLLUP_MONEY_LAG_SECONDS: a journal id is taken when its transaction inserts, so a younger journal
    could still be followed by a lower id that commits later. Returns how many journals were folded.
    """
    limit = limit if limit is not None else current_app.config.get("ROLLUP_MONEY_BATCH", 50_000)
    lag = int(current_app.config.get("ROLLUP_MONEY_LAG_SECONDS", 30))
    try:
        _lock()
        mark = _get_state(MONEY_WATERMARK)
        cutoff = utcnow() - timedelta(seconds=lag)
        young = db.session.scalar(text(
            "SELECT min(id) FROM ledger_journal WHERE id > :mark AND created_at > :cutoff"),
            {"mark": mark, "cutoff": cutoff})
        bound = "AND id < :young " if young is not None else ""
        upper, count = db.session.execute(text(
            f"SELECT max(id), count(*) FROM (SELECT id FROM ledger_journal WHERE id > :mark {bound}"
            "ORDER BY id LIMIT :limit) t"), {"mark": mark, "young": young, "limit": limit or 2 ** 62}).one()
        if upper is None:
            db.session.rollback()
            return 0
        db.session.execute(text(_money_sql("j0.id > :mark AND j0.id <= :upper")),
                           {"mark": mark, "upper": upper, **_tz_params()})
        _set_state(MONEY_WATERMARK, upper)
        db.session.commit()
        return int(count)
    except Exception:
        db.session.rollback()
        raise


def fold_money_all(max_batches: int = 1000) -> int:
    """Fold until nothing is left (the periodic job): one transaction per batch."""
    total = 0
    for _ in range(max_batches):
        n = fold_money()
        total += n
        if n == 0:
            break
    return total


# --- rebuild ----------------------------------------------------------------------------------------------------

def rebuild(start: date, end: date) -> dict:
    """Delete and recompute every rollup for China days start..end (inclusive) from the source tables. Commits.

    Pending deliveries and refunds are folded first; then the orders the folded rollups count (COUNTED_FOLDED: a
    row pending meanwhile is left to its fold), real-name records and the first-order test come from the tables as
    they are now; money flows from
    journals up to the money watermark (fold_money adds the rest, so nothing is counted twice); retention is
    recomputed for whole months, from the month of `start` to the month of `end`. One transaction
    (the session's open one is committed first); on PostgreSQL each table's DELETE and INSERT are one statement
    (one snapshot), so deliveries committing meanwhile are counted exactly once, by the fold of their pending rows.
    Returns the rows written per table and the seconds it took.
    """
    if end < start:
        raise ValidationError(gettext("结束日期不能早于开始日期"))
    if (end - start).days > MAX_REBUILD_DAYS:
        raise ValidationError(gettext("一次最多重建 %(max_rebuild_days)s 天", max_rebuild_days=MAX_REBUILD_DAYS))
    began = time.monotonic()
    db.session.commit()
    fold_orders_all()  # what is pending now is in the rebuilt rows' past; later rows are left out (COUNTED_FOLDED)
    pg = _dialect() == "postgresql"
    lo, hi = day_bounds(start, end)
    mstart, mend = start.replace(day=1), end.replace(day=1)
    mlo, mhi = day_bounds(mstart, month_last_day(mend))
    params = {"lo": lo, "hi": hi, "start": start, "end": end, "mstart": mstart, "mend": mend, "mlo": mlo,
              "mhi": mhi, **_tz_params()}
    written: dict[str, int] = {}
    try:
        _lock()
        params["mark"] = _get_state(MONEY_WATERMARK)
        if not pg:
            for t in TABLES.values():
                db.session.execute(text(f"DELETE FROM {t.name} WHERE {t.period}"), params)
        in_range = "o.delivered_at >= :lo AND o.delivered_at < :hi"
        written["sales"] = db.session.execute(text(_sales_sql(in_range, pg)), params).rowcount
        written["profile"] = db.session.execute(text(_profile_sql(in_range, pg)), params).rowcount
        written["agent"] = db.session.execute(text(_agent_sql(in_range, pg)), params).rowcount
        written["active"] = db.session.execute(text(_active_sql(in_range, pg)), params).rowcount
        written["retention"] = db.session.execute(text(_retention_sql(
            "o.delivered_at >= :mlo AND o.delivered_at < :mhi", pg)), params).rowcount
        written["shop"] = db.session.execute(text(_shop_sql(in_range, pg)), params).rowcount
        written["money"] = db.session.execute(text(_money_sql(
            "j0.created_at >= :lo AND j0.created_at < :hi AND j0.id <= :mark", pg)), params).rowcount
        written["delivery"] = db.session.execute(text(_delivery_sql(
            "o.paid_at >= :lo AND o.paid_at < :hi", pg)), params).rowcount
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    if pg:
        _analyze()
    return {"start": start.isoformat(), "end": end.isoformat(), **written,
            "seconds": round(time.monotonic() - began, 2)}


# Why the rebuild writes rows ORDER BY the readers' index key: a dashboard reads one scope's days (e.g. scope 0,
# a year: 12,696 of 652,415 sales rows at 1M orders). Written in hash-aggregate order, those rows sat on 6,671
# pages (one page per 2 rows; 31,294 profile rows of a dimension on 31,000 pages): 650-800 ms a query on a cold
# cache. Written in index order they fill ~190 pages: 9 ms (sales ranking) and 26 ms (provinces), same data.
_CLUSTERED = {"rollup_sales_daily": "scope_id, day", "rollup_profile_daily": "scope_id, dimension, day",
              "rollup_agent_daily": "day, agent_id", "rollup_money_daily": "scope_id, day",
              "rollup_active_daily": "scope_id, day", "rollup_retention_monthly": "scope_id, cohort",
              "rollup_shop_daily": "scope_id, day",
              "rollup_delivery_daily": "day"}


def _analyze() -> None:
    """Fresh planner statistics after a bulk rewrite (autovacuum may be off or hours behind): without them the
    planner guessed 11 rows for a year of scope 0 (12,696) and sized hash aggregates to spill to disk."""
    db.session.execute(text("ANALYZE " + ", ".join(_CLUSTERED)))
    db.session.commit()


def schedule_rebuild(start: date, end: date) -> str | None:
    """Queue the rebuild job on the low queue (its id names the range, so a second request joins the first)."""
    from app.queueing import enqueue

    return enqueue("rebuild_rollups", start.isoformat(), end.isoformat(),
                   job_id=f"rollups-rebuild-{start:%Y%m%d}-{end:%Y%m%d}", queue="low", timeout=3600)


def parse_day(value: object, what: str | None = None) -> date:
    what = what or gettext("日期")
    if not isinstance(value, str):
        raise ValidationError(gettext("%(what)s格式应为 YYYY-MM-DD", what=what))
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError(gettext("%(what)s格式应为 YYYY-MM-DD: %(value)s", what=what,
                                      value=repr(value[:16]))) from None


# --- compaction -------------------------------------------------------------------------------------------------

def _key_match(t: RollupTable, a: str, b: str) -> str:
    parts = []
    for col in t.key:
        if col in t.nullable_key:
            op = "IS NOT DISTINCT FROM" if _dialect() == "postgresql" else "IS"
            parts.append(f"{a}.{col} {op} {b}.{col}")
        else:
            parts.append(f"{a}.{col} = {b}.{col}")
    return " AND ".join(parts)


def _victims_sql(t: RollupTable, full: bool) -> str:
    """Ids of the rows to merge: every row of a key that has more than one row, among the keys of rows added
    since the last compaction (id > :mark), or among all keys when `full`."""
    key = ", ".join(t.key)
    if full:
        rows = f"SELECT id, count(*) OVER (PARTITION BY {key}) AS n FROM {t.name} WHERE id <= :top"
    else:
        rows = (f"SELECT t.id, count(*) OVER (PARTITION BY {', '.join('t.' + c for c in t.key)}) AS n"
                f" FROM {t.name} t JOIN (SELECT DISTINCT {key} FROM {t.name} WHERE id > :mark AND id <= :top) k"
                f" ON {_key_match(t, 't', 'k')} WHERE t.id <= :top")
    return f"SELECT id FROM ({rows}) v WHERE n > 1"


def compact(table: str | None = None, full: bool = False) -> dict[str, int]:
    """Merge the delta rows of each key into one row (sums unchanged). Commits. Returns rows removed per table.

    Incremental by default: only keys touched since the last compaction (a watermark on the row id per table).
    PostgreSQL: one statement per table, WITH moved AS (DELETE ... RETURNING) INSERT ... SELECT ... GROUP BY, so
    the rows summed are exactly the rows deleted; SQLite: INSERT then DELETE of the same ids in one transaction.
    """
    names = [table] if table else list(TABLES)
    for name in names:
        if name not in TABLES:
            raise ValidationError(gettext("未知的汇总表 %(name)s：%(value)s", name=repr(name), value=', '.join(TABLES)))
    removed: dict[str, int] = {}
    for name in names:
        try:
            _lock()
            removed[name] = _compact_one(TABLES[name], full)
            db.session.commit()
        except Exception:
            db.session.rollback()
            raise
    return removed


def _compact_one(t: RollupTable, full: bool) -> int:
    state = f"compact_{t.name.removeprefix('rollup_')}"
    mark = _get_state(state)
    top = db.session.scalar(text(f"SELECT max(id) FROM {t.name}"))
    if top is None or (top <= mark and not full):
        return 0
    full = full or mark == 0  # the first run looks at every row anyway: one window over the table is cheaper
    params = {"mark": mark, "top": top}
    key, sums = ", ".join(t.key), ", ".join(t.sums)
    summed = ", ".join(f"sum({c})" for c in t.sums)
    if _dialect() == "postgresql":
        row = db.session.execute(text(
            f"WITH moved AS (DELETE FROM {t.name} WHERE id IN ({_victims_sql(t, full)}) RETURNING {key}, {sums}),"
            f" merged AS (INSERT INTO {t.name} ({key}, {sums}) SELECT {key}, {summed} FROM moved GROUP BY {key}"
            " RETURNING 1)"
            " SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM merged)"), params).first()
        deleted, inserted = row
    else:
        inserted = db.session.execute(text(
            f"INSERT INTO {t.name} ({key}, {sums}) SELECT {key}, {summed} FROM {t.name}"
            f" WHERE id IN ({_victims_sql(t, full)}) GROUP BY {key}"), params).rowcount
        deleted = db.session.execute(text(
            f"DELETE FROM {t.name} WHERE id IN ({_victims_sql(t, full)})"), params).rowcount
    # Next time, rows above `top` are new: deltas added meanwhile, and the rows merged now (seen once more, cheap).
    _set_state(state, top)
    return int(deleted) - int(inserted)
