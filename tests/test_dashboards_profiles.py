"""User profiles dashboard (用户画像): figures against hand-computed answers, scope, permissions, CSV."""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from app.analytics.models import ProfileDaily
from dashboards.queries import profiles as q

BOTH = pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
RANGE = (date(2026, 8, 1), date(2026, 9, 30))


def _order(db, scope: int, day: date, category_id: int, gmv: int, age: str, gender: str, province: str,
           hour: int, buyer_type: str, sign: int = 1) -> None:
    """The rows the analytics service writes for one delivered (sign=1) or refunded (sign=-1) order."""
    for dimension, value in (("age_band", age), ("gender", gender), ("province", province), ("hour", f"{hour:02d}"),
                             ("buyer_type", buyer_type)):
        db.session.add(ProfileDaily(scope_id=scope, day=day, dimension=dimension, value=value,
                                    category_id=category_id, orders=sign, gmv=sign * gmv))


@pytest.fixture
def profile_rows(app, db, f):
    """Platform orders (scope 0):
    o1 Tue 2026-09-01 话费 ¥30.00 18-24 F 广东省 09h first      o2 Tue 09-01 话费 ¥10.00 18-24 M 广东省 09h returning
    o3 Wed 09-02 游戏 ¥50.00 25-34 M 浙江省 21h first           o4 Sat 08-15 话费 ¥5.00 18-24 F 广东省 09h returning
    o5 Thu 09-03 游戏 ¥2.00 unknown × 3, 00h first             o6 Wed 09-02 游戏 ¥25.00 25-34 F 浙江省 21h, refunded
    and one order in each of two branches (agents P and Q, with their own scope ids) only.
    """
    phone, game = f.category("话费"), f.category("游戏")
    p, other = f.agent("P"), f.agent("Q")
    rows = [
        (0, date(2026, 9, 1), phone.id, 3000, "18-24", "F", "广东省", 9, "first"),
        (0, date(2026, 9, 1), phone.id, 1000, "18-24", "M", "广东省", 9, "returning"),
        (0, date(2026, 9, 2), game.id, 5000, "25-34", "M", "浙江省", 21, "first"),
        (0, date(2026, 8, 15), phone.id, 500, "18-24", "F", "广东省", 9, "returning"),
        (0, date(2026, 9, 3), game.id, 200, "unknown", "unknown", "unknown", 0, "first"),
        (0, date(2026, 9, 2), game.id, 2500, "25-34", "F", "浙江省", 21, "returning"),
        (p.id, date(2026, 9, 1), phone.id, 9999, "45-54", "M", "北京市", 9, "first"),
        (other.id, date(2026, 9, 1), game.id, 8888, "35-44", "F", "上海市", 10, "first"),
    ]
    for row in rows:
        _order(db, *row)
    _order(db, 0, date(2026, 9, 2), game.id, 2500, "25-34", "F", "浙江省", 21, "returning", sign=-1)  # o6 refunded
    db.session.commit()
    return {"phone": phone, "game": game, "P": p, "Q": other}


def _vals(rows):
    return [(r["value"], r["orders"], r["gmv"]) for r in rows]


@BOTH
def test_orders_and_gmv_by_age_gender_province(profile_rows):
    assert _vals(q.by_dimension(0, "age_band", *RANGE)) == [
        ("18-24", 3, 4500), ("25-34", 1, 5000), ("unknown", 1, 200)]
    assert _vals(q.by_dimension(0, "gender", *RANGE)) == [("F", 2, 3500), ("M", 2, 6000), ("unknown", 1, 200)]
    assert _vals(q.by_dimension(0, "province", *RANGE)) == [
        ("浙江省", 1, 5000), ("广东省", 3, 4500), ("unknown", 1, 200)]  # by GMV, largest first
    assert _vals(q.by_dimension(0, "age_band", *RANGE, category_id=profile_rows["phone"].id)) == [
        ("18-24", 3, 4500)]
    assert _vals(q.by_dimension(0, "age_band", date(2026, 9, 1), date(2026, 9, 30))) == [
        ("18-24", 2, 4000), ("25-34", 1, 5000), ("unknown", 1, 200)]


