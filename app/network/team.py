"""我的团队 (team tree): an agent's downline as a tree, and per branch (each direct child's subtree) the number of
agents and the GMV of delivered orders, this month and all time. Everything goes through app.scope.downline_ids and
the materialized path: one query for the tree, one grouped query for all branches."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import aliased

from app.agents.models import Agent, Tier
from app.clock import business_tz, utcnow
from app.extensions import db
from app.orders.models import Order
from app.scope import downline_ids

GMV_STATUSES = ("delivered",)


@dataclass
class TeamNode:
    id: int
    name: str
    tier: str
    depth: int  # relative to the viewer (the viewer is 0)
    active: bool
    children: list[TeamNode] = field(default_factory=list)


@dataclass(frozen=True)
class BranchStats:
    agent_id: int
    name: str
    agents: int  # the child and everyone below it
    gmv_month: int  # fen
    gmv_total: int  # fen


def month_start(now: datetime | None = None) -> datetime:
    """The UTC instant at which the current business month (BUSINESS_TIMEZONE) began."""
    now = now or utcnow()
    local = now.replace(tzinfo=UTC).astimezone(business_tz())
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start.astimezone(UTC).replace(tzinfo=None)


def tree(viewer: Agent) -> TeamNode:
    """The viewer and its whole downline, nested (one query, ordered by path so parents come first)."""
    rows = db.session.execute(
        select(Agent.id, Agent.name, Agent.parent_id, Agent.depth, Agent.active, Tier.name)
        .join(Tier, Tier.id == Agent.tier_id)
        .where(Agent.id.in_(downline_ids(viewer)))
        .order_by(Agent.depth, Agent.id)).all()
    nodes: dict[int, TeamNode] = {}
    root = None
    for agent_id, name, parent_id, depth, active, tier_name in rows:
        node = TeamNode(agent_id, name, tier_name, depth - viewer.depth, active)
        nodes[agent_id] = node
        if agent_id == viewer.id:
            root = node
        elif parent_id in nodes:
            nodes[parent_id].children.append(node)
    assert root is not None
    return root


def branch_stats(viewer: Agent, now: datetime | None = None) -> list[BranchStats]:
    """Per direct child of the viewer: its subtree's size and GMV. One grouped query: each member joins its branch
    head by path prefix, each member's delivered orders join the member."""
    head = aliased(Agent)
    member = aliased(Agent)
    since = month_start(now)
    delivered = and_(Order.agent_id == member.id, Order.status.in_(GMV_STATUSES))
    rows = db.session.execute(
        select(head.id, head.name,
               func.count(func.distinct(member.id)),
               func.coalesce(func.sum(case((Order.delivered_at >= since, Order.amount), else_=0)), 0),
               func.coalesce(func.sum(Order.amount), 0))
        .select_from(head)
        .join(member, member.path.like(head.path + "%"))
        .outerjoin(Order, delivered)
        .where(head.parent_id == viewer.id, head.id.in_(downline_ids(viewer)))
        .group_by(head.id, head.name)
        .order_by(head.id)).all()
    return [BranchStats(r[0], r[1], int(r[2]), int(r[3]), int(r[4])) for r in rows]


def team_view(viewer: Agent, now: datetime | None = None) -> dict:
    branches = branch_stats(viewer, now)
    return {
        "tree": tree(viewer),
        "branches": branches,
        "totals": BranchStats(viewer.id, viewer.name, sum(b.agents for b in branches),
                              sum(b.gmv_month for b in branches), sum(b.gmv_total for b in branches)),
        "month_start": month_start(now),
    }


__all__ = ["BranchStats", "TeamNode", "branch_stats", "month_start", "team_view", "tree"]
