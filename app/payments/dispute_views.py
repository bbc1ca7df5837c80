"""Screens for disputes and coupons: the support queue (age against the response target) and its resolve form,
all disputes (history), the agent's "file a dispute" page, and the admin coupon form (yuan / percent inputs)."""
from __future__ import annotations

from flask import abort, flash, g, redirect, request, url_for
from flask_appbuilder import BaseView, ModelView, expose, has_access
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import gettext
from flask_babel import lazy_gettext as _
from wtforms import SelectField

from app.auditing import AuditedViewMixin
from app.crypto import mask
from app.errors import KamengError
from app.extensions import db
from app.forms import PercentField, YuanField, checkbox, int_range
from app.money import format_fen, parse_yuan
from app.payments import coupons, disputes
from app.payments.models import Coupon, Dispute
from app.scope import current_agent
from app.views_common import ReadableColumnsMixin

AFTER_SALES = "订单与售后"  # app.views.ORDERS


class DisputeQueueView(BaseView):
    """Open disputes, oldest first, with their age in minutes and a flag past the response target."""
    route_base = "/disputes"
    default_view = "index"

    @expose("/")
    @has_access
    def index(self):
        rows = disputes.open_queue()
        return self.render_template("kameng/dispute_queue.html", rows=rows,
                                    target=disputes.response_target_minutes(),
                                    can_resolve=self.appbuilder.sm.has_access("can_resolve", "DisputeQueueView"))

    @expose("/<int:dispute_id>", methods=["GET", "POST"])
    @has_access
    def resolve(self, dispute_id: int):
        dispute = db.session.get(Dispute, dispute_id) if dispute_id < 2 ** 31 else None
        if dispute is None:
            abort(404)
        status = 200
        if request.method == "POST":
            try:
                raw = (request.form.get("compensation") or "").strip()
                try:
                    compensation = parse_yuan(raw) if raw else None
                except ValueError as exc:
                    raise KamengError(str(exc), code="invalid_request") from None
                disputes.resolve(dispute.id, request.form.get("outcome", ""), request.form.get("resolution"),
                                 g.user.id, compensation_fen=compensation)
            except KamengError as exc:
                flash(exc.message, "danger")
                status = 400
                dispute = db.session.get(Dispute, dispute_id)
            else:
                flash(gettext("维权 #%(dispute_id)s 已处理", dispute_id=dispute_id), "success")
                return redirect(url_for("DisputeQueueView.index"))
        return self.render_template("kameng/dispute_resolve.html", d=dispute,
                                    age=disputes.age_minutes(dispute), overdue=disputes.is_overdue(dispute),
                                    target=disputes.response_target_minutes(),
                                    status_text=disputes.STATUS_TEXT, form=request.form), status


class DisputeView(ReadableColumnsMixin, ModelView):
    """Every dispute, open or resolved (read only; resolving happens in the queue)."""
    datamodel = SQLAInterface(Dispute)
    route_base = "/dispute-records"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("维权记录")
    list_columns = ["opened_at", "order", "contact", "opened_by", "reason", "status", "resolved_by", "resolved_at"]
    show_columns = list_columns + ["resolution", "compensation_coupon"]
    search_columns = ["status", "order", "opened_at"]  # by phone: the order list's search (blind index)
    label_columns = {"opened_at": _("发起时间"), "order": _("订单"), "contact": _("联系方式"),
                     "opened_by": _("发起人"), "reason": _("原因"), "status": _("状态"), "resolved_by": _("处理人"),
                     "resolved_at": _("处理时间"), "resolution": _("处理说明"), "compensation_coupon": _("补偿券")}
    # The record shows the buyer's contact masked; the queue's resolve page (where support acts) shows it whole.
    formatters_columns = {"status": lambda s: disputes.STATUS_TEXT.get(s, s),
                          "contact": lambda c: mask(c) if c else "-"}
    base_order = ("id", "desc")


