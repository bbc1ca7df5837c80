"""Screens of two-factor sign-in: FAB's password login with a second step, the staff user's own enrolment page
(两步验证), the admins' reset screen (两步验证管理), and the guard that keeps staff on the enrolment page while
the platform setting makes two-factor sign-in mandatory."""
from __future__ import annotations

from flask import abort, current_app, flash, g, redirect, request, session, url_for
from flask_appbuilder import BaseView, ModelView, expose, has_access
from flask_appbuilder.actions import action
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_appbuilder.security.decorators import no_cache
from flask_appbuilder.security.forms import LoginForm_db
from flask_appbuilder.security.views import AuthDBView
from flask_appbuilder.utils.base import get_safe_redirect
from flask_babel import gettext
from flask_babel import lazy_gettext as _
from flask_login import login_user

from app.errors import KamengError
from app.extensions import db
from app.machines import userless
from app.twofactor import service, sessions
from app.twofactor.models import StaffTwoFactor
from app.views_common import ReadableColumnsMixin

PENDING = "kameng_2fa_pending"  # session: {"uid", "cid", "next"} between the password and the second step


class KamengAuthDBView(AuthDBView):
    """FAB 5.3's AuthDBView.login, with a second step for users who turned two-factor sign-in on: the right
    password only starts a challenge; login_user happens after a valid code (or recovery code) on
    /login/two-factor. FAB rate-limits POSTs to this view's blueprint, the second step included."""

    @expose("/login/", methods=["GET", "POST"])
    @no_cache
    def login(self):
        if g.user is not None and g.user.is_authenticated:
            return redirect(self._get_safe_next_url())
        form = LoginForm_db()
        if form.validate_on_submit():
            next_url = get_safe_redirect(request.args.get("next", ""))
            session.pop(PENDING, None)
            user = self.appbuilder.sm.auth_user_db(form.username.data, form.password.data)
            if not user:
                flash(str(self.invalid_login_message), "warning")
                return redirect(self.appbuilder.get_url_for_login_with(next_url))
            try:
                challenge = service.begin_challenge(user.id, ip=request.remote_addr)
            except service.TwoFactorLocked:
                # answered exactly as a wrong password (message, page, risk count): a lock must not confirm it
                _count_risk_failure(user.id)
                flash(str(self.invalid_login_message), "warning")
                return redirect(self.appbuilder.get_url_for_login_with(next_url))
            except KamengError as exc:
                flash(exc.message, "danger")
                return redirect(self.appbuilder.get_url_for_login_with(next_url))
            if challenge is None:
                login_user(user, remember=False)
                return redirect(next_url)
            session[PENDING] = {"uid": user.id, "cid": challenge, "next": next_url}
            return redirect(url_for(f"{self.endpoint}.two_factor"))
        return self.render_template(self.login_template, title=self.title, form=form, appbuilder=self.appbuilder)

    @expose("/login/two-factor", methods=["GET", "POST"])
    @no_cache
    def two_factor(self):
        pending = session.get(PENDING)
        if not isinstance(pending, dict) or not pending.get("uid"):
            return redirect(self.appbuilder.get_url_for_login)
        if request.method == "POST":
            try:
                step = service.answer_challenge(pending["uid"], pending.get("cid"), request.form.get("code"),
                                                ip=request.remote_addr)
            except KamengError as exc:
                if getattr(exc, "wrong_answer", False):
                    _count_risk_failure(pending["uid"])
                flash(exc.message, "danger")
                if isinstance(exc, service.ChallengeOver):
                    session.pop(PENDING, None)
                    return redirect(self.appbuilder.get_url_for_login)
                return self._second_step_page(), 400
            session.pop(PENDING, None)
            user = self.appbuilder.sm.get_user_by_id(pending["uid"])
            if user is None or not user.is_active:
                return redirect(self.appbuilder.get_url_for_login)
            login_user(user, remember=False)
            if step.recovery_used:
                flash(gettext("已使用一个恢复码，还剩 %(left)s 个。", left=step.recovery_left), "warning")
            return redirect(pending.get("next") or self.appbuilder.get_url_for_index)  # made safe at step one
        return self._second_step_page()

    def _second_step_page(self):
        return self.render_template("kameng/two_factor_login.html", title=gettext("两步验证"),
                                    appbuilder=self.appbuilder)

    @expose("/logout/")
    def logout(self):
        session.pop(PENDING, None)
        return super().logout()


def _count_risk_failure(user_id: int) -> None:
    """A wrong second step counts as a failed login for risk control's password-guessing rule (per address)."""
    from app.risk.logins import count_login_failure

    user = current_app.appbuilder.sm.get_user_by_id(user_id)
    if user is not None:
        count_login_failure(user.username)


