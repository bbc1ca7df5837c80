"""Invite codes (邀请码) and registration through them: the only way a new agent binds under an upline.

A code belongs to one agent whose tier may recruit and carries a tier of LOWER rank than the inviter's. Registering
through `/r/<code>` creates the FAB user (role Agent) and the agent under the inviter, and counts the use with a
guarded UPDATE, all in one transaction: a code past its max_uses, expiry or deactivation binds nothing.
"""
from __future__ import annotations

import re
import secrets
from datetime import datetime

import phonenumbers
from flask import current_app
from flask_babel import gettext, lazy_gettext
from sqlalchemy import or_, select, update

from app.agents import service as agents
from app.agents.models import Agent, Tier
from app.clock import utcnow
from app.errors import Forbidden, NotFound, ValidationError
from app.extensions import db
from app.network.models import InviteCode

# No 0/O, 1/I/L: codes are read off posters and typed by hand.
ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 10
CODE_PATTERN = re.compile(rf"^[{ALPHABET}]{{8,12}}$")
USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{3,64}$")
MIN_PASSWORD = 8
MAX_USES_LIMIT = 100_000
INVALID_CODE = lazy_gettext("邀请链接无效或已失效")


class InvalidInvite(NotFound):
    code = "invalid_invite"


def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def normalize_code(code: str | None) -> str | None:
    code = (code or "").strip().upper()
    return code if CODE_PATTERN.match(code) else None


def recruit_refusal(agent: Agent | None) -> str | None:
    """Why this agent may not create invite codes, or None when it may."""
    if agent is None:
        return gettext("只有代理可以邀请下级")
    if not agent.active:
        return gettext("账号已停用，不能邀请下级")
    if not agent.tier.may_recruit:
        return gettext("当前等级「%(name)s」不能发展下级代理", name=agent.tier.name)
    if not assignable_tiers(agent):
        return gettext("没有比当前等级更低的等级可分配")
    return None


def assignable_tiers(agent: Agent) -> list[Tier]:
    """Tiers an agent may give its recruits: strictly lower rank than its own."""
    return list(db.session.scalars(select(Tier).where(Tier.rank < agent.tier.rank)
                                   .order_by(Tier.rank.desc(), Tier.id)))


def create_code(agent_id: int, tier_id, max_uses=None, expires_at: datetime | None = None) -> InviteCode:
    """A new invite code for the agent. Commits."""
    agent = db.session.get(Agent, agent_id)
    if agent is None:
        raise NotFound(gettext("代理不存在"))
    refusal = recruit_refusal(agent)
    if refusal:
        raise Forbidden(refusal)
    try:
        tier_id = int(tier_id)
    except (TypeError, ValueError):
        raise ValidationError(gettext("请选择等级")) from None
    tier = db.session.get(Tier, tier_id) if 0 < tier_id < 2**31 else None
    if tier is None:
        raise ValidationError(gettext("等级不存在"))
    if tier.rank >= agent.tier.rank:
        raise Forbidden(gettext("只能邀请比自己等级低的代理"))
    if max_uses in ("", None):
        max_uses = None
    else:
        try:
            max_uses = int(max_uses)
        except (TypeError, ValueError):
            raise ValidationError(gettext("使用次数必须是正整数")) from None
        if not 1 <= max_uses <= MAX_USES_LIMIT:
            raise ValidationError(gettext("使用次数须在 1 到 %(max_uses_limit)s 之间", max_uses_limit=MAX_USES_LIMIT))
    if expires_at is not None and expires_at <= utcnow():
        raise ValidationError(gettext("过期时间必须在未来"))
    for _ in range(5):
        code = new_code()
        if db.session.scalar(select(InviteCode.id).where(InviteCode.code == code)) is None:
            break
    invite = InviteCode(code=code, agent_id=agent.id, tier_id=tier.id, max_uses=max_uses, uses=0,
                        expires_at=expires_at, active=True)
    db.session.add(invite)
    db.session.commit()
    return invite


def codes_of(agent: Agent) -> list[InviteCode]:
    return list(db.session.scalars(select(InviteCode).where(InviteCode.agent_id == agent.id)
                                   .order_by(InviteCode.id.desc())))


def own_code(agent: Agent, code: str) -> InviteCode:
    """One of the agent's own codes; anyone else's (or none) is NotFound, never confirmed to exist."""
    normalized = normalize_code(code)
    invite = normalized and db.session.scalar(select(InviteCode).where(InviteCode.code == normalized))
    if not invite or invite.agent_id != agent.id:
        raise NotFound(gettext("邀请码不存在"))
    return invite


def deactivate(agent: Agent, code: str) -> InviteCode:
    """Switch off one of the agent's own codes. Commits."""
    invite = own_code(agent, code)
    invite.active = False
    db.session.commit()
    return invite


