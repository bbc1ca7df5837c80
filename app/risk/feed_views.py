"""共享名单 screens: the legal basis for sharing (versioned consent text), this platform's publisher identity, the
sharing keys (rotate, add a partner's, retire), the partners (register, feed key, suspend), export and import, the
log of who exported what, and the entries imported from partners with their source. Handlers translate forms into
app.risk.feed calls; nothing here decides."""
from __future__ import annotations

import json

from flask import Response, flash, g, redirect, request, url_for
from flask_appbuilder import BaseView, ModelView, expose, has_access
from flask_appbuilder.actions import action
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_appbuilder.security.decorators import permission_name
from flask_babel import gettext
from flask_babel import lazy_gettext as _
from sqlalchemy import func, select

from app.audit.models import AuditEntry
from app.errors import KamengError
from app.extensions import db
from app.risk import feed
from app.risk.feed_models import RiskFeedEntry, RiskFeedPartner, RiskSharingKey
from app.views_common import ReadableColumnsMixin, text_of

RISK = "风控"
BASIS_TEXT = {"consent": _("用户同意"), "contract": _("履行合同所必需"), "legal_obligation": _("履行法定义务"),
              "legitimate_interest": _("反欺诈正当利益")}
EVIDENCE_TEXT = {"confirmed": _("已确认"), "suspected": _("疑似")}
REASON_TEXT = {"fraud_confirmed": _("已确认欺诈"), "fraud_suspected": _("疑似欺诈")}
KIND_TEXT = {"ip": _("IP"), "cidr": _("网段"), "device": _("设备"), "contact": _("联系方式"), "phone": _("手机号"),
             "id_number": _("身份证号"), "payment_account": _("支付账号"), "agent": _("代理登录名")}
LOG_ACTIONS = ("risk_feed.export", "risk_feed.import", "risk_feed.key_add", "risk_feed.key_retire",
               "risk_feed.identity", "risk_feed.partner_add", "risk_feed.partner_key", "risk_feed.partner_active",
               "risk_feed.legal_basis", "risk_feed.entry_remove")
ACTION_TEXT = {"risk_feed.export": _("导出"), "risk_feed.import": _("导入"), "risk_feed.key_add": _("新增共享密钥"),
               "risk_feed.key_retire": _("停用共享密钥"), "risk_feed.identity": _("生成发布方身份"),
               "risk_feed.partner_add": _("登记合作方"), "risk_feed.partner_key": _("合作方接口密钥"),
               "risk_feed.partner_active": _("合作方启停"), "risk_feed.legal_basis": _("登记法律依据"),
               "risk_feed.entry_remove": _("移除导入条目")}


