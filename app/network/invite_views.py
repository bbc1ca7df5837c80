"""Portal pages for invitations (my invite codes, posters) and the team tree, and the public /r/<code> registration
page. Thin: parse, call app.network.invites / poster / team, render."""
from __future__ import annotations

from datetime import timedelta

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_appbuilder import BaseView, expose, has_access
from flask_babel import gettext

from app.clock import utcnow
from app.errors import KamengError, ValidationError
from app.extensions import db
from app.network import invites, poster, team
from app.risk import agents as risk_agents
from app.scope import require_agent

public = Blueprint("invite", __name__)



def invite_link(code: str) -> str:
    base = (current_app.config.get("PUBLIC_BASE_URL") or request.host_url).rstrip("/")
    return f"{base}/r/{code}"


class InviteView(BaseView):
    """我的邀请码: create, list (link, uses, status), deactivate, download the poster. Own codes only."""
    route_base = "/portal/invites"
    default_view = "index"

    @expose("/", methods=["GET"])
    @has_access
    def index(self):
        agent = require_agent()
        refusal = invites.recruit_refusal(agent)
        codes = invites.codes_of(agent)
        return self.render_template("kameng/invites.html", agent=agent, refusal=refusal, codes=codes,
                                    tiers=[] if refusal else invites.assignable_tiers(agent),
                                    status_of=invites.status_of, link_for=invite_link)

    @expose("/create", methods=["POST"])
    @has_access
    def create(self):
        agent = require_agent()
        try:
            days = (request.form.get("expires_days") or "").strip()
            if days and not (days.isdigit() and 1 <= int(days) <= 3650):
                raise ValidationError(gettext("有效天数须为 1-3650 的整数"))
            expires_at = utcnow() + timedelta(days=int(days)) if days else None
            invite = invites.create_code(agent.id, request.form.get("tier_id"), request.form.get("max_uses"),
                                         expires_at)
        except KamengError as exc:
            db.session.rollback()
            flash(exc.message, "danger")
            return redirect(url_for("InviteView.index"))
        flash(gettext("已生成邀请码 %(code)s", code=invite.code), "success")
        return redirect(url_for("InviteView.index"))

    @expose("/<code>/deactivate", methods=["POST"])
    @has_access
    def deactivate(self, code):
        agent = require_agent()
        try:
            invite = invites.deactivate(agent, code)
        except KamengError:
            abort(404)
        flash(gettext("已停用邀请码 %(code)s", code=invite.code), "info")
        return redirect(url_for("InviteView.index"))

    @expose("/<code>/poster.png", methods=["GET"])
    @has_access
    def poster(self, code):
        agent = require_agent()
        try:
            invite = invites.own_code(agent, code)
        except KamengError:
            abort(404)
        png = poster.render_poster(current_app.config.get("APP_NAME", "卡盟 Kameng"), agent.name,  # i18n-keep: data
                                   invite_link(invite.code), invite.code)
        return Response(png, mimetype="image/png", headers={
            "Content-Disposition": f'attachment; filename="invite-{invite.code}.png"',
            "Cache-Control": "private, no-store"})


class TeamTreeView(BaseView):
    """团队结构: my downline as a tree, with agents and GMV per branch."""
    route_base = "/portal/team-tree"
    default_view = "index"

    @expose("/", methods=["GET"])
    @has_access
    def index(self):
        agent = require_agent()
        return self.render_template("kameng/team_tree.html", agent=agent, **team.team_view(agent))


# --- public registration -------------------------------------------------------------------------------------

@public.route("/r/<code>", methods=["GET", "POST"])
def register_page(code: str):
    try:
        invite = invites.usable_code(code)
    except KamengError as exc:
        return render_template("kameng/invite_register.html", invalid=exc.message, invite=None, form={}), 404
    inviter, tier = invite.agent.name, invite.tier.name
    error = None
    if request.method == "POST":
        form = request.form
        try:
            agent = invites.register(code, form.get("username"), form.get("password"), form.get("password2"),
                                     form.get("display_name"), form.get("phone"), ip=request.remote_addr,
                                     device_id=form.get("device_id"))
        except invites.InvalidInvite as exc:
            return render_template("kameng/invite_register.html", invalid=exc.message, invite=None, form={}), 404
        except KamengError as exc:
            error = exc.message
        else:
            done = f"{agent.name}（{risk_agents.HELD_MESSAGE}）" if agent.risk_hold else agent.name
            return render_template("kameng/invite_register.html", done=done, invite=None, inviter=inviter,
                                   tier=tier, form={}, held=agent.risk_hold), 201
    return render_template("kameng/invite_register.html", invite=invite, inviter=inviter, tier=tier, error=error,
                           form=request.form), (400 if error else 200)


def register_public(app: Flask) -> None:
    """The /r/<code> blueprint (CSRF on, the global CSRFProtect covers it); registration POSTs rate-limited per
    address with FAB's limiter."""
    limiter = app.appbuilder.sm.limiter
    limited = limiter.limit(lambda: current_app.config.get("INVITE_REGISTER_RATE_LIMIT", "10 per hour"),
                            methods=["POST"])(register_page)
    app.register_blueprint(public)
    # Flask-Limiter enforces a decorated limit only inside the wrapper it returns: route the wrapper.
    app.view_functions["invite.register_page"] = limited


def register(appbuilder, category: str) -> None:
    """Portal menu entries (called from app.portal.views.register)."""
    appbuilder.add_view(InviteView, "邀请码", href="/portal/invites/", icon="fa-qrcode", category=category)
    appbuilder.add_view(TeamTreeView, "团队结构", href="/portal/team-tree/", icon="fa-share-alt", category=category)


__all__ = ["InviteView", "TeamTreeView", "public", "register", "register_public"]
