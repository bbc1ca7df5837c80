"""Agent shops' screens.

Portal (代理中心, the agent's own shop only): 我的分站 (open it; name, notice, logo, theme, buyer contact, markup;
product prices, hidden and featured; custom domain; materials: share links, posters, price list, copy text) and
分站订单 (its shop's orders, buyers' contacts masked, never a card secret).
Admin (代理管理): 分站列表 (every shop; suspend / resume, audited) and 分站域名 (approve / reject, audited).
Thin: parse, call app.agentshops.service / materials, render. Every portal page asks require_agent() and works on
service.own_shop(agent); FAB @action handlers call the service, which audits.
"""
from __future__ import annotations

from flask import Response, abort, current_app, flash, g, redirect, request, url_for
from flask_appbuilder import BaseView, ModelView, expose, has_access
from flask_appbuilder.actions import action
from flask_appbuilder.models.sqla.filters import FilterInFunction
from flask_appbuilder.models.sqla.interface import SQLAInterface
from flask_babel import gettext
from flask_babel import lazy_gettext as _
from markupsafe import Markup, escape
from sqlalchemy import select

from app.agentshops import materials, service
from app.agentshops.models import THEMES, AgentShop, AgentShopDomain
from app.errors import KamengError
from app.money import format_bp
from app.orders.models import Order
from app.orders.views import ORDER_LABELS
from app.scope import current_agent, require_agent
from app.views_common import ReadableColumnsMixin


def shop_url(shop: AgentShop) -> str:
    """The shop's absolute address: its approved domain, else /s/<code>/ on the platform's."""
    domain = service.domain_of(shop.id)
    if domain is not None and domain.status == "approved":
        return f"{current_app.config.get('PREFERRED_URL_SCHEME') or 'http'}://{domain.domain}/"
    base = (current_app.config.get("PUBLIC_BASE_URL") or request.host_url).rstrip("/")
    return f"{base}/s/{shop.code}/"


def product_link(shop: AgentShop, product_id: int) -> str:
    """A product's share link: its checkout page in the shop."""
    return f"{shop_url(shop)}buy/{product_id}"


# --- portal: 我的分站 ---------------------------------------------------------------------------------------------

