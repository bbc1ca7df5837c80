"""Sign-in session fingerprints: a signed-in session ends when its user's security changes elsewhere.

Sessions are signed cookies, so the server cannot list and delete them. Instead every sign-in (Flask-Login's
user_logged_in signal, sent by each login_user call) stores in the session a keyed hash over the user's id,
password hash and two-factor state (on/off and which secret). Each request of a signed-in user recomputes it; when
it differs (the password was changed or reset, two-factor sign-in turned on, off or reset by an admin), the session
is signed out. A session without a fingerprint (made before fingerprints existed) is signed out once. The request
that made the change re-stamps its own session (restamp_if_current) so the user making it stays signed in.
"""
from __future__ import annotations

import hmac

from flask import Flask, flash, has_request_context, jsonify, redirect, request, session
from flask_babel import gettext
from flask_login import current_user, logout_user, user_logged_in
from sqlalchemy import select

from app.crypto import keyed_hash
from app.extensions import db
from app.machines import userless
from app.twofactor.models import StaffTwoFactor

SESSION_KEY = "kameng_fp"
_SKIP_ENDPOINTS = {"static", "appbuilder.static"}


def fingerprint(user) -> str:
    """The keyed hash of what a session's validity depends on. A pending (not yet confirmed) enrolment secret is
    left out: opening the enrolment page must not end the user's other sessions."""
    row = db.session.execute(select(StaffTwoFactor.enabled, StaffTwoFactor.secret_enc)
                             .where(StaffTwoFactor.user_id == user.id)).first()
    enabled = bool(row and row.enabled)
    secret = (row.secret_enc or "") if enabled else ""
    return keyed_hash("session-fingerprint", user.id, user.password or "", enabled, secret)


def stamp(user) -> None:
    """Store the user's current fingerprint in this request's session."""
    session[SESSION_KEY] = fingerprint(user)


def restamp_if_current(user_id: int) -> None:
    """After a security change to `user_id`: keep this request's session signed in when it is that user's."""
    if has_request_context() and current_user.is_authenticated and current_user.id == user_id:
        stamp(current_user)


def _stamp_on_login(sender, user, **_extra) -> None:
    stamp(user)


def _wants_json() -> bool:
    return (request.is_json or request.accept_mimetypes.best == "application/json"
            or "/_dash-" in request.path or request.path.startswith("/api/"))


def install(app: Flask, appbuilder) -> None:
    """Stamp every sign-in of `app` and check the stamp on every request of a signed-in user (after FAB has loaded
    the user, before the enrolment guard)."""
    user_logged_in.connect(_stamp_on_login, app)

    @app.before_request
    def _check_session_fingerprint():
        if request.endpoint in _SKIP_ENDPOINTS or userless(request.path) or not current_user.is_authenticated:
            return None
        if hmac.compare_digest(str(session.get(SESSION_KEY) or ""), fingerprint(current_user)):
            return None
        logout_user()
        session.pop(SESSION_KEY, None)
        message = gettext("登录已失效，请重新登录。")
        if _wants_json():
            return jsonify({"message": message}), 401
        flash(message, "warning")
        return redirect(appbuilder.get_url_for_login)
