"""Money flows (资金流向): commissions, withdrawals, platform revenue, supplier fees and cost, refunds.

Reads rollup_money_daily (scope_id, day, flow, amount, count), which the analytics service folds from ledger
journals; rows are deltas, so always GROUP BY. `scope_id` 0 is the platform; an agent's id is its branch (the
flows the service wrote under that scope: its agents' commissions and withdrawals, its buyers' orders).
Amounts are integer fen, summed as stored.
"""
from __future__ import annotations

from datetime import date

from sqlalchemy import func, select

from app.analytics.models import MoneyDaily
from app.extensions import db
from dashboards.queries.periods import as_date, bucket, check_range, periods

FLOWS = ("commission_accrued", "commission_settled", "commission_reversed", "withdrawal_requested",
         "withdrawal_paid", "withdrawal_fee", "revenue", "fees", "supplier_cost", "refunds", "shop_profit_accrued",
         "shop_profit_reversed")


def _daily(scope_id: int, start: date, end: date, flows: tuple[str, ...] | None):
    query = (select(MoneyDaily.day, MoneyDaily.flow, func.sum(MoneyDaily.amount), func.sum(MoneyDaily.count))
             .where(MoneyDaily.scope_id == scope_id, MoneyDaily.day >= start, MoneyDaily.day <= end)
             .group_by(MoneyDaily.day, MoneyDaily.flow))
    if flows:
        query = query.where(MoneyDaily.flow.in_(flows))
    return db.session.execute(query)


def totals(scope_id: int, start: date, end: date) -> dict[str, dict[str, int]]:
    """{flow: {amount, count}} over the range, every known flow present (zeros where nothing moved); flows the
    service writes beyond FLOWS are kept too."""
    check_range(start, end)
    out = {flow: {"amount": 0, "count": 0} for flow in FLOWS}
    query = (select(MoneyDaily.flow, func.sum(MoneyDaily.amount), func.sum(MoneyDaily.count))
             .where(MoneyDaily.scope_id == scope_id, MoneyDaily.day >= start, MoneyDaily.day <= end)
             .group_by(MoneyDaily.flow))
    for flow, amount, count in db.session.execute(query):
        slot = out.setdefault(flow, {"amount": 0, "count": 0})
        slot["amount"] += int(amount or 0)
        slot["count"] += int(count or 0)
    return out


def series(scope_id: int, start: date, end: date, granularity: str = "day",
           flows: tuple[str, ...] | None = None) -> list[dict]:
    """Per period (day / Monday of the week / 1st of the month) and flow: [{period, flow, amount, count}], every
    period of the range for every requested flow (zeros included), by period then FLOWS order."""
    check_range(start, end, granularity)
    wanted = tuple(flows) if flows else FLOWS
    cells = {(p, f): [0, 0] for p in periods(start, end, granularity) for f in wanted}
    for day, flow, amount, count in _daily(scope_id, start, end, wanted):
        cell = cells.setdefault((bucket(as_date(day), granularity), flow), [0, 0])
        cell[0] += int(amount or 0)
        cell[1] += int(count or 0)
    order = {f: i for i, f in enumerate(wanted)}
    rows = [{"period": p, "flow": f, "amount": a, "count": c} for (p, f), (a, c) in cells.items()]
    rows.sort(key=lambda r: (r["period"], order.get(r["flow"], len(order)), r["flow"]))
    return rows


def table(scope_id: int, start: date, end: date, granularity: str = "day") -> list[dict]:
    """One row per period with a column per flow (amounts in fen): [{period, <flow>: amount, ...}]."""
    rows: dict[date, dict] = {}
    for r in series(scope_id, start, end, granularity):
        rows.setdefault(r["period"], {"period": r["period"]})[r["flow"]] = r["amount"]
    return [rows[p] for p in sorted(rows)]
