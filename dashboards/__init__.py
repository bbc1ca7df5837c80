"""The analytics dashboards (数据看板): Dash apps mounted inside the Flask app, behind FAB login and permissions.

Each dashboard is one Dash app served at `/dashboards/<slug>/` and one FAB page at `/analytics/<slug>/` that shows
the product's navigation with the Dash app embedded (an iframe sized to its content). The FAB page's view class is
named after the dashboard (`view_name`) and its `can_show` permission guards BOTH the page and every Dash route:
anonymous users are redirected to the login page (with `next`), logged-in users without the permission get 403.

How to add a dashboard (e.g. helper G's agent growth):

1. Queries in `dashboards/queries/<name>.py`: plain functions taking `scope_id: int` plus filters (`start`, `end`
   inclusive dates, `category_id`, `tier_id`, `granularity` ...) and returning lists/dicts. Read the rollup tables
   of app/analytics/models.py, always with GROUP BY, filtered on (scope_id, day) so the index is used.
2. The Dash module `dashboards/<name>.py` with `build(dash_app: Dash) -> None` that sets
   `dash_app.layout = <function>` (a function, so labels are translated per request; it must not query the
   database) and registers callbacks with `@dash_app.callback(...)` (NEVER `dash.callback`: with several Dash
   apps a global callback is claimed by whichever app starts first). Use dashboards/components.py: `filter_bar`,
   `register_filters`, `Filters.from_inputs` (which calls `app.scope.dashboard_scope` and so must run inside each
   callback, every time), `kpi_row`, `table` + `register_table_export`, `figure`, `fen`.
3. Register it below in DASHBOARDS: `Dashboard("agents", "代理增长", "AgentGrowthDashboardView", "dashboards.agents")`.
4. Roles in app/roles.py: `["^AgentGrowthDashboardView$", "^can_show$"]` and the menu name (`"^代理增长$"`,
   `"^menu_access$"`) for each role that sees it (Manager; Agent where agents see it). Admin sees everything.
   The category "数据看板" is already granted menu_access for Manager and Agent.
5. English: add the title and every `_()` label to tools/translations_en.py and run
   `.venv/bin/python tools/translations.py` (babel.cfg extracts dashboards/**.py too).
6. Tests: tests/dashboards_helpers.py logs in, calls a callback end to end (`call_callback`) and builds rollup rows.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, abort, current_app, jsonify, redirect, request
from flask_appbuilder import AppBuilder, BaseView, expose, has_access
from flask_login import current_user
from sqlalchemy import text

from app.errors import KamengError
from app.extensions import db
from app.headers import register_dash_hashes

CATEGORY = "数据看板"
CATEGORY_ICON = "fa-bar-chart"
DASH_PREFIX = "/dashboards/"
PAGE_PREFIX = "/analytics/"
ASSETS = Path(__file__).resolve().parent / "assets"


@dataclass(frozen=True)
class Dashboard:
    slug: str  # URL part: /dashboards/<slug>/ (Dash) and /analytics/<slug>/ (FAB page)
    title: str  # zh_CN; the menu name and page title (English in tools/translations_en.py)
    view_name: str  # the FAB view class created for it; its permission is <view_name>.can_show
    module: str  # a module with build(dash_app) that sets the layout and registers the callbacks
    icon: str = "fa-area-chart"

    @property
    def dash_path(self) -> str:
        return f"{DASH_PREFIX}{self.slug}/"

    @property
    def page_path(self) -> str:
        return f"{PAGE_PREFIX}{self.slug}/"


# The menu shows them in this order.
DASHBOARDS: list[Dashboard] = [
    Dashboard("gmv", "GMV 概览", "GmvDashboardView", "dashboards.gmv", icon="fa-line-chart"),
    Dashboard("products", "商品与库存", "ProductsDashboardView", "dashboards.products", icon="fa-cubes"),
    Dashboard("agents", "代理增长", "AgentGrowthDashboardView", "dashboards.growth", icon="fa-sitemap"),
    Dashboard("profiles", "用户画像", "ProfileDashboardView", "dashboards.profiles", icon="fa-users"),
    Dashboard("money", "资金流向", "MoneyFlowDashboardView", "dashboards.money", icon="fa-money"),
    # Staff only (Admin, Manager): app/roles.py grants RiskDashboardView to no agent; the callback re-checks.
    Dashboard("risk", "风控看板", "RiskDashboardView", "dashboards.risk", icon="fa-shield"),
]


class DashboardView(BaseView):
    """The FAB page of one dashboard: base template (navigation) with the Dash app embedded."""
    default_view = "show"
    dashboard: Dashboard

    @expose("/")
    @has_access
    def show(self):
        return self.render_template("kameng/dashboard.html", dashboard=self.dashboard,
                                    src=self.dashboard.dash_path, as_of=data_as_of())


def data_as_of() -> str:
    """China time (HH:MM:SS) up to which the order rollups are complete: the oldest delivery or refund not yet
    folded, else now (app.analytics.service.data_as_of)."""
    from app.analytics.service import data_as_of as rollups_as_of
    from app.clock import to_local

    return to_local(rollups_as_of()).strftime("%H:%M:%S")


def view_class(dashboard: Dashboard) -> type[DashboardView]:
    """A BaseView subclass named after the dashboard: FAB names the permission after the class."""
    return type(dashboard.view_name, (DashboardView,), {
        "route_base": dashboard.page_path.rstrip("/"), "dashboard": dashboard,
        "__doc__": f"Dashboard page: {dashboard.slug}"})


def init_dashboards(app: Flask, appbuilder: AppBuilder) -> None:
    """Mount every dashboard: FAB view + menu entry, Dash app, and the permission guard on its routes."""
    from dash import Dash

    for dashboard in DASHBOARDS:
        appbuilder.add_view(view_class(dashboard), dashboard.title, icon=dashboard.icon, category=CATEGORY,
                            category_icon=CATEGORY_ICON)
        dash_app = Dash(f"kameng_{dashboard.slug}", server=app, url_base_pathname=dashboard.dash_path,
                        assets_folder=str(ASSETS), title=dashboard.title, update_title=None, serve_locally=True,
                        compress=False)
        dash_app.index_string = INDEX_STRING
        importlib.import_module(dashboard.module).build(dash_app)
        register_dash_hashes(app, dash_app.csp_hashes())  # the renderer's inline script, allowed by its hash
        _guard_routes(app, dashboard)
    app.after_request(_csrf_cookie)


def _guard_routes(app: Flask, dashboard: Dashboard) -> None:
    """Wrap every view function Dash registered under the dashboard's prefix (pages, layout, callbacks, assets)."""
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules() if rule.rule.startswith(dashboard.dash_path)}
    for endpoint in endpoints:
        app.view_functions[endpoint] = _guarded(app.view_functions[endpoint], dashboard)


