"""Dashboards inside the app (mounting, permissions, scope, CSV) and the GMV / Products dashboards' figures.

Figures are checked against hand-computed answers on small known data sets: rollup rows inserted directly for
the pure query tests, and real wallet purchases (the rollups filled by delivery) for the end-to-end ones.
"""
from __future__ import annotations

import csv
import io
from datetime import date

import pytest

from app.analytics.models import PLATFORM_SCOPE
from tests.dashboards_helpers import (
    add_rollups,
    agent_client,
    call_callback,
    filters,
    kpi_values,
    login_as,
    outputs,
    sales_row,
    texts,
)

D1, D2, D3 = date(2026, 3, 2), date(2026, 3, 3), date(2026, 3, 10)  # D1 is a Monday


# ---------------------------------------------------------------------------------------------- access and mounting
def test_anonymous_is_sent_to_login_for_page_and_every_dash_route(client):
    for url in ("/analytics/gmv/", "/dashboards/gmv/", "/dashboards/gmv/_dash-layout",
                "/dashboards/gmv/_dash-dependencies"):
        r = client.get(url)
        assert r.status_code == 302, url
        assert "/login/" in r.headers["Location"] and "next=" in r.headers["Location"], url
    r = client.post("/dashboards/gmv/_dash-update-component", json={})
    assert r.status_code == 302 and "/login/" in r.headers["Location"]


def test_support_gets_403_everywhere(app, f):
    client, _user = login_as(app, f, "Support")
    for url in ("/analytics/gmv/", "/dashboards/gmv/", "/dashboards/gmv/_dash-layout", "/analytics/products/",
                "/dashboards/products/"):
        assert client.get(url).status_code == 403, url
    r = call_callback(login_as(app, f, "Manager")[0], "gmv", "gmv-kpis.children", filters(D1, D3))
    assert r.status_code == 200  # the same callback works for a manager...
    payload_client = client
    r = payload_client.post("/dashboards/gmv/_dash-update-component", json={"output": "gmv-note.children"})
    assert r.status_code == 403  # ...and not for Support


def test_agent_sees_gmv_but_gets_403_on_products(app, f):
    a = f.agent()
    client = agent_client(app, f, a)
    assert client.get("/analytics/gmv/").status_code == 200
    assert client.get("/dashboards/gmv/").status_code == 200
    assert client.get("/analytics/products/").status_code == 403
    assert client.get("/dashboards/products/_dash-layout").status_code == 403


def test_manager_page_has_navigation_menu_and_embedded_dash_app(app, f):
    client, _user = login_as(app, f, "Manager")
    page = client.get("/analytics/gmv/").get_data(as_text=True)
    assert "数据看板" in page and "GMV 概览" in page and "商品与库存" in page  # menu category and entries
    assert 'src="/dashboards/gmv/"' in page and "navbar" in page
    dash_page = client.get("/dashboards/gmv/")
    assert dash_page.status_code == 200 and 'lang="zh-CN"' in dash_page.get_data(as_text=True)
    layout = texts(client.get("/dashboards/gmv/_dash-layout").get_json())
    assert "近30天" in layout and "本月" in layout and "导出 CSV" in layout


def test_admin_sees_every_dashboard_and_labels_follow_the_language(app, f):
    import flask_babel

    client, _user = login_as(app, f, "Admin")
    for slug in ("gmv", "products"):
        assert client.get(f"/analytics/{slug}/").status_code == 200
        assert client.get(f"/dashboards/{slug}/_dash-layout").status_code == 200
    flask_babel.refresh()
    assert client.get("/lang/en").status_code == 302
    flask_babel.refresh()
    layout = texts(client.get("/dashboards/gmv/_dash-layout").get_json())
    assert "Last 30 days" in layout and "Export CSV" in layout and "近30天" not in layout
    flask_babel.refresh()
    page = client.get("/analytics/products/").get_data(as_text=True)
    assert "Dashboards" in page and "Products and stock" in page


