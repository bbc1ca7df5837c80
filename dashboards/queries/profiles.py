"""User profiles (用户画像): who buys, when, and what each segment buys, from rollup_profile_daily.

Each dimension (age_band, gender, province, hour, buyer_type) partitions every delivered order once, so any one
dimension's rows sum to the scope's totals; weekday totals are read from the `hour` rows grouped by day. Rows are
deltas: always GROUP BY. `scope_id` 0 is the platform, an agent's id its branch. Filters: date range (business
days, inclusive) and category. Every function returns plain data; amounts are fen.
"""
from __future__ import annotations

from datetime import date

from sqlalchemy import case, func, select

from app.analytics.models import ProfileDaily
from app.catalog.models import Category
from app.errors import ValidationError
from app.extensions import db
from dashboards.queries.periods import as_date, bucket, check_range, weekday_of

DIMENSIONS = ("age_band", "gender", "province", "hour", "buyer_type")
AGE_BANDS = ("<18", "18-24", "25-34", "35-44", "45-54", "55+", "unknown")
GENDERS = ("F", "M", "unknown")
BUYER_TYPES = ("first", "returning")
# The base partition for totals and weekdays: every order has an hour.
_TOTALS_DIMENSION = "hour"


def _check_dimension(dimension: str) -> None:
    if dimension not in DIMENSIONS:
        raise ValidationError(f"未知的维度 {dimension!r} (unknown dimension)")


def _filtered(query, scope_id: int, dimension: str, start: date, end: date, category_id: int | None):
    query = query.where(ProfileDaily.scope_id == scope_id, ProfileDaily.dimension == dimension,
                        ProfileDaily.day >= start, ProfileDaily.day <= end)
    if category_id is not None:
        query = query.where(ProfileDaily.category_id == category_id)
    return query


def _order_key(dimension: str):
    if dimension == "age_band":
        return lambda r: (AGE_BANDS.index(r["value"]) if r["value"] in AGE_BANDS else len(AGE_BANDS), r["value"])
    if dimension == "hour":
        return lambda r: (int(r["value"]) if r["value"].isdigit() else 99, r["value"])
    if dimension in ("gender", "buyer_type"):
        fixed = GENDERS if dimension == "gender" else BUYER_TYPES
        return lambda r: (fixed.index(r["value"]) if r["value"] in fixed else len(fixed), r["value"])
    return lambda r: (-r["gmv"], -r["orders"], r["value"])  # province: largest first


def by_dimension(scope_id: int, dimension: str, start: date, end: date,
                 category_id: int | None = None) -> list[dict]:
    """Orders and GMV per value of one buyer dimension: [{value, orders, gmv}] in the dimension's natural order
    (age bands ascending, hours 0-23, provinces by GMV descending). Values whose sums are zero are left out."""
    _check_dimension(dimension)
    check_range(start, end)
    query = _filtered(select(ProfileDaily.value, func.sum(ProfileDaily.orders), func.sum(ProfileDaily.gmv)),
                      scope_id, dimension, start, end, category_id).group_by(ProfileDaily.value)
    rows = [{"value": v, "orders": int(o or 0), "gmv": int(g or 0)} for v, o, g in db.session.execute(query)]
    rows = [r for r in rows if r["orders"] or r["gmv"]]
    return sorted(_complete(dimension, rows), key=_order_key(dimension))


def _complete(dimension: str, rows: list[dict]) -> list[dict]:
    """All 24 hours ('00'..'23', as the analytics service writes them), so the chart's axis is complete."""
    if dimension != "hour":
        return rows
    seen = {int(r["value"]) for r in rows if r["value"].isdigit()}
    return rows + [{"value": f"{h:02d}", "orders": 0, "gmv": 0} for h in range(24) if h not in seen]


def totals(scope_id: int, start: date, end: date, category_id: int | None = None) -> dict:
    """{orders, gmv, aov, first_orders, returning_orders}: AOV in fen, floored."""
    hours = by_dimension(scope_id, _TOTALS_DIMENSION, start, end, category_id)
    orders, gmv = sum(r["orders"] for r in hours), sum(r["gmv"] for r in hours)
    kinds = {r["value"]: r["orders"] for r in by_dimension(scope_id, "buyer_type", start, end, category_id)}
    return {"orders": orders, "gmv": gmv, "aov": gmv // orders if orders else 0,
            "first_orders": kinds.get("first", 0), "returning_orders": kinds.get("returning", 0)}


def by_weekday(scope_id: int, start: date, end: date, category_id: int | None = None) -> list[dict]:
    """Orders and GMV per weekday of the business day: [{weekday: 0 (Monday)..6, orders, gmv}], all seven."""
    check_range(start, end)
    query = _filtered(select(ProfileDaily.day, func.sum(ProfileDaily.orders), func.sum(ProfileDaily.gmv)),
                      scope_id, _TOTALS_DIMENSION, start, end, category_id).group_by(ProfileDaily.day)
    out = [{"weekday": i, "orders": 0, "gmv": 0} for i in range(7)]
    for day, orders, gmv in db.session.execute(query):
        slot = out[as_date(day).weekday()]
        slot["orders"] += int(orders or 0)
        slot["gmv"] += int(gmv or 0)
    return out


