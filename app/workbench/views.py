"""工作台: every staff role's home page (the site's index shows it to staff; /workbench/ is its own address)."""
from __future__ import annotations

from flask import g
from flask_appbuilder import BaseView, expose, has_access

from app.analytics import delivery
from app.analytics.service import data_as_of
from app.workbench import service

TEMPLATE = "kameng/workbench.html"


def context(appbuilder) -> dict:
    """What the workbench shows the signed-in staff member (its roles decide the to-do list and the money KPI)."""
    from app.announcements import service as announcements

    sm = appbuilder.sm
    roles = {role.name for role in g.user.roles}
    today, yesterday = service.today_and_yesterday()
    return {"today": today, "yesterday": yesterday, "todo": service.todo(roles, sm.has_access),
            "rows": service.delivery_rows(today.day), "show_money": sm.has_access("can_show", "GmvDashboardView"),
            "show_products": sm.has_access("can_show", "ProductsDashboardView"),
            "announcements": announcements.current("staff"), "as_of": data_as_of(), "fmt": delivery.format_ms,
            "sla_minutes": delivery.sla_ms() // 60_000, "promise_seconds": delivery.PROMISE_MS // 1000}


class WorkbenchView(BaseView):
    route_base = "/workbench"
    default_view = "index"

    @expose("/")
    @has_access
    def index(self):
        return self.render_template(TEMPLATE, **context(self.appbuilder))


def register(appbuilder) -> None:
    appbuilder.add_view(WorkbenchView, "工作台", href="/workbench/", icon="fa-tachometer")
