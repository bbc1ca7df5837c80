"""Agent rules: creating agents in the tree, and admin wallet adjustments."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from flask_babel import gettext
from sqlalchemy import select

from app import cache
from app.agents.errors import AgentError, InvalidParent
from app.agents.models import Agent, Tier
from app.audit import service as audit
from app.errors import NotFound, ValidationError
from app.extensions import db
from app.ledger import service as ledger
from app.ledger.service import Line, agent_account_code
from app.money import format_fen


@dataclass(frozen=True)
class TierFacts:
    """What a purchase needs of a tier, as an immutable value (app.cache keeps it)."""
    id: int
    discount_bp: int
    daily_limit: int
    risk_order_limit: int | None
    risk_daily_limit: int | None


@dataclass(frozen=True)
class AgentFacts:
    """What a purchase needs of an agent: its tier, upline path, login (matched against risk lists), standing."""
    id: int
    active: bool
    risk_hold: bool
    tier_id: int
    path: str
    user_id: int | None
    login: str | None
    created_at: datetime | None
    topup_unspent: int
    tier: TierFacts


def agent_facts(agent_id: int) -> AgentFacts | None:
    """The agent's purchase facts (cached until agents, tiers or logins change), or None for an unknown id."""
    return cache.fetch("agent", agent_id, lambda: _load_agent_facts(agent_id))


def _load_agent_facts(agent_id: int) -> AgentFacts | None:
    from flask_appbuilder.security.sqla.models import User

    row = db.session.execute(
        select(Agent.id, Agent.active, Agent.risk_hold, Agent.tier_id, Agent.path, Agent.user_id, User.username,
               Agent.created_at, Agent.topup_unspent, Tier.id, Tier.discount_bp, Tier.daily_limit,
               Tier.risk_order_limit, Tier.risk_daily_limit)
        .join(Tier, Tier.id == Agent.tier_id).outerjoin(User, User.id == Agent.user_id)
        .where(Agent.id == agent_id)).first()
    if row is None:
        return None
    return AgentFacts(*row[:9], tier=TierFacts(*row[9:]))


def tier_facts(tier_id: int) -> TierFacts | None:
    return cache.fetch("tier", tier_id, lambda: _load_tier_facts(tier_id))


def _load_tier_facts(tier_id: int) -> TierFacts | None:
    row = db.session.execute(select(Tier.id, Tier.discount_bp, Tier.daily_limit, Tier.risk_order_limit,
                                    Tier.risk_daily_limit).where(Tier.id == tier_id)).first()
    return TierFacts(*row) if row is not None else None


def create_agent(name: str, tier_id: int, parent_id: int | None = None, user_id: int | None = None,
                 phone: str | None = None) -> Agent:
    """Create an agent under its parent with its ledger accounts. Flushes; the caller commits."""
    name = (name or "").strip()
    if not name:
        raise ValidationError(gettext("代理名称不能为空"))
    if db.session.get(Tier, tier_id) is None:
        raise ValidationError(gettext("等级不存在：%(tier_id)s", tier_id=tier_id))
    parent = None
    if parent_id is not None:
        parent = db.session.get(Agent, parent_id)
        if parent is None:
            raise InvalidParent(gettext("上级代理不存在：%(parent_id)s", parent_id=parent_id))
    agent = Agent(name=name, tier_id=tier_id, parent_id=parent_id, user_id=user_id, phone=phone,
                  path="/", depth=0 if parent is None else parent.depth + 1)
    db.session.add(agent)
    db.session.flush()
    agent.path = f"{parent.path if parent else '/'}{agent.id}/"
    ledger.open_agent_accounts(agent.id)
    db.session.flush()
    return agent


def set_parent(agent: Agent, parent_id: int | None) -> None:
    """Move an agent (and its whole subtree) under a new parent, keeping paths consistent."""
    if parent_id == agent.parent_id:
        return
    new_parent = None
    if parent_id is not None:
        new_parent = db.session.get(Agent, parent_id)
        if new_parent is None:
            raise InvalidParent(gettext("上级代理不存在：%(parent_id)s", parent_id=parent_id))
        if new_parent.path.startswith(agent.path):
            raise InvalidParent(gettext("不能把代理移到自己的下级之下"))
    old_path, old_depth = agent.path, agent.depth
    new_path = f"{new_parent.path if new_parent else '/'}{agent.id}/"
    new_depth = new_parent.depth + 1 if new_parent else 0
    subtree = db.session.scalars(select(Agent).where(Agent.path.like(old_path + "%"))).all()
    for member in subtree:
        member.path = new_path + member.path[len(old_path):]
        member.depth = member.depth - old_depth + new_depth
    agent.parent_id = parent_id
    audit.record("agent.move", "agent", agent.id, {"path": old_path}, {"path": new_path})


def adjust_wallet(agent_id: int, amount_fen: int, reason: str, actor_id: int | None = None) -> int:
    """Credit (+) or debit (-) an agent's wallet by admin decision. One journal and one audit entry.

    Commits. A debit beyond the balance is refused with nothing written.
    """
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError(gettext("请填写调整原因"))
    if amount_fen == 0:
        raise ValidationError(gettext("调整金额不能为 0"))
    agent = db.session.get(Agent, agent_id)
    if agent is None:
        raise NotFound(gettext("代理不存在：%(agent_id)s", agent_id=agent_id))
    wallet = agent_account_code(agent_id, "wallet")
    try:
        before = ledger.agent_balances(agent_id)["wallet"]
        journal_id = ledger.post_journal(
            f"adjust:{agent_id}:{uuid.uuid4().hex}", "adjustment",
            [Line(wallet, amount_fen), Line("platform:adjustments", -amount_fen)],
            memo=reason[:255], actor_id=actor_id)
        audit.record("wallet.adjust", "agent", agent_id, {"wallet": before},
                     {"wallet": before + amount_fen, "amount": amount_fen, "journal_id": journal_id},
                     reason=reason[:255], actor_id=actor_id)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return journal_id


def describe_adjustment(amount_fen: int) -> str:
    amount = format_fen(abs(amount_fen))
    return gettext("加款 %(amount)s", amount=amount) if amount_fen > 0 else gettext("扣款 %(amount)s", amount=amount)


def agent_for_user(user_id: int) -> Agent | None:
    return db.session.scalar(select(Agent).where(Agent.user_id == user_id))


__all__ = ["create_agent", "set_parent", "adjust_wallet", "agent_for_user", "AgentError"]
