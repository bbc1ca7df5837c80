"""Security manager: FAB's, with the Kameng roles kept in sync at start-up, risk control on password logins, a
second sign-in step for users with two-factor sign-in on (app/twofactor), sessions re-stamped after the user's
own password change (app/twofactor/sessions.py), and FAB's REST login switched off."""
from __future__ import annotations

from flask import flash, has_request_context
from flask_appbuilder.api import expose
from flask_appbuilder.security.api import SecurityApi
from flask_appbuilder.security.sqla.manager import SecurityManager
from flask_babel import lazy_gettext

from app.risk import logins
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
        event = logins.login_event(username)
        if event is not None:
            from app.risk import service as risk

            decision = risk.evaluate(event)
            if decision.outcome == "block":
                if has_request_context():
                    flash(str(LOGIN_REFUSED), "danger")
                return None
        user = super().auth_user_db(username, password)
        if user is None and event is not None:
            logins.count_failure(event)
        return user
