"""GMV dashboard (GMV 概览): GMV, orders, AOV and margin by day/week/month, breakdowns, previous-period comparison.

One callback answers a filter change with everything: one round trip, two range scans of the rollup on PostgreSQL
(queries.gmv.overview) plus the name lookups.
"""
from __future__ import annotations

from dash import Dash, Output, html
from flask_babel import gettext as _

from app.money import format_bp
from dashboards import components as c
from dashboards.queries import gmv as q

BREAKDOWN_TABLES = ("category", "product", "channel", "tier", "supplier")


def _breakdown_titles() -> dict:
    return {"category": _("按商品分类"), "product": _("按商品"), "channel": _("按支付渠道"),
            "tier": _("按代理等级"), "supplier": _("按供应商")}


def _figure_columns(first: str) -> list[tuple[str, str]]:
    return [("label", first), ("gmv", _("GMV")), ("orders", _("订单数")), ("aov", _("客单价")),
            ("margin", _("毛利")), ("margin_rate", _("毛利率")), ("share", _("GMV 占比"))]


def layout() -> html.Div:
    titles = _breakdown_titles()
    first = {"category": _("商品分类"), "product": _("商品"), "channel": _("支付渠道"), "tier": _("代理等级"),
             "supplier": _("供应商")}
    return c.page(
        _("GMV 概览"),
        c.filter_bar(granularity=True),
        html.Div(id="gmv-note", className="kd-note"),
        c.kpi_row("gmv-kpis"),
        html.Div([html.Div(c.graph("gmv-trend"), className="kd-col"),
                  html.Div(c.graph("gmv-margin-trend"), className="kd-col")], className="kd-row"),
        c.table("gmv-series", [("period", _("时间")), ("gmv", _("GMV")), ("orders", _("订单数")),
                               ("aov", _("客单价")), ("margin", _("毛利")), ("margin_rate", _("毛利率"))],
                title=_("趋势明细")),
        html.Div([html.Div(c.graph("gmv-by-category"), className="kd-col"),
                  html.Div(c.graph("gmv-by-channel"), className="kd-col")], className="kd-row"),
        *[c.table(f"gmv-by-{by}-table", _figure_columns(first[by]), title=titles[by]) for by in BREAKDOWN_TABLES],
        # agent shops (分站): the shops in the scope, whatever the category and tier filters
        html.H4(_("分站（不按分类、等级筛选）"), className="kd-table-title"),
        c.kpi_row("gmv-shop-kpis"),
        c.table("gmv-by-shop-table", [("label", _("分站")), ("orders", _("订单数")), ("gmv", _("GMV")),
                                      ("profit", _("分站利润"))], title=_("按分站")),
    )


def build(dash_app: Dash) -> None:
    dash_app.layout = layout
    c.register_filters(dash_app, granularity=True)
    c.register_table_export(dash_app, "gmv-series", "gmv-trend.csv")
    for by in BREAKDOWN_TABLES:
        c.register_table_export(dash_app, f"gmv-by-{by}-table", f"gmv-by-{by}.csv")
    c.register_table_export(dash_app, "gmv-by-shop-table", "gmv-by-shop.csv")

    outputs = [Output("gmv-note", "children"), Output("gmv-kpis", "children"), Output("gmv-trend", "figure"),
               Output("gmv-margin-trend", "figure"), Output("gmv-series", "data"),
               Output("gmv-by-category", "figure"), Output("gmv-by-channel", "figure"),
               *[Output(f"gmv-by-{by}-table", "data") for by in BREAKDOWN_TABLES],
               Output("gmv-shop-kpis", "children"), Output("gmv-by-shop-table", "data")]

    @dash_app.callback(*outputs, inputs=c.filter_inputs(granularity=True))
    def update(**values):
        return render(c.Filters.from_inputs(**values))


