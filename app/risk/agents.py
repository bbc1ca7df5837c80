"""Agents held by risk control at registration (many agents from one IP or device in a short window): a held agent
(agent.risk_hold) cannot buy (portal, Open API) or withdraw until a reviewer approves it; a rejected one is
disabled. Both decisions are audited."""
from __future__ import annotations

from flask_babel import gettext as _
from flask_babel import lazy_gettext
from sqlalchemy import select

from app.agents.models import Agent
from app.audit import service as audit
from app.errors import Conflict, KamengError, NotFound, ValidationError
from app.extensions import db


class AgentOnHold(KamengError):
    code = "risk_hold"
    status = 403


HELD_MESSAGE = lazy_gettext("账号正在风控审核中，审核通过前不能采购或提现")


def check_not_held(agent: Agent) -> None:
    """Refuse a purchase or a withdrawal of an agent held at registration."""
    if agent.risk_hold:
        raise AgentOnHold(HELD_MESSAGE)


def held(limit: int = 200) -> list[Agent]:
    """Held agents still active, oldest first (the queue a reviewer works through)."""
    return list(db.session.scalars(select(Agent).where(Agent.risk_hold.is_(True), Agent.active.is_(True))
                                   .order_by(Agent.created_at, Agent.id).limit(limit)))


def _locked_held(agent_id: int) -> Agent:
    agent = db.session.scalar(select(Agent).where(Agent.id == agent_id).with_for_update())
    if agent is None:
        raise NotFound(_("代理不存在：%(id)s", id=agent_id))
    if not agent.risk_hold or not agent.active:
        raise Conflict(_("代理「%(name)s」不在风控审核中", name=agent.name))
    return agent


def approve(agent_id: int, actor_id: int | None, note: str | None = None) -> Agent:
    """Release a held agent: it may buy and withdraw from now on. Commits."""
    try:
        agent = _locked_held(agent_id)
        agent.risk_hold = False
        audit.record("risk.agent.approve", "agent", agent.id, {"risk_hold": True}, {"risk_hold": False},
                     reason=(note or "").strip()[:255] or None, actor_id=actor_id)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return agent


def reject(agent_id: int, reason: str, actor_id: int | None) -> Agent:
    """Refuse a held agent: it is disabled (and stays marked as held). Commits."""
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError(_("请填写拒绝原因"))
    try:
        agent = _locked_held(agent_id)
        agent.active = False
        audit.record("risk.agent.reject", "agent", agent.id, {"active": True, "risk_hold": True},
                     {"active": False, "risk_hold": True}, reason=reason[:255], actor_id=actor_id)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return agent
