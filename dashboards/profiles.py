"""User profiles dashboard (用户画像): buyers by age band, gender, province, hour, weekday, first-time vs returning,
and what each segment buys (segment × category by period, e.g. 18-24 × 话费 by month).

Two callbacks: the overview (filters) and the segment explorer (filters + dimension + segment value). Both resolve
the scope through Filters.from_inputs (app.scope.dashboard_scope) on every call. Queries:
dashboards/queries/profiles.py over rollup_profile_daily. The rollup has no tier, so there is no tier filter.
"""
from __future__ import annotations

from collections import defaultdict

from dash import Dash, Input, Output, dcc, html
from flask_babel import gettext as _

from dashboards import components as c
from dashboards.queries import profiles as q
from dashboards.queries.periods import periods

FILTERS = {"category": True, "tier": False, "branch": True, "granularity": True}
DIMENSION_TABLE = "pf-dimensions"
SEGMENT_TABLE = "pf-segments"


def dimension_labels() -> dict[str, str]:
    return {"age_band": _("年龄段"), "gender": _("性别"), "province": _("省份"), "hour": _("时段"),
            "buyer_type": _("首购/复购")}


def weekday_names() -> list[str]:
    return [_("周一"), _("周二"), _("周三"), _("周四"), _("周五"), _("周六"), _("周日")]


def value_label(dimension: str, value: str) -> str:
    """How a stored segment value reads: M → 男, first → 首购, 9 → 9时, unknown → 未知."""
    if value == "unknown":
        return _("未知")
    if dimension == "gender":
        return {"M": _("男"), "F": _("女")}.get(value, value)
    if dimension == "buyer_type":
        return {"first": _("首购"), "returning": _("复购")}.get(value, value)
    if dimension == "hour":
        return _("%(h)s时", h=int(value)) if value.isdigit() else value
    return value


def layout() -> html.Div:
    labels = dimension_labels()
    return c.page(
        _("用户画像"),
        c.filter_bar(**FILTERS),
        html.Div(id="pf-note", className="kd-note"),
        c.kpi_row("pf-kpis"),
        html.Div([html.Div(c.graph("pf-age"), className="kd-col"),
                  html.Div(c.graph("pf-gender"), className="kd-col")], className="kd-row"),
        html.Div([html.Div(c.graph("pf-province"), className="kd-col"),
                  html.Div(c.graph("pf-buyer-type"), className="kd-col")], className="kd-row"),
        html.Div([html.Div(c.graph("pf-hour"), className="kd-col"),
                  html.Div(c.graph("pf-weekday"), className="kd-col")], className="kd-row"),
        c.table(DIMENSION_TABLE, [("dimension", _("维度")), ("value", _("人群")), ("orders", _("订单数")),
                                  ("gmv", _("GMV")), ("share", _("GMV 占比"))], title=_("画像明细")),
        html.H4(_("人群 × 商品分类"), className="kd-table-title"),
        html.Div([
            html.Div([html.Label(_("维度"), className="kd-label"),
                      dcc.Dropdown(id="pf-dimension", value="age_band", clearable=False, className="kd-dropdown",
                                   options=[{"label": label, "value": key} for key, label in labels.items()])],
                     className="kd-field"),
            html.Div([html.Label(_("人群"), className="kd-label"),
                      dcc.Dropdown(id="pf-value", options=[], placeholder=_("全部人群"), className="kd-dropdown")],
                     className="kd-field"),
        ], className="kd-filters"),
        c.graph("pf-segment-chart"),
        c.table(SEGMENT_TABLE, [("period", _("时间")), ("value", _("人群")), ("category", _("商品分类")),
                                ("orders", _("订单数")), ("gmv", _("GMV"))], title=_("人群购买明细")),
    )


def build(dash_app: Dash) -> None:
    dash_app.layout = layout
    c.register_filters(dash_app, tier=False, granularity=True)
    c.register_table_export(dash_app, DIMENSION_TABLE, "profiles.csv")
    c.register_table_export(dash_app, SEGMENT_TABLE, "segments-by-category.csv")

    outputs = [Output("pf-note", "children"), Output("pf-kpis", "children"), Output("pf-age", "figure"),
               Output("pf-gender", "figure"), Output("pf-province", "figure"), Output("pf-buyer-type", "figure"),
               Output("pf-hour", "figure"), Output("pf-weekday", "figure"), Output(DIMENSION_TABLE, "data")]

    @dash_app.callback(*outputs, inputs=c.filter_inputs(**FILTERS))
    def update(**values):
        return render(c.Filters.from_inputs(**values))

    @dash_app.callback(Output("pf-value", "value"), Input("pf-dimension", "value"), prevent_initial_call=True)
    def reset_segment(_dimension):
        return None  # a value of the previous dimension means nothing in the new one

    segment_inputs = {**c.filter_inputs(**FILTERS), "dimension": Input("pf-dimension", "value"),
                      "value": Input("pf-value", "value")}

    @dash_app.callback(Output("pf-value", "options"), Output("pf-segment-chart", "figure"),
                       Output(SEGMENT_TABLE, "data"), inputs=segment_inputs)
    def update_segments(dimension=None, value=None, **values):
        return render_segments(c.Filters.from_inputs(**values), dimension or "age_band", value or None)