def test_dash_posts_carry_the_csrf_cookie_when_csrf_is_on(app, f):
    """With CSRFProtect on (production), the Dash page sets _csrf_token and a POST with X-CSRFToken passes."""
    app.config["WTF_CSRF_ENABLED"] = True
    try:
        client, _user = login_as_csrf(app, f)
        r = client.get("/dashboards/gmv/")
        cookie = client.get_cookie("_csrf_token", path="/dashboards/")
        assert r.status_code == 200 and cookie is not None
        without = call_callback(client, "gmv", "gmv-note.children", filters(D1, D3))
        assert without.status_code == 400
        with_token = call_callback(client, "gmv", "gmv-note.children", filters(D1, D3),
                                   headers={"X-CSRFToken": cookie.value})
        assert with_token.status_code == 200
    finally:
        app.config["WTF_CSRF_ENABLED"] = False


def login_as_csrf(app, f):
    """Log in through the real form with its CSRF token."""
    import re

    user = f.user(f.unique("manager"), role="Manager")
    client = app.test_client()
    page = client.get("/login/").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    r = client.post("/login/", data={"username": user.username, "password": f.PASSWORD, "csrf_token": token})
    assert r.status_code == 302
    return client, user


# ------------------------------------------------------------------------------------------------------ scope
@pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
def test_dashboard_scope_staff_agent_and_refusals(app, f):
    from flask import g

    from app.errors import Forbidden, ValidationError
    from app.scope import dashboard_scope

    top = f.agent()
    child = f.agent(parent=top)
    other = f.agent()
    manager = f.user(f.unique("mgr"), role="Manager")
    support = f.user(f.unique("sup"), role="Support")
    with app.test_request_context():
        g.user = manager
        assert dashboard_scope() == PLATFORM_SCOPE
        assert dashboard_scope(other.id) == other.id
        with pytest.raises(ValidationError):
            dashboard_scope(99_999_999_999)
        g.user = top.user
        assert dashboard_scope() == top.id
        assert dashboard_scope(child.id) == child.id
        with pytest.raises(Forbidden):
            dashboard_scope(other.id)
    with app.test_request_context():
        g.user = child.user
        with pytest.raises(Forbidden):
            dashboard_scope(top.id)  # its upline is not its branch
    with app.test_request_context():
        g.user = support
        with pytest.raises(Forbidden):
            dashboard_scope()


def test_agent_branch_from_the_browser_is_refused_not_trusted(app, f):
    top = f.agent()
    other = f.agent()
    add_rollups([sales_row(D1, scope_id=top.id, gmv=11100, cost=100),
                 sales_row(D1, scope_id=other.id, gmv=99900, cost=100)])
    client = agent_client(app, f, top)
    mine = outputs(call_callback(client, "gmv", "gmv-kpis.children", filters(D1, D3)))
    assert "¥111.00" in str(mine["gmv-kpis.children"]) and "¥999.00" not in str(mine)
    r = call_callback(client, "gmv", "gmv-kpis.children", filters(D1, D3, branch=other.id))
    assert r.status_code == 403 and "¥999.00" not in r.get_data(as_text=True)


