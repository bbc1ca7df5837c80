"""Every FAB screen registered in one place, with its menu category (zh_CN names)."""
from __future__ import annotations

import re

from flask import abort, current_app, request
from flask_appbuilder import AppBuilder
from flask_babel import gettext
from sqlalchemy import BigInteger, Integer, SmallInteger

from app.agents.views import AgentView, TierView, WalletAdjustView
from app.audit.views import AuditView
from app.catalog.views import (
    CardImportFormView,
    CardImportView,
    CardSecretView,
    CategoryView,
    PriceRuleView,
    ProductView,
    StockAlertView,
    SupplierView,
    TierPriceView,
)
from app.jobs.views import JobsView
from app.ledger.views import AccountView, JournalView, PostingView
from app.orders.views import OrderView
from app.portal import views as portal
from app.suppliers.views import SupplierAlertView, SupplierProductView

# Menu categories, by the operator's job (one navbar row at 1366 px): each package's register() names the same ones
ORDERS = "订单与售后"  # also app/notices, app/support, app/payments/dispute_views
CATALOG = "商品管理"  # products, prices, suppliers and the card stock (卡密库存)
AGENTS = "代理与佣金"  # also app/network (commissions, team bonus), app/agentshops
MONEY = "资金"  # ledger, payments, reconciliation, wallet adjustments, withdrawals (app/payments, app/network)
SYSTEM = "系统"
PORTAL = "代理中心"
# The navbar's order; categories registered by FAB (Security) or not listed keep their place after these.
MENU_ORDER = ("工作台", ORDERS, CATALOG, AGENTS, MONEY, "风控", "数据看板", SYSTEM, PORTAL)


def register_views(appbuilder: AppBuilder) -> None:
    from app.workbench import views as workbench

    workbench.register(appbuilder)  # 工作台 first in the menu: staff's home
    add = appbuilder.add_view
    add(OrderView, "订单查询", icon="fa-list-alt", category=ORDERS, category_icon="fa-shopping-cart")

    add(CategoryView, "商品分类", icon="fa-folder", category=CATALOG, category_icon="fa-cubes")
    add(ProductView, "商品", icon="fa-cube", category=CATALOG)
    add(TierPriceView, "等级价格", icon="fa-tags", category=CATALOG)
    add(PriceRuleView, "限时价格", icon="fa-clock-o", category=CATALOG)
    add(SupplierView, "上游供应商", icon="fa-truck", category=CATALOG)
    add(SupplierProductView, "货源映射", icon="fa-random", category=CATALOG)
    add(SupplierAlertView, "供应商余额提醒", icon="fa-bell-o", category=CATALOG)

    add(CardSecretView, "卡密列表", icon="fa-key", category=CATALOG)
    add(CardImportFormView, "导入卡密", href="/card-import/", icon="fa-upload", category=CATALOG)
    add(CardImportView, "导入批次", icon="fa-history", category=CATALOG)
    add(StockAlertView, "补货提醒", icon="fa-bell", category=CATALOG)

    add(AgentView, "代理列表", icon="fa-users", category=AGENTS, category_icon="fa-sitemap")
    add(TierView, "代理等级", icon="fa-signal", category=AGENTS)

    add(AccountView, "账户", icon="fa-book", category=MONEY, category_icon="fa-money")
    add(JournalView, "凭证", icon="fa-file-text-o", category=MONEY)
    add(PostingView, "分录", icon="fa-list", category=MONEY)
    add(WalletAdjustView, "余额调整", href="/wallet-adjust/form", icon="fa-exchange", category=MONEY)

    add(AuditView, "审计日志", icon="fa-shield", category=SYSTEM, category_icon="fa-cog")
    from app.announcements.views import AnnouncementView

    add(AnnouncementView, "公告", icon="fa-bullhorn", category=SYSTEM)
    add(JobsView, "任务队列", href="/jobs/", icon="fa-tasks", category=SYSTEM)

    portal.register(appbuilder, PORTAL)
    from app.agentshops.views import register as register_shop_views

    register_shop_views(appbuilder, admin_category=AGENTS, portal_category=PORTAL)
    install_request_guards(appbuilder)
    current_app.jinja_env.finalize = yes_no


def order_menu(appbuilder: AppBuilder) -> None:
    """Put the navbar's top-level entries in MENU_ORDER (called once every package has registered its screens)."""
    menu = appbuilder.menu
    security, system = menu.find("Security"), menu.find(SYSTEM)
    if security is not None and system is not None:  # FAB's users and roles screens go under 系统: one entry fewer
        menu.add_separator(SYSTEM)
        system.childs.extend(security.childs)
        menu.menu.remove(security)
    rank = {name: i for i, name in enumerate(MENU_ORDER)}
    menu.menu.sort(key=lambda item: rank.get(item.name, len(rank)))  # stable: unlisted ones keep their order