class MyShopView(BaseView):
    route_base = "/portal/shop"
    default_view = "index"
    # Two permissions: reading the shop's pages and images, and changing the shop.
    method_permission_name = {"index": "read", "products": "read", "materials": "read", "poster": "read",
                              "pricelist": "read", "open": "write", "settings": "write", "logo": "write",
                              "domain": "write", "products_post": "write"}

    def _shop(self):
        agent = require_agent()
        try:
            return agent, service.own_shop(agent)
        except KamengError:
            abort(404)

    @expose("/", methods=["GET"])
    @has_access
    def index(self):
        return self._index(require_agent())

    def _index(self, agent, error: str | None = None, typed=None, status: int = 200):
        """The shop's page; after a refused change, with the error on the form and what was typed (400)."""
        shop = service.shop_of(agent.id)
        bounds = service.markup_bounds()
        context = {"agent": agent, "shop": shop, "themes": THEMES, "error": error, "typed": typed or {},
                   "bounds": (format_bp(bounds[0]), format_bp(bounds[1]))}
        if shop is None:
            context["refusal"] = service.open_refusal(agent)
        else:
            context.update(url=shop_url(shop), closed=service.closed_reason(shop), totals=service.totals(shop),
                           domain=service.domain_of(shop.id), markup=_percent(shop.markup_bp))
        return self.render_template("kameng/agentshop/portal.html", **context), status

    @expose("/open", methods=["POST"])
    @has_access
    def open(self):
        agent = require_agent()
        form = request.form
        try:
            markup = service.parse_markup(form.get("markup"))
            shop = service.open_shop(agent.id, form.get("name"), markup, form.get("theme"), form.get("notice"),
                                     form.get("contact"), actor_id=g.user.id)
        except KamengError as exc:
            return self._index(agent, exc.message, form, 400)
        flash(gettext("分站已开通：%(url)s", url=shop_url(shop)), "success")
        return redirect(url_for("MyShopView.index"))

    @expose("/settings", methods=["POST"])
    @has_access
    def settings(self):
        agent, shop = self._shop()
        try:
            service.update_settings(shop.id, agent.id, request.form.to_dict(), actor_id=g.user.id)
        except KamengError as exc:
            return self._index(agent, exc.message, request.form, 400)
        flash(gettext("店铺设置已保存"), "success")
        return redirect(url_for("MyShopView.index"))

    @expose("/logo", methods=["POST"])
    @has_access
    def logo(self):
        agent, shop = self._shop()
        upload = request.files.get("logo")
        try:
            service.set_logo(shop.id, agent.id, upload.read(service.MAX_LOGO_BYTES + 1) if upload else b"",
                             actor_id=g.user.id)
        except KamengError as exc:
            flash(exc.message, "danger")
        else:
            flash(gettext("店铺 Logo 已更新"), "success")
        return redirect(url_for("MyShopView.index"))

    @expose("/domain", methods=["POST"])
    @has_access
    def domain(self):
        agent, shop = self._shop()
        try:
            row = service.request_domain(shop.id, agent.id, request.form.get("domain"), actor_id=g.user.id)
        except KamengError as exc:
            flash(exc.message, "danger")
        else:
            flash(gettext("已提交域名 %(domain)s，平台审核通过后生效", domain=row.domain), "success")
        return redirect(url_for("MyShopView.index"))

    @expose("/products", methods=["GET"])
    @has_access
    def products(self):
        agent, shop = self._shop()
        bounds = service.markup_bounds()
        return self.render_template("kameng/agentshop/portal_products.html", shop=shop, rows=service.product_rows(shop),
                                    shop_markup=format_bp(service.clamp(shop.markup_bp, bounds)),
                                    bounds=(format_bp(bounds[0]), format_bp(bounds[1])))

    @expose("/products", methods=["POST"])
    @has_access
    def products_post(self):
        agent, shop = self._shop()
        form = request.form
        rows = []
        for raw in form.getlist("product_id"):
            if not raw.isdigit() or len(raw) > 9:
                abort(400)
            pid = int(raw)
            rows.append(service.ProductSetting(pid, form.get(f"markup_{pid}", ""), form.get(f"hidden_{pid}") == "on",
                                               form.get(f"featured_{pid}") == "on"))
        try:
            changed = service.set_products(shop.id, agent.id, rows, actor_id=g.user.id)
        except KamengError as exc:
            # The page again with what was typed and the error (a form error, nothing saved).
            return self.render_template("kameng/agentshop/portal_products.html", shop=shop,
                                        rows=service.product_rows(shop), error=exc.message, typed=form,
                                        shop_markup=format_bp(service.clamp(shop.markup_bp,
                                                                            service.markup_bounds())),
                                        bounds=tuple(format_bp(b) for b in service.markup_bounds())), 400
        flash(gettext("已保存 %(n)d 个商品的设置", n=changed), "success")
        return redirect(url_for("MyShopView.products"))

    @expose("/materials", methods=["GET"])
    @has_access
    def materials(self):
        agent, shop = self._shop()
        rows = [r for r in service.product_rows(shop) if not r.hidden]
        url = shop_url(shop)
        featured = service.featured_rows(shop)
        return self.render_template(
            "kameng/agentshop/portal_materials.html", shop=shop, url=url, rows=rows,
            links={r.product_id: product_link(shop, r.product_id) for r in rows},
            copies={r.product_id: materials.product_copy(shop, r.name, r.shop_price, product_link(shop, r.product_id))
                    for r in rows},
            list_copy=materials.price_list_copy(shop, [(r.name, r.shop_price) for r in featured], url),
            featured=featured)

    @expose("/poster/<int:product_id>.png", methods=["GET"])
    @has_access
    def poster(self, product_id):
        agent, shop = self._shop()
        row = next((r for r in service.product_rows(shop) if r.product_id == product_id and not r.hidden), None)
        if row is None:
            abort(404)
        link = product_link(shop, row.product_id)
        png = materials.cached_png(shop, "poster", row.product_id, [row.name, row.category, row.shop_price, link],
                                   lambda: materials.draw_poster(shop, row.name, row.category, row.shop_price, link))
        return _png(png, f"poster-{shop.code}-{row.product_id}.png")

    @expose("/pricelist.png", methods=["GET"])
    @has_access
    def pricelist(self):
        agent, shop = self._shop()
        rows = [(r.name, r.shop_price) for r in service.featured_rows(shop)]
        url, day = shop_url(shop), materials.today_label()
        png = materials.cached_png(shop, "pricelist", None, [rows, url, day],
                                   lambda: materials.draw_price_list(shop, rows, url, day))
        return _png(png, f"pricelist-{shop.code}.png")


