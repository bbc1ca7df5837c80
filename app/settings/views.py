"""平台设置: the settings admins change in a form."""
from __future__ import annotations

from flask import flash, g
from flask_appbuilder import SimpleFormView
from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
from flask_appbuilder.forms import DynamicForm
from flask_babel import gettext
from flask_babel import lazy_gettext as _
from wtforms import BooleanField, IntegerField, PasswordField, SelectField, StringField
from wtforms.validators import Optional

from app.errors import KamengError
from app.forms import PercentField, YuanField
from app.money import format_bp, format_fen
from app.settings import service


class SettingsForm(DynamicForm):
    realname_required_above = YuanField(_("购买需实名认证的金额门槛（元，0 为不要求）"),
                                        description=_("单笔钱包采购金额超过此数时，须先完成实名认证"))
    staff_2fa_required = BooleanField(_("员工必须使用两步验证"),
                                      description=_("开启后，管理员、经理、财务和客服登录后须先启用两步验证才能使用其他页面"))
    shop_markup_min_bp = PercentField(_("分站最低加价（百分比）"), max_bp=service.MAX_SHOP_MARKUP_BP,
                                      validators=[Optional()],
                                      description=_("代理分站售价相对其拿货价的最低加价"))
    shop_markup_max_bp = PercentField(_("分站最高加价（百分比）"), max_bp=service.MAX_SHOP_MARKUP_BP,
                                      validators=[Optional()],
                                      description=_("代理分站售价相对其拿货价的最高加价；分站售价永远不低于代理拿货价"))
    # Delivery notices (app/notices): blank text = the environment's value (SMTP_*, SMS_*); blank secret = unchanged.
    smtp_host = StringField(_("发信服务器 SMTP_HOST"), validators=[Optional()], widget=BS3TextFieldWidget(),
                            description=_("发货邮件经此服务器发出；留空则使用环境变量的值"))
    smtp_port = IntegerField(_("端口 SMTP_PORT（0 为默认）"), validators=[Optional()], widget=BS3TextFieldWidget())
    smtp_tls = SelectField(_("加密 SMTP_TLS"), choices=[("starttls", "STARTTLS"), ("ssl", "SSL/TLS"),
                                                       ("none", _("不加密"))],
                           default="starttls", validate_choice=False)  # checked by the settings service
    smtp_user = StringField(_("用户名 SMTP_USER"), validators=[Optional()], widget=BS3TextFieldWidget())
    smtp_password = PasswordField(_("密码 SMTP_PASSWORD"), validators=[Optional()], widget=BS3PasswordFieldWidget(),
                                  description=_("加密保存，不再显示；留空则保持不变"))
    smtp_from = StringField(_("发件人 SMTP_FROM"), validators=[Optional()], widget=BS3TextFieldWidget(),
                            description=_("邮箱地址，或「名称 <邮箱地址>」"))
    sms_enabled = BooleanField(_("发货短信通知（阿里云短信）"),
                               description=_("联系方式为手机号时，发货后发送订单号和查询链接（不含卡密）"))
    sms_endpoint = StringField(_("短信接口地址"), validators=[Optional()], widget=BS3TextFieldWidget())
    sms_access_key_id = StringField(_("AccessKey ID"), validators=[Optional()], widget=BS3TextFieldWidget())
    sms_access_key_secret = PasswordField(_("AccessKey Secret"), validators=[Optional()],
                                          widget=BS3PasswordFieldWidget(),
                                          description=_("加密保存，不再显示；留空则保持不变"))
    sms_sign_name = StringField(_("短信签名"), validators=[Optional()], widget=BS3TextFieldWidget())
    sms_template_code = StringField(_("短信模板 CODE"), validators=[Optional()], widget=BS3TextFieldWidget(),
                                    description=_("模板变量 ${order_no}；查询链接须写在模板正文中"))


NOTICE_TEXT = ("smtp_host", "smtp_user", "smtp_from", "sms_endpoint", "sms_access_key_id", "sms_sign_name",
               "sms_template_code")
NOTICE_SECRETS = ("smtp_password", "sms_access_key_secret")