# ------------------------------------------------------------------------------------ GMV: a small known data set
def known_sales(f) -> dict:
    """Rollup rows with a hand-computed answer (see the asserts). Range D1..D3 = 2026-03-02..10 (9 days); the
    previous period of equal length is 02-21..03-01. One key is split over two rows and one row is a refund."""
    from app.catalog import service as catalog

    t1, t2 = f.tier(name=f.unique("金牌")), f.tier(name=f.unique("银牌"))
    p1, p2 = f.product(name=f.unique("点卡A")), f.product(name=f.unique("话费B"))
    s1, s2 = catalog.create_supplier(f.unique("供应商甲"), 0), catalog.create_supplier(f.unique("供应商乙"), 0)
    from app.extensions import db

    db.session.commit()
    one = {"product_id": p1.id, "category_id": p1.category_id, "supplier_id": s1.id, "tier_id": t1.id}
    two = {"product_id": p2.id, "category_id": p2.category_id, "supplier_id": s2.id, "tier_id": None,
           "channel": "sandbox"}
    add_rollups([
        sales_row(D1, **one, orders=2, quantity=3, gmv=30000, cost=24000),
        sales_row(D1, **one, orders=1, quantity=1, gmv=10000, cost=8000),  # same key, another delta row
        sales_row(D1, **one, orders=-1, quantity=-1, gmv=-10000, cost=-8000),  # a refund on the delivery day
        sales_row(D2, **two, orders=1, quantity=1, gmv=5000, cost=3000),
        sales_row(D3, **{**one, "tier_id": t2.id}, channel="alipay", orders=1, quantity=2, gmv=20000, cost=16000),
        sales_row(date(2026, 2, 25), **one, orders=4, quantity=4, gmv=40000, cost=30000),  # previous period
        sales_row(date(2026, 2, 20), **one, orders=7, quantity=7, gmv=77700, cost=100),  # before both
        sales_row(date(2026, 3, 11), **one, orders=9, quantity=9, gmv=88800, cost=100),  # after the range
        sales_row(D1, **one, scope_id=4242, orders=5, quantity=5, gmv=66600, cost=100),  # another scope
    ])
    return {"t1": t1, "t2": t2, "p1": p1, "p2": p2, "s1": s1, "s2": s2}


@pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
def test_gmv_queries_equal_hand_computed_figures(app, f):
    from dashboards.queries import gmv as q

    k = known_sales(f)
    total = q.totals(PLATFORM_SCOPE, D1, D3)
    assert total == {"orders": 4, "quantity": 6, "gmv": 55000, "cost": 43000, "fees": 0, "margin": 12000,
                     "aov": 13750, "margin_bp": 2181}  # 55000 // 4; 12000 * 10000 // 55000
    cmp = q.comparison(PLATFORM_SCOPE, D1, D3)
    assert (cmp["previous_start"], cmp["previous_end"]) == (date(2026, 2, 21), date(2026, 3, 1))
    assert cmp["previous"]["gmv"] == 40000 and cmp["previous"]["aov"] == 10000
    assert cmp["changes"]["gmv"] == {"delta": 15000, "pct": 37.5}
    assert cmp["changes"]["orders"] == {"delta": 0, "pct": 0.0}
    assert cmp["changes"]["aov"] == {"delta": 3750, "pct": 37.5}
    assert cmp["changes"]["margin"] == {"delta": 2000, "pct": 20.0}

    daily = q.series(PLATFORM_SCOPE, D1, D3, "day")
    assert len(daily) == 9 and [r["gmv"] for r in daily] == [30000, 5000, 0, 0, 0, 0, 0, 0, 20000]
    weekly = q.series(PLATFORM_SCOPE, D1, D3, "week")
    assert [(r["period"], r["orders"], r["gmv"], r["margin"], r["aov"]) for r in weekly] == [
        (date(2026, 3, 2), 3, 35000, 8000, 11666), (date(2026, 3, 9), 1, 20000, 4000, 20000)]
    monthly = q.series(PLATFORM_SCOPE, date(2026, 2, 25), D3, "month")
    assert [(r["period"], r["gmv"]) for r in monthly] == [(date(2026, 2, 1), 40000), (date(2026, 3, 1), 55000)]

    def by(name):
        return [(r["label"], r["orders"], r["gmv"], r["share_bp"]) for r in q.breakdown(PLATFORM_SCOPE, D1, D3, name)]

    cat1, cat2 = k["p1"].category.name, k["p2"].category.name
    assert by("category") == [(cat1, 3, 50000, 9090), (cat2, 1, 5000, 909)]
    assert by("product") == [(k["p1"].name, 3, 50000, 9090), (k["p2"].name, 1, 5000, 909)]
    assert by("channel") == [("钱包余额", 2, 30000, 5454), ("支付宝", 1, 20000, 3636), ("沙箱支付", 1, 5000, 909)]
    assert by("tier") == [(k["t1"].name, 2, 30000, 5454), (k["t2"].name, 1, 20000, 3636), (None, 1, 5000, 909)]
    assert by("supplier") == [(k["s1"].name, 3, 50000, 9090), (k["s2"].name, 1, 5000, 909)]

    # overview() (GROUPING SETS in one scan on PostgreSQL) gives exactly what the separate queries give
    for gran in ("day", "week", "month"):
        for extra in ({}, {"category_id": k["p1"].category_id}, {"tier_id": k["t1"].id}):
            ov = q.overview(PLATFORM_SCOPE, D1, D3, gran, **extra)
            assert ov["series"] == q.series(PLATFORM_SCOPE, D1, D3, gran, **extra)
            assert {key: ov[key] for key in ("current", "previous", "changes", "previous_start", "previous_end")} \
                == q.comparison(PLATFORM_SCOPE, D1, D3, **extra)
            assert ov["breakdowns"] == {name: q.breakdown(PLATFORM_SCOPE, D1, D3, name, **extra)
                                        for name in q.BREAKDOWNS}
    assert q.overview(PLATFORM_SCOPE, D1, D3)["breakdowns"]["tier"][2]["key"] is None  # guests, not a rolled-up set

    assert q.totals(PLATFORM_SCOPE, D1, D3, category_id=k["p2"].category_id)["gmv"] == 5000
    assert q.totals(PLATFORM_SCOPE, D1, D3, tier_id=k["t2"].id)["gmv"] == 20000
    assert q.totals(4242, D1, D3)["gmv"] == 66600  # each scope reads only its own rows
    assert q.totals(PLATFORM_SCOPE, date(2025, 1, 1), date(2025, 1, 31)) == {
        "orders": 0, "quantity": 0, "gmv": 0, "cost": 0, "fees": 0, "margin": 0, "aov": 0, "margin_bp": 0}


