"""Agent growth (代理增长): new agents, active agents, top recruiters, tree shape, retention by cohort month.

The tree figures read the `agent` table (created_at, tier_id, parent_id, path, depth: indexed). Buying activity:
- agents who bought per day: rollup_active_daily (already one per agent and day, summed per scope and tier);
- retention: rollup_retention_monthly (agents per scope, joining month, month and tier);
- the 7/30-day distinct counts: rollup_agent_daily over the last 30 days (one row per buying agent and day,
  possibly split over delta rows: GROUP BY and keep only sums above zero, so a refunded-away day does not count).
A scope's activity counts the agents in the branch and of the tier they were in when the day (month) was recorded,
or at the last rollup rebuild; joining figures and the tree use the agents as they are now. `scope_id` 0 is the
whole platform; an agent's id is that agent's branch (itself and its downline, `app.scope.downline_ids`). Every
function returns plain data.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta

from sqlalchemy import and_, case, exists, func, select

from app.agents.models import Agent, Tier
from app.analytics.models import PLATFORM_SCOPE, ActiveDaily, AgentDaily, RetentionMonthly
from app.clock import business_today, month_last_day, to_local
from app.extensions import db
from app.orders.models import Order
from app.scope import downline_ids
from dashboards.queries.periods import (
    as_date,
    check_range,
    day_month,
    local_day,
    local_month,
    months_between,
    utc_bounds,
)

ACTIVE_WINDOWS = (7, 30)


def _branch(scope_id: int) -> tuple[Agent | None, list]:
    """The scope's root agent (None for the platform) and the WHERE clauses selecting its agents."""
    if scope_id == PLATFORM_SCOPE:
        return None, []
    root = db.session.get(Agent, scope_id)
    if root is None:  # an unknown branch holds nothing
        return None, [Agent.id.is_(None)]
    # app.scope.downline_ids' own predicate (the path prefix), applied to the Agent row the query already has
    # instead of a second pass over the agent table.
    return root, [downline_ids(root).whereclause]


def _tier_names() -> dict[int, str]:
    return dict(db.session.execute(select(Tier.id, Tier.name)).all())


def new_agents(scope_id: int, start: date, end: date, tier_id: int | None = None) -> list[dict]:
    """New agents per business day and tier: [{day, tier_id, tier, count}], by day then tier name."""
    check_range(start, end)
    root, where = _branch(scope_id)
    lo, hi = utc_bounds(start, end)
    day = local_day(Agent.created_at).label("day")
    query = (select(day, Agent.tier_id, func.count().label("n"))
             .where(Agent.created_at >= lo, Agent.created_at < hi, *where)
             .group_by(day, Agent.tier_id))
    if root is not None:
        query = query.where(Agent.id != root.id)  # the branch's own root did not join the branch
    if tier_id is not None:
        query = query.where(Agent.tier_id == tier_id)
    names = _tier_names()
    rows = [{"day": as_date(d), "tier_id": t, "tier": names.get(t, str(t)), "count": int(n)}
            for d, t, n in db.session.execute(query)]
    rows.sort(key=lambda r: (r["day"], r["tier"]))
    return rows


def _active_rows(where: list, tier_id: int | None, first: date, last: date):
    """(agent_id, day) pairs whose summed orders that day are above zero."""
    query = (select(AgentDaily.agent_id, AgentDaily.day)
             .where(AgentDaily.day >= first, AgentDaily.day <= last)
             .group_by(AgentDaily.agent_id, AgentDaily.day)
             .having(func.sum(AgentDaily.orders) > 0))
    if where or tier_id is not None:
        query = query.join(Agent, Agent.id == AgentDaily.agent_id).where(*where)
        if tier_id is not None:
            query = query.where(Agent.tier_id == tier_id)
    return query


def active_agents(scope_id: int, as_of: date, tier_id: int | None = None) -> dict[int, int]:
    """Distinct agents of the scope who bought in the last 7 and 30 days up to `as_of`: {7: n, 30: n}."""
    _, where = _branch(scope_id)
    longest = max(ACTIVE_WINDOWS)
    pairs = _active_rows(where, tier_id, as_of - timedelta(days=longest - 1), as_of).subquery()
    # One pass: a distinct count per window (CASE yields NULL outside the window, which count ignores).
    columns = [func.count(func.distinct(case((pairs.c.day >= as_of - timedelta(days=window - 1), pairs.c.agent_id))))
               for window in ACTIVE_WINDOWS]
    row = db.session.execute(select(*columns)).one()
    return {window: int(n or 0) for window, n in zip(ACTIVE_WINDOWS, row, strict=True)}