def _percent(bp: int) -> str:
    """Basis points as the percent an agent types: 1250 -> '12.5', 1000 -> '10'."""
    return f"{bp / 100:.2f}".rstrip("0").rstrip(".")


def _png(png: bytes, filename: str) -> Response:
    download = request.args.get("download") == "1"
    disposition = "attachment" if download else "inline"
    return Response(png, mimetype="image/png", headers={
        "Content-Disposition": f'{disposition}; filename="{filename}"', "Cache-Control": "private, no-store"})


def own_shop_ids():
    """For the shop orders' base filter: the current agent's own shop (nothing for anyone else)."""
    agent = current_agent()
    return select(AgentShop.id).where(AgentShop.agent_id == (agent.id if agent is not None else -1))


SHOP_ORDER_LABELS = {**ORDER_LABELS, "contact_masked": _("买家联系方式")}


class MyShopOrderView(ReadableColumnsMixin, ModelView):
    """分站订单: the orders of the agent's own shop; the buyer's contact masked, no card secret anywhere."""
    datamodel = SQLAInterface(Order)
    route_base = "/portal/shop-orders"
    base_permissions = ["can_list", "can_show"]
    base_filters = [["shop_id", FilterInFunction, own_shop_ids]]
    list_title = show_title = _("分站订单")
    list_columns = ["order_no", "product", "quantity", "amount_display", "shop_profit_display", "status_display",
                    "contact_masked", "created_at"]
    show_columns = ["order_no", "product", "quantity", "unit_price_display", "amount_display", "shop_base_display",
                    "shop_profit_display", "status_display", "contact_masked", "created_at", "delivered_at"]
    search_columns = ["order_no", "status", "created_at"]
    label_columns = SHOP_ORDER_LABELS
    base_order = ("id", "desc")


# --- admin --------------------------------------------------------------------------------------------------------

def _shop_link(code: str):
    return Markup(f'<a href="/s/{escape(code)}/" target="_blank" rel="noopener">{escape(code)}</a>')


SHOP_LABELS = {"name": _("店铺名称"), "code": _("店铺代码"), "agent": _("代理"), "theme": _("风格"),
               "theme_display": _("风格"), "markup_display": _("统一加价"), "status": _("状态"),
               "status_display": _("状态"), "contact": _("联系方式"), "notice": _("店铺公告"),
               "created_at": _("开通时间"), "suspended_at": _("暂停时间"), "updated_at": _("更新时间")}


