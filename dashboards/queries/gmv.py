"""GMV dashboard queries: GMV, orders, AOV and margin over time, breakdowns, and the previous-period comparison.

All from rollup_sales_daily (GMV = paid amount of delivered orders, refunds already netted on the delivery day).
AOV = GMV // orders (fen, floored); margin = GMV − cost.
"""
from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy import func, select, text

from app.agents.models import Tier
from app.analytics.models import SalesDaily, ShopDaily
from app.catalog.models import Category, Product, Supplier
from app.extensions import db
from app.payments.models import CHANNEL_NAMES
from dashboards.queries.periods import as_date, bucket, periods

BREAKDOWNS = ("category", "product", "channel", "tier", "supplier")
_KEY_COLUMNS = {"category": SalesDaily.category_id, "product": SalesDaily.product_id,
                "channel": SalesDaily.channel, "tier": SalesDaily.tier_id, "supplier": SalesDaily.supplier_id}
_MEASURES = ("orders", "quantity", "gmv", "cost", "fees", "margin")


def _sums():
    return [func.coalesce(func.sum(getattr(SalesDaily, m)), 0).label(m) for m in _MEASURES]


def _where(query, scope_id: int, start: date, end: date, category_id: int | None, tier_id: int | None):
    query = query.where(SalesDaily.scope_id == scope_id, SalesDaily.day >= start, SalesDaily.day <= end)
    if category_id is not None:
        query = query.where(SalesDaily.category_id == category_id)
    if tier_id is not None:
        query = query.where(SalesDaily.tier_id == tier_id)
    return query


def _figures(row) -> dict:
    out = {m: int(getattr(row, m) or 0) for m in _MEASURES}
    return with_ratios(out)


def with_ratios(out: dict) -> dict:
    """Add AOV (fen, floored) and margin rate in basis points (floored) to a dict of sums."""
    out["aov"] = out["gmv"] // out["orders"] if out["orders"] else 0
    out["margin_bp"] = out["margin"] * 10_000 // out["gmv"] if out["gmv"] else 0
    return out


def totals(scope_id: int, start: date, end: date, category_id: int | None = None,
           tier_id: int | None = None) -> dict:
    """GMV, orders, quantity, cost, fees, margin, AOV and margin rate over the range."""
    row = db.session.execute(_where(select(*_sums()), scope_id, start, end, category_id, tier_id)).one()
    return _figures(row)


def previous_period(start: date, end: date) -> tuple[date, date]:
    """The period of equal length just before [start, end]."""
    days = (end - start).days + 1
    return start - timedelta(days=days), start - timedelta(days=1)


def _compare(current: dict, previous: dict, start: date, end: date) -> dict:
    changes = {}
    for key in ("gmv", "orders", "aov", "margin", "quantity"):
        change = current[key] - previous[key]
        changes[key] = {"delta": change,
                        "pct": None if previous[key] == 0 else round(change * 100 / previous[key], 1)}
    prev_start, prev_end = previous_period(start, end)
    return {"current": current, "previous": previous, "changes": changes,
            "previous_start": prev_start, "previous_end": prev_end}


def comparison(scope_id: int, start: date, end: date, category_id: int | None = None,
               tier_id: int | None = None) -> dict:
    """This period and the one of equal length just before it, with each figure's change and percent."""
    prev_start, prev_end = previous_period(start, end)
    return _compare(totals(scope_id, start, end, category_id, tier_id),
                    totals(scope_id, prev_start, prev_end, category_id, tier_id), start, end)


def series(scope_id: int, start: date, end: date, granularity: str = "day", category_id: int | None = None,
           tier_id: int | None = None) -> list[dict]:
    """One row per day / week (Monday) / month in the range, zeros included; daily rows bucketed in Python."""
    query = _where(select(SalesDaily.day, *_sums()), scope_id, start, end, category_id, tier_id) \
        .group_by(SalesDaily.day)
    return _series_from(((as_date(row.day), _sums_of(row)) for row in db.session.execute(query)), start, end,
                        granularity)


def _sums_of(row) -> dict:
    return {m: int(getattr(row, m) or 0) for m in _MEASURES}


def _series_from(daily, start: date, end: date, granularity: str) -> list[dict]:
    buckets = {p: dict.fromkeys(_MEASURES, 0) for p in periods(start, end, granularity)}
    for day, sums in daily:
        target = buckets[bucket(day, granularity)]
        for m in _MEASURES:
            target[m] += sums[m]
    return [{"period": p, **with_ratios(values)} for p, values in buckets.items()]


def breakdown(scope_id: int, start: date, end: date, by: str, category_id: int | None = None,
              tier_id: int | None = None, limit: int | None = None) -> list[dict]:
    """Figures per category / product / channel / tier / supplier, largest GMV first, with each one's share."""
    if by not in BREAKDOWNS:
        raise ValueError(f"unknown breakdown {by!r}")
    key = _KEY_COLUMNS[by]
    query = _where(select(key.label("key"), *_sums()), scope_id, start, end, category_id, tier_id) \
        .group_by(key).order_by(func.sum(SalesDaily.gmv).desc(), key)
    if limit:
        query = query.limit(limit)
    rows = [(row.key, _sums_of(row)) for row in db.session.execute(query)]
    total = sum(sums["gmv"] for _key, sums in rows) if not limit else \
        totals(scope_id, start, end, category_id, tier_id)["gmv"]
    return _breakdown_from(by, rows, total)


