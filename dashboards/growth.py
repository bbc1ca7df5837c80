"""Agent growth dashboard (代理增长): new agents by tier, active agents, top recruiters, tree shape, retention, and a
risk flag on uplines with many recruits none of whom ever bought (an account farm's sign).

One callback answers a filter change with everything; the scope comes from app.scope.dashboard_scope (through
Filters.from_inputs) on every call. Queries: dashboards/queries/agents.py (agent table + rollup_agent_daily).
"""
from __future__ import annotations

from collections import defaultdict

from dash import Dash, Output, html
from flask_babel import gettext as _

from dashboards import components as c
from dashboards.queries import agents as q
from dashboards.queries.periods import bucket, periods

FILTERS = {"category": False, "tier": True, "branch": True, "granularity": True}
TABLES = {"ag-new-table": "new-agents.csv", "ag-recruiters": "top-recruiters.csv", "ag-levels-table": "tree-levels.csv",
          "ag-retention": "retention.csv", "ag-idle": "recruits-never-bought.csv"}


def layout() -> html.Div:
    return c.page(
        _("代理增长"),
        c.filter_bar(**FILTERS),
        html.Div(id="ag-note", className="kd-note"),
        c.kpi_row("ag-kpis"),
        html.Div([html.Div(c.graph("ag-new"), className="kd-col"),
                  html.Div(c.graph("ag-active"), className="kd-col")], className="kd-row"),
        c.table("ag-new-table", [("period", _("时间")), ("tier", _("等级")), ("count", _("新增代理"))],
                title=_("新增代理明细")),
        html.Div([html.Div(c.graph("ag-levels"), className="kd-col"),
                  html.Div(c.graph("ag-retention-map"), className="kd-col")], className="kd-row"),
        c.table("ag-recruiters", [("rank", _("排名")), ("name", _("代理")), ("tier", _("等级")),
                                  ("recruits", _("新增直推"))], title=_("推荐排行")),
        # Risk flag (风控): many recruits, none of whom ever bought.
        html.Div(id="ag-idle-note", className="kd-note", style={"color": "#c00"}),
        c.table("ag-idle", [("rank", _("序号")), ("name", _("上级代理")), ("tier", _("等级")),
                            ("recruits", _("新增直推")), ("last_joined", _("最近加入"))],
                title=_("直推多但无人采购的上级")),
        c.table("ag-levels-table", [("level", _("层级")), ("agents", _("代理数"))], title=_("团队层级")),
        c.table("ag-retention", [("cohort", _("加入月份")), ("size", _("人数"))], title=_("按加入月份的留存")),
    )


def build(dash_app: Dash) -> None:
    dash_app.layout = layout
    c.register_filters(dash_app, category=False, granularity=True)
    for table_id, filename in TABLES.items():
        c.register_table_export(dash_app, table_id, filename)

    outputs = [Output("ag-note", "children"), Output("ag-kpis", "children"), Output("ag-new", "figure"),
               Output("ag-active", "figure"), Output("ag-new-table", "data"), Output("ag-levels", "figure"),
               Output("ag-retention-map", "figure"), Output("ag-recruiters", "data"),
               Output("ag-levels-table", "data"), Output("ag-retention", "data"), Output("ag-retention", "columns"),
               Output("ag-idle", "data"), Output("ag-idle-note", "children")]

    @dash_app.callback(*outputs, inputs=c.filter_inputs(**FILTERS))
    def update(**values):
        return render(c.Filters.from_inputs(**values))



