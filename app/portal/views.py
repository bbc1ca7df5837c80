"""The agent portal (代理中心): balance, products at my price, buy, my orders and secrets, downline, statement.

Every screen is scoped by app.scope: list/show/edit through base_filters, search dropdowns through
search_form_query_rel_fields, actions and custom pages by re-checking in_scope().
"""
from __future__ import annotations

from datetime import timedelta

from flask import Response, abort, flash, redirect, request, stream_with_context, url_for
from flask_appbuilder import BaseView, IndexView, ModelView, expose, has_access
from flask_appbuilder.actions import action
from flask_appbuilder.models.sqla.filters import FilterInFunction
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import gettext
from flask_babel import lazy_gettext as _
from sqlalchemy import inspect, select

from app.agents.models import Agent
from app.agents.views import phone_field
from app.catalog import extraction
from app.clock import business_today
from app.crypto import mask
from app.errors import KamengError, NotFound
from app.extensions import db
from app.ledger.models import Account, Posting
from app.money import format_fen
from app.orders.models import Order
from app.orders.views import ORDER_LABELS
from app.portal import service as portal
from app.scope import current_agent, in_scope, is_staff, own_agent_ids, require_agent, visible_agent_ids
from app.views_common import ReadableColumnsMixin


def own_account_ids():
    return select(Account.id).where(Account.agent_id.in_(own_agent_ids() or [-1]))



class HomeView(IndexView):
    """Landing page: staff go to their workbench (工作台); agents see their home (balances, today's sales and
    commission, team, shop, notices); visitors the sign-in button."""
    index_template = "kameng/home.html"

    @expose("/")
    def index(self):
        agent = current_agent()
        staff = is_staff()
        if staff and agent is None and self.appbuilder.sm.has_access("can_index", "WorkbenchView"):
            from app.workbench import views as workbench

            return self.render_template(workbench.TEMPLATE, appbuilder=self.appbuilder,
                                        **workbench.context(self.appbuilder))
        context = {"agent": agent, "staff": staff}
        if agent is not None:
            from app.workbench import service as workbench

            context["home"] = workbench.agent_home(agent)
        return self.render_template(self.index_template, appbuilder=self.appbuilder, **context)


class PortalView(BaseView):
    """Pages of the portal that are not plain lists: buy, and one order with its card secrets."""
    route_base = "/portal"
    default_view = "buy"

    @expose("/buy", methods=["GET"])
    @has_access
    def buy(self):
        agent = require_agent()
        return self.render_template("kameng/buy.html", agent=agent, offers=portal.offers_for(agent),
                                    summary=portal.summary(agent),
                                    selected=request.args.get("product_id", type=int))

    @expose("/buy", methods=["POST"])
    @has_access
    def buy_post(self):
        agent = require_agent()
        try:
            order = portal.buy(agent, request.form, request.remote_addr)
        except KamengError as exc:
            flash(exc.message, "danger")
            return redirect(url_for("PortalView.buy", product_id=request.form.get("product_id", type=int)))
        if order.status == "delivered":
            flash(
                gettext(
                    "购买成功：订单 %(order_no)s，扣款 %(amount)s",
                    order_no=order.order_no,
                    amount=format_fen(order.amount),
                ),
                "success",
            )
        elif order.status == "reviewing":
            flash(gettext("下单成功：订单 %(order_no)s，扣款 %(amount)s，订单正在风控审核，"
                          "审核通过后发货，未通过将退回钱包",
                          order_no=order.order_no,
                          amount=format_fen(order.amount)), "warning")
        else:  # a direct top-up: paid, submitted to the supplier after this request
            flash(gettext("下单成功：订单 %(order_no)s，扣款 %(amount)s，正在充值", order_no=order.order_no,
                          amount=format_fen(order.amount)), "success")
        return redirect(url_for("PortalView.order", order_no=order.order_no))

    @expose("/orders/<order_no>")
    @has_access
    def order(self, order_no):
        agent = require_agent()
        try:
            order, owner = portal.order_for_viewer(agent, order_no)
        except KamengError:
            abort(404)
        pages = portal.secret_pages(order)
        page = min(max(request.args.get("page", 1, type=int) or 1, 1), pages)
        secrets = portal.secrets_for_owner(agent, order, page) if owner else []
        downloads = extraction.download_counts([order.id]).get(order.id, 0) if owner else 0
        return self.render_template("kameng/order.html", order=order, owner=owner, secrets=secrets, page=page,
                                    pages=pages, per_page=portal.SECRETS_PER_PAGE, downloads=downloads,
                                    formats=list(extraction.FORMATS))

    @expose("/topup", methods=["GET"])
    @has_access
    def topup(self):
        from app.payments import service as payments
        from app.payments import topups
        from app.payments.models import CHANNEL_NAMES

        agent = require_agent()
        return self.render_template("kameng/topup.html", agent=agent, summary=portal.summary(agent),
                                    topups=topups.topups_of(agent.id), status_text=topups.STATUS_TEXT,
                                    channels=[(c, CHANNEL_NAMES.get(c, c)) for c in payments.enabled_channels()],
                                    names=CHANNEL_NAMES, limits=(topups.MIN_TOPUP, topups.MAX_TOPUP))

    @expose("/topup", methods=["POST"])
    @has_access
    def topup_post(self):
        from flask import current_app

        from app.payments import topups

        agent = require_agent()
        base = (current_app.config.get("PUBLIC_BASE_URL") or request.host_url).rstrip("/")
        try:
            topup, pay_url = topups.start_topup(agent.id, request.form.get("amount"), request.form.get("channel"),
                                                base, ip=request.remote_addr,
                                                device_id=request.form.get("device_id"))
        except KamengError as exc:
            db.session.rollback()
            flash(exc.message, "danger")
            return redirect(url_for("PortalView.topup"))
        return redirect(pay_url)


