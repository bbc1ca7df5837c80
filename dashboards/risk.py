"""Risk control dashboard (风控看板, staff only): decisions by outcome over time, hits per rule (shadow rules apart),
the review queue's size and age against its SLA, and the masked IPs and devices behind blocked and reviewed
decisions. Platform-wide: the callback refuses any viewer whose dashboard scope is not the platform (an agent), on
top of the RiskDashboardView.can_show guard. Queries: dashboards/queries/risk.py; the log download: app.risk.export.
"""
from __future__ import annotations

import io
from collections import defaultdict

from dash import Dash, Input, Output, State, dcc, html
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l

from app.analytics.models import PLATFORM_SCOPE
from app.errors import Forbidden, ValidationError
from app.risk import export
from app.risk.labels import EVENT_TEXT, OUTCOME_TEXT, RULE_ACTION_TEXT, STAGE_TEXT
from app.risk.models import EVENTS
from dashboards import components as c
from dashboards.queries import risk as q
from dashboards.queries import risk_learning as ql
from dashboards.queries.periods import bucket, periods

FILTERS = {"category": False, "tier": False, "branch": False, "granularity": True}
TABLES = {"rk-rules": "risk-rules.csv", "rk-ips": "risk-top-ips.csv", "rk-devices": "risk-top-devices.csv",
          "rk-daily": "risk-decisions.csv", "rk-anomalies": "risk-agent-anomalies.csv",
          "rk-models": "risk-models.csv"}
ANOMALY_REASONS = {"downline_never_buys": _l("下级从不采购"), "linked_cluster": _l("关联账号群（共用设备/IP）"),
                   "outlier": _l("孤立森林异常")}
MODEL_STATUS = {"shadow": _l("影子"), "active": _l("生效"), "retired": _l("已退役")}
OUTCOMES = list(OUTCOME_TEXT.items())
OUTCOME_COLORS = {"allow": "#00cc96", "review": "#FFA15A", "block": "#EF553B"}
EVENT_NAMES = EVENT_TEXT
HIT_KINDS = {k: v for k, v in STAGE_TEXT.items() if k != "none"}
ACTIONS = RULE_ACTION_TEXT
TOP_RULES_ON_CHART = 8


def layout() -> html.Div:
    return c.page(
        _("风控看板"),
        c.filter_bar(**FILTERS),
        html.Div([
            html.Div([html.Label(_("事件类型"), className="kd-label"),
                      dcc.Dropdown(id="rk-event", options=[{"label": str(EVENT_NAMES[e]), "value": e} for e in EVENTS],
                                   placeholder=_("全部事件"), className="kd-dropdown")], className="kd-field"),
            html.Div([html.Button(_("导出风控日志 CSV"), id="rk-log-export", n_clicks=0, className="kd-export"),
                      dcc.Download(id="rk-log-download")], className="kd-field"),
        ], className="kd-filters"),
        html.Div(id="rk-note", className="kd-note"),
        c.kpi_row("rk-kpis"),
        html.Div([html.Div(c.graph("rk-outcomes"), className="kd-col"),
                  html.Div(c.graph("rk-rule-trend"), className="kd-col")], className="kd-row"),
        html.Div([html.Div(c.graph("rk-rule-bars"), className="kd-col"),
                  html.Div(c.graph("rk-queue-ages"), className="kd-col")], className="kd-row"),
        c.table("rk-rules", [("kind", _("类型")), ("name", _("规则 / 名单 / 限额")), ("action", _("动作")),
                             ("hits", _("命中次数")), ("shadow_hits", _("影子命中（仅记录）"))],
                title=_("按规则命中")),
        html.Div([
            html.Div(c.table("rk-ips", [("rank", _("排名")), ("value", _("IP（脱敏）")), ("blocked", _("拦截")),
                                        ("reviewed", _("人工审核")), ("total", _("合计"))],
                             title=_("拦截 / 审核最多的 IP"), page_size=10), className="kd-col"),
            html.Div(c.table("rk-devices", [("rank", _("排名")), ("value", _("设备（脱敏）")), ("blocked", _("拦截")),
                                            ("reviewed", _("人工审核")), ("total", _("合计"))],
                             title=_("拦截 / 审核最多的设备"), page_size=10), className="kd-col"),
        ], className="kd-row"),
        c.table("rk-daily", [("period", _("时间")), ("allow", _("放行")), ("review", _("人工审核")),
                             ("block", _("拦截")), ("total", _("合计"))], title=_("决策明细")),
        c.table("rk-anomalies", [("agent", _("代理")), ("score", _("异常分")), ("reasons", _("原因")),
                                 ("cluster", _("关联群")), ("recruits", _("直推下级")),
                                 ("recruits_buying", _("有采购的下级")), ("device_sharers", _("共用设备的代理")),
                                 ("ip_sharers", _("共用 IP 的代理"))], title=_("代理异常（待复核）")),
        c.table("rk-models", [("version", _("版本")), ("status", _("状态")), ("pr_auc", _("模型 PR-AUC")),
                              ("recall", _("模型 1% 审核率召回")), ("rules_pr_auc", _("规则 PR-AUC")),
                              ("rules_recall", _("规则 1% 审核率召回"))], title=_("风控模型版本")),
    )