def render(f: c.Filters) -> tuple:
    """Everything the page shows for one set of filters (the callback body; tests call it too)."""
    scope, tier = f.scope_id, f.tier_id
    new = q.new_agents(scope, f.start, f.end, tier)
    buying = q.activity(scope, f.start, f.end, tier)
    active, daily = buying["active"], buying["daily"]
    levels = q.tree_levels(scope, f.end, tier)
    recruiters = q.top_recruiters(scope, f.start, f.end, tier)
    idle = q.idle_recruiters(scope, f.start, f.end, tier)
    cohorts = q.retention(scope, f.start, f.end, tier)

    note = _("%(start)s 至 %(end)s；活跃代理截至 %(end)s，团队规模为截至当日的全部代理",
             start=f.start.isoformat(), end=f.end.isoformat())
    size = sum(r["agents"] for r in levels)
    depth = max((r["level"] for r in levels), default=0)
    kpis = [
        c.kpi_card(_("新增代理"), sum(r["count"] for r in new), card_id="kpi-new"),
        c.kpi_card(_("近7天活跃代理"), active[7], card_id="kpi-active-7"),
        c.kpi_card(_("近30天活跃代理"), active[30], card_id="kpi-active-30"),
        c.kpi_card(_("团队规模"), size, card_id="kpi-size"),
        c.kpi_card(_("层级深度"), depth, card_id="kpi-depth"),
    ]

    # New agents per period and tier (stacked bars), every period of the range on the axis.
    buckets = periods(f.start, f.end, f.granularity)
    per_tier: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    for r in new:
        per_tier[r["tier"]][bucket(r["day"], f.granularity)] += r["count"]
    labels = [c.period_label(p, f.granularity) for p in buckets]
    new_fig = c.period_axis(c.figure(title=_("新增代理（按等级）")))
    for tier_name in sorted(per_tier):
        new_fig.add_bar(x=labels, y=[per_tier[tier_name].get(p, 0) for p in buckets], name=tier_name)
    new_fig.update_layout(barmode="stack")
    new_rows = [{"period": c.period_label(p, f.granularity), "tier": t, "count": per_tier[t][p]}
                for p in buckets for t in sorted(per_tier) if per_tier[t].get(p)]

    active_fig = c.period_axis(c.figure(title=_("每日采购代理数")))
    active_fig.add_scatter(x=[r["day"].isoformat() for r in daily], y=[r["agents"] for r in daily],
                           mode="lines+markers", name=_("采购代理数"))

    level_fig = c.figure(title=_("各层级代理数"))
    level_fig.add_bar(x=[_("第 %(n)s 层", n=r["level"]) for r in levels], y=[r["agents"] for r in levels],
                      name=_("代理数"))
    level_rows = [{"level": r["level"], "agents": r["agents"]} for r in levels]

    recruiter_rows = [{"rank": i, "name": r["name"], "tier": r["tier"], "recruits": r["recruits"]}
                      for i, r in enumerate(recruiters, start=1)]

    width = max((len(r["months"]) for r in cohorts), default=0)
    columns = [{"id": "cohort", "name": _("加入月份")}, {"id": "size", "name": _("人数")}] + [
        {"id": f"m{i}", "name": _("第 %(n)s 月", n=i)} for i in range(width)]
    retention_rows = []
    for r in cohorts:
        row = {"cohort": r["cohort"], "size": r["size"]}
        for m in r["months"]:
            row[f"m{m['offset']}"] = f"{m['pct']:.1f}% ({m['active']})"
        retention_rows.append(row)
    heat = c.figure(title=_("留存率"))
    heat.add_heatmap(z=[[m["pct"] for m in r["months"]] + [None] * (width - len(r["months"])) for r in cohorts],
                     x=[_("第 %(n)s 月", n=i) for i in range(width)], y=[r["cohort"] for r in cohorts],
                     colorscale="Blues", reversescale=True, zmin=0, zmax=100,  # plotly.js's Blues is dark at 0
                     hovertemplate="%{y} %{x}: %{z}%<extra></extra>")
    heat.update_yaxes(autorange="reversed", type="category")
    heat.update_layout(margin={"l": 70})  # room for the 'YYYY-MM' cohort labels
    idle_rows = [{"rank": i, "name": r["name"], "tier": r["tier"], "recruits": r["recruits"],
                  "last_joined": r["last_joined"].isoformat()} for i, r in enumerate(idle, start=1)]
    idle_note = _("所选范围内新增直推不少于 %(n)s 人、且其中无人有过已到账订单的上级，可能是批量注册（拉人头），"
                  "请在风控中核查", n=q.IDLE_RECRUITS_MIN) if idle else ""
    return (note, kpis, new_fig, active_fig, new_rows, level_fig, heat, recruiter_rows, level_rows,
            retention_rows, columns, idle_rows, idle_note)
