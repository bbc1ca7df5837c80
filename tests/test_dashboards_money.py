"""Money flows dashboard (资金流向): figures against hand-computed answers, scope, permissions, CSV."""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from app.analytics.models import MoneyDaily
from dashboards.queries import money as q

BOTH = pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
MARCH = (date(2026, 3, 1), date(2026, 3, 31))


@pytest.fixture
def money_rows(app, db, f):
    """Platform flows in March 2026 (and one in April), and one flow in each of two branches (agents M1 and M2)."""
    p, other = f.agent("M1"), f.agent("M2")
    rows = [
        (0, date(2026, 3, 2), "commission_accrued", 100, 1),
        (0, date(2026, 3, 2), "commission_accrued", 50, 1),  # a second delta row of the same key
        (0, date(2026, 3, 3), "revenue", 1000, 2),
        (0, date(2026, 3, 8), "withdrawal_paid", 5000, 1),  # a Sunday: still the week of Mon Mar 2
        (0, date(2026, 3, 9), "fees", 30, 3),
        (0, date(2026, 3, 31), "refunds", 700, 1),
        (0, date(2026, 4, 1), "revenue", 999, 1),  # outside March
        (p.id, date(2026, 3, 2), "commission_accrued", 40, 1),
        (other.id, date(2026, 3, 2), "withdrawal_paid", 12345, 1),
    ]
    for scope, day, flow, amount, count in rows:
        db.session.add(MoneyDaily(scope_id=scope, day=day, flow=flow, amount=amount, count=count))
    db.session.commit()
    return {"P": p, "Q": other}


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
        "supplier_cost": 0, "refunds": 700, "shop_profit_accrued": 0, "shop_profit_reversed": 0}]


@BOTH
def test_branch_scope_sees_only_its_flows(money_rows):
    assert _nonzero(q.totals(money_rows["P"].id, *MARCH)) == {"commission_accrued": (40, 1)}
    assert _nonzero(q.totals(money_rows["Q"].id, *MARCH)) == {"withdrawal_paid": (12345, 1)}
    assert _nonzero(q.totals(4242, *MARCH)) == {}


# ------------------------------------------------------------------------------------------ the dashboard itself
def _money(client, **kw):
    from tests.dashboards_helpers import call_callback, filters, outputs

    return outputs(call_callback(client, "money", "mf-kpis.children", filters(*MARCH, **kw)))


def test_manager_sees_every_figure(app, f, money_rows):
    from tests.dashboards_helpers import kpi_values, login_as

    client, _user = login_as(app, f, "Manager")
    out = _money(client, granularity="week")
    kpis = kpi_values(out["mf-kpis.children"])
    assert kpis["kpi-commission_accrued"] == "¥1.50" and kpis["kpi-withdrawal_paid"] == "¥50.00"
    assert kpis["kpi-revenue"] == "¥10.00" and kpis["kpi-fees"] == "¥0.30" and kpis["kpi-refunds"] == "¥7.00"
    assert kpis["kpi-supplier_cost"] == "¥0.00" and len(kpis) == len(q.FLOWS) == 12
    totals = {r["flow"]: (r["amount"], r["count"]) for r in out["mf-totals.data"]}
    assert totals["佣金计提"] == ("¥1.50", 2) and totals["提现到账"] == ("¥50.00", 1) and totals["退款"] == ("¥7.00", 1)
    weeks = {r["period"]: r for r in out["mf-periods.data"]}
    assert list(weeks) == ["2026-02-23 周", "2026-03-02 周", "2026-03-09 周", "2026-03-16 周", "2026-03-23 周",
                           "2026-03-30 周"]
    assert weeks["2026-03-02 周"]["commission_accrued"] == "¥1.50" and weeks["2026-03-02 周"]["revenue"] == "¥10.00"
    assert weeks["2026-03-09 周"]["fees"] == "¥0.30" and weeks["2026-03-30 周"]["refunds"] == "¥7.00"
    commissions = {t["name"]: list(t["y"]) for t in out["mf-commissions.figure"]["data"]}
    assert commissions["佣金计提"] == [0.0, 1.5, 0.0, 0.0, 0.0, 0.0]
    monthly = _money(client, granularity="month")
    assert [r["period"] for r in monthly["mf-periods.data"]] == ["2026-03"]


