"""User profiles dashboard (用户画像): figures against hand-computed answers, scope, permissions, CSV."""
from __future__ import annotations

from datetime import date

import pytest

from app.analytics.models import ProfileDaily
from dashboards.queries import profiles as q

BOTH = pytest.mark.parametrize("app", ["postgresql", "sqlite"], indirect=True)
RANGE = (date(2026, 8, 1), date(2026, 9, 30))


def _order(db, scope: int, day: date, category_id: int, gmv: int, age: str, gender: str, province: str,
           hour: int, buyer_type: str, sign: int = 1) -> None:
    """The rows the analytics service writes for one delivered (sign=1) or refunded (sign=-1) order."""
    for dimension, value in (("age_band", age), ("gender", gender), ("province", province), ("hour", str(hour)),
                             ("buyer_type", buyer_type)):
        db.session.add(ProfileDaily(scope_id=scope, day=day, dimension=dimension, value=value,
                                    category_id=category_id, orders=sign, gmv=sign * gmv))


@pytest.fixture
def profile_rows(app, db, f):
    """Platform orders (scope 0):
    o1 Tue 2026-09-01 话费 ¥30.00 18-24 F 广东省 09h first      o2 Tue 09-01 话费 ¥10.00 18-24 M 广东省 09h returning
    o3 Wed 09-02 游戏 ¥50.00 25-34 M 浙江省 21h first           o4 Sat 08-15 话费 ¥5.00 18-24 F 广东省 09h returning
    o5 Thu 09-03 游戏 ¥2.00 unknown × 3, 00h first             o6 Wed 09-02 游戏 ¥25.00 25-34 F 浙江省 21h, refunded
    and one order in each of two branches (scopes 7 and 9) only.
    """
    phone, game = f.category("话费"), f.category("游戏")
    rows = [
        (0, date(2026, 9, 1), phone.id, 3000, "18-24", "F", "广东省", 9, "first"),
        (0, date(2026, 9, 1), phone.id, 1000, "18-24", "M", "广东省", 9, "returning"),
        (0, date(2026, 9, 2), game.id, 5000, "25-34", "M", "浙江省", 21, "first"),
        (0, date(2026, 8, 15), phone.id, 500, "18-24", "F", "广东省", 9, "returning"),
        (0, date(2026, 9, 3), game.id, 200, "unknown", "unknown", "unknown", 0, "first"),
        (0, date(2026, 9, 2), game.id, 2500, "25-34", "F", "浙江省", 21, "returning"),
        (7, date(2026, 9, 1), phone.id, 9999, "45-54", "M", "北京市", 9, "first"),
        (9, date(2026, 9, 1), game.id, 8888, "35-44", "F", "上海市", 10, "first"),
    ]
    for row in rows:
        _order(db, *row)
    _order(db, 0, date(2026, 9, 2), game.id, 2500, "25-34", "F", "浙江省", 21, "returning", sign=-1)  # o6 refunded
    db.session.commit()
    return {"phone": phone, "game": game}


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
    assert [r["value"] for r in hours] == [str(h) for h in range(24)]
    assert [(r["value"], r["orders"], r["gmv"]) for r in hours if r["orders"]] == [
        ("0", 1, 200), ("9", 3, 4500), ("21", 1, 5000)]
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
def test_branch_scope_sees_only_its_rows(profile_rows):
    assert _vals(q.by_dimension(7, "age_band", *RANGE)) == [("45-54", 1, 9999)]
    assert _vals(q.by_dimension(9, "province", *RANGE)) == [("上海市", 1, 8888)]
    assert q.totals(7, *RANGE)["gmv"] == 9999
    assert q.by_dimension(12345, "gender", *RANGE) == []


@BOTH
def test_unknown_dimension_is_refused(app):
    from app.errors import ValidationError

    with pytest.raises(ValidationError):
        q.by_dimension(0, "salary", *RANGE)