def render(f: c.Filters) -> tuple:
    """The overview for one set of filters (the callback body; tests call it too)."""
    data = q.overview(f.scope_id, f.start, f.end, f.category_id)
    dims, totals, weekdays = data["dimensions"], data["totals"], data["weekdays"]
    note = _("%(start)s 至 %(end)s；年龄段、性别、省份来自实名认证，未认证的买家与店铺游客计为“未知”",
             start=f.start.isoformat(), end=f.end.isoformat())
    orders = totals["orders"]
    kpis = [
        c.kpi_card(_("订单数"), orders, card_id="kpi-orders"),
        c.kpi_card(_("GMV"), totals["gmv"], money=True, card_id="kpi-gmv"),
        c.kpi_card(_("客单价"), totals["aov"], money=True, card_id="kpi-aov"),
        c.kpi_card(_("首购订单"), totals["first_orders"], card_id="kpi-first"),
        c.kpi_card(_("复购订单"), totals["returning_orders"], card_id="kpi-returning"),
    ]
    labels = dimension_labels()
    figures = {
        "age_band": _bars(dims["age_band"], "age_band", _("按年龄段")),
        "gender": _pie(dims["gender"], "gender", _("按性别")),
        "province": _bars(dims["province"], "province", _("按省份（GMV 从高到低）"), horizontal=True),
        "buyer_type": _pie(dims["buyer_type"], "buyer_type", _("首购与复购")),
        "hour": _bars(dims["hour"], "hour", _("按下单时段")),
    }
    weekday_fig = c.figure(title=_("按星期"))
    weekday_fig.add_bar(x=[weekday_names()[r["weekday"]] for r in weekdays], y=[c.yuan(r["gmv"]) for r in weekdays],
                        customdata=[[c.fen(r["gmv"]), r["orders"]] for r in weekdays], name=_("GMV（元）"),
                        hovertemplate="%{x}<br>%{customdata[0]} / %{customdata[1]}<extra></extra>")
    table_rows = []
    for dimension in q.DIMENSIONS:
        for r in dims[dimension]:
            if r["orders"] or r["gmv"]:
                table_rows.append({"dimension": labels[dimension], "value": value_label(dimension, r["value"]),
                                   "orders": r["orders"], "gmv": c.fen(r["gmv"]), "share": _share(r["gmv"], totals)})
    return (note, kpis, figures["age_band"], figures["gender"], figures["province"], figures["buyer_type"],
            figures["hour"], weekday_fig, table_rows)


def render_segments(f: c.Filters, dimension: str, value: str | None) -> tuple:
    """Segment dropdown options, the segment × category chart and table for one dimension (and value)."""
    options = [{"label": value_label(dimension, v), "value": v}
               for v in q.segment_values(f.scope_id, dimension, f.start, f.end)]
    rows = q.segment_categories(f.scope_id, dimension, f.start, f.end, f.granularity, value, f.category_id)
    buckets = periods(f.start, f.end, f.granularity)
    per_category: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        per_category[r["category"]][r["period"]] += r["gmv"]
    title = _("%(segment)s 购买的商品分类（GMV，元）",
              segment=value_label(dimension, value) if value else dimension_labels().get(dimension, dimension))
    fig = c.period_axis(c.figure(title=title))
    period_labels = {p: c.period_label(p, f.granularity) for p in buckets}
    for name in sorted(per_category, key=lambda n: -sum(per_category[n].values())):
        fig.add_bar(x=list(period_labels.values()), y=[c.yuan(per_category[name].get(p, 0)) for p in buckets],
                    name=name)
    fig.update_layout(barmode="stack")
    # A year by day is ~12k rows: each label is looked up (gettext) once, not once per row.
    value_labels = {v: value_label(dimension, v) for v in {r["value"] for r in rows}}
    table_rows = [{"period": period_labels.get(r["period"]) or c.period_label(r["period"], f.granularity),
                   "value": value_labels[r["value"]], "category": r["category"], "orders": r["orders"],
                   "gmv": c.fen(r["gmv"])} for r in rows]
    return options, fig, table_rows



def _share(gmv: int, totals: dict) -> str:
    return f"{gmv * 100 / totals['gmv']:.1f}%" if totals["gmv"] else "—"


def _bars(rows: list[dict], dimension: str, title: str, horizontal: bool = False):
    fig = c.figure(title=title, height=420 if horizontal else 340)
    names = [value_label(dimension, r["value"]) for r in rows]
    values = [c.yuan(r["gmv"]) for r in rows]
    custom = [[c.fen(r["gmv"]), r["orders"]] for r in rows]
    hover = "%{customdata[0]} / %{customdata[1]}<extra></extra>"
    if horizontal:
        fig.add_bar(y=names, x=values, orientation="h", customdata=custom, name=_("GMV（元）"),
                    hovertemplate="%{y}<br>" + hover)
        fig.update_yaxes(autorange="reversed", type="category")
    else:
        fig.add_bar(x=names, y=values, customdata=custom, name=_("GMV（元）"), hovertemplate="%{x}<br>" + hover)
        fig.update_xaxes(type="category")
    return fig


def _pie(rows: list[dict], dimension: str, title: str):
    fig = c.figure(title=title)
    positive = [r for r in rows if r["gmv"] > 0]
    fig.add_pie(labels=[value_label(dimension, r["value"]) for r in positive],
                values=[c.yuan(r["gmv"]) for r in positive], customdata=[c.fen(r["gmv"]) for r in positive],
                hole=0.45, sort=False, hovertemplate="%{label}<br>%{customdata} (%{percent})<extra></extra>")
    return fig