def daily_active(scope_id: int, start: date, end: date, tier_id: int | None = None) -> list[dict]:
    """Agents of the scope who bought, per day in the range: [{day, agents}], every day listed."""
    check_range(start, end)
    total = func.sum(ActiveDaily.agents)
    query = (select(ActiveDaily.day, total)
             .where(ActiveDaily.scope_id == scope_id, ActiveDaily.day >= start, ActiveDaily.day <= end)
             .group_by(ActiveDaily.day).having(total > 0))
    if tier_id is not None:
        query = query.where(ActiveDaily.tier_id == tier_id)
    found = {as_date(d): int(n) for d, n in db.session.execute(query)}
    out, day = [], start
    while day <= end:
        out.append({"day": day, "agents": found.get(day, 0)})
        day += timedelta(days=1)
    return out


def activity(scope_id: int, start: date, end: date, tier_id: int | None = None) -> dict:
    """daily_active(start..end) and active_agents(as of end): {"daily": [{day, agents}], "active": {7: n, 30: n}}."""
    return {"daily": daily_active(scope_id, start, end, tier_id), "active": active_agents(scope_id, end, tier_id)}


def top_recruiters(scope_id: int, start: date, end: date, tier_id: int | None = None,
                   limit: int = 20) -> list[dict]:
    """Agents of the scope with the most new direct children created in the range (children of `tier_id` only
    when given): [{agent_id, name, tier, recruits}], most first."""
    check_range(start, end)
    root, where = _branch(scope_id)
    lo, hi = utc_bounds(start, end)
    child_count = func.count().label("recruits")
    query = (select(Agent.parent_id, child_count)
             .where(Agent.parent_id.is_not(None), Agent.created_at >= lo, Agent.created_at < hi, *where)
             .group_by(Agent.parent_id).order_by(child_count.desc(), Agent.parent_id).limit(limit))
    if root is not None:
        query = query.where(Agent.id != root.id)  # the root's own parent is outside the branch
    if tier_id is not None:
        query = query.where(Agent.tier_id == tier_id)
    counts = db.session.execute(query).all()
    if not counts:
        return []
    parents = {a.id: a for a in db.session.scalars(select(Agent).where(Agent.id.in_([p for p, _ in counts])))}
    names = _tier_names()
    return [{"agent_id": p, "name": parents[p].name, "tier": names.get(parents[p].tier_id, ""),
             "recruits": int(n)} for p, n in counts]


IDLE_RECRUITS_MIN = 5  # direct recruits in the range from which an upline whose recruits never bought is flagged


def idle_recruiters(scope_id: int, start: date, end: date, tier_id: int | None = None,
                    min_recruits: int = IDLE_RECRUITS_MIN, limit: int = 20) -> list[dict]:
    """Uplines of the scope with at least `min_recruits` direct children created in the range, none of whom has a
    delivered order (as of now): an account farm's sign, for risk review (风控). Children of `tier_id` only when
    given. [{agent_id, name, tier, recruits, last_joined}], most recruits first."""
    check_range(start, end)
    root, where = _branch(scope_id)
    lo, hi = utc_bounds(start, end)
    # Per recruit, one probe of ix_orders_agent_created: no scan of the orders table.
    bought = exists().where(Order.agent_id == Agent.id, Order.status == "delivered")
    recruits = func.count().label("recruits")
    query = (select(Agent.parent_id, recruits, func.max(Agent.created_at))
             .where(Agent.parent_id.is_not(None), Agent.created_at >= lo, Agent.created_at < hi, *where)
             .group_by(Agent.parent_id)
             .having(recruits >= min_recruits, func.sum(case((bought, 1), else_=0)) == 0)
             .order_by(recruits.desc(), Agent.parent_id).limit(limit))
    if root is not None:
        query = query.where(Agent.id != root.id)  # the root's own parent is outside the branch
    if tier_id is not None:
        query = query.where(Agent.tier_id == tier_id)
    counts = db.session.execute(query).all()
    if not counts:
        return []
    parents = {a.id: a for a in db.session.scalars(select(Agent).where(Agent.id.in_([p for p, _, _ in counts])))}
    names = _tier_names()
    return [{"agent_id": p, "name": parents[p].name, "tier": names.get(parents[p].tier_id, ""), "recruits": int(n),
             "last_joined": _local_date(last)} for p, n, last in counts]


def _local_date(at) -> date:
    """The business day of a naive-UTC instant (SQLite hands aggregates back as text)."""
    if not isinstance(at, datetime):
        at = datetime.fromisoformat(str(at))
    return to_local(at).date()