def test_gmv_dashboard_callback_shows_the_same_figures_in_yuan(app, f):
    k = known_sales(f)
    client, _user = login_as(app, f, "Manager")
    out = outputs(call_callback(client, "gmv", "gmv-kpis.children", filters(D1, D3, granularity="week")))
    cards = kpi_values(out["gmv-kpis.children"])
    assert cards == {"kpi-gmv": "¥550.00", "kpi-orders": "4", "kpi-aov": "¥137.50", "kpi-margin": "¥120.00",
                     "kpi-margin-rate": "21.81%"}
    deltas = texts(out["gmv-kpis.children"])
    assert "+¥150.00 (+37.5%)" in deltas and "+0 (+0.0%)" in deltas and "+¥37.50 (+37.5%)" in deltas
    assert "+¥20.00 (+20.0%)" in deltas
    assert out["gmv-series.data"] == [
        {"period": "2026-03-02 周", "gmv": "¥350.00", "orders": 3, "aov": "¥116.66", "margin": "¥80.00",
         "margin_rate": "22.85%"},
        {"period": "2026-03-09 周", "gmv": "¥200.00", "orders": 1, "aov": "¥200.00", "margin": "¥40.00",
         "margin_rate": "20.00%"}]
    assert out["gmv-trend.figure"]["data"][0]["customdata"] == ["¥350.00", "¥200.00"]
    assert out["gmv-trend.figure"]["data"][0]["y"] == [350.0, 200.0]
    assert out["gmv-trend.figure"]["data"][1]["y"] == [3, 1]
    assert "Noto Sans CJK SC" in out["gmv-trend.figure"]["layout"]["font"]["family"]
    assert [(r["label"], r["gmv"], r["share"]) for r in out["gmv-by-tier-table.data"]] == [
        (k["t1"].name, "¥300.00", "54.54%"), (k["t2"].name, "¥200.00", "36.36%"), ("店铺游客", "¥50.00", "9.09%")]
    assert [(r["label"], r["orders"]) for r in out["gmv-by-supplier-table.data"]] == [
        (k["s1"].name, 3), (k["s2"].name, 1)]
    pie = out["gmv-by-channel.figure"]["data"][0]
    assert pie["labels"] == ["钱包余额", "支付宝", "沙箱支付"] and pie["values"] == [300.0, 200.0, 50.0]

    # filters: one category; a branch (scope 4242 is not an agent here: refused as a 4xx, never a 500)
    cat2 = outputs(call_callback(client, "gmv", "gmv-kpis.children",
                                 filters(D1, D3, category=k["p2"].category_id)))
    assert kpi_values(cat2["gmv-kpis.children"])["kpi-gmv"] == "¥50.00"
    assert call_callback(client, "gmv", "gmv-kpis.children", filters(D1, D3, branch=4242)).status_code == 400
    assert call_callback(client, "gmv", "gmv-kpis.children", filters(D1, D3, branch="x")).status_code == 400
    bad = call_callback(client, "gmv", "gmv-kpis.children", {**filters(D1, D3), "f-range.start_date": "2026-13-01"})
    assert bad.status_code == 400