@BOTH
def test_hour_weekday_and_first_vs_returning(profile_rows):
    hours = q.by_dimension(0, "hour", *RANGE)
    assert [r["value"] for r in hours] == [f"{h:02d}" for h in range(24)]
    assert [(r["value"], r["orders"], r["gmv"]) for r in hours if r["orders"]] == [
        ("00", 1, 200), ("09", 3, 4500), ("21", 1, 5000)]
    weekdays = q.by_weekday(0, *RANGE)
    assert [(r["weekday"], r["orders"], r["gmv"]) for r in weekdays] == [
        (0, 0, 0), (1, 2, 4000), (2, 1, 5000), (3, 1, 200), (4, 0, 0), (5, 1, 500), (6, 0, 0)]
    assert _vals(q.by_dimension(0, "buyer_type", *RANGE)) == [("first", 3, 8200), ("returning", 2, 1500)]
    assert q.totals(0, *RANGE) == {"orders": 5, "gmv": 9700, "aov": 1940, "first_orders": 3,
                                   "returning_orders": 2}


@BOTH
def test_what_each_segment_buys_by_month(profile_rows):
    phone, game = profile_rows["phone"], profile_rows["game"]
    rows = q.segment_categories(0, "age_band", *RANGE, granularity="month")
    assert [(r["period"].isoformat(), r["value"], r["category"], r["orders"], r["gmv"]) for r in rows] == [
        ("2026-08-01", "18-24", "话费", 1, 500),
        ("2026-09-01", "18-24", "话费", 2, 4000),
        ("2026-09-01", "25-34", "游戏", 1, 5000),
        ("2026-09-01", "unknown", "游戏", 1, 200)]
    students = q.segment_categories(0, "age_band", *RANGE, granularity="month", value="18-24")
    assert [(r["period"].month, r["category_id"], r["gmv"]) for r in students] == [(8, phone.id, 500),
                                                                                   (9, phone.id, 4000)]
    by_gender = q.segment_categories(0, "gender", *RANGE, granularity="day", category_id=game.id)
    assert [(r["period"].day, r["value"], r["gmv"]) for r in by_gender] == [(2, "M", 5000), (3, "unknown", 200)]


@BOTH
def test_overview_in_one_scan_equals_the_single_queries(profile_rows):
    for scope in (0, profile_rows["P"].id):
        for args in (RANGE, (date(2026, 9, 1), date(2026, 9, 2))):
            for category in (None, profile_rows["phone"].id):
                data = q.overview(scope, *args, category_id=category)
                assert data["dimensions"] == {d: q.by_dimension(scope, d, *args, category_id=category)
                                              for d in q.DIMENSIONS}
                assert data["weekdays"] == q.by_weekday(scope, *args, category_id=category)
                assert data["totals"] == q.totals(scope, *args, category_id=category)
    assert q.overview(0, *RANGE)["totals"]["gmv"] == 9700


@BOTH
def test_branch_scope_sees_only_its_rows(profile_rows):
    p, other = profile_rows["P"].id, profile_rows["Q"].id
    assert _vals(q.by_dimension(p, "age_band", *RANGE)) == [("45-54", 1, 9999)]
    assert _vals(q.by_dimension(other, "province", *RANGE)) == [("上海市", 1, 8888)]
    assert q.totals(p, *RANGE)["gmv"] == 9999
    assert q.by_dimension(12345, "gender", *RANGE) == []


@BOTH
def test_unknown_dimension_is_refused(app):
    from app.errors import ValidationError

    with pytest.raises(ValidationError):
        q.by_dimension(0, "salary", *RANGE)


# ------------------------------------------------------------------------------------------ the dashboard itself
def _overview(client, **kw):
    from tests.dashboards_helpers import call_callback, filters, outputs

    return outputs(call_callback(client, "profiles", "pf-kpis.children", filters(*RANGE, **kw)))


def _segments(client, dimension="age_band", value=None, **kw):
    from tests.dashboards_helpers import call_callback, filters, outputs

    values = {**filters(*RANGE, **kw), "pf-dimension.value": dimension, "pf-value.value": value}
    return outputs(call_callback(client, "profiles", "pf-segments.data", values))


