"""Products and stock dashboard (商品与库存): sales ranking in the range, card stock left and days of stock at the
last 7 days' rate, direct products' upstream availability, open low-stock alerts. Staff only (app/roles.py).
"""
from __future__ import annotations

from dash import Dash, Output, html
from flask_babel import gettext as _
from flask_babel import lazy_gettext

from app.analytics.delivery import format_ms
from app.clock import business_today, to_local
from dashboards import components as c
from dashboards.queries import products as q

TOP_CHART = 10
TABLES = {"pr-ranking": "product-ranking.csv", "pr-stock": "card-stock.csv", "pr-upstream": "direct-upstream.csv",
          "pr-alerts": "low-stock-alerts.csv", "pr-delivery": "delivery-times.csv"}
KINDS = {"card": lazy_gettext("卡密"), "direct": lazy_gettext("直充"), "manual": lazy_gettext("人工")}


def layout() -> html.Div:
    return c.page(
        _("商品与库存"),
        c.filter_bar(),
        html.Div(id="pr-note", className="kd-note"),
        c.kpi_row("pr-kpis"),
        html.Div([html.Div(c.graph("pr-top"), className="kd-col"),
                  html.Div(c.graph("pr-days"), className="kd-col")], className="kd-row"),
        c.table("pr-ranking", [("rank", _("排名")), ("product", _("商品")), ("category", _("商品分类")),
                               ("kind", _("类型")), ("quantity", _("销量")), ("orders", _("订单数")),
                               ("gmv", _("GMV")), ("margin", _("毛利"))], title=_("销售排行")),
        c.table("pr-stock", [("product", _("商品")), ("category", _("商品分类")), ("available", _("剩余卡密")),
                             ("threshold", _("补货阈值")), ("sold_7d", _("近7天销量")),
                             ("days_left", _("可售天数")), ("status", _("状态"))],
                title=_("卡密库存（按近7天销量估算可售天数）")),
        c.table("pr-upstream", [("product", _("商品")), ("category", _("商品分类")), ("status", _("货源")),
                                ("mappings", _("对接供应商数")), ("upstream_stock", _("上游库存")),
                                ("synced_at", _("同步时间"))], title=_("直充商品上游货源")),
        c.table("pr-alerts", [("product", _("商品")), ("available", _("提醒时库存")), ("threshold", _("补货阈值")),
                              ("created_at", _("提醒时间"))], title=_("未处理的补货提醒")),
        c.table("pr-delivery", [("product", _("商品")), ("supplier", _("供应商")), ("delivered", _("到账")),
                                ("failed", _("失败")), ("success_rate", _("成功率")), ("p50", "p50"), ("p95", "p95"),
                                ("mean", _("平均")), ("within_promise", _("1 分钟内")), ("late", _("超过到账承诺"))],
                title=_("到账时长（按支付日，全平台，不随代理分支筛选）")),
    )


def build(dash_app: Dash) -> None:
    dash_app.layout = layout
    c.register_filters(dash_app)
    for table_id, filename in TABLES.items():
        c.register_table_export(dash_app, table_id, filename)

    outputs = [Output("pr-note", "children"), Output("pr-kpis", "children"), Output("pr-top", "figure"),
               Output("pr-days", "figure"), *[Output(t, "data") for t in TABLES]]

    @dash_app.callback(*outputs, inputs=c.filter_inputs())
    def update(**values):
        return render(c.Filters.from_inputs(**values))