def test_csv_export_contains_the_table_rows(app, f):
    known_sales(f)
    client, _user = login_as(app, f, "Manager")
    out = outputs(call_callback(client, "gmv", "gmv-by-product-table.data", filters(D1, D3)))
    rows = out["gmv-by-product-table.data"]
    assert len(rows) == 2
    columns = client.get("/dashboards/gmv/_dash-layout").get_json()  # the table's columns as the page has them
    table = _find(columns, "gmv-by-product-table")
    r = call_callback(client, "gmv", "gmv-by-product-table-download.data", {
        "gmv-by-product-table-export.n_clicks": 1, "gmv-by-product-table.data": rows,
        "gmv-by-product-table.columns": table["props"]["columns"]})
    download = outputs(r)["gmv-by-product-table-download.data"]
    assert download["filename"] == "gmv-by-product.csv"
    parsed = list(csv.reader(io.StringIO(download["content"].lstrip("\ufeff"))))
    assert parsed[0] == ["商品", "GMV", "订单数", "客单价", "毛利", "毛利率", "GMV 占比"]
    keys = ["label", "gmv", "orders", "aov", "margin", "margin_rate", "share"]
    assert parsed[1:] == [[str(row[key]) for key in keys] for row in rows]
    assert parsed[1][1:3] == ["¥500.00", "3"] and parsed[2][1:3] == ["¥50.00", "1"]
    assert download["content"].startswith("\ufeff")  # Excel opens the UTF-8 Chinese correctly


def _find(component, component_id: str):
    if isinstance(component, dict):
        if component.get("props", {}).get("id") == component_id:
            return component
        for value in component.get("props", {}).values():
            found = _find(value, component_id)
            if found is not None:
                return found
    elif isinstance(component, list):
        for item in component:
            found = _find(item, component_id)
            if found is not None:
                return found
    return None


