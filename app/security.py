"""Security manager: FAB's, with the Kameng roles kept in sync at start-up, risk control on password logins, a
second sign-in step for users with two-factor sign-in on (app/twofactor), sessions re-stamped after the user's
own password change (app/twofactor/sessions.py), and FAB's REST login switched off."""
from __future__ import annotations

from flask import flash, has_request_context, request
from flask_appbuilder.api import expose
from flask_appbuilder.security.api import SecurityApi
from flask_appbuilder.security.sqla.manager import SecurityManager
from flask_babel import lazy_gettext

from app.twofactor import sessions
from app.twofactor.views import KamengAuthDBView

LOGIN_REFUSED = lazy_gettext("登录已被风控拦截，请稍后再试或联系客服")


class RefusedSecurityApi(SecurityApi):
    """FAB 5.3 registers its security API (/api/v1/security/login and /refresh) whatever FAB_ADD_SECURITY_API
    says; its login hands out JWTs for a password alone, past the second sign-in step and the login rate limit.
    Nothing of Kameng uses FAB's JWTs (the Open API signs its requests), so both endpoints refuse with a JSON 404.
    The methods are overridden (not only left unrouted) so that FAB's JWT-issuing code is never reachable."""

    @expose("/login", methods=["POST"])
    def login(self):
        return self.response_404()

    @expose("/refresh", methods=["POST"])
    def refresh(self):
        return self.response_404()


class KamengSecurityManager(SecurityManager):
    authdbview = KamengAuthDBView
    security_api = RefusedSecurityApi

    def reset_password(self, userid, password):
        """FAB's password change (the user's own form and an admin's reset on the user screen). The new password
        hash changes the user's session fingerprint, which signs out their other sessions; the request that made
        the change keeps its own session when it is that user's."""
        super().reset_password(userid, password)
        user = self.get_user_by_id(userid)
        if user is not None:
            sessions.restamp_if_current(user.id)

    def auth_user_db(self, username, password):
        """FAB's password check (its login page and its REST login both come here), behind risk control (event
        login): a block (a blacklisted address, device or login; password guessing from one IP) refuses even the
        right password; each wrong password is counted (login_failed) for the guessing rule."""
        if not username:
            return super().auth_user_db(username, password)
        event = _login_event(username)
        if event is not None:
            from app.risk import service as risk

            decision = risk.evaluate(event)
            if decision.outcome == "block":
                if has_request_context():
                    flash(str(LOGIN_REFUSED), "danger")
                return None
        user = super().auth_user_db(username, password)
        if user is None and event is not None:
            _count_failure(event)
        return user


def _login_event(username: str):
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
    event = _login_event(username)
    if event is not None:
        _count_failure(event)


def _count_failure(event) -> None:
    from app.extensions import db
    from app.risk import service as risk

    try:
        risk.record("login_failed", event)
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