class TwoFactorView(BaseView):
    """两步验证: the signed-in staff user's own enrolment (QR code and secret, confirmed with a code), recovery
    codes (shown once), and turning it off."""
    route_base = "/two-factor"
    default_view = "index"

    def _page(self, recovery_codes=None, status=200):
        user = g.user
        row = service.status_of(user.id)
        enrolment = None
        if row is None or not row.enabled:
            try:
                enrolment = service.start_enrolment(user)
            except KamengError as exc:
                flash(exc.message, "danger")
                return redirect(self.appbuilder.get_url_for_index)
            row = service.status_of(user.id)
        return self.render_template(
            "kameng/two_factor.html", row=row, enrolment=enrolment, recovery_codes=recovery_codes,
            codes_left=service.recovery_codes_left(user.id), required=service.required(),
            secret_groups=_groups(enrolment.secret) if enrolment else None), status

    @expose("/", methods=["GET"])
    @has_access
    @no_cache
    def index(self):
        return self._page()

    @expose("/activate", methods=["POST"])
    @has_access
    @no_cache
    def activate(self):
        try:
            codes = service.activate(g.user, request.form.get("code", ""))
        except KamengError as exc:
            flash(exc.message, "danger")
            return self._page(status=400)
        sessions.restamp_if_current(g.user.id)  # the user's other sessions end; this one goes on
        flash(gettext("两步验证已启用。请立即保存下面的恢复码，它们只显示这一次。"), "success")
        return self._page(recovery_codes=codes)

    @expose("/recovery-codes", methods=["POST"])
    @has_access
    @no_cache
    def regenerate(self):
        try:
            codes = service.regenerate_recovery_codes(g.user, request.form.get("code", ""))
        except KamengError as exc:
            flash(exc.message, "danger")
            return self._page(status=400)
        flash(gettext("已生成新的恢复码，旧的恢复码已失效。请立即保存，它们只显示这一次。"), "success")
        return self._page(recovery_codes=codes)

    @expose("/disable", methods=["POST"])
    @has_access
    @no_cache
    def disable(self):
        try:
            service.disable(g.user, request.form.get("code", ""))
        except KamengError as exc:
            flash(exc.message, "danger")
            return self._page(status=400)
        sessions.restamp_if_current(g.user.id)
        flash(gettext("两步验证已关闭。"), "info")
        return redirect(url_for("TwoFactorView.index"))


def _groups(secret: str) -> str:
    return " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))


class TwoFactorAdminView(ReadableColumnsMixin, ModelView):
    """两步验证管理: who has two-factor sign-in on; admins reset it for a user who lost the phone (audited)."""
    datamodel = SQLAInterface(StaffTwoFactor)
    route_base = "/two-factor-admin"
    base_permissions = ["can_list", "can_show", "reset_two_factor"]
    list_title = show_title = _("两步验证管理")
    list_columns = ["user", "enabled", "enabled_at", "recovery_codes_left", "locked_until", "updated_at"]
    show_columns = list_columns
    search_columns = ["user", "enabled", "enabled_at"]
    label_columns = {"user": _("用户"), "enabled": _("已启用"), "enabled_at": _("启用时间"),
                     "recovery_codes_left": _("剩余恢复码"), "locked_until": _("锁定至"), "updated_at": _("更新时间")}
    base_order = ("updated_at", "desc")

    @action("reset_two_factor", _("重置两步验证"), _("确定重置所选用户的两步验证？他们需要重新启用。"), "fa-undo")
    def reset_two_factor(self, items):
        items = [item for item in (items if isinstance(items, list) else [items]) if item is not None]
        done = 0
        for item in items:
            try:
                service.reset(item.user_id, actor_id=g.user.id)
            except KamengError as exc:
                db.session.rollback()
                flash(f"{item.user}: {exc.message}", "warning")
            else:
                sessions.restamp_if_current(item.user_id)  # an admin resetting their own: stays signed in
                done += 1
        if done:
            flash(gettext("已重置 %(n)s 个用户的两步验证", n=done), "info")
        return redirect(url_for("TwoFactorAdminView.list"))


# Endpoints a staff user who must enrol may still reach: enrolment itself, signing out, language, static files.
_ENROLMENT_ALLOWED = {"static", "appbuilder.static", "LocaleView.index"}


def install_enrolment_guard(app, appbuilder) -> None:
    auth_endpoint = appbuilder.sm.auth_view.endpoint

    @app.before_request
    def _staff_must_enrol():
        endpoint = request.endpoint or ""
        if endpoint in _ENROLMENT_ALLOWED or endpoint.startswith(("TwoFactorView.", f"{auth_endpoint}.")):
            return None
        if userless(request.path):  # a machine endpoint acts as nobody: nothing to enrol for
            return None
        user = getattr(g, "user", None)
        if user is None or not getattr(user, "is_authenticated", False) or not service.must_enrol(user):
            return None
        if not appbuilder.sm.has_access("can_index", "TwoFactorView"):
            abort(403)  # a staff role without the enrolment screen: refuse rather than loop between redirects
        if request.method == "GET":
            flash(gettext("平台要求员工使用两步验证：请先启用两步验证。"), "warning")
        return redirect(url_for("TwoFactorView.index"))


def register(appbuilder) -> None:
    appbuilder.add_view(TwoFactorView, "两步验证", href="/two-factor/", icon="fa-mobile", category="系统")
    appbuilder.add_view(TwoFactorAdminView, "两步验证管理", icon="fa-shield", category="系统")
    app = current_app._get_current_object()
    sessions.install(app, appbuilder)  # before the enrolment guard: a stale session is signed out first
    install_enrolment_guard(app, appbuilder)