class ShopAdminView(ReadableColumnsMixin, ModelView):
    """分站列表: every shop. Suspend (its pages answer "shop closed", checkout refuses) or resume, audited."""
    datamodel = SQLAInterface(AgentShop)
    route_base = "/agent-shops"
    base_permissions = ["can_list", "can_show", "suspend", "resume"]
    list_title = show_title = _("分站列表")
    list_columns = ["name", "code", "agent", "theme_display", "markup_display", "status_display", "created_at"]
    show_columns = ["name", "code", "agent", "theme_display", "markup_display", "contact", "notice",
                    "status_display", "created_at", "suspended_at", "updated_at"]
    search_columns = ["name", "code", "agent", "status", "theme", "created_at"]
    label_columns = SHOP_LABELS
    formatters_columns = {"code": _shop_link}
    base_order = ("id", "desc")

    def _set(self, items, status: str) -> int:
        items = items if isinstance(items, list) else [items]
        changed = 0
        for item in items:
            if item is None:
                continue
            service.set_status(item.id, status, actor_id=g.user.id)
            changed += 1
        return changed

    @action("suspend", _("暂停营业"), _("确定暂停所选分站？其页面将显示暂停营业，且不能下单。"), "fa-ban")
    def suspend(self, items):
        flash(gettext("已暂停 %(n)d 个分站", n=self._set(items, "suspended")), "info")
        return redirect(url_for("ShopAdminView.list"))

    @action("resume", _("恢复营业"), _("确定恢复所选分站营业？"), "fa-check")
    def resume(self, items):
        flash(gettext("已恢复 %(n)d 个分站", n=self._set(items, "active")), "info")
        return redirect(url_for("ShopAdminView.list"))


DOMAIN_LABELS = {"domain": _("域名"), "shop": _("分站"), "status": _("状态"), "status_display": _("状态"),
                 "requested_at": _("申请时间"), "decided_at": _("审核时间"), "decided_by": _("审核人")}


class ShopDomainView(ReadableColumnsMixin, ModelView):
    """分站域名: custom domains agents asked for; only an approved one is served as its shop. Audited."""
    datamodel = SQLAInterface(AgentShopDomain)
    route_base = "/agent-shop-domains"
    base_permissions = ["can_list", "can_show", "approve_domain", "reject_domain"]
    list_title = show_title = _("分站域名")
    list_columns = ["domain", "shop", "status_display", "requested_at", "decided_at", "decided_by"]
    show_columns = list_columns
    search_columns = ["domain", "shop", "status", "requested_at"]
    label_columns = DOMAIN_LABELS
    base_order = ("id", "desc")

    def _decide(self, items, approve: bool):
        items = items if isinstance(items, list) else [items]
        changed = 0
        for item in items:
            if item is None:
                continue
            service.decide_domain(item.id, approve, actor_id=g.user.id)
            changed += 1
        flash(gettext("已通过 %(n)d 个域名", n=changed) if approve else gettext("已拒绝 %(n)d 个域名", n=changed),
              "info")
        return redirect(url_for("ShopDomainView.list"))

    @action("approve_domain", _("通过"), _("确定通过所选域名？通过后该域名将作为分站对外服务。"), "fa-check")
    def approve_domain(self, items):
        return self._decide(items, True)

    @action("reject_domain", _("拒绝 / 撤销"), _("确定拒绝（或撤销）所选域名？"), "fa-ban")
    def reject_domain(self, items):
        return self._decide(items, False)


def _home_shop_link(agent) -> tuple[str, str] | None:
    """The agent home's shop card (app.workbench): the shop's name and address, once it has one."""
    shop = service.shop_of(agent.id)
    return (shop.name, shop_url(shop)) if shop is not None else None


def register(appbuilder, admin_category: str, portal_category: str) -> None:
    from app.workbench.service import register_shop_link

    register_shop_link(_home_shop_link)
    appbuilder.add_view(MyShopView, "我的分站", href="/portal/shop/", icon="fa-shopping-basket",
                        category=portal_category)
    appbuilder.add_view(MyShopOrderView, "分站订单", icon="fa-list-ul", category=portal_category)
    appbuilder.add_view(ShopAdminView, "分站列表", icon="fa-shopping-basket", category=admin_category)
    appbuilder.add_view(ShopDomainView, "分站域名", icon="fa-globe", category=admin_category)


__all__ = ["MyShopOrderView", "MyShopView", "ShopAdminView", "ShopDomainView", "register"]
