"""Money flows dashboard (资金流向): figures against hand-computed answers, scope, permissions, CSV."""
from __future__ import annotations

from datetime import date

import pytest

from app.analytics.models import MoneyDaily
from dashboards.queries import money as q

BOTH = pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
MARCH = (date(2026, 3, 1), date(2026, 3, 31))


@pytest.fixture
def money_rows(app, db):
    rows = [
        (0, date(2026, 3, 2), "commission_accrued", 100, 1),
        (0, date(2026, 3, 2), "commission_accrued", 50, 1),  # a second delta row of the same key
        (0, date(2026, 3, 3), "revenue", 1000, 2),
        (0, date(2026, 3, 8), "withdrawal_paid", 5000, 1),  # a Sunday: still the week of Mon Mar 2
        (0, date(2026, 3, 9), "fees", 30, 3),
        (0, date(2026, 3, 31), "refunds", 700, 1),
        (0, date(2026, 4, 1), "revenue", 999, 1),  # outside March
        (7, date(2026, 3, 2), "commission_accrued", 40, 1),
        (9, date(2026, 3, 2), "withdrawal_paid", 12345, 1),
    ]
    for scope, day, flow, amount, count in rows:
        db.session.add(MoneyDaily(scope_id=scope, day=day, flow=flow, amount=amount, count=count))
    db.session.commit()


def _nonzero(totals: dict) -> dict:
    return {flow: (v["amount"], v["count"]) for flow, v in totals.items() if v["amount"] or v["count"]}


@BOTH
def test_totals_per_flow(money_rows):
    totals = q.totals(0, *MARCH)
    assert set(q.FLOWS) <= set(totals)
    assert _nonzero(totals) == {"commission_accrued": (150, 2), "revenue": (1000, 2), "withdrawal_paid": (5000, 1),
                                "fees": (30, 3), "refunds": (700, 1)}
    assert _nonzero(q.totals(0, date(2026, 3, 3), date(2026, 4, 1))) == {
        "revenue": (1999, 3), "withdrawal_paid": (5000, 1), "fees": (30, 3), "refunds": (700, 1)}


@BOTH
def test_series_by_day_week_month(money_rows):
    weekly = [(r["period"].isoformat(), r["flow"], r["amount"]) for r in q.series(0, *MARCH, "week") if r["amount"]]
    assert weekly == [("2026-03-02", "commission_accrued", 150), ("2026-03-02", "withdrawal_paid", 5000),
                      ("2026-03-02", "revenue", 1000), ("2026-03-09", "fees", 30),
                      ("2026-03-30", "refunds", 700)]
    weeks = sorted({r["period"].isoformat() for r in q.series(0, *MARCH, "week")})
    assert weeks == ["2026-02-23", "2026-03-02", "2026-03-09", "2026-03-16", "2026-03-23", "2026-03-30"]
    daily = q.series(0, *MARCH, "day", flows=("revenue",))
    assert len(daily) == 31 and [(r["period"].day, r["amount"]) for r in daily if r["amount"]] == [(3, 1000)]
    assert q.table(0, *MARCH, "month") == [{
        "period": date(2026, 3, 1), "commission_accrued": 150, "commission_settled": 0, "commission_reversed": 0,
        "withdrawal_requested": 0, "withdrawal_paid": 5000, "withdrawal_fee": 0, "revenue": 1000, "fees": 30,
        "supplier_cost": 0, "refunds": 700}]


@BOTH
def test_branch_scope_sees_only_its_flows(money_rows):
    assert _nonzero(q.totals(7, *MARCH)) == {"commission_accrued": (40, 1)}
    assert _nonzero(q.totals(9, *MARCH)) == {"withdrawal_paid": (12345, 1)}
    assert _nonzero(q.totals(4242, *MARCH)) == {}