class ExtractView(BaseView):
    """批量提卡 (bulk extraction): my own delivered orders' card secrets as TXT / CSV / XLSX files, one order (the
    order page's buttons) or a range of business days (this page). Downloads are POSTs carrying the form's CSRF
    token: each one records reveals, counts the download and is audited (app.catalog.extraction)."""
    route_base = "/portal"
    default_view = "extract"

    @expose("/orders/<order_no>/secrets", methods=["POST"])
    @has_access
    def order_secrets(self, order_no):
        """下载卡密: one of my own orders' secrets as TXT / CSV / XLSX (a POST with the form's CSRF token: the
        download records reveals and counts). Another agent's order, a downline's too, is 404 as a missing one."""
        agent = require_agent()
        try:
            fmt = extraction.parse_format(request.form.get("format"))
            result = extraction.extract_order(agent.id, order_no, fmt, via="portal")
        except NotFound:
            abort(404)
        except KamengError as exc:
            db.session.rollback()
            flash(exc.message, "danger")
            return redirect(url_for("PortalView.order", order_no=order_no))
        return _download(result)

    @expose("/extract", methods=["GET"])
    @has_access
    def extract(self):
        """批量提卡: my delivered orders of a range of business days as one file."""
        require_agent()
        today = business_today()
        return self.render_template("kameng/extract.html", fmt="txt", until=request.args.get("until") or today,
                                    since=request.args.get("since") or today - timedelta(days=6),
                                    formats=list(extraction.FORMATS), max_days=extraction.MAX_RANGE_DAYS,
                                    max_secrets=extraction.MAX_SECRETS)

    @expose("/extract", methods=["POST"])
    @has_access
    def extract_post(self):
        agent = require_agent()
        try:
            since, until = extraction.parse_range(request.form.get("since"), request.form.get("until"))
            fmt = extraction.parse_format(request.form.get("format"))
            result = extraction.extract_range(agent.id, since, until, fmt, via="portal")
        except KamengError as exc:
            db.session.rollback()
            flash(exc.message, "danger")
            return self.render_template("kameng/extract.html", since=request.form.get("since", ""),
                                        until=request.form.get("until", ""), fmt=request.form.get("format"),
                                        formats=list(extraction.FORMATS), max_days=extraction.MAX_RANGE_DAYS,
                                        max_secrets=extraction.MAX_SECRETS), 400
        return _download(result)


def _download(result: extraction.Extraction) -> Response:
    """A recorded extraction, streamed as an attachment that no cache keeps."""
    return Response(stream_with_context(result.chunks), mimetype=result.mimetype, headers={
        "Content-Disposition": f'attachment; filename="{result.filename}"', "Cache-Control": "no-store",
        "Pragma": "no-cache"})


class MyOrderView(ReadableColumnsMixin, ModelView):
    datamodel = SQLAInterface(Order)
    route_base = "/portal/my-orders"
    base_permissions = ["can_list", "can_show"]
    base_filters = [["agent_id", FilterInFunction, visible_agent_ids]]
    search_form_query_rel_fields = {"agent": [["id", FilterInFunction, visible_agent_ids]]}
    list_title = show_title = _("我的订单")
    list_columns = ["order_no", "agent", "product", "quantity", "amount_display", "status_display", "created_at"]
    show_columns = ["order_no", "agent", "product", "quantity", "unit_price_display", "amount_display",
                    "status_display", "out_trade_no", "created_at", "delivered_at"]
    search_columns = ["order_no", "agent", "status", "created_at"]
    label_columns = ORDER_LABELS
    base_order = ("id", "desc")
    formatters_columns = {"order_no": lambda no: _order_link(no)}