def test_manager_sees_every_figure(app, f, profile_rows):
    from tests.dashboards_helpers import kpi_values, login_as

    client, _user = login_as(app, f, "Manager")
    out = _overview(client)
    assert kpi_values(out["pf-kpis.children"]) == {"kpi-orders": "5", "kpi-gmv": "¥97.00", "kpi-aov": "¥19.40",
                                                   "kpi-first": "3", "kpi-returning": "2"}
    rows = [(r["dimension"], r["value"], r["orders"], r["gmv"], r["share"]) for r in out["pf-dimensions.data"]]
    assert rows[:3] == [("年龄段", "18-24", 3, "¥45.00", "46.4%"), ("年龄段", "25-34", 1, "¥50.00", "51.5%"),
                        ("年龄段", "未知", 1, "¥2.00", "2.1%")]
    assert ("性别", "女", 2, "¥35.00", "36.1%") in rows and ("首购/复购", "复购", 2, "¥15.00", "15.5%") in rows
    province = out["pf-province.figure"]["data"][0]
    assert list(province["y"]) == ["浙江省", "广东省", "未知"] and list(province["x"]) == [50.0, 45.0, 2.0]
    weekday = out["pf-weekday.figure"]["data"][0]
    assert list(weekday["x"]) == ["周一", "周二", "周三", "周四", "周五", "周六", "周日"]
    assert list(weekday["y"]) == [0.0, 40.0, 50.0, 2.0, 0.0, 5.0, 0.0]
    hours = out["pf-hour.figure"]["data"][0]
    assert len(hours["x"]) == 24 and hours["y"][9] == 45.0 and hours["y"][21] == 50.0
    # What students buy, by month: 18-24 × 话费 in August and September.
    seg = _segments(client, value="18-24", granularity="month")
    assert [(r["period"], r["value"], r["category"], r["orders"], r["gmv"]) for r in seg["pf-segments.data"]] == [
        ("2026-08", "18-24", "话费", 1, "¥5.00"), ("2026-09", "18-24", "话费", 2, "¥40.00")]
    assert [o["label"] for o in seg["pf-value.options"]] == ["18-24", "25-34", "未知"]
    bars = seg["pf-segment-chart.figure"]["data"]
    assert [(t["name"], list(t["y"])) for t in bars] == [("话费", [5.0, 40.0])]
    by_category = _overview(client, category=profile_rows["game"].id)
    assert kpi_values(by_category["pf-kpis.children"])["kpi-gmv"] == "¥52.00"


def test_agent_sees_only_its_branch_even_when_asking_for_another(app, f, profile_rows):
    from tests.dashboards_helpers import agent_client, call_callback, filters, kpi_values, texts

    client = agent_client(app, f, profile_rows["P"])
    out = _overview(client)
    assert kpi_values(out["pf-kpis.children"]) == {"kpi-orders": "1", "kpi-gmv": "¥99.99", "kpi-aov": "¥99.99",
                                                   "kpi-first": "1", "kpi-returning": "0"}
    seen = texts(out) + texts(_segments(client, dimension="province"))
    assert "北京市" in seen
    for other in ("上海市", "广东省", "浙江省", "88.88", "35-44"):
        assert other not in seen, other
    refused = call_callback(client, "profiles", "pf-kpis.children", filters(*RANGE, branch=profile_rows["Q"].id))
    assert refused.status_code == 403
    refused = call_callback(client, "profiles", "pf-segments.data",
                            {**filters(*RANGE, branch=profile_rows["Q"].id), "pf-dimension.value": "age_band"})
    assert refused.status_code == 403


def test_access_anonymous_and_support(app, f):
    from tests.dashboards_helpers import login_as

    anonymous = app.test_client()
    for url in ("/analytics/profiles/", "/dashboards/profiles/", "/dashboards/profiles/_dash-dependencies"):
        r = anonymous.get(url)
        assert r.status_code == 302 and "/login/" in r.headers["Location"], url
    support, _user = login_as(app, f, "Support")
    for url in ("/analytics/profiles/", "/dashboards/profiles/", "/dashboards/profiles/_dash-layout"):
        assert support.get(url).status_code == 403, url
    assert support.post("/dashboards/profiles/_dash-update-component", json={}).status_code == 403