def overview(scope_id: int, start: date, end: date, category_id: int | None = None) -> dict:
    """Everything the overview shows, in one scan of the range: {"dimensions": {dimension: by_dimension rows},
    "weekdays": by_weekday rows, "totals": totals}. Same figures as those functions (the tests hold them equal),
    one round trip instead of eight: the hour rows are grouped by weekday too, and they give the totals."""
    check_range(start, end)
    weekday = case((ProfileDaily.dimension == _TOTALS_DIMENSION, weekday_of(ProfileDaily.day)))
    query = (select(ProfileDaily.dimension, ProfileDaily.value, weekday, func.sum(ProfileDaily.orders),
                    func.sum(ProfileDaily.gmv))
             .where(ProfileDaily.scope_id == scope_id, ProfileDaily.dimension.in_(DIMENSIONS),
                    ProfileDaily.day >= start, ProfileDaily.day <= end)
             .group_by(ProfileDaily.dimension, ProfileDaily.value, weekday))
    if category_id is not None:
        query = query.where(ProfileDaily.category_id == category_id)
    sums: dict[str, dict[str, list[int]]] = {d: {} for d in DIMENSIONS}
    weekdays = [{"weekday": i, "orders": 0, "gmv": 0} for i in range(7)]
    for dimension, value, wd, orders, gmv in db.session.execute(query):
        orders, gmv = int(orders or 0), int(gmv or 0)
        cell = sums[dimension].setdefault(value, [0, 0])
        cell[0] += orders
        cell[1] += gmv
        if wd is not None:
            weekdays[int(wd)]["orders"] += orders
            weekdays[int(wd)]["gmv"] += gmv
    dims = {}
    for dimension in DIMENSIONS:
        rows = [{"value": v, "orders": o, "gmv": g} for v, (o, g) in sums[dimension].items() if o or g]
        dims[dimension] = sorted(_complete(dimension, rows), key=_order_key(dimension))
    orders = sum(r["orders"] for r in dims[_TOTALS_DIMENSION])
    gmv = sum(r["gmv"] for r in dims[_TOTALS_DIMENSION])
    kinds = {r["value"]: r["orders"] for r in dims["buyer_type"]}
    totals_ = {"orders": orders, "gmv": gmv, "aov": gmv // orders if orders else 0,
               "first_orders": kinds.get("first", 0), "returning_orders": kinds.get("returning", 0)}
    return {"dimensions": dims, "weekdays": weekdays, "totals": totals_}


def _category_names() -> dict[int, str]:
    return dict(db.session.execute(select(Category.id, Category.name)).all())


def segment_categories(scope_id: int, dimension: str, start: date, end: date, granularity: str = "month",
                       value: str | None = None, category_id: int | None = None) -> list[dict]:
    """What each segment buys: [{period, value, category_id, category, orders, gmv}] per period (day / week /
    month start) × segment value × category, only non-zero cells, by period, value order, then GMV descending.
    E.g. dimension='age_band', value='18-24', granularity='month' shows students' phone top-ups by month."""
    _check_dimension(dimension)
    check_range(start, end, granularity)
    query = _filtered(select(ProfileDaily.day, ProfileDaily.value, ProfileDaily.category_id,
                             func.sum(ProfileDaily.orders), func.sum(ProfileDaily.gmv)),
                      scope_id, dimension, start, end, category_id)
    if value is not None:
        query = query.where(ProfileDaily.value == value)
    query = query.group_by(ProfileDaily.day, ProfileDaily.value, ProfileDaily.category_id)
    cells: dict[tuple, list[int]] = {}
    for day, val, cat, orders, gmv in db.session.execute(query):
        cell = cells.setdefault((bucket(as_date(day), granularity), val, int(cat)), [0, 0])
        cell[0] += int(orders or 0)
        cell[1] += int(gmv or 0)
    names = _category_names()
    rows = [{"period": p, "value": v, "category_id": c, "category": names.get(c, str(c)), "orders": o, "gmv": g}
            for (p, v, c), (o, g) in cells.items() if o or g]
    value_key = _order_key(dimension) if dimension != "province" else (lambda r: (r["value"],))
    rows.sort(key=lambda r: (r["period"], value_key(r), -r["gmv"], r["category_id"]))
    return rows


def segment_values(scope_id: int, dimension: str, start: date, end: date) -> list[str]:
    """The values of a dimension present in the range (for the segment dropdown)."""
    return [r["value"] for r in by_dimension(scope_id, dimension, start, end) if r["orders"] or r["gmv"]]