def render(f: c.Filters) -> tuple:
    """Everything the page shows for one set of filters."""
    ranking = q.ranking(f.scope_id, f.start, f.end, f.category_id, f.tier_id)
    stock = q.stock(business_today(), f.category_id)
    upstream = q.upstream(f.category_id)
    alerts = q.open_alerts(f.category_id)
    delivery_rows = q.delivery_times(f.start, f.end, f.category_id)
    overall = q.delivery_overall(f.start, f.end)

    note = _("销售排行：%(start)s 至 %(end)s；库存与提醒为当前数据。", start=f.start.isoformat(), end=f.end.isoformat())
    kpis = [
        c.kpi_card(_("售出商品数"), sum(1 for r in ranking if r["quantity"] > 0), card_id="kpi-products"),
        c.kpi_card(_("销量"), sum(r["quantity"] for r in ranking), card_id="kpi-units"),
        c.kpi_card(_("GMV"), sum(r["gmv"] for r in ranking), money=True, card_id="kpi-gmv"),
        c.kpi_card(_("低于阈值的卡密商品"), sum(1 for r in stock if r["low"]), card_id="kpi-low"),
        c.kpi_card(_("直充无货源"), sum(1 for r in upstream if not r["available"]), card_id="kpi-no-upstream"),
        c.kpi_card(_("未处理补货提醒"), len(alerts), card_id="kpi-alerts"),
        c.kpi_card(_("到账时长 p95"), 0, text=format_ms(overall.p95_ms, overall.overflow_p95),
                   card_id="kpi-delivery-p95"),
    ]
    top = list(reversed(ranking[:TOP_CHART]))
    top_fig = c.figure(title=_("GMV 前十商品"))
    top_fig.add_bar(y=[r["product"] for r in top], x=[c.yuan(r["gmv"]) for r in top], orientation="h",
                    name=_("GMV（元）"), customdata=[c.fen(r["gmv"]) for r in top],
                    hovertemplate="%{y}<br>%{customdata}<extra></extra>")
    soonest = [r for r in stock if r["days_left"] is not None][:TOP_CHART]
    days_fig = c.figure(title=_("可售天数最少的卡密商品"))
    days_fig.add_bar(x=[r["product"] for r in soonest], y=[r["days_left"] for r in soonest], name=_("可售天数"))
    ranking_rows = [{**{k: r[k] for k in ("rank", "product", "category", "quantity", "orders")},
                     "kind": str(KINDS.get(r["kind"], r["kind"])),
                     "gmv": c.fen(r["gmv"]), "margin": c.fen(r["margin"])} for r in ranking]
    stock_rows = [{**{k: r[k] for k in ("product", "category", "available", "threshold", "sold_7d")},
                   "days_left": "—" if r["days_left"] is None else r["days_left"],
                   "status": _("需补货") if r["low"] else _("正常")} for r in stock]
    upstream_rows = [{"product": r["product"], "category": r["category"],
                      "status": _("可售") if r["available"] else _("无可用货源"), "mappings": r["mappings"],
                      "upstream_stock": _("不限") if r["unlimited"] else
                      ("—" if r["upstream_stock"] is None else r["upstream_stock"]),
                      "synced_at": _when(r["synced_at"])} for r in upstream]
    alert_rows = [{"product": r["product"], "available": r["available"], "threshold": r["threshold"],
                   "created_at": _when(r["created_at"])} for r in alerts]
    delivery = [{"product": r["product"], "supplier": r["supplier"], "delivered": r["stats"].delivered,
                 "failed": r["stats"].failed, "success_rate": _rate(r["stats"].success_rate_bp),
                 "p50": format_ms(r["stats"].p50_ms, r["stats"].overflow_p50),
                 "p95": format_ms(r["stats"].p95_ms, r["stats"].overflow_p95),
                 "mean": _seconds(r["stats"].mean_ms), "within_promise": r["stats"].within_promise,
                 "late": r["stats"].late} for r in delivery_rows]
    return note, kpis, top_fig, days_fig, ranking_rows, stock_rows, upstream_rows, alert_rows, delivery


def _rate(bp: int | None) -> str:
    return "—" if bp is None else f"{bp / 100:.2f}%"


def _seconds(ms: int | None) -> str:
    if ms is None:
        return "—"
    seconds = f"{ms / 1000:.1f}"
    return _("%(n)s 秒", n=seconds)


def _when(at) -> str:
    return to_local(at).strftime("%Y-%m-%d %H:%M") if at else "—"