STATE_TEXT = {"disabled": lazy_gettext("已停用"), "expired": lazy_gettext("已过期"), "used_up": lazy_gettext("已用完"),
              "active": lazy_gettext("有效")}


def state_of(invite: InviteCode, now: datetime | None = None) -> str:
    """disabled, expired, used_up or active."""
    now = now or utcnow()
    if not invite.active:
        return "disabled"
    if invite.expires_at is not None and invite.expires_at <= now:
        return "expired"
    if invite.max_uses is not None and invite.uses >= invite.max_uses:
        return "used_up"
    return "active"


def status_of(invite: InviteCode, now: datetime | None = None) -> str:
    """The invite's state as the screens say it."""
    return str(STATE_TEXT[state_of(invite, now)])


def usable_code(code: str | None) -> InviteCode:
    """The invite behind a public link, if it can still bind someone; InvalidInvite otherwise (one message for all
    reasons, so a link reveals nothing)."""
    normalized = normalize_code(code)
    invite = normalized and db.session.scalar(select(InviteCode).where(InviteCode.code == normalized))
    if not invite or state_of(invite) != "active":
        raise InvalidInvite(str(INVALID_CODE))
    inviter = invite.agent
    # the inviter's standing is re-checked at use: a code outlives a tier change or a disabled account
    if not inviter.active or not inviter.tier.may_recruit or invite.tier.rank >= inviter.tier.rank:
        raise InvalidInvite(str(INVALID_CODE))
    return invite


def _clean_registration(username, password, password2, display_name, phone) -> tuple[str, str, str, str]:
    username = (username or "").strip()
    if not USERNAME_PATTERN.match(username):
        raise ValidationError(gettext("用户名须为 3-64 位字母、数字、_ . -"))
    password = password or ""
    if len(password) < MIN_PASSWORD:
        raise ValidationError(gettext("密码至少 %(min)s 位", min=MIN_PASSWORD))
    if len(password) > 128:
        raise ValidationError(gettext("密码太长"))
    if password != (password2 or ""):
        raise ValidationError(gettext("两次输入的密码不一致"))
    display_name = (display_name or "").strip()
    if not display_name or len(display_name) > 64:
        raise ValidationError(gettext("请填写 1-64 个字符的名称"))
    try:
        number = phonenumbers.parse((phone or "").strip(), "CN")
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_valid_number(number):
        raise ValidationError(gettext("手机号格式不正确"))
    return username, password, display_name, phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def register(code: str | None, username, password, password2, display_name, phone, ip: str | None = None,
             device_id: object = None) -> Agent:
    """Create the user and the agent under the code's inviter at the code's tier, and count the use. One transaction:
    commits on success, rolls back everything on any refusal.

    Risk control (event registration: the address, the page's device id, the phone, the login) decides before
    anything is written: a block refuses; a review creates the agent held (agent.risk_hold: no buying or
    withdrawing until app.risk.agents.approve)."""
    from app.orders.service import clean_device_id
    from app.risk import service as risk

    invite = usable_code(code)  # a friendly early refusal; the guarded UPDATE below is what holds under races
    username, password, display_name, phone = _clean_registration(username, password, password2, display_name,
                                                                   phone)
    device = clean_device_id(device_id)
    sm = current_app.appbuilder.sm
    if sm.find_user(username=username) is not None:
        raise ValidationError(gettext("用户名已被使用"))
    event = risk.RiskInput(event="registration", ip=ip, device=device, phone=phone, agent_login=username,
                           enforce_limits=False)
    decision = risk.evaluate(event)
    decision.raise_if_blocked()
    now = utcnow()
    try:
        counted = db.session.execute(
            update(InviteCode)
            .where(InviteCode.id == invite.id, InviteCode.active.is_(True),
                   or_(InviteCode.max_uses.is_(None), InviteCode.uses < InviteCode.max_uses),
                   or_(InviteCode.expires_at.is_(None), InviteCode.expires_at > now))
            .values(uses=InviteCode.uses + 1)
            .execution_options(synchronize_session=False)).rowcount
        if counted != 1:
            raise InvalidInvite(str(INVALID_CODE))
        user = sm.add_user(username, display_name, "-", f"{username.lower()}@agents.kameng.invalid",
                           sm.find_role("Agent"), password, commit=False)
        if not user:  # FAB logged the cause and rolled back (a concurrent registration took the username)
            raise ValidationError(gettext("用户名已被使用"))
        agent = agents.create_agent(display_name, invite.tier_id, invite.agent_id, user_id=user.id, phone=phone)
        agent.risk_hold = decision.outcome == "review"
        event.agent_id = agent.id
        risk.record("registration", event)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return agent


__all__ = ["ALPHABET", "InvalidInvite", "assignable_tiers", "codes_of", "create_code", "deactivate", "new_code",
           "own_code", "recruit_refusal", "register", "status_of", "usable_code"]