def tree_levels(scope_id: int, as_of: date | None = None, tier_id: int | None = None) -> list[dict]:
    """Agents per level below the scope's root (level 0 = the root itself; for the platform, the top agents),
    counting agents that joined by the end of `as_of`: [{level, agents}], every level down to the deepest."""
    root, where = _branch(scope_id)
    query = select(Agent.depth, func.count()).where(*where).group_by(Agent.depth)
    if as_of is not None:
        query = query.where(Agent.created_at < utc_bounds(as_of, as_of)[1])
    if tier_id is not None:
        query = query.where(Agent.tier_id == tier_id)
    base = root.depth if root is not None else 0
    found = {int(depth) - base: int(n) for depth, n in db.session.execute(query)}
    if not found:
        return []
    return [{"level": level, "agents": found.get(level, 0)} for level in range(max(found) + 1)]


def tree_summary(scope_id: int, as_of: date | None = None, tier_id: int | None = None) -> dict:
    """Size of the tree and how many levels it has below the root: {agents, depth}."""
    levels = tree_levels(scope_id, as_of, tier_id)
    return {"agents": sum(r["agents"] for r in levels), "depth": max((r["level"] for r in levels), default=0)}


def retention(scope_id: int, start: date, end: date, tier_id: int | None = None) -> list[dict]:
    """Retention by cohort month: agents of the scope who joined in each month from start's month to end (the
    branch root excluded), and how many of them bought in that month and each following month up to end's month.

    [{cohort: 'YYYY-MM', size, months: [{offset, month, active, pct}]}], offset 0 = the joining month;
    pct is a percentage of the cohort with one decimal.
    """
    check_range(start, end)
    root, where = _branch(scope_id)
    first_day = start.replace(day=1)
    lo, hi = utc_bounds(first_day, end)
    cohort = local_month(Agent.created_at).label("cohort")
    members = [Agent.created_at >= lo, Agent.created_at < hi, *where]
    if root is not None:
        members.append(Agent.id != root.id)
    if tier_id is not None:
        members.append(Agent.tier_id == tier_id)
    sizes = dict(db.session.execute(select(cohort, func.count()).where(*members).group_by(cohort)).all())
    if not sizes:
        return []
    end_month = end.replace(day=1)
    total = func.sum(RetentionMonthly.agents)
    query = (select(RetentionMonthly.cohort, RetentionMonthly.month, total)
             .where(RetentionMonthly.scope_id == scope_id, RetentionMonthly.cohort >= first_day,
                    RetentionMonthly.cohort <= end_month, RetentionMonthly.month <= end_month)
             .group_by(RetentionMonthly.cohort, RetentionMonthly.month).having(total > 0))
    if tier_id is not None:
        query = query.where(RetentionMonthly.tier_id == tier_id)
    active = {(as_date(c).strftime("%Y-%m"), as_date(m).strftime("%Y-%m")): int(n)
              for c, m, n in db.session.execute(query)}
    if end < month_last_day(end) and end < business_today():
        # The range stops inside a month that went on: its column counts purchases up to `end` only.
        last = end_month.strftime("%Y-%m")
        active = {k: n for k, n in active.items() if k[1] != last}
        active.update(_active_by_cohort(members, end_month, end))
    last_month = end.strftime("%Y-%m")
    out = []
    for name in sorted(sizes):
        size = int(sizes[name])
        months = []
        for offset, m in enumerate(months_between(name, last_month)):
            n = active.get((name, m), 0)
            months.append({"offset": offset, "month": m, "active": n, "pct": round(100.0 * n / size, 1)})
        out.append({"cohort": name, "size": size, "months": months})
    return out


def _active_by_cohort(members: list, first: date, last: date) -> dict[tuple[str, str], int]:
    """{(cohort, month): agents} of the agents matching `members` who bought between first and last (days of one
    month), from rollup_agent_daily: for a range that ends inside a month."""
    month = day_month(AgentDaily.day).label("month")
    # (agent, month) pairs with purchases, carrying the join instant so the cohort needs no second join.
    bought = (select(AgentDaily.agent_id, Agent.created_at, month)
              .join(Agent, and_(Agent.id == AgentDaily.agent_id, *members))
              .where(AgentDaily.day >= first, AgentDaily.day <= last)
              .group_by(AgentDaily.agent_id, Agent.created_at, month)
              .having(func.sum(AgentDaily.orders) > 0)).subquery()
    active_cohort = local_month(bought.c.created_at).label("cohort")
    return {(c, m): int(n) for c, m, n in db.session.execute(
        select(active_cohort, bought.c.month, func.count()).group_by(active_cohort, bought.c.month))}
