"""平台设置: the settings admins change in a form."""
from __future__ import annotations

from flask import flash, g
from flask_appbuilder import SimpleFormView
from flask_appbuilder.forms import DynamicForm
from flask_babel import gettext
from flask_babel import lazy_gettext as _
from wtforms import BooleanField
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


class PlatformSettingsView(SimpleFormView):
    route_base = "/platform-settings"
    form = SettingsForm
    form_title = _("平台设置")

    def form_get(self, form):
        form.realname_required_above.data = service.get("realname_required_above") or 0
        form.staff_2fa_required.data = bool(service.get("staff_2fa_required"))
        form.shop_markup_min_bp.data, form.shop_markup_max_bp.data = service.shop_markup_bounds()

    def form_post(self, form):
        value = form.realname_required_above.data or 0
        try:
            service.set_value("realname_required_above", value, actor_id=g.user.id)
        except KamengError as exc:
            flash(exc.message, "danger")
            return None
        flash(f"已保存：购买超过 {format_fen(value)} 须实名认证" if value else "已保存：购买不要求实名认证", "success")
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
        return None


def register(appbuilder) -> None:
    appbuilder.add_view(PlatformSettingsView, "平台设置", href="/platform-settings/form", icon="fa-sliders",
                        category="系统")