def _breakdown_from(by: str, rows: list[tuple], total_gmv: int) -> list[dict]:
    rows = sorted(rows, key=lambda r: (-r[1]["gmv"], r[0] is None, "" if r[0] is None else r[0]))
    labels = _labels(by, [key for key, _sums in rows])
    out = []
    for key, sums in rows:
        out.append({"key": key, **with_ratios(dict(sums)),
                    "label": labels.get(key, None if key is None else str(key)),
                    "share_bp": sums["gmv"] * 10_000 // total_gmv if total_gmv > 0 else 0})
    return out


def overview(scope_id: int, start: date, end: date, granularity: str = "day", category_id: int | None = None,
             tier_id: int | None = None) -> dict:
    """Everything the GMV page shows: comparison (as comparison()), "series" (as series()) and "breakdowns"
    ({by: breakdown()}). On PostgreSQL the range is read once, with GROUPING SETS (one set per breakdown, the
    day, and the total), plus one total for the previous period; elsewhere one GROUP BY per figure."""
    prev_start, prev_end = previous_period(start, end)
    previous = totals(scope_id, prev_start, prev_end, category_id, tier_id)
    if db.engine.dialect.name != "postgresql":
        current = totals(scope_id, start, end, category_id, tier_id)
        return {**_compare(current, previous, start, end),
                "series": series(scope_id, start, end, granularity, category_id, tier_id),
                "breakdowns": {by: breakdown(scope_id, start, end, by, category_id, tier_id) for by in BREAKDOWNS}}
    keys = [SalesDaily.day, *(_KEY_COLUMNS[by] for by in BREAKDOWNS)]
    # GROUPING(day, category, ...) is a bitmask, leftmost column = highest bit, 1 where the column is rolled up.
    full = (1 << len(keys)) - 1
    set_of = {full ^ (1 << (len(keys) - 1 - i)): i for i in range(len(keys))}
    query = _where(select(func.grouping(*keys).label("g"), *keys, *_sums()), scope_id, start, end, category_id,
                   tier_id).group_by(func.grouping_sets(*keys, text("()")))
    current = dict.fromkeys(_MEASURES, 0)
    daily: list[tuple] = []
    grouped: dict[str, list[tuple]] = {by: [] for by in BREAKDOWNS}
    for row in db.session.execute(query):
        sums = _sums_of(row)
        if row.g == full:
            current = sums
        elif set_of.get(row.g) == 0:
            daily.append((as_date(row.day), sums))
        else:
            by = BREAKDOWNS[set_of[row.g] - 1]
            grouped[by].append((row[2 + BREAKDOWNS.index(by)], sums))
    current = with_ratios(dict(current))
    return {**_compare(current, previous, start, end), "series": _series_from(daily, start, end, granularity),
            "breakdowns": {by: _breakdown_from(by, grouped[by], current["gmv"]) for by in BREAKDOWNS}}


def _labels(by: str, keys: list) -> dict:
    if by == "channel":
        return {k: str(CHANNEL_NAMES.get(k, k)) for k in keys}  # lazy labels: JSON needs str
    model = {"category": Category, "product": Product, "tier": Tier, "supplier": Supplier}[by]
    ids = [k for k in keys if k is not None]
    if not ids:
        return {}
    # A NULL tier (storefront guests) gets no label here: the dashboard names it.
    return {k: name for k, name in db.session.execute(select(model.id, model.name).where(model.id.in_(ids)))}


# --- agent shops (分站) ----------------------------------------------------------------------------------------------

def _shop_sums(scope_id: int, start: date, end: date) -> dict:
    row = db.session.execute(select(func.coalesce(func.sum(ShopDaily.orders), 0),
                                    func.coalesce(func.sum(ShopDaily.gmv), 0),
                                    func.coalesce(func.sum(ShopDaily.profit), 0))
                             .where(ShopDaily.scope_id == scope_id, ShopDaily.day >= start,
                                    ShopDaily.day <= end)).one()
    return {"orders": int(row[0]), "gmv": int(row[1]), "profit": int(row[2])}


def shops(scope_id: int, start: date, end: date, limit: int = 50) -> dict:
    """Agent shops in the scope (the platform: every shop; an agent: its own and its downline's): orders, GMV and
    the agents' shop profit over the range and the previous period, and per shop, largest GMV first. From
    rollup_shop_daily (no category or tier: a shop's figures are the whole shop's)."""
    from app.agentshops.models import AgentShop

    prev_start, prev_end = previous_period(start, end)
    rows = db.session.execute(
        select(ShopDaily.shop_id, func.sum(ShopDaily.orders), func.sum(ShopDaily.gmv), func.sum(ShopDaily.profit))
        .where(ShopDaily.scope_id == scope_id, ShopDaily.day >= start, ShopDaily.day <= end)
        .group_by(ShopDaily.shop_id).order_by(func.sum(ShopDaily.gmv).desc(), ShopDaily.shop_id).limit(limit)).all()
    names = dict(db.session.execute(select(AgentShop.id, AgentShop.name).where(
        AgentShop.id.in_([r[0] for r in rows]))).all()) if rows else {}
    per_shop = [{"shop_id": shop_id, "label": names.get(shop_id, str(shop_id)), "orders": int(n or 0),
                 "gmv": int(gmv or 0), "profit": int(profit or 0)} for shop_id, n, gmv, profit in rows
                if n or gmv or profit]
    return {"current": _shop_sums(scope_id, start, end), "previous": _shop_sums(scope_id, prev_start, prev_end),
            "shops": per_shop}