def _order_link(order_no: str):
    from markupsafe import Markup, escape
    return Markup(f'<a href="/portal/orders/{escape(order_no)}">{escape(order_no)}</a>')


def _is_me(agent_id) -> bool:
    me = current_agent()
    return me is not None and me.id == agent_id


class _TeamInterface(SQLAInterface):
    """An agent sees its own phone whole (its profile); an upline sees its downline's phones masked."""

    def _get_attr_value(self, item, col):
        value = super()._get_attr_value(item, col)
        if col == "phone" and value and not _is_me(item.id):
            return mask(value)
        return value


class MyDownlineView(ReadableColumnsMixin, ModelView):
    datamodel = _TeamInterface(Agent)
    route_base = "/portal/my-team"
    base_permissions = ["can_list", "can_show", "can_edit", "disable"]
    base_filters = [["id", FilterInFunction, visible_agent_ids]]
    search_form_query_rel_fields = {"parent": [["id", FilterInFunction, visible_agent_ids]]}
    list_title = show_title = edit_title = _("我的团队")
    list_columns = ["name", "tier", "parent", "depth", "active", "created_at"]
    show_columns = ["name", "tier", "parent", "depth", "phone", "active", "created_at"]
    edit_columns = ["name", "phone"]
    edit_form_extra_fields = {"phone": phone_field()}
    search_columns = ["name", "parent", "active", "created_at"]
    label_columns = {"name": _("代理名称"), "tier": _("等级"), "parent": _("上级"), "depth": _("层级"),
                     "phone": _("手机号"), "active": _("启用"), "created_at": _("注册时间")}
    base_order = ("path", "asc")

    def prefill_form(self, form, pk):
        # An upline may set a downline's phone but never reads it: the form shows it masked.
        if form.phone.data and not _is_me(pk):
            form.phone.data = mask(form.phone.data)

    def pre_update(self, item):
        # edit loads through base_filters already; this is the belt to those braces (FAB flashes what we raise)
        if not in_scope(item.id, require_agent()):
            raise ValueError(gettext("只能修改自己团队中的代理"))
        # A downline's phone sent back as the masked form the page showed is unchanged, not a new number.
        history = inspect(item).attrs.phone.history
        if history.added and history.deleted and history.deleted[0] and not _is_me(item.id) \
                and history.added[0] == mask(history.deleted[0]):
            item.phone = history.deleted[0]

    @action("disable", _("停用"), _("确定停用所选下级代理？"), "fa-ban")
    def disable(self, items):
        agent = require_agent()
        items = items if isinstance(items, list) else [items]
        changed = 0
        for item in items:
            # Actions load rows by pk without base filters (an unknown pk loads None): re-check the scope for each.
            if item is None or item.id == agent.id or not in_scope(item.id, agent):
                continue
            item.active = False
            changed += 1
        db.session.commit()
        flash(gettext("已停用 %(changed)s 个下级代理", changed=changed), "info")
        return redirect(url_for("MyDownlineView.list"))


class MyStatementView(ReadableColumnsMixin, ModelView):
    """My ledger statement: postings on my own accounts only."""
    datamodel = SQLAInterface(Posting)
    route_base = "/portal/my-statement"
    base_permissions = ["can_list"]
    base_filters = [["account_id", FilterInFunction, own_account_ids]]
    search_form_query_rel_fields = {"account": [["id", FilterInFunction, own_account_ids]]}
    list_title = _("我的账单")
    list_columns = ["created_at", "account", "journal", "amount"]
    search_columns = ["account", "created_at"]
    label_columns = {"created_at": _("时间"), "account": _("账户"), "journal": _("凭证"), "amount": _("金额")}
    formatters_columns = {"amount": format_fen}
    base_order = ("id", "desc")


def register(appbuilder, category: str) -> None:
    appbuilder.add_view(PortalView, "采购商品", href="/portal/buy", icon="fa-shopping-bag", category=category,
                        category_icon="fa-user")
    appbuilder.add_link("充值", href="/portal/topup", icon="fa-plus-circle", category=category)
    appbuilder.add_view(MyOrderView, "我的订单", icon="fa-list", category=category)
    appbuilder.add_view(ExtractView, "批量提卡", href="/portal/extract", icon="fa-download", category=category)
    appbuilder.add_view(MyDownlineView, "我的团队", icon="fa-sitemap", category=category)
    appbuilder.add_view(MyStatementView, "我的账单", icon="fa-book", category=category)
    from app.network.network_views import register as register_network_views
    register_network_views(appbuilder, category)
    from app.network.invite_views import register as register_invite_views

    register_invite_views(appbuilder, category)
    from app.network.commission_views import register as register_commission_views
    register_commission_views(appbuilder, category)


__all__ = ["HomeView", "register", "select"]
