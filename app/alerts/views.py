"""系统 → 告警记录 (the alert log: Admin, Manager, Support read), 告警渠道 and 告警规则 (Admin changes, Manager reads).

The channel form takes the webhook address, the signing secret and the e-mail recipients write-only: they are
stored encrypted (app.alerts.service.apply_channel) and shown masked; left blank on edit they stay as they were.
"""
from __future__ import annotations

import json

from flask import abort, flash, g, redirect, url_for
from flask_appbuilder import ModelView, action, expose, has_access
from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import gettext
from flask_babel import lazy_gettext as _
from wtforms import IntegerField, PasswordField, SelectField, StringField
from wtforms.validators import Length, Optional

from app.alerts import messages
from app.alerts import service as alerts
from app.alerts.models import (
    ALERT_STATUSES,
    CHANNEL_KINDS,
    DELIVERY_STATUSES,
    EVENTS,
    SEVERITIES,
    Alert,
    AlertChannel,
    AlertDelivery,
    AlertRule,
)
from app.auditing import AuditedViewMixin
from app.errors import KamengError
from app.forms import checkbox, int_range
from app.views_common import ReadableColumnsMixin, text_of

LOCALES = {"zh": _("中文"), "en": _("English")}


def _time(value) -> str:
    from app.clock import to_local

    return to_local(value).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _facts(value) -> str:
    try:
        facts = json.loads(value or "{}")
    except ValueError:
        return value or "-"
    return "; ".join(f"{k}={', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in sorted(facts.items()))


class AlertDeliveryView(ReadableColumnsMixin, ModelView):
    """Each message of an alert to a channel and where it stands; a failed one can be sent again (Admin)."""
    datamodel = SQLAInterface(AlertDelivery)
    route_base = "/alert-deliveries"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("告警发送记录")
    list_columns = ["created_at", "alert", "channel", "event", "status", "attempts", "last_error", "sent_at"]
    show_columns = ["alert", "channel", "event", "status", "attempts", "last_error", "next_attempt_at",
                    "attempted_at", "sent_at", "created_at"]
    search_columns = ["status", "event", "channel", "created_at"]
    label_columns = {"created_at": _("时间"), "alert": _("告警"), "channel": _("渠道"), "event": _("消息"),
                     "status": _("状态"), "attempts": _("尝试次数"), "last_error": _("最近错误"),
                     "next_attempt_at": _("下次尝试"), "attempted_at": _("最近请求"), "sent_at": _("发送时间")}
    formatters_columns = {"event": text_of(EVENTS), "status": text_of(DELIVERY_STATUSES), "created_at": _time,
                          "sent_at": _time, "next_attempt_at": _time, "attempted_at": _time}
    base_order = ("id", "desc")

    @action("resend", _("重新发送"), _("重新发送所选的失败消息？"), "fa-paper-plane", multiple=True)
    def resend(self, items):
        # FAB loads the rows by primary key without the view's filters: the permission is checked again here, and
        # the service checks each row (only failed ones) under its lock.
        if not self.appbuilder.sm.has_access("resend", self.class_permission_name):
            abort(403)
        for item in items if isinstance(items, list) else [items]:
            try:
                alerts.resend(item.id, g.user.id)
            except KamengError as exc:
                flash(f"#{item.id}: {exc.message}", "danger")
            else:
                flash(gettext("已重新排队发送 #%(id)s", id=item.id), "success")
        return redirect(url_for("AlertDeliveryView.list"))


class AlertView(ReadableColumnsMixin, ModelView):
    """告警记录: every alert, open or resolved, with its messages."""
    datamodel = SQLAInterface(Alert)
    route_base = "/alerts"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("告警记录")
    list_columns = ["opened_at", "severity", "rule", "text", "status", "occurrences", "last_seen_at", "resolved_at"]
    show_columns = ["id", "rule", "severity", "status", "text", "facts", "key", "occurrences", "opened_at",
                    "last_seen_at", "resolved_at"]
    search_columns = ["status", "rule", "severity", "summary", "key", "opened_at"]
    label_columns = {"id": _("编号"), "opened_at": _("首次发现"), "severity": _("级别"), "rule": _("类型"),
                     "text": _("内容"), "summary": _("内容"), "status": _("状态"), "occurrences": _("检测次数"),
                     "last_seen_at": _("最近检测"), "resolved_at": _("恢复时间"), "facts": _("详情"),
                     "key": _("告警键")}
    formatters_columns = {"severity": text_of(SEVERITIES), "status": text_of(ALERT_STATUSES),
                          "rule": lambda v: messages.rule_name(v) if v else "-", "facts": _facts,
                          "opened_at": _time, "last_seen_at": _time, "resolved_at": _time}
    related_views = [AlertDeliveryView]
    base_order = ("id", "desc")


def _channel_fields(adding: bool) -> dict:
    fields = {
        "enabled": checkbox(_("启用"), default=True),
        # Write-only: never rendered back; blank on edit keeps the stored value.
        "webhook": PasswordField(_("Webhook 地址"), widget=BS3PasswordFieldWidget(),
                                 validators=[Optional(), Length(max=1024)],
                                 description=_("从群机器人设置中复制的完整地址；加密保存，不再显示；编辑时留空表示不修改")),
        "secret": PasswordField(_("签名密钥"), widget=BS3PasswordFieldWidget(),
                                validators=[Optional(), Length(max=256)],
                                description=_("钉钉「加签」或飞书「签名校验」的密钥（企业微信不需要）；编辑时留空表示不修改")),
        "clear_secret": checkbox(_("清除签名密钥"), default=False),
        "recipients": StringField(_("收件人邮箱"), widget=BS3TextFieldWidget(),
                                  validators=[Optional(), Length(max=2000)],
                                  description=_("邮件渠道：多个地址用逗号分隔，经平台设置中的发信服务器发送；编辑时留空表示不修改")),
        "min_severity": SelectField(_("最低级别"), choices=list(SEVERITIES.items()), default="warning"),
        "locale": SelectField(_("消息语言"), choices=list(LOCALES.items()), default="zh"),
    }
    if adding:
        fields["kind"] = SelectField(_("类型"), choices=list(CHANNEL_KINDS.items()), default="dingtalk")
    return fields


class AlertChannelView(ReadableColumnsMixin, AuditedViewMixin, ModelView):
    """告警渠道: DingTalk, WeCom and Feishu group robots and e-mail; a test message checks one end to end."""
    datamodel = SQLAInterface(AlertChannel)
    route_base = "/alert-channels"
    audit_target = "alert_channel"
    audit_columns = ["name", "kind", "enabled", "webhook_masked", "recipients_masked", "min_severity", "locale"]
    list_title = show_title = add_title = edit_title = _("告警渠道")
    list_columns = ["name", "kind", "enabled", "webhook_masked", "secret_state", "recipients_masked", "min_severity",
                    "last_sent_at", "last_error"]
    show_columns = ["name", "kind", "enabled", "webhook_masked", "secret_state", "recipients_masked", "min_severity",
                    "locale", "last_sent_at", "last_error", "created_at", "updated_at"]
    add_columns = ["name", "kind", "enabled", "webhook", "secret", "recipients", "min_severity", "locale"]
    edit_columns = ["name", "enabled", "webhook", "secret", "clear_secret", "recipients", "min_severity", "locale"]
    search_columns = ["name", "kind", "enabled"]
    label_columns = {"name": _("名称"), "kind": _("类型"), "enabled": _("启用"), "webhook_masked": _("Webhook 地址"),
                     "secret_state": _("签名密钥"), "recipients_masked": _("收件人"), "min_severity": _("最低级别"),
                     "locale": _("消息语言"), "last_sent_at": _("最近发送"), "last_error": _("最近错误"),
                     "created_at": _("创建时间"), "updated_at": _("更新时间")}
    formatters_columns = {"kind": text_of(CHANNEL_KINDS), "min_severity": text_of(SEVERITIES),
                          "locale": text_of(LOCALES), "last_sent_at": _time, "created_at": _time, "updated_at": _time}
    add_form_extra_fields = _channel_fields(adding=True)
    edit_form_extra_fields = _channel_fields(adding=False)
    base_order = ("id", "asc")

    def _apply_form(self, item) -> None:
        values = {name: getattr(item, name, None) for name in ("webhook", "secret", "recipients", "clear_secret")}
        for name in values:  # the plain values leave the object (and the request) here
            if name in item.__dict__:
                delattr(item, name)
        try:
            alerts.apply_channel(item, webhook=values["webhook"], secret=values["secret"],
                                 recipients=values["recipients"], clear_secret=bool(values["clear_secret"]))
        except KamengError as exc:
            raise ValueError(exc.message) from None

    def _audit_snapshot(self, item) -> dict:
        snapshot = super()._audit_snapshot(item)
        snapshot["secret"] = item.secret_state() if item is not None else None
        return snapshot

    def pre_add(self, item):
        self._apply_form(item)
        super().pre_add(item)

    def pre_update(self, item):
        self._apply_form(item)
        super().pre_update(item)

    def pre_delete(self, item):
        # Its deliveries stay in the log: a channel that sent anything is switched off, not deleted.
        if item.id is not None and self.datamodel.session.query(AlertDelivery.id).filter(
                AlertDelivery.channel_id == item.id).first():
            raise ValueError(gettext("该渠道已有发送记录，不能删除（可以改为停用）"))
        super().pre_delete(item)

    @action("test", _("发送测试消息"), _("向所选渠道发送一条测试消息？"), "fa-paper-plane", multiple=True)
    def test(self, items):
        if not self.appbuilder.sm.has_access("test", self.class_permission_name):
            abort(403)
        for item in items if isinstance(items, list) else [items]:
            try:
                alerts.send_test(item.id, g.user.id)
            except KamengError as exc:
                flash(f"{item.name}: {exc.message}", "danger")
            else:
                flash(gettext("已向「%(name)s」发送测试消息，结果见告警发送记录", name=item.name), "success")
        return redirect(url_for("AlertChannelView.list"))


class AlertRuleView(ReadableColumnsMixin, AuditedViewMixin, ModelView):
    """告警规则: one per kind; switch on or off, severity, threshold and window (blank = the default)."""
    datamodel = SQLAInterface(AlertRule)
    route_base = "/alert-rules"
    base_permissions = ["can_list", "can_show", "can_edit"]
    audit_target = "alert_rule"
    audit_columns = ["enabled", "severity", "threshold", "window_minutes"]
    list_title = show_title = edit_title = _("告警规则")
    list_columns = ["kind", "enabled", "severity", "threshold", "window_minutes", "updated_at"]
    show_columns = list_columns
    edit_columns = ["enabled", "severity", "threshold", "window_minutes"]
    label_columns = {"kind": _("类型"), "enabled": _("启用"), "severity": _("级别"), "threshold": _("阈值"),
                     "window_minutes": _("时间窗口（分钟）"), "updated_at": _("更新时间")}
    description_columns = {
        "threshold": _("直充未知、直充超时、发货超时：分钟数；退款：渠道无应答次数；对账：追踪的天数；"
                       "风控激增：次数。留空使用默认值"),
        "window_minutes": _("支付金额不符和风控激增统计的时间窗口；留空使用默认值")}
    formatters_columns = {"kind": lambda v: messages.rule_name(v) if v else "-", "severity": text_of(SEVERITIES),
                          "threshold": lambda v: gettext("默认") if v is None else v,
                          "window_minutes": lambda v: gettext("默认") if v is None else v, "updated_at": _time}
    edit_form_extra_fields = {
        "enabled": checkbox(_("启用")),
        "severity": SelectField(_("级别"), choices=list(SEVERITIES.items())),
        "threshold": IntegerField(_("阈值"), widget=BS3TextFieldWidget(),
                                  validators=[Optional(), int_range(1, 100000)]),
        "window_minutes": IntegerField(_("时间窗口（分钟）"), widget=BS3TextFieldWidget(),
                                       validators=[Optional(), int_range(1, 100000)]),
    }
    base_order = ("id", "asc")

    @expose("/list/")
    @has_access
    def list(self):
        from app.extensions import db

        alerts.ensure_rules()  # every kind has its row (with its defaults) before anyone edits one
        db.session.commit()
        return super().list()

    def pre_update(self, item):
        from app.clock import utcnow

        try:
            alerts.check_rule(item)
        except KamengError as exc:
            raise ValueError(exc.message) from None
        item.updated_at = utcnow()
        super().pre_update(item)


def register(appbuilder) -> None:
    category = "系统"
    appbuilder.add_view(AlertView, "告警记录", icon="fa-bell", category=category)
    appbuilder.add_view(AlertChannelView, "告警渠道", icon="fa-bullhorn", category=category)
    appbuilder.add_view(AlertRuleView, "告警规则", icon="fa-sliders", category=category)
    appbuilder.add_view_no_menu(AlertDeliveryView)