def yes_no(value):
    """Every {{ value }} a template prints: a bool reads 是/否 (Yes/No in English) instead of True/False. FAB's own
    list and show widgets print a boolean column as it is; this covers them and ours alike."""
    if value is True:
        return gettext("是")
    if value is False:
        return gettext("否")
    return value


# ------------------------------------------------------------------------------------------------ request guards
# FAB 5 turns some malformed requests into 500s on every ModelView (ours and its own security views):
#   /x/action/<unknown>/1 and action_post with an unknown action: AttributeError on None.func
#   /x/show/99999999999999999999: the database raises "integer out of range"
#   ?page_X=-1, ?psize_X=-5, ?page_X=abc: negative OFFSET/LIMIT or int("abc")
#   ?_oc_X=<not a column>: SQLAlchemy cannot compile the ORDER BY
#   /x/download/<file>: no UPLOAD_FOLDER (no screen here has file columns)
#   /portal/api-keys/revoke/99999999999 (any <int:..._id> route): "integer out of range" again
# One before_request hook answers those with 404/400 before FAB sees them.

_INT_LIMITS = {SmallInteger: 2**15 - 1, BigInteger: 2**63 - 1, Integer: 2**31 - 1}
MAX_PAGE_SIZE = 1000
MAX_PAGE = 1_000_000
_DIGITS = re.compile(r"^[0-9]{1,19}$")


def _int_pk_limit(view) -> int | None:
    """The largest valid primary key of the view's model, when it is a single integer column."""
    datamodel = getattr(view, "datamodel", None)
    model = getattr(datamodel, "obj", None)
    if model is None:
        return None
    pk_columns = model.__mapper__.primary_key
    if len(pk_columns) != 1:
        return None
    for type_, limit in _INT_LIMITS.items():  # SmallInteger and BigInteger subclass Integer: most specific first
        if isinstance(pk_columns[0].type, type_):
            return limit
    return None


def _valid_pk(view, value: str) -> bool:
    limit = _int_pk_limit(view)
    if limit is None:
        return True
    return bool(_DIGITS.match(value or "")) and int(value) <= limit


def _check_list_args(views_by_class: dict) -> None:
    for arg, value in request.args.items(multi=True):
        if arg.startswith(("page_", "psize_")):
            if not _DIGITS.match(value):
                abort(400)
            number = int(value)
            if arg.startswith("psize_") and number > MAX_PAGE_SIZE or number > MAX_PAGE:
                abort(400)
        elif arg.startswith("_oc_"):
            target = views_by_class.get(arg[len("_oc_"):])
            if target is not None and value not in (getattr(target, "order_columns", None) or []):
                abort(400)


def install_request_guards(appbuilder: AppBuilder) -> None:
    app = current_app._get_current_object()  # register_views runs inside create_app's app context
    cache: dict[str, dict] = {}

    def views() -> dict:
        if not cache:
            cache["by_blueprint"] = {v.blueprint.name: v for v in appbuilder.baseviews
                                     if getattr(v, "blueprint", None) is not None}
            cache["by_class"] = {type(v).__name__: v for v in appbuilder.baseviews}
        return cache

    @app.before_request
    def _guard_fab_views():
        for name, value in (request.view_args or {}).items():
            # <int:key_id> routes: an id beyond INTEGER makes the database raise instead of finding nothing
            if isinstance(value, int) and (name == "id" or name.endswith("_id")) and value > _INT_LIMITS[Integer]:
                abort(404)
        view = views()["by_blueprint"].get(request.blueprint or "")
        if view is None or not hasattr(view, "datamodel"):
            return None
        endpoint = (request.endpoint or "").rsplit(".", 1)[-1]
        args = request.view_args or {}
        if endpoint == "download":
            abort(404)
        if "pk" in args and not _valid_pk(view, args["pk"]):
            abort(404)
        actions = getattr(view, "actions", {}) or {}
        if endpoint == "action" and args.get("name") not in actions:
            abort(404)
        if endpoint == "action_post":
            if request.form.get("action") not in actions:
                abort(404)
            if not all(_valid_pk(view, pk) for pk in request.form.getlist("rowid")):
                abort(404)
        _check_list_args(views()["by_class"])
        return None