def build(dash_app: Dash) -> None:
    dash_app.layout = layout
    c.register_filters(dash_app, category=False, tier=False, branch=False, granularity=True)
    for table_id, filename in TABLES.items():
        c.register_table_export(dash_app, table_id, filename)

    outputs = [Output("rk-note", "children"), Output("rk-kpis", "children"), Output("rk-outcomes", "figure"),
               Output("rk-rule-trend", "figure"), Output("rk-rule-bars", "figure"), Output("rk-queue-ages", "figure"),
               Output("rk-rules", "data"), Output("rk-ips", "data"), Output("rk-devices", "data"),
               Output("rk-daily", "data")]

    @dash_app.callback(*outputs, inputs={**c.filter_inputs(**FILTERS), "event": Input("rk-event", "value")})
    def update(event=None, **values):
        return render(staff_filters(**values), parse_event(event))

    @dash_app.callback(Output("rk-anomalies", "data"), Output("rk-models", "data"),
                       inputs=c.filter_inputs(**FILTERS))
    def update_learning(**values):
        staff_filters(**values)  # platform-wide: the same refusal as the page's other data
        return render_learning()

    @dash_app.callback(Output("rk-log-download", "data"), Input("rk-log-export", "n_clicks"),
                       State("f-range", "start_date"), State("f-range", "end_date"), prevent_initial_call=True)
    def download_log(_clicks, start, end):
        f = staff_filters(start=start, end=end)
        out = io.StringIO()
        export.write_csv(out, export.rows(f.start, f.end))
        return {"content": out.getvalue(), "filename": f"risk-log-{f.start}-{f.end}.csv", "type": "text/csv",
                "base64": False}


def staff_filters(**values) -> c.Filters:
    """The filters, for staff only: risk data is platform-wide, so a scope other than the platform is refused."""
    f = c.Filters.from_inputs(**values)
    if f.scope_id != PLATFORM_SCOPE:
        raise Forbidden("风控看板仅限管理员和经理查看")
    return f


def parse_event(event) -> str | None:
    if event in (None, ""):
        return None
    if event not in EVENTS:
        raise ValidationError("事件类型参数不正确")
    return event


