"""Record audit entries in the caller's transaction (never committed alone)."""
from __future__ import annotations

import json
from typing import Any

from flask import g, has_request_context

from app.audit.models import AuditEntry
from app.chain import service as chain
from app.extensions import db


def current_actor_id() -> int | None:
    if has_request_context():
        user = getattr(g, "user", None)
        if user is not None and getattr(user, "is_authenticated", False):
            return user.id
    return None


def _dump(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def record(action: str, target_type: str, target_id: Any, old: Any = None, new: Any = None,
           reason: str | None = None, actor_id: int | None = None) -> AuditEntry:
    entry = AuditEntry(action=action, target_type=target_type, target_id=None if target_id is None else str(target_id),
                       old_value=_dump(old), new_value=_dump(new), reason=reason,
                       actor_id=actor_id if actor_id is not None else current_actor_id())
    db.session.add(entry)
    chain.append_audit(entry)  # money-moving actions are hash-chained (app.chain.service.MONEY_ACTIONS)
    return entry


def snapshot(obj: Any, columns: list[str]) -> dict:
    return {c: getattr(obj, c) for c in columns}