# ------------------------------------------------------------------ end to end: real purchases fill the rollups
def test_real_purchases_show_up_scoped_per_branch(app, f):
    """Wallet purchases through the order service (delivery writes the rollup deltas); each viewer sees its scope."""
    from app.analytics import service as rollups
    from app.clock import business_today as today
    from app.orders import service as orders

    tier = f.tier(discount_bp=10000)
    top = f.agent(tier_obj=tier, balance=100000)
    child = f.agent(parent=top, tier_obj=tier, balance=100000)
    other = f.agent(tier_obj=tier, balance=100000)
    p1 = f.product(face_price=10000, cost=8000, secrets=5)
    p2 = f.product(face_price=5000, cost=3000, secrets=5)
    orders.place_wallet_order(child.id, p1.id, 2)  # 200.00, margin 40.00: counts for child, top and platform
    orders.place_wallet_order(top.id, p2.id, 1)  # 50.00, margin 20.00: top and platform
    orders.place_wallet_order(other.id, p1.id, 1)  # 100.00, margin 20.00: other and platform
    day = today()
    week = filters(date.fromordinal(day.toordinal() - 6), day)

    def gmv_of(client, **extra):
        r = call_callback(client, "gmv", "gmv-kpis.children", {**week, **extra})
        return kpi_values(outputs(r)["gmv-kpis.children"]) if r.status_code == 200 else r.status_code

    manager, _user = login_as(app, f, "Manager")
    assert gmv_of(manager) == {"kpi-gmv": "¥350.00", "kpi-orders": "3", "kpi-aov": "¥116.66",
                               "kpi-margin": "¥80.00", "kpi-margin-rate": "22.85%"}
    assert gmv_of(manager, **{"f-branch.value": top.id})["kpi-gmv"] == "¥250.00"
    top_client = agent_client(app, f, top)
    assert gmv_of(top_client) == {"kpi-gmv": "¥250.00", "kpi-orders": "2", "kpi-aov": "¥125.00",
                                  "kpi-margin": "¥60.00", "kpi-margin-rate": "24.00%"}
    assert gmv_of(top_client, **{"f-branch.value": child.id})["kpi-gmv"] == "¥200.00"
    assert gmv_of(top_client, **{"f-branch.value": other.id}) == 403
    child_client = agent_client(app, f, child)
    assert gmv_of(child_client)["kpi-gmv"] == "¥200.00"
    assert gmv_of(child_client, **{"f-branch.value": top.id}) == 403  # not its upline either

    # Nothing of the other branch anywhere in the top agent's page: products, breakdowns, trend.
    page = texts(outputs(call_callback(top_client, "gmv", "gmv-kpis.children", week)))
    assert "¥350.00" not in page and "¥100.00" not in page
    # The branch picker offers the agent's own downline only.
    picked = outputs(call_callback(top_client, "gmv", "f-branch.options", {"f-branch.search_value": ""}))
    assert {o["value"] for o in picked["f-branch.options"]} == {top.id, child.id}
    assert call_callback(top_client, "gmv", "f-branch.options", {"f-branch.value": other.id}).status_code == 403

    # Rebuilt from the orders, the rollups give the same figures (incremental == rebuild).
    rollups.rebuild(date.fromordinal(day.toordinal() - 1), day)
    assert gmv_of(manager)["kpi-gmv"] == "¥350.00" and gmv_of(top_client)["kpi-gmv"] == "¥250.00"