class PlatformSettingsView(SimpleFormView):
    route_base = "/platform-settings"
    form = SettingsForm
    form_title = _("平台设置")

    def form_get(self, form):
        form.realname_required_above.data = service.get("realname_required_above") or 0
        form.staff_2fa_required.data = bool(service.get("staff_2fa_required"))
        for name in NOTICE_TEXT:
            getattr(form, name).data = service.get(name) or ""
        form.smtp_port.data = int(service.get("smtp_port") or 0)
        form.smtp_tls.data = service.get("smtp_tls") or "starttls"
        form.sms_enabled.data = bool(service.get("sms_enabled"))
        form.shop_markup_min_bp.data, form.shop_markup_max_bp.data = service.shop_markup_bounds()

    def form_post(self, form):
        value = form.realname_required_above.data or 0
        try:
            service.set_value("realname_required_above", value, actor_id=g.user.id)
        except KamengError as exc:
            flash(exc.message, "danger")
            return None
        flash(
            gettext("已保存：购买超过 %(value)s 须实名认证", value=format_fen(value))
            if value
            else gettext("已保存：购买不要求实名认证"),
            "success",
        )
        required = bool(form.staff_2fa_required.data)
        if required != bool(service.get("staff_2fa_required")):  # audited only when it changes
            service.set_value("staff_2fa_required", required, actor_id=g.user.id)
            flash(gettext("已保存：员工必须使用两步验证") if required else gettext("已保存：员工可不使用两步验证"),
                  "success")
        current = service.shop_markup_bounds()  # a bound left empty stays as it is
        bounds = (current[0] if form.shop_markup_min_bp.data is None else form.shop_markup_min_bp.data,
                  current[1] if form.shop_markup_max_bp.data is None else form.shop_markup_max_bp.data)
        if bounds != current:  # audited only when they change
            try:
                service.set_shop_markup_bounds(*bounds, actor_id=g.user.id)
            except KamengError as exc:
                flash(exc.message, "danger")
                return None
            flash(gettext("已保存：分站加价范围 %(low)s 到 %(high)s", low=format_bp(bounds[0]),
                          high=format_bp(bounds[1])), "success")
        try:
            changed = self._save_notice_settings(form)
        except KamengError as exc:
            flash(exc.message, "danger")
            return None
        if changed:
            flash(gettext("已保存发货通知设置：%(names)s", names=", ".join(changed)), "success")
        return None

    @staticmethod
    def _save_notice_settings(form) -> list[str]:
        """Only what was submitted and differs is saved (each change audited; secrets only as set / not set)."""
        changed = []
        for name in NOTICE_TEXT:
            field = getattr(form, name)
            if not field.raw_data:
                continue
            value = (field.data or "").strip()
            if value == "":
                if service.clear(name, actor_id=g.user.id):
                    changed.append(name)
            elif value != (service.get(name) or ""):
                service.set_value(name, value, actor_id=g.user.id)
                changed.append(name)
        for name in NOTICE_SECRETS:
            value = (getattr(form, name).data or "").strip()
            if value:
                service.set_value(name, value, actor_id=g.user.id)
                changed.append(name)
        if form.smtp_port.raw_data:
            port = form.smtp_port.data or 0
            if port != int(service.get("smtp_port") or 0):
                service.set_value("smtp_port", port, actor_id=g.user.id)
                changed.append("smtp_port")
        if form.smtp_tls.raw_data and form.smtp_tls.data != (service.get("smtp_tls") or "starttls"):
            service.set_value("smtp_tls", form.smtp_tls.data, actor_id=g.user.id)
            changed.append("smtp_tls")
        if bool(form.sms_enabled.data) != bool(service.get("sms_enabled")):
            service.set_value("sms_enabled", bool(form.sms_enabled.data), actor_id=g.user.id)
            changed.append("sms_enabled")
        return changed


def register(appbuilder) -> None:
    appbuilder.add_view(PlatformSettingsView, "平台设置", href="/platform-settings/form", icon="fa-sliders",
                        category="系统")
