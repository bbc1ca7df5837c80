"""Support tools (售后 menu): 客服查单 (orders by phone, contact or account), 到账超时 (the delivery promise's
queue), 批量补偿 (preview, then one coupon per buyer, audited) and 补偿记录. Staff only (app/roles.py)."""
from __future__ import annotations

from datetime import timedelta

from flask import flash, g, redirect, request, url_for
from flask_appbuilder import BaseView, ModelView, expose, has_access
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import gettext
from flask_babel import lazy_gettext as _
from sqlalchemy import select

from app.catalog.models import Product, Supplier
from app.clock import to_local, utcnow
from app.errors import KamengError
from app.extensions import db
from app.money import format_fen
from app.orders.models import ORDER_STATUSES
from app.orders.views import upstream_status_text
from app.support import compensation, search
from app.support.models import CompensationBatch, CompensationOrder
from app.views_common import ReadableColumnsMixin

AFTER_SALES = "订单与售后"  # app.views.ORDERS


class SupportSearchView(BaseView):
    """One box: order number, phone, contact or top-up account. POST, so a phone number never sits in a URL (or the
    access log); results show personal values masked."""
    route_base = "/support-search"
    default_view = "index"

    @expose("/", methods=["GET", "POST"])
    @has_access
    def index(self):
        result, error, status = None, None, 200
        if request.method == "POST":
            try:
                result = search.find_orders(request.form.get("q"))
            except KamengError as exc:
                error, status = exc.message, 400
        return self.render_template("kameng/support_search.html", result=result, error=error,
                                    matched_text=search.matched_text, upstream_text=upstream_status_text), status


class DeliverySlaView(BaseView):
    """到账超时: direct top-ups still not delivered past DELIVERY_SLA_MINUTES, and what the SLA did lately."""
    route_base = "/delivery-sla"
    default_view = "index"

    @expose("/")
    @has_access
    def index(self):
        from app.suppliers import sla

        now = utcnow()
        overdue = list(db.session.scalars(sla.overdue_query(now).limit(200)))
        return self.render_template(
            "kameng/delivery_sla.html", overdue=[(o, sla.last_action(o.id)) for o in overdue],
            recent=sla.recent_breaches(), rules=sla.settings(), now=now, upstream_text=upstream_status_text,
            minutes=lambda o: int((now - o.paid_at).total_seconds() // 60))


class CompensationView(BaseView):
    """批量补偿: pick the orders an incident hit, preview who gets a coupon, issue (one per buyer), audited."""
    route_base = "/compensation"
    default_view = "index"

    def _form_page(self, form, plan=None, token=None, status=200):
        products = db.session.execute(select(Product.id, Product.name).order_by(Product.id)).all()
        suppliers = db.session.execute(select(Supplier.id, Supplier.name).order_by(Supplier.id)).all()
        return self.render_template(
            "kameng/compensation.html", form=form, plan=plan, token=token, products=products, suppliers=suppliers,
            statuses=ORDER_STATUSES, default_statuses=compensation.DEFAULT_STATUSES,
            max_days=compensation.MAX_WINDOW_DAYS,
            can_issue=self.appbuilder.sm.has_access("can_issue", "CompensationView"),
            can_preview=self.appbuilder.sm.has_access("can_preview", "CompensationView")), status

    @expose("/")
    @has_access
    def index(self):
        # By default the last hour up to the next minute (the end is excluded: an order placed this minute is in).
        now = to_local(utcnow()).replace(second=0, microsecond=0) + timedelta(minutes=1)
        return self._form_page({"start": (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
                                "end": now.strftime("%Y-%m-%dT%H:%M"), "valid_days": "30"})

    @expose("/preview", methods=["POST"])
    @has_access
    def preview(self):
        try:
            plan = compensation.preview(compensation.parse_criteria(request.form))
        except KamengError as exc:
            flash(exc.message, "danger")
            return self._form_page(request.form, status=400)
        return self._form_page(request.form, plan=plan, token=compensation.new_token())

    @expose("/issue", methods=["POST"])
    @has_access
    def issue(self):
        form = request.form
        try:
            criteria = compensation.parse_criteria(form)
            amount, reason, days = compensation.parse_issue(form)
            batch = compensation.issue(criteria, amount, reason, days, form.get("token") or "",
                                       _int(form.get("expect_orders")), _int(form.get("expect_buyers")), g.user.id)
        except KamengError as exc:
            flash(exc.message, "danger")
            return self._form_page(form, status=exc.status if 400 <= exc.status < 500 else 400)
        flash(gettext("已发放补偿券：%(buyers)s 位买家，%(orders)s 笔订单，共 %(total)s", buyers=batch.buyers,
                      orders=batch.orders, total=format_fen(batch.total)), "success")
        return redirect(url_for("CompensationBatchView.show", pk=batch.id))


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


class CompensationOrderView(ReadableColumnsMixin, ModelView):
    """The orders of a batch and the coupon each buyer got (shown under the batch)."""
    datamodel = SQLAInterface(CompensationOrder)
    route_base = "/compensation-orders"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("补偿订单")
    list_columns = ["batch", "order", "coupon", "coupon_value", "coupon_used"]
    show_columns = list_columns
    label_columns = {"batch": _("补偿批次"), "order": _("订单"), "coupon": _("补偿券"), "coupon_value": _("面额"),
                     "coupon_used": _("已使用")}
    formatters_columns = {"coupon_value": format_fen}
    base_order = ("id", "asc")


class CompensationBatchView(ReadableColumnsMixin, ModelView):
    """补偿记录: every batch, with its orders and coupons."""
    datamodel = SQLAInterface(CompensationBatch)
    route_base = "/compensation-batches"
    base_permissions = ["can_list", "can_show"]
    list_title = show_title = _("补偿记录")
    list_columns = ["id", "created_at", "reason", "amount_display", "buyers", "orders", "total_display", "created_by"]
    show_columns = list_columns + ["valid_days", "criteria"]
    label_columns = {"id": _("批次"), "created_at": _("发放时间"), "reason": _("原因"), "amount_display": _("每张面额"),
                     "buyers": _("买家数（券数）"), "orders": _("订单数"), "total_display": _("合计"),
                     "created_by": _("发放人"), "valid_days": _("有效天数"), "criteria": _("筛选条件")}
    related_views = [CompensationOrderView]
    base_order = ("id", "desc")


def register(appbuilder) -> None:
    appbuilder.add_view(SupportSearchView, "客服查单", href="/support-search/", icon="fa-search",
                        category=AFTER_SALES, category_icon="fa-life-ring")
    appbuilder.add_view(DeliverySlaView, "到账超时", href="/delivery-sla/", icon="fa-hourglass-half",
                        category=AFTER_SALES)
    appbuilder.add_view(CompensationView, "批量补偿", href="/compensation/", icon="fa-gift", category=AFTER_SALES)
    appbuilder.add_view(CompensationBatchView, "补偿记录", icon="fa-list", category=AFTER_SALES)
    appbuilder.add_view_no_menu(CompensationOrderView)