def render(f: c.Filters) -> tuple:
    """Everything the page shows for one set of filters (the callback body; also called by tests)."""
    compare = q.overview(f.scope_id, f.start, f.end, f.granularity, f.category_id, f.tier_id)
    cur, prev = compare["current"], compare["previous"]
    rows, breakdowns = compare["series"], compare["breakdowns"]

    note = _("%(start)s 至 %(end)s，对比上期 %(pstart)s 至 %(pend)s", start=f.start.isoformat(),
             end=f.end.isoformat(), pstart=compare["previous_start"].isoformat(),
             pend=compare["previous_end"].isoformat())
    kpis = [
        c.kpi_card(_("GMV"), cur["gmv"], prev["gmv"], money=True, card_id="kpi-gmv"),
        c.kpi_card(_("订单数"), cur["orders"], prev["orders"], card_id="kpi-orders"),
        c.kpi_card(_("客单价"), cur["aov"], prev["aov"], money=True, card_id="kpi-aov"),
        c.kpi_card(_("毛利"), cur["margin"], prev["margin"], money=True, card_id="kpi-margin"),
        c.kpi_card(_("毛利率"), cur["margin_bp"], card_id="kpi-margin-rate", text=format_bp(cur["margin_bp"])),
    ]
    labels = [c.period_label(r["period"], f.granularity) for r in rows]
    trend = c.period_axis(c.figure(title=_("GMV 与订单数")))
    trend.add_bar(x=labels, y=[c.yuan(r["gmv"]) for r in rows], name=_("GMV（元）"),
                  customdata=[c.fen(r["gmv"]) for r in rows], hovertemplate="%{x}<br>%{customdata}<extra></extra>")
    trend.add_scatter(x=labels, y=[r["orders"] for r in rows], name=_("订单数"), yaxis="y2", mode="lines+markers")
    trend.update_layout(yaxis2={"overlaying": "y", "side": "right", "showgrid": False})
    margin = c.period_axis(c.figure(title=_("毛利与客单价")))
    margin.add_scatter(x=labels, y=[c.yuan(r["margin"]) for r in rows], name=_("毛利（元）"), mode="lines+markers",
                       customdata=[c.fen(r["margin"]) for r in rows],
                       hovertemplate="%{x}<br>%{customdata}<extra></extra>")
    margin.add_scatter(x=labels, y=[c.yuan(r["aov"]) for r in rows], name=_("客单价（元）"), mode="lines+markers",
                       customdata=[c.fen(r["aov"]) for r in rows], yaxis="y2",
                       hovertemplate="%{x}<br>%{customdata}<extra></extra>")
    margin.update_layout(yaxis2={"overlaying": "y", "side": "right", "showgrid": False})  # AOV is much smaller
    series_rows = [{"period": label, "gmv": c.fen(r["gmv"]), "orders": r["orders"], "aov": c.fen(r["aov"]),
                    "margin": c.fen(r["margin"]), "margin_rate": format_bp(r["margin_bp"])}
                   for label, r in zip(labels, rows, strict=True)]
    tables = [[_table_row(r) for r in breakdowns[by]] for by in BREAKDOWN_TABLES]
    shops = q.shops(f.scope_id, f.start, f.end)
    shop_now, shop_before = shops["current"], shops["previous"]
    shop_kpis = [
        c.kpi_card(_("分站订单"), shop_now["orders"], shop_before["orders"], card_id="kpi-shop-orders"),
        c.kpi_card(_("分站 GMV"), shop_now["gmv"], shop_before["gmv"], money=True, card_id="kpi-shop-gmv"),
        c.kpi_card(_("分站利润"), shop_now["profit"], shop_before["profit"], money=True, card_id="kpi-shop-profit"),
    ]
    shop_rows = [{"label": r["label"], "orders": r["orders"], "gmv": c.fen(r["gmv"]), "profit": c.fen(r["profit"])}
                 for r in shops["shops"]]
    return (note, kpis, trend, margin, series_rows, _pie(breakdowns["category"], _("各分类 GMV")),
            _pie(breakdowns["channel"], _("各支付渠道 GMV")), *tables, shop_kpis, shop_rows)


def _label(row: dict) -> str:
    return row["label"] if row["label"] is not None else _("店铺游客")


def _table_row(r: dict) -> dict:
    return {"label": _label(r), "gmv": c.fen(r["gmv"]), "orders": r["orders"], "aov": c.fen(r["aov"]),
            "margin": c.fen(r["margin"]), "margin_rate": format_bp(r["margin_bp"]), "share": format_bp(r["share_bp"])}


def _pie(rows: list[dict], title: str) -> c.Figure:
    fig = c.figure(title=title)
    positive = [r for r in rows if r["gmv"] > 0]
    fig.add_pie(labels=[_label(r) for r in positive], values=[c.yuan(r["gmv"]) for r in positive], hole=0.45,
                customdata=[c.fen(r["gmv"]) for r in positive], sort=False,
                hovertemplate="%{label}<br>%{customdata} (%{percent})<extra></extra>")
    return fig