def test_agent_sees_only_its_branch_even_when_asking_for_another(app, f, money_rows):
    from tests.dashboards_helpers import agent_client, call_callback, filters, kpi_values, texts

    client = agent_client(app, f, money_rows["P"])
    out = _money(client)
    kpis = kpi_values(out["mf-kpis.children"])
    assert kpis["kpi-commission_accrued"] == "¥0.40"
    assert all(v == "¥0.00" for k, v in kpis.items() if k != "kpi-commission_accrued")
    assert "123.45" not in texts(out) and "¥10.00" not in texts(out)
    refused = call_callback(client, "money", "mf-kpis.children", filters(*MARCH, branch=money_rows["Q"].id))
    assert refused.status_code == 403


def test_access_anonymous_and_support(app, f):
    from tests.dashboards_helpers import login_as

    anonymous = app.test_client()
    for url in ("/analytics/money/", "/dashboards/money/", "/dashboards/money/_dash-layout"):
        r = anonymous.get(url)
        assert r.status_code == 302 and "/login/" in r.headers["Location"], url
    support, _user = login_as(app, f, "Support")
    for url in ("/analytics/money/", "/dashboards/money/", "/dashboards/money/_dash-layout"):
        assert support.get(url).status_code == 403, url


def test_csv_export_of_the_totals_table(app, f, money_rows):
    from tests.dashboards_helpers import call_callback, login_as, outputs

    client, _user = login_as(app, f, "Manager")
    data = _money(client)["mf-totals.data"]
    columns = [{"id": k, "name": n} for k, n in (("flow", "资金流向"), ("amount", "金额"), ("count", "笔数"))]
    download = outputs(call_callback(client, "money", "mf-totals-download.data", {
        "mf-totals-export.n_clicks": 1, "mf-totals.data": data, "mf-totals.columns": columns},
        changed=["mf-totals-export.n_clicks"]))["mf-totals-download.data"]
    assert download["filename"] == "money-flows-totals.csv"
    lines = download["content"].lstrip("\ufeff").splitlines()
    assert lines[0] == "资金流向,金额,笔数" and "佣金计提,¥1.50,2" in lines and '提现到账,¥50.00,1' in lines
    assert len(lines) == 1 + len(q.FLOWS) == 13


def test_real_purchase_commission_and_sale_flows(app, f, monkeypatch):
    """A wallet purchase with a 5% direct commission, folded from the ledger: each branch sees its own flows."""
    from app.analytics import service as rollups
    from app.clock import to_local, utcnow
    from app.orders import service as orders
    from tests.dashboards_helpers import agent_client, call_callback, filters, kpi_values, login_as, outputs

    monkeypatch.setitem(app.config, "ROLLUP_MONEY_LAG_SECONDS", 0)
    tier = f.tier("金牌", discount_bp=9500, direct_commission_bp=500)
    a = f.agent("RA", tier_obj=tier, balance=100000)
    b = f.agent("RB", parent=a, tier_obj=tier, balance=100000)
    x = f.agent("RX", tier_obj=tier, balance=100000)
    product = f.product(face_price=1000, cost=800, secrets=5)
    orders.place_wallet_order(b.id, product.id, 2)  # 1900 paid: A earns 95; cost 1600; margin 300
    assert rollups.fold_money_all() > 0
    today = to_local(utcnow()).date()
    week = filters(today - timedelta(days=6), today)

    def kpis(client):
        out = outputs(call_callback(client, "money", "mf-kpis.children", week))
        return {k: v for k, v in kpi_values(out["mf-kpis.children"]).items() if v != "¥0.00"}

    assert kpis(login_as(app, f, "Manager")[0]) == {"kpi-commission_accrued": "¥0.95", "kpi-revenue": "¥3.00",
                                                    "kpi-supplier_cost": "¥16.00"}
    assert kpis(agent_client(app, f, a)) == {"kpi-commission_accrued": "¥0.95", "kpi-revenue": "¥3.00",
                                             "kpi-supplier_cost": "¥16.00"}
    assert kpis(agent_client(app, f, b)) == {"kpi-revenue": "¥3.00", "kpi-supplier_cost": "¥16.00"}  # not A's pay
    assert kpis(agent_client(app, f, x)) == {}
