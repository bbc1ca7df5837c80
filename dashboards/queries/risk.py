"""Risk control dashboard (风控看板): decisions by outcome and by rule over time, the review queue, top IPs and
devices behind blocked and reviewed decisions. Platform-wide (staff only): no scope argument.

Reads risk_decision (indexed on created_at, and on outcome + created_at) and the held orders (status `reviewing`).
Rule hits are unnested from the decision's JSON `hits` in SQL (json_array_elements on PostgreSQL, json_each on
SQLite), only for decisions that hit something. Identifiers are the masks the decision stored (app.risk.identity):
nothing here ever sees a plaintext value. Every function returns plain data.
"""
from __future__ import annotations

from datetime import date, datetime

from flask import current_app
from sqlalchemy import JSON, case, cast, func, select, true

from app.clock import utcnow
from app.extensions import db
from app.orders.models import Order
from app.risk.models import RiskDecision
from dashboards.queries.periods import as_date, check_range, local_day, utc_bounds

SUBJECT_FIELDS = ("ip", "device")
# Hold ages shown on the queue's bar chart: (upper bound in hours or None, label).
AGE_BUCKETS = ((1, "<1h"), (4, "1-4h"), (12, "4-12h"), (24, "12-24h"), (None, ">24h"))


def _where(start: date, end: date, event: str | None) -> list:
    check_range(start, end)
    lo, hi = utc_bounds(start, end)
    where = [RiskDecision.created_at >= lo, RiskDecision.created_at < hi]
    if event:
        where.append(RiskDecision.event == event)
    return where


def decisions_by_day(start: date, end: date, event: str | None = None) -> list[dict]:
    """Decisions per business day and outcome: [{day, outcome, count, latency_us}] (latency_us summed), by day."""
    day = local_day(RiskDecision.created_at).label("day")
    query = (select(day, RiskDecision.outcome, func.count(), func.sum(RiskDecision.latency_us))
             .where(*_where(start, end, event)).group_by(day, RiskDecision.outcome))
    rows = [{"day": as_date(d), "outcome": o, "count": int(n), "latency_us": int(us or 0)}
            for d, o, n, us in db.session.execute(query)]
    rows.sort(key=lambda r: (r["day"], r["outcome"]))
    return rows


def _hit_elements():
    """(FROM item unnesting RiskDecision.hits, field(name) -> SQL text of that field of one hit)."""
    if db.engine.dialect.name == "postgresql":
        element = func.json_array_elements(cast(RiskDecision.hits, JSON)).table_valued("value").alias("hit")
        return element, lambda name: element.c.value.op("->>")(name)
    element = func.json_each(RiskDecision.hits).table_valued("value").alias("hit")
    return element, lambda name: func.json_extract(element.c.value, f"$.{name}")


def rule_hits_by_day(start: date, end: date, event: str | None = None) -> list[dict]:
    """Hits per business day and hit (list entries, limits, rules), shadow rules apart:
    [{day, kind, name, action, shadow, hits}]. A list hit is named `<list kind>` (not its masked value)."""
    element, field = _hit_elements()
    day = local_day(RiskDecision.created_at).label("day")
    columns = (day, field("kind"), field("name"), field("action"), field("shadow"))
    query = (select(*columns, func.count()).select_from(RiskDecision).join(element, true())
             .where(*_where(start, end, event), RiskDecision.hits != "[]").group_by(*columns))
    merged: dict[tuple, int] = {}
    for d, kind, name, action, shadow, n in db.session.execute(query):
        if kind == "list":  # "device:abcd****1234" -> "device": one line per list kind, not per entry
            name = str(name).split(":", 1)[0]
        key = (as_date(d), kind, name, action, str(shadow).lower() in ("true", "1"))
        merged[key] = merged.get(key, 0) + int(n)
    rows = [{"day": d, "kind": k, "name": name, "action": a, "shadow": s, "hits": n}
            for (d, k, name, a, s), n in merged.items()]
    rows.sort(key=lambda r: (r["day"], r["kind"], r["name"], r["shadow"]))
    return rows


def rule_totals(hits_by_day: list[dict]) -> list[dict]:
    """rule_hits_by_day summed over the days: [{kind, name, action, hits, shadow_hits}], most hits first."""
    totals: dict[tuple, dict] = {}
    for r in hits_by_day:
        row = totals.setdefault((r["kind"], r["name"]), {"kind": r["kind"], "name": r["name"], "action": r["action"],
                                                          "hits": 0, "shadow_hits": 0})
        row["shadow_hits" if r["shadow"] else "hits"] += r["hits"]
        if not r["shadow"]:
            row["action"] = r["action"]
    return sorted(totals.values(), key=lambda r: (-(r["hits"] + r["shadow_hits"]), r["kind"], r["name"]))


def review_queue(now: datetime | None = None) -> dict:
    """The held orders now (风控审核): {size, oldest_minutes, over_sla, sla_minutes, amount, ages: [{label, count}]}.
    A hold's age runs from payment (when it was held)."""
    now = now or utcnow()
    sla = int(current_app.config["RISK_REVIEW_SLA_MINUTES"])
    paid = func.coalesce(Order.paid_at, Order.created_at)
    size, oldest, amount = db.session.execute(
        select(func.count(), func.min(paid), func.coalesce(func.sum(Order.amount), 0))
        .where(Order.status == "reviewing")).one()
    ages = {label: 0 for _, label in AGE_BUCKETS}
    over = 0
    for (at,) in db.session.execute(select(paid).where(Order.status == "reviewing")):
        hours = (now - at).total_seconds() / 3600
        if hours * 60 > sla:
            over += 1
        ages[next(label for bound, label in AGE_BUCKETS if bound is None or hours < bound)] += 1
    oldest_minutes = int((now - oldest).total_seconds() // 60) if oldest is not None else 0
    return {"size": int(size), "oldest_minutes": max(oldest_minutes, 0), "over_sla": over, "sla_minutes": sla,
            "amount": int(amount), "ages": [{"label": label, "count": n} for label, n in ages.items()]}


def _subject_field(name: str):
    """The text of one key of RiskDecision.subject (JSON text), in SQL. (SQLite must not CAST it: a JSON type has
    numeric affinity there.)"""
    if db.engine.dialect.name == "postgresql":
        return cast(RiskDecision.subject, JSON).op("->>")(name)
    return func.json_extract(RiskDecision.subject, f"$.{name}")


def top_subjects(field: str, start: date, end: date, event: str | None = None, limit: int = 10) -> list[dict]:
    """The masked IPs or devices (`field`) behind the most blocked and reviewed decisions:
    [{value, blocked, reviewed, total}], most first. Values are the masks the decisions stored."""
    if field not in SUBJECT_FIELDS:
        raise ValueError(f"unknown subject field {field!r}")
    value = _subject_field(field).label("value")
    blocked = func.sum(case((RiskDecision.outcome == "block", 1), else_=0))
    reviewed = func.sum(case((RiskDecision.outcome == "review", 1), else_=0))
    query = (select(value, blocked, reviewed, func.count())
             .where(*_where(start, end, event), RiskDecision.outcome.in_(("block", "review")), value.is_not(None))
             .group_by(value).order_by(func.count().desc(), value).limit(limit))
    return [{"value": v, "blocked": int(b), "reviewed": int(r), "total": int(n)}
            for v, b, r, n in db.session.execute(query)]