def test_bad_dimension_from_the_browser_is_a_4xx(app, f, profile_rows):
    from tests.dashboards_helpers import call_callback, filters, login_as

    client, _user = login_as(app, f, "Manager")
    r = call_callback(client, "profiles", "pf-segments.data",
                      {**filters(*RANGE), "pf-dimension.value": "salary"})
    assert r.status_code == 400


def test_csv_export_of_the_segment_table(app, f, profile_rows):
    from tests.dashboards_helpers import call_callback, login_as, outputs

    client, _user = login_as(app, f, "Manager")
    data = _segments(client, value="18-24", granularity="month")["pf-segments.data"]
    columns = [{"id": k, "name": n} for k, n in (("period", "时间"), ("value", "人群"), ("category", "商品分类"),
                                                 ("orders", "订单数"), ("gmv", "GMV"))]
    download = outputs(call_callback(client, "profiles", "pf-segments-download.data", {
        "pf-segments-export.n_clicks": 1, "pf-segments.data": data, "pf-segments.columns": columns},
        changed=["pf-segments-export.n_clicks"]))["pf-segments-download.data"]
    assert download["filename"] == "segments-by-category.csv"
    assert download["content"].lstrip("\ufeff").splitlines() == [
        "时间,人群,商品分类,订单数,GMV", "2026-08,18-24,话费,1,¥5.00", "2026-09,18-24,话费,2,¥40.00"]


def test_real_purchases_fill_the_profile(app, f):
    """Wallet purchases fill rollup_profile_daily on delivery: first vs returning, hour, unknown real name."""
    from app.clock import to_local, utcnow
    from app.orders import service as orders
    from tests.dashboards_helpers import agent_client, call_callback, filters, kpi_values, login_as, outputs

    tier = f.tier("金牌", discount_bp=9500)
    a = f.agent("RA", tier_obj=tier, balance=100000)
    b = f.agent("RB", parent=a, tier_obj=tier, balance=100000)
    other = f.agent("RX", tier_obj=tier, balance=100000)
    product = f.product(face_price=1000, cost=800, secrets=10)
    hours = {to_local(orders.place_wallet_order(a.id, product.id, 1).delivered_at).hour,
             to_local(orders.place_wallet_order(a.id, product.id, 1).delivered_at).hour,
             to_local(orders.place_wallet_order(b.id, product.id, 2).delivered_at).hour}
    today = to_local(utcnow()).date()
    week = filters(today - timedelta(days=6), today)

    def overview(client):
        return outputs(call_callback(client, "profiles", "pf-kpis.children", week))

    out = overview(login_as(app, f, "Manager")[0])
    # 950 + 950 + 1900 = 3800 fen over 3 orders: AOV 1266 (floored); A's second order is its first return.
    assert kpi_values(out["pf-kpis.children"]) == {"kpi-orders": "3", "kpi-gmv": "¥38.00", "kpi-aov": "¥12.66",
                                                   "kpi-first": "2", "kpi-returning": "1"}
    rows = {(r["dimension"], r["value"]): (r["orders"], r["gmv"]) for r in out["pf-dimensions.data"]}
    assert rows[("年龄段", "未知")] == (3, "¥38.00") and rows[("首购/复购", "复购")] == (1, "¥9.50")
    assert sum(n for (dim, _v), (n, _g) in rows.items() if dim == "时段") == 3
    assert {v for (dim, v) in rows if dim == "时段"} == {f"{h}时" for h in hours}
    mine = overview(agent_client(app, f, b))
    assert kpi_values(mine["pf-kpis.children"]) == {"kpi-orders": "1", "kpi-gmv": "¥19.00", "kpi-aov": "¥19.00",
                                                    "kpi-first": "1", "kpi-returning": "0"}
    nothing = overview(agent_client(app, f, other))
    assert kpi_values(nothing["pf-kpis.children"])["kpi-orders"] == "0" and nothing["pf-dimensions.data"] == []