def render(f: c.Filters, event: str | None = None) -> tuple:
    """Everything the page shows for one set of filters (the callback body; tests call it too)."""
    daily = q.decisions_by_day(f.start, f.end, event)
    hits = q.rule_hits_by_day(f.start, f.end, event)
    rules = q.rule_totals(hits)
    queue = q.review_queue()
    ips = q.top_subjects("ip", f.start, f.end, event)
    devices = q.top_subjects("device", f.start, f.end, event)

    totals = defaultdict(int)
    for r in daily:
        totals[r["outcome"]] += r["count"]
    count = sum(totals.values())
    latency_us = sum(r["latency_us"] for r in daily)
    note = _("%(start)s 至 %(end)s；审核队列为当前状态，超过 %(sla)s 分钟未处理即超时",
             start=f.start.isoformat(), end=f.end.isoformat(), sla=queue["sla_minutes"])
    if event:
        note += _("；事件：%(event)s", event=str(EVENT_NAMES[event]))
    kpis = [
        c.kpi_card(_("决策总数"), count, card_id="kpi-decisions"),
        c.kpi_card(_("人工审核"), totals["review"], card_id="kpi-review"),
        c.kpi_card(_("拦截"), totals["block"], card_id="kpi-block"),
        c.kpi_card(_("拦截率"), 0, card_id="kpi-block-rate",
                   text=f"{100 * totals['block'] / count:.2f}%" if count else "—"),
        c.kpi_card(_("平均耗时"), 0, card_id="kpi-latency",
                   text=f"{latency_us / count / 1000:.2f} ms" if count else "—"),
        c.kpi_card(_("待审核订单"), queue["size"], card_id="kpi-queue"),
        c.kpi_card(_("最久等待"), queue["oldest_minutes"], card_id="kpi-oldest",
                   text=_("%(n)s 分钟", n=queue["oldest_minutes"]) if queue["size"] else "—"),
        c.kpi_card(_("超出时限"), queue["over_sla"], card_id="kpi-over-sla"),
    ]

    buckets = periods(f.start, f.end, f.granularity)
    labels = [c.period_label(p, f.granularity) for p in buckets]
    per_outcome: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    for r in daily:
        per_outcome[r["outcome"]][bucket(r["day"], f.granularity)] += r["count"]
    outcome_fig = c.period_axis(c.figure(title=_("决策结果")))
    for key, name in OUTCOMES:
        outcome_fig.add_bar(x=labels, y=[per_outcome[key].get(p, 0) for p in buckets], name=str(name),
                            marker={"color": OUTCOME_COLORS[key]})
    outcome_fig.update_layout(barmode="stack")
    daily_rows = []
    for p in buckets:
        row = {key: per_outcome[key].get(p, 0) for key, _name in OUTCOMES}
        if any(row.values()):
            daily_rows.append({"period": c.period_label(p, f.granularity), **row, "total": sum(row.values())})

    trend_fig = c.period_axis(c.figure(title=_("规则命中趋势（不含影子规则）")))
    top = [r for r in rules if r["hits"]][:TOP_RULES_ON_CHART]
    for rule in top:
        per_period: dict = defaultdict(int)
        for r in hits:
            if (r["kind"], r["name"]) == (rule["kind"], rule["name"]) and not r["shadow"]:
                per_period[bucket(r["day"], f.granularity)] += r["hits"]
        trend_fig.add_scatter(x=labels, y=[per_period.get(p, 0) for p in buckets], mode="lines+markers",
                              name=hit_label(rule))

    bars = c.figure(title=_("按规则命中"))
    names = [hit_label(r) for r in rules]
    bars.add_bar(y=names, x=[r["hits"] for r in rules], name=_("生效命中"), orientation="h")
    bars.add_bar(y=names, x=[r["shadow_hits"] for r in rules], name=_("影子命中"), orientation="h")
    bars.update_layout(barmode="stack")
    bars.update_yaxes(autorange="reversed", type="category")

    ages = c.figure(title=_("审核队列等待时长"))
    ages.add_bar(x=[a["label"] for a in queue["ages"]], y=[a["count"] for a in queue["ages"]], name=_("订单数"))
    ages.update_xaxes(type="category")

    rule_rows = [{"kind": str(HIT_KINDS.get(r["kind"], r["kind"])), "name": r["name"],
                  "action": str(ACTIONS.get(r["action"], r["action"] or "")),
                  "hits": r["hits"], "shadow_hits": r["shadow_hits"]} for r in rules]
    return (note, kpis, outcome_fig, trend_fig, bars, ages, rule_rows, _ranked(ips), _ranked(devices), daily_rows)


def render_learning() -> tuple[list[dict], list[dict]]:
    """The flagged agents (the anomaly job's latest run) and the model versions, as table rows."""
    anomalies = [{**{k: r[k] for k in ("agent", "score", "cluster", "recruits", "recruits_buying", "device_sharers",
                                       "ip_sharers")},
                  "reasons": "、".join(str(ANOMALY_REASONS.get(code, code)) for code in r["reasons"])}
                 for r in ql.flagged_agents()]
    models = [{**{k: r[k] for k in ("version", "pr_auc", "recall", "rules_pr_auc", "rules_recall")},
               "status": str(MODEL_STATUS.get(r["status"], r["status"]))} for r in ql.model_versions()]
    return anomalies, models


def hit_label(rule: dict) -> str:
    return f"{HIT_KINDS.get(rule['kind'], rule['kind'])}：{rule['name']}"


def _ranked(rows: list[dict]) -> list[dict]:
    return [{"rank": i, **r} for i, r in enumerate(rows, start=1)]