class RiskFeedView(BaseView):
    """One page for sharing; every change is audited by app.risk.feed. Reading is can_index (Manager too);
    changing is can_manage (Admin)."""
    route_base = "/risk-feed"
    default_view = "index"
    base_permissions = ["can_index", "can_manage"]

    def _page(self, status: int = 200, error: str | None = None, **shown):
        partners = db.session.scalars(select(RiskFeedPartner).order_by(RiskFeedPartner.id)).all()
        imported = dict(db.session.execute(select(RiskFeedEntry.partner_id, func.count())
                                           .where(RiskFeedEntry.removed_at.is_(None))
                                           .group_by(RiskFeedEntry.partner_id)).all())
        log = db.session.scalars(select(AuditEntry).where(AuditEntry.action.in_(LOG_ACTIONS))
                                 .order_by(AuditEntry.id.desc()).limit(50)).all()
        keys = db.session.scalars(select(RiskSharingKey).order_by(RiskSharingKey.id.desc())).all()
        return self.render_template(
            "kameng/risk/feed.html", title=gettext("共享名单"), error=error, basis=feed.legal_basis(),
            identity=feed.publisher(), keys=keys, partners=partners, imported=imported,
            log=[(row, json.loads(row.new_value or "{}")) for row in log], basis_text=BASIS_TEXT,
            action_text=ACTION_TEXT,
            can_manage=self.appbuilder.sm.has_access("can_manage", "RiskFeedView"), **shown), status

    def _refused(self, exc: KamengError):
        db.session.rollback()
        return self._page(exc.status if 400 <= exc.status < 500 else 400, exc.message)

    @expose("/")
    @has_access
    def index(self):
        return self._page()

    @expose("/legal-basis", methods=["POST"])
    @has_access
    @permission_name("manage")
    def record_legal_basis(self):
        try:
            row = feed.record_legal_basis(request.form.get("basis", ""), request.form.get("text", ""), g.user.id)
        except KamengError as exc:
            return self._refused(exc)
        flash(gettext("已登记法律依据第 %(version)s 版", version=row.version), "success")
        return redirect(url_for("RiskFeedView.index"))

    @expose("/identity", methods=["POST"])
    @has_access
    @permission_name("manage")
    def identity(self):
        try:
            row = feed.create_identity(request.form.get("publisher_id", ""), g.user.id,
                                       replace=bool(request.form.get("replace")))
        except KamengError as exc:
            return self._refused(exc)
        flash(gettext("已生成发布方身份 %(id)s", id=row.publisher_id), "success")
        return redirect(url_for("RiskFeedView.index"))

    @expose("/keys/rotate", methods=["POST"])
    @has_access
    @permission_name("manage")
    def rotate(self):
        try:
            key, secret = feed.rotate_key(g.user.id)
        except KamengError as exc:
            return self._refused(exc)
        # the secret is shown this once: the admin hands it to the partners
        return self._page(new_key=key, new_secret=secret)

    @expose("/keys/add", methods=["POST"])
    @has_access
    @permission_name("manage")
    def add_key(self):
        try:
            key, _secret = feed.add_key(request.form.get("key_id", ""), request.form.get("secret", ""),
                                        current=bool(request.form.get("current")), actor_id=g.user.id)
        except KamengError as exc:
            return self._refused(exc)
        flash(gettext("已添加共享密钥 %(id)s", id=key.key_id), "success")
        return redirect(url_for("RiskFeedView.index"))

    @expose("/keys/<key_id>/retire", methods=["POST"])
    @has_access
    @permission_name("manage")
    def retire(self, key_id: str):
        try:
            feed.retire_key(key_id[:32], g.user.id)
        except KamengError as exc:
            return self._refused(exc)
        flash(gettext("已停用共享密钥 %(id)s", id=key_id[:32]), "success")
        return redirect(url_for("RiskFeedView.index"))

    @expose("/partners/add", methods=["POST"])
    @has_access
    @permission_name("manage")
    def add_partner(self):
        form = request.form
        try:
            partner = feed.register_partner(form.get("publisher_id", ""), form.get("name", ""),
                                            form.get("public_key", ""), form.get("key_ids", ""), g.user.id)
        except KamengError as exc:
            return self._refused(exc)
        flash(gettext("已登记合作方 %(id)s", id=partner.publisher_id), "success")
        return redirect(url_for("RiskFeedView.index"))

    @expose("/partners/<int:partner_id>/key", methods=["POST"])
    @has_access
    @permission_name("manage")
    def partner_key(self, partner_id: int):
        try:
            key, secret = feed.create_partner_key(partner_id, ip_allowlist=request.form.get("ip_allowlist"),
                                                  actor_id=g.user.id)
        except KamengError as exc:
            return self._refused(exc)
        return self._page(new_api_key=key, new_api_secret=secret)

    @expose("/partners/<int:partner_id>/active", methods=["POST"])
    @has_access
    @permission_name("manage")
    def partner_active(self, partner_id: int):
        try:
            feed.set_partner_active(partner_id, request.form.get("active") == "1", g.user.id)
        except KamengError as exc:
            return self._refused(exc)
        return redirect(url_for("RiskFeedView.index"))

    @expose("/export", methods=["POST"])
    @has_access
    @permission_name("manage")
    def export(self):
        name = "kameng-risk-feed.json"
        try:
            document, _facts = feed.export_file(f"{name} ({g.user.username})", actor_id=g.user.id)
        except KamengError as exc:
            return self._refused(exc)
        return Response(document, mimetype="application/json", headers={
            "Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})

    @expose("/import", methods=["POST"])
    @has_access
    @permission_name("manage")
    def import_feed(self):
        upload = request.files.get("file")
        if upload is None or not upload.filename:
            return self._page(400, gettext("请选择要导入的文件"))
        try:
            summary = feed.import_feed(upload.read(feed.MAX_FEED_BYTES + 1), f"upload:{upload.filename[:100]}",
                                       g.user.id)
        except KamengError as exc:
            return self._refused(exc)
        flash(gettext("已导入 %(publisher)s 的共享名单：%(entries)s 条（新增 %(added)s，移除 %(removed)s）",
                      publisher=summary["publisher"], entries=summary["entries"], added=summary["added"],
                      removed=summary["removed"]), "success")
        return redirect(url_for("RiskFeedView.index"))


class RiskFeedEntryView(ReadableColumnsMixin, ModelView):
    """Entries imported from partners: on the review list only, with their source; the hash is never shown (it
    says nothing without the shared key)."""
    datamodel = SQLAInterface(RiskFeedEntry)
    route_base = "/risk-feed-entries"
    base_permissions = ["can_list", "can_show", "remove"]
    list_title = show_title = _("共享名单条目")
    list_columns = ["partner", "kind", "reason", "evidence", "first_seen", "last_seen", "expires_at", "imported_at",
                    "removed_at"]
    show_columns = list_columns + ["key_id"]
    search_columns = ["partner", "kind", "reason", "evidence", "imported_at", "removed_at"]
    label_columns = {"partner": _("来源（合作方）"), "kind": _("类型"), "reason": _("原因代码"),
                     "evidence": _("证据等级"), "first_seen": _("首次发现"), "last_seen": _("最近发现"),
                     "expires_at": _("失效时间（UTC）"), "imported_at": _("导入时间"), "removed_at": _("移除时间"),
                     "key_id": _("共享密钥编号")}
    formatters_columns = {"kind": text_of(KIND_TEXT), "reason": text_of(REASON_TEXT),
                          "evidence": text_of(EVIDENCE_TEXT)}
    base_order = ("id", "desc")

    @action("remove", _("移除"), _("确定移除所选条目？"), "fa-ban")
    def remove(self, items):
        items = [item for item in (items if isinstance(items, list) else [items]) if item is not None]
        count = feed.remove_imported([item.id for item in items], g.user.id)
        flash(gettext("已移除 %(count)s 个条目", count=count), "info")
        return redirect(url_for("RiskFeedEntryView.list"))


def register(appbuilder) -> None:
    appbuilder.add_view(RiskFeedView, "共享名单", href="/risk-feed/", icon="fa-share-alt", category=RISK)
    appbuilder.add_view(RiskFeedEntryView, "共享名单条目", icon="fa-list", category=RISK)
