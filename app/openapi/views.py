"""Screens for API keys: agents manage their own (portal); admins see and revoke all; callback attempts."""
from __future__ import annotations

from flask import flash, redirect, request, url_for
from flask_appbuilder import BaseView, ModelView, expose, has_access
from flask_appbuilder.actions import action
from flask_appbuilder.models.sqla.filters import FilterInFunction
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import gettext
from flask_babel import lazy_gettext as _
from sqlalchemy import select

from app.errors import KamengError
from app.extensions import db
from app.openapi import service
from app.openapi.models import ApiKey, CallbackAttempt
from app.orders.models import ORDER_STATUSES
from app.scope import own_agent_ids, require_agent
from app.views_common import ReadableColumnsMixin, text_of

KEY_LABELS = {"agent": _("代理"), "name": _("名称"), "app_key": _("App Key"), "secret_hint": _("密钥尾号"),
              "ip_allowlist": _("IP 白名单"), "active": _("有效"), "created_at": _("创建时间"),
              "revoked_at": _("吊销时间"), "last_used_at": _("最近使用")}
ATTEMPT_LABELS = {"order": _("订单"), "agent": _("代理"), "attempt": _("第几次"), "url": _("回调地址"),
                  "order_status": _("订单状态"), "http_status": _("HTTP 状态"), "error": _("错误"),
                  "succeeded": _("成功"), "duration_ms": _("耗时 ms"), "created_at": _("时间"),
                  "next_attempt_at": _("下次重试")}


class MyApiKeysView(BaseView):
    """Portal: create (secret shown once), list and revoke my API keys; see my callback attempts."""
    route_base = "/portal/api-keys"
    default_view = "index"

    def _render(self, agent, new_key=None, new_secret=None):
        keys = db.session.scalars(select(ApiKey).where(ApiKey.agent_id == agent.id).order_by(ApiKey.id.desc())).all()
        attempts = db.session.scalars(select(CallbackAttempt).where(CallbackAttempt.agent_id == agent.id)
                                      .order_by(CallbackAttempt.id.desc()).limit(50)).all()
        return self.render_template("kameng/api_keys.html", keys=keys, attempts=attempts, new_key=new_key,
                                    new_secret=new_secret)

    @expose("/", methods=["GET"])
    @has_access
    def index(self):
        return self._render(require_agent())

    @expose("/create", methods=["POST"])
    @has_access
    def create(self):
        agent = require_agent()
        try:
            key, secret = service.create_key(agent.id, request.form.get("name", ""),
                                             request.form.get("ip_allowlist", ""))
        except KamengError as exc:
            flash(exc.message, "danger")
            return redirect(url_for("MyApiKeysView.index"))
        flash(gettext("密钥已创建。Secret 只显示这一次，请立即保存。"), "warning")
        return self._render(agent, new_key=key, new_secret=secret)

    @expose("/revoke/<int:key_id>", methods=["POST"])
    @has_access
    def revoke(self, key_id: int):
        agent = require_agent()
        try:
            key = service.revoke_key(key_id, agent_id=agent.id)  # only my own keys
        except KamengError as exc:
            flash(exc.message, "danger")
        else:
            flash(gettext("已吊销 %(app_key)s", app_key=key.app_key), "info")
        return redirect(url_for("MyApiKeysView.index"))


class ApiKeyAdminView(ReadableColumnsMixin, ModelView):
    datamodel = SQLAInterface(ApiKey)
    route_base = "/api-keys"
    base_permissions = ["can_list", "can_show", "revoke"]
    list_title = show_title = _("API 密钥")
    list_columns = ["agent", "name", "app_key", "secret_hint", "ip_allowlist", "active", "created_at",
                    "last_used_at", "revoked_at"]
    show_columns = list_columns
    search_columns = ["agent", "app_key", "active", "created_at"]
    label_columns = KEY_LABELS
    base_order = ("id", "desc")

    @action("revoke", _("吊销"), _("确定吊销所选密钥？"), "fa-ban")
    def revoke(self, items):
        items = [item for item in (items if isinstance(items, list) else [items]) if item is not None]
        for item in items:  # an unknown pk loads None
            service.revoke_key(item.id)
        flash(gettext("已吊销 %(count)s 个密钥", count=len(items)), "info")
        return redirect(url_for("ApiKeyAdminView.list"))


class CallbackAttemptAdminView(ReadableColumnsMixin, ModelView):
    datamodel = SQLAInterface(CallbackAttempt)
    route_base = "/callback-attempts"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("回调记录")
    list_columns = ["created_at", "order", "agent", "attempt", "order_status", "http_status", "succeeded", "error",
                    "next_attempt_at"]
    show_columns = list_columns + ["url", "duration_ms"]
    search_columns = ["order", "agent", "succeeded", "created_at"]
    label_columns = ATTEMPT_LABELS
    formatters_columns = {"order_status": text_of(ORDER_STATUSES)}
    base_order = ("id", "desc")


class MyCallbackAttemptView(ReadableColumnsMixin, ModelView):
    datamodel = SQLAInterface(CallbackAttempt)
    route_base = "/portal/my-callbacks"
    base_permissions = ["can_list", "can_show"]
    base_filters = [["agent_id", FilterInFunction, own_agent_ids]]
    search_form_query_rel_fields = {"agent": [["id", FilterInFunction, own_agent_ids]]}
    list_title = show_title = _("我的回调记录")
    list_columns = ["created_at", "order", "attempt", "order_status", "http_status", "succeeded", "error",
                    "next_attempt_at"]
    show_columns = list_columns + ["url", "duration_ms"]
    search_columns = ["succeeded", "created_at"]
    label_columns = ATTEMPT_LABELS
    formatters_columns = {"order_status": text_of(ORDER_STATUSES)}
    base_order = ("id", "desc")


def register(appbuilder) -> None:
    appbuilder.add_view(MyApiKeysView, "API 密钥", href="/portal/api-keys/", icon="fa-key", category="代理中心")
    appbuilder.add_view(MyCallbackAttemptView, "我的回调记录", icon="fa-bell", category="代理中心")
    appbuilder.add_link("开放接口文档", href="/open/v1/docs", icon="fa-book", category="代理中心")
    appbuilder.add_view(ApiKeyAdminView, "API 密钥管理", icon="fa-key", category="系统")
    appbuilder.add_view(CallbackAttemptAdminView, "回调记录", icon="fa-bell", category="系统")
