"""Open API keys: an agent's, and a partner platform's for the shared risk feed (app.risk.feed). Below the Open
API's order rules (app.openapi.service), so the risk feed can mint keys without loading the order path."""
from __future__ import annotations

import ipaddress
import re
import secrets

from flask_babel import gettext
from sqlalchemy import select

from app import crypto
from app.agents.models import Agent
from app.clock import utcnow
from app.errors import NotFound, ValidationError
from app.extensions import db
from app.openapi.models import ApiKey

MAX_KEYS_PER_AGENT = 20


# --- keys ---------------------------------------------------------------------------------------------------

def parse_allowlist(text: str | None) -> str | None:
    """'1.2.3.4, 10.0.0.0/8' -> normalized; raises ValidationError naming a bad entry."""
    entries = [e.strip() for e in re.split(r"[,\s]+", text or "") if e.strip()]
    normalized = []
    for entry in entries:
        try:
            normalized.append(str(ipaddress.ip_network(entry, strict=False)))
        except ValueError:
            raise ValidationError(gettext("IP 白名单格式不正确: %(entry)s", entry=repr(entry))) from None
    return ",".join(normalized) or None


def create_key(agent_id: int, name: str = "", ip_allowlist: str | None = None) -> tuple[ApiKey, str]:
    """Create a key; returns it with its plain secret, which is never shown again. Commits."""
    agent = db.session.get(Agent, agent_id)
    if agent is None or not agent.active:
        raise NotFound(gettext("代理不存在或已停用"))
    name = (name or "").strip()[:64]
    allowlist = parse_allowlist(ip_allowlist)
    active = db.session.scalar(select(db.func.count()).where(ApiKey.agent_id == agent_id, ApiKey.active.is_(True)))
    if active >= MAX_KEYS_PER_AGENT:
        raise ValidationError(
            gettext("最多 %(max_keys_per_agent)s 个有效密钥，请先吊销不用的密钥", max_keys_per_agent=MAX_KEYS_PER_AGENT)
        )
    secret = secrets.token_hex(32)
    key = ApiKey(agent_id=agent_id, name=name, app_key="ak" + secrets.token_hex(15),
                 secret_enc=crypto.encrypt(secret), secret_hint=secret[-4:], ip_allowlist=allowlist, active=True)
    db.session.add(key)
    db.session.commit()
    return key, secret


def create_partner_key(partner_id: int, name: str = "", ip_allowlist: str | None = None) -> tuple[ApiKey, str]:
    """A partner platform's key (scope risk_feed: it may pull the shared risk feed and nothing else); returns it
    with its plain secret, shown once. Commits."""
    allowlist = parse_allowlist(ip_allowlist)
    secret = secrets.token_hex(32)
    key = ApiKey(partner_id=partner_id, scope="risk_feed", name=(name or "").strip()[:64],
                 app_key="ak" + secrets.token_hex(15), secret_enc=crypto.encrypt(secret), secret_hint=secret[-4:],
                 ip_allowlist=allowlist, active=True)
    db.session.add(key)
    db.session.commit()
    return key, secret


def revoke_key(key_id: int, agent_id: int | None = None) -> ApiKey:
    """Revoke a key. With agent_id, only that agent's own key (agents revoke their own; admins any). Commits."""
    key = db.session.get(ApiKey, key_id)
    if key is None or (agent_id is not None and key.agent_id != agent_id):
        raise NotFound(gettext("密钥不存在"))
    if key.active:
        key.active = False
        key.revoked_at = utcnow()
        db.session.commit()
    return key


def key_secret(key: ApiKey) -> str:
    return crypto.decrypt(key.secret_enc)