# ---------------------------------------------------------------------------------------- products and stock
def test_products_dashboard_ranking_stock_days_upstream_and_alerts(app, f):
    from datetime import datetime, timedelta

    from app.catalog import cards
    from app.catalog.models import StockAlert, Supplier
    from app.clock import business_today as today
    from app.extensions import db
    from app.suppliers.models import SupplierProduct

    day = today()
    p1 = f.product(name=f.unique("点卡一"), secrets=10, low_stock_threshold=5)
    p2 = f.product(name=f.unique("点卡二"), secrets=3, low_stock_threshold=5)
    p3 = f.product(name=f.unique("直充有货"), kind="direct")
    p4 = f.product(name=f.unique("直充无货"), kind="direct")
    upstream = Supplier(name=f.unique("上游"), protocol="simulator", endpoint="http://127.0.0.1:9", active=True)
    db.session.add(upstream)
    db.session.flush()
    db.session.add(SupplierProduct(supplier_id=upstream.id, product_id=p3.id, upstream_code="X1", cost=900))
    db.session.add(StockAlert(product_id=p1.id, available=1, threshold=5, resolved_at=datetime(2026, 1, 1)))
    db.session.commit()
    cards.scan_low_stock()  # raises the alert of p2 (3 < 5)

    def row(days_ago, product, **kw):
        return sales_row(day - timedelta(days=days_ago), product_id=product.id, category_id=product.category_id,
                         **kw)

    add_rollups([
        row(0, p1, quantity=4, orders=2, gmv=40000, cost=32000),
        row(6, p1, quantity=10, orders=5, gmv=100000, cost=80000),  # still inside the last 7 days
        row(7, p1, quantity=100, orders=50, gmv=1000000, cost=800000),  # outside the rate window
        row(20, p2, quantity=1, orders=1, gmv=5000, cost=3000),
        row(0, p2, quantity=999, orders=999, gmv=999000, cost=0, scope_id=777),  # another scope
    ])
    client, _user = login_as(app, f, "Manager")
    week = outputs(call_callback(client, "products", "pr-kpis.children", filters(day - timedelta(days=6), day)))
    assert kpi_values(week["pr-kpis.children"]) == {
        "kpi-products": "1", "kpi-units": "14", "kpi-gmv": "¥1,400.00", "kpi-low": "1", "kpi-no-upstream": "1",
        "kpi-alerts": "1", "kpi-delivery-p95": "—"}  # no delivery-time rollup rows here (tests/test_workbench.py)
    assert week["pr-delivery.data"] == []
    assert [(r["rank"], r["product"], r["quantity"], r["gmv"]) for r in week["pr-ranking.data"]] == [
        (1, p1.name, 14, "¥1,400.00")]
    month = outputs(call_callback(client, "products", "pr-ranking.data", filters(day - timedelta(days=29), day)))
    assert [(r["product"], r["quantity"], r["orders"], r["gmv"], r["margin"], r["kind"])
            for r in month["pr-ranking.data"]] == [
        (p1.name, 114, 57, "¥11,400.00", "¥2,280.00", "卡密"), (p2.name, 1, 1, "¥50.00", "¥20.00", "卡密")]
    # p1: 10 left, 14 sold in 7 days -> 2 a day -> 5 days; p2: 3 left (< 5), nothing sold -> no estimate
    assert [(r["product"], r["available"], r["threshold"], r["sold_7d"], r["days_left"], r["status"])
            for r in week["pr-stock.data"]] == [(p1.name, 10, 5, 14, 5, "正常"), (p2.name, 3, 5, 0, "—", "需补货")]
    assert [(r["product"], r["status"], r["mappings"], r["upstream_stock"]) for r in week["pr-upstream.data"]] == [
        (p3.name, "可售", 1, "不限"), (p4.name, "无可用货源", 0, "—")]
    assert [(r["product"], r["available"], r["threshold"]) for r in week["pr-alerts.data"]] == [(p2.name, 3, 5)]
    assert week["pr-days.figure"]["data"][0]["y"] == [5]

    # Category filter narrows ranking, stock and alerts alike.
    only_p2 = outputs(call_callback(client, "products", "pr-kpis.children",
                                    filters(day - timedelta(days=29), day, category=p2.category_id)))
    assert [r["product"] for r in only_p2["pr-ranking.data"]] == [p2.name]
    assert [r["product"] for r in only_p2["pr-stock.data"]] == [p2.name]
    assert only_p2["pr-upstream.data"] == [] and len(only_p2["pr-alerts.data"]) == 1


def test_date_presets_and_buckets():
    from dashboards.components import preset_range
    from dashboards.queries.periods import bucket, periods

    today_ = date(2026, 3, 10)
    assert preset_range("7d", today_) == (date(2026, 3, 4), today_)
    assert preset_range("30d", today_) == (date(2026, 2, 9), today_)
    assert preset_range("month", today_) == (date(2026, 3, 1), today_)
    assert preset_range("year", today_) == (date(2025, 3, 11), today_)
    assert bucket(date(2026, 3, 8), "week") == date(2026, 3, 2)  # a Sunday belongs to the week of Monday the 2nd
    assert periods(date(2025, 12, 30), date(2026, 2, 1), "month") == [date(2025, 12, 1), date(2026, 1, 1),
                                                                      date(2026, 2, 1)]
