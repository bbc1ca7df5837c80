"""Risk control at sign-in: the login's risk input and its failed attempts counted, for the password form
(app.security) and the second step (app.twofactor.views) alike."""
from __future__ import annotations

from typing import TYPE_CHECKING

from flask import has_request_context, request

if TYPE_CHECKING:
    from app.risk.service import RiskInput


def login_event(username: str) -> RiskInput | None:
    """The login's risk input: the caller's address, the login page's device id (ignored when malformed, a login
    is never refused for it) and the login name. None outside a request (nothing to judge)."""
    if not has_request_context():
        return None
    from app.errors import ValidationError
    from app.orders.service import clean_device_id
    from app.risk import service as risk

    try:
        device = clean_device_id(request.form.get("device_id"))
    except ValidationError:
        device = None
    return risk.RiskInput(event="login", ip=request.remote_addr, device=device, agent_login=str(username)[:128],
                          enforce_limits=False)


def count_login_failure(username: str) -> None:
    """Count a failed sign-in step for risk control's password-guessing rule (the second step's wrong codes)."""
    event = login_event(username)
    if event is not None:
        count_failure(event)


def count_failure(event: RiskInput) -> None:
    from app.extensions import db
    from app.risk import service as risk

    try:
        risk.record("login_failed", event)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