def _guarded(view_func, dashboard: Dashboard):
    @functools.wraps(view_func)
    def guarded(*args, **kwargs):
        if not current_user.is_authenticated:
            return redirect(current_app.appbuilder.get_url_for_login_with(request.full_path.rstrip("?")))
        if not current_app.appbuilder.sm.has_access("can_show", dashboard.view_name):
            abort(403)
        if request.path.endswith("/_dash-update-component"):
            _query_settings()
        try:
            return view_func(*args, **kwargs)
        except KamengError as exc:  # e.g. dashboard_scope refusing a branch: the callback answers 4xx, not 500
            response = jsonify(exc.to_dict())
            response.status_code = exc.status
            return response

    return guarded


def _query_settings() -> None:
    """A callback's aggregates (up to ~70k rollup rows for a year) sort and hash in memory instead of spilling to
    disk at PostgreSQL's default 4 MB work_mem (168 ms -> 71 ms for the profile overview at 1M orders); JIT off,
    as compiling these one-off statements costs more than running them. For this request's transaction only."""
    if db.session.get_bind().dialect.name != "postgresql":
        return
    mb = int(current_app.config["DASHBOARD_WORK_MEM_MB"])
    db.session.execute(text(f"SET LOCAL work_mem = '{mb}MB'"))
    db.session.execute(text("SET LOCAL jit = off"))


def _csrf_cookie(response):
    """Dash 4 sends the `_csrf_token` cookie back as X-CSRFToken on its POSTs (CSRFProtect is on app-wide)."""
    if request.path.startswith(DASH_PREFIX) and current_app.config.get("WTF_CSRF_ENABLED", True) \
            and response.mimetype == "text/html" and current_user.is_authenticated:
        from flask_wtf.csrf import generate_csrf

        response.set_cookie("_csrf_token", generate_csrf(), path=DASH_PREFIX, samesite="Lax",
                            secure=current_app.config.get("SESSION_COOKIE_SECURE", False))
    return response


# Dash's page, in Chinese, with the product's font; the FAB page around it carries the navigation.
INDEX_STRING = """<!DOCTYPE html>
<html lang="zh-CN">
<head>
{%metas%}
<title>{%title%}</title>
{%favicon%}
{%css%}
</head>
<body class="kameng-dashboard">
{%app_entry%}
<footer>
{%config%}
{%scripts%}
{%renderer%}
</footer>
</body>
</html>"""