class MyDisputeView(BaseView):
    """An agent files a dispute on its own delivered order (scope re-checked in app.payments.disputes)."""
    route_base = "/portal/disputes"
    default_view = "file"

    @expose("/<order_no>", methods=["GET", "POST"])
    @has_access
    def file(self, order_no: str):
        from app.portal import service as portal

        agent = current_agent()
        if agent is None:
            abort(403)
        try:
            order, owner = portal.order_for_viewer(agent, order_no[:40])
        except KamengError:
            abort(404)
        if not owner:
            abort(404)
        status = 200
        if request.method == "POST":
            try:
                disputes.open_as_agent(agent, order.order_no, request.form.get("reason"), g.user.id)
            except KamengError as exc:
                flash(exc.message, "danger")
                status = exc.status if 400 <= exc.status < 500 else 400
            else:
                flash(gettext("已提交维权，客服会尽快处理"), "success")
                return redirect(url_for("MyDisputeView.file", order_no=order.order_no))
        order = db.session.get(type(order), order.id)
        dispute = disputes.for_order(order.id)
        return self.render_template("kameng/my_dispute.html", order=order, dispute=disputes.public_view(dispute),
                                    form=request.form), status


def _coupon_fields() -> dict:
    return {
        "kind": SelectField(_("优惠方式"), choices=list(coupons.KINDS.items())),
        "value_fixed": YuanField(_("减免金额（元，满减券）"), min_fen=1),
        "value_percent": PercentField(_("折扣比例 %（折扣券，如 10 表示减 10%）"), min_bp=1, max_bp=9999),
        "min_spend": YuanField(_("最低消费（元，优惠前）"), default=0),
        "active": checkbox(_("启用"), default=True),
    }


class CouponView(ReadableColumnsMixin, AuditedViewMixin, ModelView):
    datamodel = SQLAInterface(Coupon)
    route_base = "/coupons"
    audit_target = "coupon"
    audit_columns = ["code", "name", "kind", "value", "min_spend", "starts_at", "ends_at", "per_user_limit",
                     "total_limit", "active"]
    list_title = show_title = add_title = edit_title = _("优惠券")
    list_columns = ["code", "name", "kind", "value_display", "min_spend", "starts_at", "ends_at", "per_user_limit",
                    "total_limit", "used_count", "active"]
    show_columns = list_columns + ["created_at"]
    add_columns = edit_columns = ["code", "name", "kind", "value_fixed", "value_percent", "min_spend", "starts_at",
                                  "ends_at", "per_user_limit", "total_limit", "active"]
    search_columns = ["code", "name", "kind", "active", "starts_at", "ends_at"]
    label_columns = {"code": _("券码"), "name": _("名称"), "kind": _("优惠方式"), "value_display": _("优惠"),
                     "min_spend": _("最低消费"), "starts_at": _("开始（UTC）"), "ends_at": _("结束（UTC）"),
                     "per_user_limit": _("每人限用"), "total_limit": _("总量（空为不限）"), "used_count": _("已使用"),
                     "active": _("启用"), "created_at": _("创建时间")}
    description_columns = {"code": _("买家结算时填写的券码，字母数字，不区分大小写"),
                           "value_fixed": _("满减券填写"),
                           "value_percent": _("折扣券填写，按优惠前金额计算，向下取整到分")}
    add_form_extra_fields = _coupon_fields()
    edit_form_extra_fields = _coupon_fields()
    validators_columns = {"per_user_limit": [int_range(1, 1_000_000)], "total_limit": [int_range(1, 1_000_000_000)]}
    formatters_columns = {"min_spend": format_fen, "kind": lambda k: coupons.KINDS.get(k, k)}
    base_order = ("id", "desc")

    def prefill_form(self, form, pk):
        item = self.datamodel.get(pk)
        if item is not None:
            if item.kind == "fixed":
                form.value_fixed.data = item.value
            else:
                form.value_percent.data = item.value

    def _set_value(self, item) -> None:
        item.value = getattr(item, "value_fixed", None) if item.kind == "fixed" \
            else getattr(item, "value_percent", None)
        if item.min_spend is None:
            item.min_spend = 0
        if item.used_count is None:
            item.used_count = 0
        coupons.check_definition(item)

    def pre_add(self, item):
        self._set_value(item)
        super().pre_add(item)

    def pre_update(self, item):
        self._set_value(item)
        super().pre_update(item)

    def pre_delete(self, item):
        if item.used_count:
            raise ValueError(gettext("已使用过的优惠券不能删除（可以改为停用）"))
        super().pre_delete(item)


def register(appbuilder) -> None:
    appbuilder.add_view(DisputeQueueView, "维权队列", href="/disputes/", icon="fa-gavel", category=AFTER_SALES,
                        category_icon="fa-life-ring")
    appbuilder.add_view(DisputeView, "维权记录", icon="fa-history", category=AFTER_SALES)
    appbuilder.add_view(CouponView, "优惠券", icon="fa-ticket", category=AFTER_SALES)
    appbuilder.add_view_no_menu(MyDisputeView)
