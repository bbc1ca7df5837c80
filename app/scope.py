"""The one scope function: an agent sees itself and its downline; staff see everything.

Every portal screen (FAB base_filters), action, dropdown, API handler, dashboard and export filters through
`visible_agent_ids()` / `in_scope()`. The downline is one indexed prefix query on the materialized path.
"""
from __future__ import annotations

from flask import g, has_request_context, request
from flask_babel import gettext
from sqlalchemy import Select, select

from app.agents.models import Agent
from app.extensions import db

STAFF_ROLES = {"Admin", "Manager", "Finance", "Support"}


def _user():
    if not has_request_context():
        return None
    user = getattr(g, "user", None)
    return user if user is not None and getattr(user, "is_authenticated", False) else None


def is_staff(user=None) -> bool:
    user = user or _user()
    return bool(user) and any(role.name in STAFF_ROLES for role in user.roles)


def agent_of(user) -> Agent | None:
    if user is None:
        return None
    return db.session.scalar(select(Agent).where(Agent.user_id == user.id))


def current_agent() -> Agent | None:
    """The agent of the logged-in user (cached per request and user).

    `g` belongs to the app context, which outlives one request when a caller (a test, a CLI command) pushed the
    context itself: the cache is keyed by the user, so a new login never sees the previous user's agent.
    """
    if not has_request_context():
        return None
    user = _user()
    key = (request._get_current_object(), getattr(user, "id", None))
    cached = g.__dict__.get("kameng_agent")
    if cached is None or cached[0] != key:
        cached = (key, agent_of(user))
        g.kameng_agent = cached
    return cached[1]


def require_agent() -> Agent:
    """The current user's agent, for portal pages; anyone else gets 403."""
    from flask import abort

    agent = current_agent()
    if agent is None:
        abort(403)
    return agent


def downline_ids(agent: Agent) -> Select:
    """Ids of the agent and everyone below it, as a subquery (no list materialized for big trees)."""
    return select(Agent.id).where(Agent.path.like(agent.path + "%"))


def visible_agent_ids() -> Select:
    """For FAB base_filters (FilterInFunction): the current agent's subtree; nothing for anyone else."""
    agent = current_agent()
    if agent is None:
        return select(Agent.id).where(Agent.id.is_(None))
    return downline_ids(agent)


def own_agent_ids() -> list[int]:
    """Just the current agent (for rows an agent may see only for itself, e.g. card secrets and its ledger)."""
    agent = current_agent()
    return [agent.id] if agent is not None else []


def in_scope(agent_id: int | None, viewer: Agent | None = None) -> bool:
    """Re-check for actions and handlers that load rows by id."""
    viewer = viewer if viewer is not None else current_agent()
    if viewer is None or agent_id is None:
        return False
    target = db.session.get(Agent, agent_id)
    return target is not None and target.path.startswith(viewer.path)


# Roles that read every branch on the dashboards they may open (app/roles.py: Finance opens only the money ones;
# Support has no dashboard at all).
DASHBOARD_STAFF_ROLES = {"Admin", "Manager", "Finance"}


def dashboard_scope(branch_agent_id: int | None = None) -> int:
    """The rollup `scope_id` the viewer may read (app.analytics.models): every Dash callback calls this per request.

    Admin/Manager/Finance: the platform (PLATFORM_SCOPE), or the branch they ask for. An agent: its own branch, or
    a branch of its downline it asks for; any other branch, or anyone else, is Forbidden. The browser's branch id
    is only a request, never trusted as a scope.
    """
    from app.analytics.models import PLATFORM_SCOPE
    from app.errors import Forbidden, ValidationError

    if branch_agent_id is not None:
        try:
            branch_agent_id = int(branch_agent_id)
        except (TypeError, ValueError):
            raise ValidationError(gettext("代理分支参数不正确")) from None
        if not 0 < branch_agent_id < 2**31:  # agent.id is an INTEGER column
            raise ValidationError(gettext("代理分支参数不正确"))
    user = _user()
    if user is None:
        raise Forbidden(gettext("请先登录"))
    if any(role.name in DASHBOARD_STAFF_ROLES for role in user.roles):
        if branch_agent_id is None:
            return PLATFORM_SCOPE
        if db.session.get(Agent, branch_agent_id) is None:
            raise ValidationError(gettext("代理分支不存在"))
        return branch_agent_id
    agent = current_agent()
    if agent is None:
        raise Forbidden(gettext("无权查看数据看板"))
    if branch_agent_id is None or branch_agent_id == agent.id:
        return agent.id
    if not in_scope(branch_agent_id, agent):
        raise Forbidden(gettext("只能查看自己团队的数据"))
    return branch_agent_id
